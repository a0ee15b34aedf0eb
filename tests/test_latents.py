"""Latent data sets and the VAE plugin: shard reading and scaling in every storage mode, the errors a user
meets before training (no path, empty or mismatched shards, bad labels), synthetic latents, and the
encode/decode plumbing of ``diffratio_builtins.vae`` with a tiny stand-in autoencoder (no diffusers)."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from torch import nn

from diffratio import DataError, MissingDependencyError
from diffratio.dataset_tool import iter_image_source, read_image_source
from diffratio.recipe import converter
from diffratio_builtins import vae as vae_mod
from diffratio_builtins.datasets import shards as shards_mod
from diffratio_builtins.datasets.latents import Latents, SyntheticLatents
from diffratio_builtins.vae import VAE, encode_dataset

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def write_shard(stem: Path, n: int = 6, shape: tuple[int, ...] = (4, 4, 4), seed: int = 0, std: bool = True,
                labels: Any = "auto", dtype: Any = np.float16) -> Path:
    """Shard ``stem`` (``stem.latents.npy`` and siblings); returns the latents file."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {"latents": (rng.normal(size=(n, *shape)) * 3 + 1).astype(dtype)}
    if std:
        arrays["std"] = np.full((n, *shape), 0.25, dtype)
    if isinstance(labels, str):
        arrays["labels"] = rng.integers(0, 5, n)
    elif labels is not None:
        arrays["labels"] = np.asarray(labels)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(stem.parent / f"{stem.name}.{name}.npy", array)
    return stem.parent / f"{stem.name}.latents.npy"


def shards(folder: Path, count: int = 3, **kw: Any) -> Path:
    for i in range(count):
        write_shard(folder / f"part-{i}", seed=i, **kw)
    return folder


def latents(path: Path | str, **kw: Any) -> Latents:
    return Latents(Latents.Config(path=str(path), **kw))


