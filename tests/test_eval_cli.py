"""Long offline jobs behave: inputs checked first, progress shown, caches announced, Ctrl-C clean; image
metrics on point data say so; the energy metric says when it uses fewer draws; ``dr-dataset info`` reads
IDX folders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffratio import DataError
from diffratio.dataset_tool import dataset as dr_dataset
from diffratio.eval_cli import main as dr_eval
from diffratio.fid import FeatureStats, InceptionFeatures
from diffratio.fid import features as fid_features
from diffratio.longjob import progress
from test_fid import Points, blob_images, make_ctx, write_tiny_weights


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny.pt")


def write_pair(folder: Path, n: int = 60) -> tuple[Path, Path]:
    labels = np.arange(n) % 4
    np.savez(folder / "samples.npz", images=blob_images(labels, seed=3))
    np.savez(folder / "ref.npz", images=blob_images(labels, seed=4))
    return folder / "samples.npz", folder / "ref.npz"


def no_network(*args: Any, **kwargs: Any) -> None:
    pytest.fail("the network was loaded before the inputs were checked")


def test_dr_eval_checks_the_samples_file_first(tiny_weights: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(InceptionFeatures, "__init__", no_network)
    runner = CliRunner()
    common = ["--weights", str(tiny_weights), "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]
    # a missing samples file is reported before the (also unknown) reference is looked at
    res = runner.invoke(dr_eval, ["fid", str(tmp_path / "nope.npz"), "--ref", "no-such-dataset", *common])
    assert res.exit_code == 2 and "nope.npz does not exist" in res.output and "no-such-dataset" not in res.output
    np.savez(tmp_path / "float.npz", images=np.zeros((10, 3, 8, 8), np.float32))
    res = runner.invoke(dr_eval, ["fid", str(tmp_path / "float.npz"), "--ref", "no-such-dataset", *common])
    assert res.exit_code == 2 and "must be uint8" in res.output
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    res = runner.invoke(dr_eval, ["fid", str(tmp_path / "junk.npz"), "--ref", "no-such-dataset", *common])
    assert res.exit_code == 2 and "cannot be read as .npz" in res.output
    samples, _ = write_pair(tmp_path)
    res = runner.invoke(dr_eval, ["fid", str(samples), "--ref", str(tmp_path / "junk.npz"), *common])
    assert res.exit_code == 2 and "junk.npz cannot be read" in res.output
    res = runner.invoke(dr_eval, ["stats", str(samples), "--out", str(tmp_path / "st.txt"), *common])
    assert res.exit_code == 2 and "ending in .npz" in res.output
    assert not (tmp_path / "cache").exists()


def test_dr_eval_shows_progress_and_announces_caches(tiny_weights: Path, tmp_path: Path) -> None:
    samples, ref = write_pair(tmp_path)
    runner = CliRunner()
    args = ["fid", str(samples), "--ref", str(ref), "--weights", str(tiny_weights), "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache")]
    first = runner.invoke(dr_eval, args)
    assert first.exit_code == 0, first.output
    cached = list((tmp_path / "cache" / "fid").glob("*.npz"))
    assert len(cached) == 1
    assert "FID features of reference ref: 60/60 img" in first.stderr
    assert "FID features of samples.npz: 60/60 img" in first.stderr
    assert f"cached FID statistics of 60 images in {cached[0]} (" in first.stderr and "KiB)" in first.stderr
    second = runner.invoke(dr_eval, args)
    assert second.exit_code == 0, second.output
    assert f"using cached FID statistics {cached[0]} (" in second.stderr
    assert "FID features of reference" not in second.stderr
    assert first.stdout.split("(")[0] == second.stdout.split("(")[0]  # "FID x.xxxx" alike


def test_dr_eval_ctrl_c_stops_cleanly_and_leaves_no_cache(tiny_weights: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    samples, ref = write_pair(tmp_path)

    def interrupted(self: InceptionFeatures, *args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(InceptionFeatures, "__call__", interrupted)
    res = CliRunner().invoke(dr_eval, ["fid", str(samples), "--ref", str(ref), "--weights", str(tiny_weights),
                                       "--device", "cpu", "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 130 and "interrupted" in res.stderr and "Traceback" not in res.output
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] if (tmp_path / "cache").exists() else []
    assert leftovers == []


def test_statistics_interrupted_while_written_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st = FeatureStats.from_features(np.random.default_rng(0).normal(size=(10, 3)))

    def interrupted(file: Any, **arrays: Any) -> None:
        Path(file).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        st.save(tmp_path / "fid" / "s.npz")
    assert list((tmp_path / "fid").iterdir()) == []


def test_progress_prints_lines_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(5, "work", unit="img", interval=0.0) as bar:
        assert bar is not None
        for _ in range(5):
            bar.update(1)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 5 and err[-1].startswith("work: 5/5 img (100%")
    with progress(5, "silent", enabled=False) as none:
        assert none is None


def test_fid_metric_on_point_data_says_it_needs_images(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from diffratio_builtins.metrics.fid import FCD, FID

    monkeypatch.setattr(fid_features.importlib.util, "find_spec", lambda name: None)  # package not installed
    points = Points(np.zeros((10, 2), np.uint8))
    with pytest.raises(DataError, match="metric 'fid' needs image data"):
        FID().compute(make_ctx(points, lambda n: torch.zeros(n, 2), tmp_path))
    with pytest.raises(DataError, match="metric 'fcd' needs image data"):
        FCD().check_data(points)


def test_energy_metric_warns_when_it_averages_fewer_draws() -> None:
    from types import SimpleNamespace

    from diffratio_builtins.metrics.energy import EnergyDistance

    held = torch.randn(450, 2, generator=torch.Generator().manual_seed(0))
    ctx = SimpleNamespace(dataset=SimpleNamespace(reference=lambda k: held[:k]), sample=lambda n: torch.randn(n, 2))
    metric = EnergyDistance(EnergyDistance.Config(num_samples=100, repeats=5))
    with pytest.warns(UserWarning, match=r"repeats = 5 needs 1000 held-out points.*averaging 2 draws"):
        out = metric.compute(ctx)
    assert out["repeats"] == 2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.compute(ctx)  # warned once per metric


def write_idx(path: Path, arr: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes())


def test_dr_dataset_info_reads_idx_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 3)
    res = CliRunner().invoke(dr_dataset, ["info", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert f"{tmp_path} [train]" in res.output and f"{tmp_path} [t10k]" in res.output
    assert "images: 6 of 28x28, 1 channel, uint8" in res.output and "images: 4 of 28x28" in res.output
    assert "labels: 3 classes, 2..2 images per class" in res.output
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    res = CliRunner().invoke(dr_dataset, ["info", str(tmp_path)])
    assert res.exit_code == 2 and "t10k-labels-idx1-ubyte.gz does not exist" in res.output