class FakeAutoencoder(nn.Module):
    """Stands in for diffusers' AutoencoderKL: ``encode(x).latent_dist.{mean,std}`` halves the resolution into 4
    channels (x scaled by 5, so raw latents are not unit-sized); ``decode(z).sample`` upsamples the first 3
    channels back (divided by 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(scaling_factor=0.2)
        self.calls = 0

    def encode(self, x: torch.Tensor) -> Any:
        self.calls += 1
        m = F.avg_pool2d(torch.cat([x, x.mean(1, keepdim=True)], 1), 2) * 5.0
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=m, std=torch.full_like(m, 0.01)))

    def decode(self, z: torch.Tensor) -> Any:
        return SimpleNamespace(sample=F.interpolate(z[:, :3] / 5.0, scale_factor=2.0, mode="nearest"))


def image_folder(root: Path, n_per_class: int = 5, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_iter_image_source_streams_what_read_image_source_reads(tmp_path: Path) -> None:
    src = image_folder(tmp_path / "images", n_per_class=4)
    whole = read_image_source(src, max_images=6, seed=1)
    parts = list(iter_image_source(src, chunk=4, max_images=6, seed=1))
    assert [len(p.images) for p in parts] == [4, 2]
    assert np.array_equal(np.concatenate([p.images for p in parts]), whole.images)
    assert np.array_equal(np.concatenate([p.labels for p in parts]), whole.labels)
    assert parts[0].class_names == ("cat", "dog") and sum((p.names for p in parts), ()) == whole.names
    np.savez(tmp_path / "i.npz", images=whole.images, labels=whole.labels)
    npz_parts = list(iter_image_source(tmp_path / "i.npz", chunk=4, max_images=5))
    assert [len(p.images) for p in npz_parts] == [4, 1]


# --------------------------------------------------------------------------------------------------
# reading and scaling
# --------------------------------------------------------------------------------------------------


def test_storage_modes_give_the_same_batches(tmp_path: Path) -> None:
    folder = shards(tmp_path / "s")
    out = {}
    for storage in ("memory", "mmap", "device"):
        ds = latents(folder, use_labels=True, storage=storage).to(torch.device("cpu"))
        assert len(ds) == 18 and ds.data_shape == (4, 4, 4) and ds.num_labels == 5
        torch.manual_seed(0)
        out[storage] = ds.get(torch.tensor([17, 0, 6, 6]))
    for storage in ("mmap", "device"):
        assert torch.equal(out[storage][0], out["memory"][0]) and torch.equal(out[storage][1], out["memory"][1])
    x, y = out["memory"]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert y[0] == int(np.load(folder / "part-2.labels.npy")[5])
    assert y[1] == int(np.load(folder / "part-0.labels.npy")[0])


def test_channel_stats_scaling_gives_sigma_data_per_channel(tmp_path: Path) -> None:
    folder = shards(tmp_path / "s", count=2, std=False, shape=(3, 8, 8))
    ds = latents(folder, sigma_data=0.5)
    x, y = ds.get(torch.arange(len(ds)))
    assert y is None and ds.num_labels == 0 and ds.sigma_data == 0.5
    per_channel = x.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.full((3,), 0.5), atol=1e-4)
    raw = torch.from_numpy(np.concatenate([np.load(folder / f"part-{i}.latents.npy") for i in range(2)])).float()
    assert torch.allclose(ds.to_raw(x), raw, atol=1e-5)


def test_given_statistics_factor_and_none(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "one", std=False, shape=(2, 4, 4))
    raw = torch.from_numpy(np.load(path)).float()
    idx = torch.arange(6)
    ds = latents(path, channel_mean=(1.0, -1.0), channel_std=(2.0, 4.0), sigma_data=0.5)
    expected = (raw - torch.tensor([1.0, -1.0]).view(2, 1, 1)) * (0.5 / torch.tensor([2.0, 4.0]).view(2, 1, 1))
    assert torch.allclose(ds.get(idx)[0], expected)
    assert torch.allclose(latents(path, scaling="factor", scale_factor=0.18215, sigma_data=0.5).get(idx)[0],
                          raw * 0.18215 * 0.5)
    assert torch.equal(latents(path, scaling="none").get(idx)[0], raw)


def test_posterior_sampling_uses_std_and_can_be_switched_off(tmp_path: Path) -> None:
    path = write_shard(tmp_path / "one", std=True)
    idx = torch.arange(6).repeat(50)
    mean_only = latents(path, scaling="none", sample_posterior=False).get(idx)[0]
    sampled = latents(path, scaling="none").get(idx)[0]
    noise = sampled - mean_only
    assert abs(float(noise.std()) - 0.25) < 0.02 and abs(float(noise.mean())) < 0.02
    assert torch.equal(latents(path, scaling="none").reference(6), latents(path, scaling="none").reference(6))


def assert_same_batch(a, b) -> None:  # noqa: ANN001 - two latent data sets
    """The same indices under the same seed give the same latents and labels from both."""
    idx = torch.tensor([0, 11, 5])
    torch.manual_seed(1)
    xa = a.get(idx)
    torch.manual_seed(1)
    xb = b.get(idx)
    assert torch.equal(xa[0], xb[0]) and torch.equal(xa[1], xb[1])


def test_zip_of_shards_and_nested_folders(tmp_path: Path) -> None:
    folder = shards(tmp_path / "s" / "nested", count=2)
    with zipfile.ZipFile(tmp_path / "all.zip", "w") as z:
        for p in sorted(folder.glob("*.npy")):
            z.write(p, f"inner/{p.name}")
    a, b = latents(tmp_path / "s", use_labels=True), latents(tmp_path / "all.zip", use_labels=True)
    assert_same_batch(a, b)


def test_max_items_is_a_fixed_subset(tmp_path: Path) -> None:
    folder = shards(tmp_path / "s", count=3)
    a, b = latents(folder, max_items=7, scaling="none"), latents(folder, max_items=7, scaling="none", storage="mmap")
    assert len(a) == len(b) == 7
    assert torch.equal(a.reference(7), b.reference(7))


def test_data_is_read_at_the_first_batch_not_when_built(tmp_path: Path) -> None:
    folder = shards(tmp_path / "s", count=2)
    ds = latents(folder)
    assert ds._data is None  # only headers and labels so far
    ds.get(torch.tensor([0]))
    assert ds._data is not None and ds._data.shape == (12, 4, 4, 4)


# --------------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------------


def test_no_path_names_the_recipe_key_and_how_to_prepare_latents() -> None:
    with pytest.raises(DataError, match=r"dataset\.path is not set.*python -m diffratio_builtins\.vae encode"):
        Latents(Latents.Config())


def test_missing_path_says_how_to_prepare_latents(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope \(dataset\.path\) does not exist.*vae encode IMAGES OUT_DIR"):
        latents(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no latent shards \(\*\.latents\.npy\).*vae encode"):
        latents(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"expected a folder of latent shards"):
        latents(tmp_path / "x.txt")


def _save(path: Path, array: np.ndarray) -> None:
    np.save(path, array)


@pytest.mark.parametrize(("make", "match"), [
    (lambda d: write_shard(d / "a", n=0), r"a\.latents\.npy: empty shard"),
    (lambda d: write_shard(d / "a", n=1), r"has 1 row\(s\) \(shape \(1, 4, 4, 4\)\); at least 2 are needed"),
    (lambda d: (write_shard(d / "a"), write_shard(d / "b", shape=(4, 8, 8))),
     r"b\.latents\.npy holds latents of 4x8x8 but .*a\.latents\.npy holds 4x4x4; all shards must come from one VAE"),
    (lambda d: np.savez(d / "a.npz", latents=np.zeros((2, 4, 4, 4), np.float32)),
     r"holds \.npz shards; latent shards are \.npy files .*python -m diffratio_builtins\.datasets\.shards SRC DEST"),
    (lambda d: _save(d / "a.latents.npy", np.zeros((2, 4, 4, 4), np.uint8)), r"must be float16 or float32, got uint8"),
    (lambda d: _save(d / "a.latents.npy", np.zeros((2, 4, 4, 4))), r"must be float16 or float32, got float64"),
    (lambda d: _save(d / "a.latents.npy", np.array([["a", "b"]] * 2)), r"must be float16 or float32, got <U1"),
    (lambda d: _save(d / "a.latents.npy", np.zeros((2, 4, 4), np.float32)), r"shape \(N, C, H, W\)"),
    (lambda d: (_save(d / "a.latents.npy", np.zeros((2, 4, 4, 4), np.float32)),
                _save(d / "a.std.npy", np.zeros((2, 4, 4), np.float32))),
     r"a\.std\.npy: std must be float16 or float32 of the latents' shape"),
    (lambda d: write_shard(d / "a", labels=[0, 1, -1, 0, 0, 0]), r"a\.labels\.npy: label of image 2 is -1"),
    (lambda d: write_shard(d / "a", labels=[0.5] * 6), r"labels must be integers"),
    (lambda d: (d / "a.latents.npy").write_bytes(b"not an array"), r"a\.latents\.npy: not a readable \.npy array"),
], ids=["empty", "one-row", "shape-mismatch", "npz", "int-dtype", "float64", "text", "ndim", "std-shape",
        "negative-label", "float-labels", "corrupt"])
def test_bad_shards_are_refused_when_built(tmp_path: Path, make: Any, match: str) -> None:
    make(tmp_path)
    with pytest.raises(DataError, match=match):
        latents(tmp_path, use_labels=True)


def test_labels_out_of_range_and_missing_labels(tmp_path: Path) -> None:
    write_shard(tmp_path / "a", labels=[0, 1, 2, 3, 9, 0])
    with pytest.raises(DataError, match=r"label of image 4 is 9, outside 0\.\.4"):
        latents(tmp_path, use_labels=True, num_classes=5)
    assert latents(tmp_path, use_labels=True).num_labels == 10
    write_shard(tmp_path / "b", labels=None)
    with pytest.raises(DataError, match=r"use_labels = true but .*b\.latents\.npy has no labels file"):
        latents(tmp_path, use_labels=True)
    assert latents(tmp_path).num_labels == 0  # labels are only needed when asked for


def test_config_and_storage_errors(tmp_path: Path) -> None:
    write_shard(tmp_path / "s" / "a")
    with pytest.raises(DataError, match=r"channel_mean has 3 values but the latents have 4 channels"):
        latents(tmp_path / "s", channel_mean=(0.0, 0.0, 0.0))
    with pytest.raises(DataError, match=r"channel_std must be positive"):
        latents(tmp_path / "s", channel_mean=(0.0,) * 4, channel_std=(1.0, 1.0, 0.0, 1.0))
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.write(tmp_path / "s" / "a.latents.npy", "a.latents.npy")
    with pytest.raises(DataError, match=r"storage = \"mmap\" maps shard files"):
        latents(tmp_path / "z.zip", storage="mmap")


@pytest.mark.parametrize("storage", ["memory", "mmap"])
def test_non_finite_latents_are_found_when_read(tmp_path: Path, storage: str) -> None:
    bad = np.zeros((3, 4, 2, 2), np.float32)
    bad[1, 2, 0, 1] = np.nan
    np.save(tmp_path / "a.latents.npy", bad)
    ds = latents(tmp_path, scaling="none", storage=storage)
    with pytest.raises(DataError, match=r"a\.latents\.npy: item 1 is not finite"):
        ds.get(torch.tensor([0, 1]))


def test_npz_shards_convert_to_the_same_data(tmp_path: Path) -> None:
    folder = shards(tmp_path / "npy", count=2)
    (tmp_path / "npz" / "sub").mkdir(parents=True)
    for i in range(2):
        arrays = {k: np.load(folder / f"part-{i}.{k}.npy") for k in ("latents", "std", "labels")}
        np.savez(tmp_path / "npz" / "sub" / f"part-{i}.npz", **arrays)
    res = CliRunner().invoke(shards_mod.main, [str(tmp_path / "npz"), str(tmp_path / "out")])
    assert res.exit_code == 0 and "wrote 2 shard(s)" in res.output, res.output
    assert sorted(p.name for p in (tmp_path / "out" / "sub").iterdir())[:2] == ["part-0.labels.npy",
                                                                                 "part-0.latents.npy"]
    a, b = latents(folder, use_labels=True), latents(tmp_path / "out", use_labels=True, storage="mmap")
    assert_same_batch(a, b)
    res = CliRunner().invoke(shards_mod.main, [str(tmp_path / "npy"), str(tmp_path / "o2")])
    assert res.exit_code == 2 and "no .npz shards found" in res.output


# --------------------------------------------------------------------------------------------------
# synthetic latents
# --------------------------------------------------------------------------------------------------


def test_synthetic_latents_are_deterministic_and_shaped() -> None:
    cfg = SyntheticLatents.Config(shape=(4, 8, 8), num_labels=10, num_items=32, seed=3, sigma_data=0.5)
    a, b = SyntheticLatents(cfg), SyntheticLatents(cfg)
    idx = torch.tensor([0, 31, 7])
    (xa, ya), (xb, yb) = a.get(idx), b.get(idx)
    assert xa.shape == (3, 4, 8, 8) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.num_labels == 10 and a.data_shape == (4, 8, 8) and len(a) == 32
    assert abs(float(a.latents.std()) - 0.5) < 0.05
    other = SyntheticLatents(SyntheticLatents.Config(shape=(4, 8, 8), num_items=32, seed=4))
    assert not torch.equal(other.get(idx)[0], xa)
    unlabelled = SyntheticLatents(SyntheticLatents.Config(shape=(2, 4, 4), num_labels=0, num_items=4))
    assert unlabelled.get(idx[:1])[1] is None and unlabelled.to_image(xa) is None


# --------------------------------------------------------------------------------------------------
# the VAE: loading errors, encode / decode plumbing
# --------------------------------------------------------------------------------------------------


def test_vae_load_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match=r"needs a local AutoencoderKL.*--vae DIR or dataset\.vae"):
        VAE.load("")
    with pytest.raises(DataError, match=r"missing does not exist"):
        VAE.load(tmp_path / "missing")
    (tmp_path / "vae.safetensors").write_bytes(b"x")
    with pytest.raises(DataError, match=r"not a diffusers model folder .*not a single checkpoint file"):
        VAE.load(tmp_path / "vae.safetensors")
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import fails as when diffusers is not installed
    with pytest.raises(MissingDependencyError, match=r"'diffusers'.*pip install diffusers safetensors"):
        VAE.load(folder)


def test_vae_encode_decode_plumbing() -> None:
    vae = VAE(FakeAutoencoder(), batch=3)
    images = torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8)
    mean, std = vae.encode(images)
    assert mean.shape == std.shape == (7, 4, 4, 4) and mean.dtype == torch.float32
    assert vae.model.calls == 3  # batches of 3
    grey = vae.encode(images[:, :1])[0]
    assert grey.shape == (7, 4, 4, 4)
    decoded = vae.decode(mean)
    assert decoded.dtype == torch.uint8 and decoded.shape == (7, 3, 8, 8)
    expected = F.avg_pool2d(images.float() / 127.5 - 1, 2)  # the fake's round trip: block means
    assert (decoded.float() - ((F.interpolate(expected, scale_factor=2.0) + 1) * 127.5)).abs().max() <= 1.0
    with pytest.raises(DataError, match=r"expected uint8 images"):
        vae.encode(images.float())
    assert vae.scaling_factor == 0.2


def test_encode_dataset_writes_shards_the_latents_data_set_reads(tmp_path: Path) -> None:
    src = image_folder(tmp_path / "images", n_per_class=5)
    vae = VAE(FakeAutoencoder(), batch=4)
    meta = encode_dataset(vae, iter_image_source(src, chunk=3), tmp_path / "lat", shard_size=4, progress=False,
                          info={"source": str(src)})
    assert meta["count"] == 10 and meta["shape"] == [4, 4, 4] and meta["shards"] == [
        "latents-00000", "latents-00001", "latents-00002"]
    assert meta["labels"] and meta["class_names"] == ["cat", "dog"] and meta["scaling_factor"] == 0.2
    assert json.loads((tmp_path / "lat" / "meta.json").read_text()) == meta
    ds = latents(tmp_path / "lat", use_labels=True, storage="mmap")
    assert len(ds) == 10 and ds.num_labels == 2 and ds.data_shape == (4, 4, 4)
    _, labels = ds.get(torch.arange(10))
    assert labels.tolist() == [0] * 5 + [1] * 5
    stats = ds.channel_stats()
    assert np.allclose(stats[0], meta["channel_mean"], atol=1e-2)
    assert np.allclose(stats[1], meta["channel_std"], atol=1e-2)
    first = tmp_path / "lat" / "latents-00000"
    assert np.load(f"{first}.latents.npy").dtype == np.float16 and np.load(f"{first}.std.npy").shape == (4, 4, 4, 4)
    with pytest.raises(DataError, match=r"not an empty folder"):
        encode_dataset(vae, iter_image_source(src), tmp_path / "lat", progress=False)


def test_to_image_decodes_through_the_configured_vae(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_shard(tmp_path / "a", std=False)
    loaded = []

    def fake_load(cls: Any, path: str, **kw: Any) -> VAE:
        loaded.append(path)
        return VAE(FakeAutoencoder())

    monkeypatch.setattr(VAE, "load", classmethod(fake_load))
    assert latents(path).to_image(torch.zeros(2, 4, 4, 4)) is None  # no vae: no images
    ds = latents(path, vae=str(tmp_path / "vae"))
    x = ds.get(torch.arange(6))[0]
    images = ds.to_image(x)
    assert loaded == [str(tmp_path / "vae")]
    assert torch.equal(images, VAE(FakeAutoencoder()).decode(torch.from_numpy(np.load(path)).float()))


def test_encode_and_decode_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(VAE, "load", classmethod(lambda cls, path, **kw: VAE(FakeAutoencoder())))
    src = image_folder(tmp_path / "images", n_per_class=3)
    runner = CliRunner()
    res = runner.invoke(vae_mod.main, ["encode", str(src), str(tmp_path / "lat"), "--vae", "x", "--shard-size", "4",
                                       "--no-std", "--dtype", "float32"])
    assert res.exit_code == 0, res.output
    assert "wrote 6 latents of 4x4x4 in 2 shard(s)" in res.output
    assert not (tmp_path / "lat" / "latents-00001.std.npy").exists()
    assert (tmp_path / "lat" / "latents-00001.latents.npy").exists()

    run = tmp_path / "run"
    run.mkdir()
    table = {"name": "latents", **converter.unstructure(Latents.Config(path=str(tmp_path / "lat"), use_labels=True))}
    (run / "run.json").write_text(json.dumps({"config": {"dataset": table}}))
    ds = vae_mod.latents_of_run(run)
    samples = ds.get(torch.arange(6))[0]
    np.savez(tmp_path / "samples.npz", samples=samples.numpy())
    res = runner.invoke(vae_mod.main, ["decode", str(tmp_path / "samples.npz"), str(tmp_path / "images.npz"),
                                       "--vae", "x", "--run", str(run), "--grid", str(tmp_path / "grid.png")])
    assert res.exit_code == 0, res.output
    images = np.load(tmp_path / "images.npz")["images"]
    assert images.shape == (6, 3, 8, 8) and images.dtype == np.uint8 and (tmp_path / "grid.png").exists()
    res = runner.invoke(vae_mod.main, ["decode", str(tmp_path / "images.npz"), str(tmp_path / "o.npz"), "--vae", "x",
                                       "--run", str(run)])
    assert res.exit_code == 2 and "no float 'samples' array" in res.output
