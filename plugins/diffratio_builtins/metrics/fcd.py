"""The FCD metric: a Frechet distance in the features of a small classifier (``metrics.classifier``),
fast enough for CI on a CPU, with the class balance of the generated images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
from torch import Tensor

from diffratio import DataError, Dataset, EvalContext, Metric
from diffratio import fid as fidlib
from diffratio.config import setting
from diffratio_builtins.metrics import classifier as clf

CHUNK = 1000  # samples drawn and turned into images at a time


def generated_images(ctx: EvalContext, n: int, metric: str) -> Tensor:
    """``n`` generated images, drawn in chunks so that model-space floats never all sit in memory."""
    return torch.cat([fidlib.dataset_images(ctx.dataset, ctx.sample(min(CHUNK, n - i)), f"metric {metric!r}")
                      for i in range(0, n, CHUNK)])


class FCD(Metric):
    """Frechet classifier distance: FD in the 128-d feature space of a small CNN trained once on labelled
    images and cached; fast enough for CI on a CPU.

    Returns ``fcd`` (generated vs real), ``floor`` (two disjoint real sets of the same size: what a perfect
    generator typically gets), ``class_coverage`` (fraction of classes whose share among generated images
    is at least half their real share) and ``class_tv`` (total variation between the predicted-class
    shares). ``train_data``: ``dataset`` (the run's data set, which must give labels), ``mnist``,
    ``fashion-mnist`` (the offline training sets) or an ``.npz`` with ``images`` and ``labels``; ``auto``
    takes the data set's labels if it gives them, else the offline set of the same name. Named sets are
    fitted to the run's image size by ``fit`` (``pad``: centred zero padding/cropping; ``resize``).
    """

    needs_images = True

    @attrs.frozen(kw_only=True)
    class Config:
        num_samples: int = setting(500, "generated images; real images: 2x", ge=10)
        train_data: str = setting("auto", "classifier training images: auto, dataset, mnist, fashion-mnist or "
                                          "PATH.npz with images and labels")
        fit: Literal["pad", "resize"] = setting("pad", "how named training sets meet the run's image size")
        train_size: int = setting(20000, "classifier training images", ge=100)
        epochs: int = setting(3, "classifier training epochs", ge=1)
        seed: int = setting(0, "seed of the classifier's training subset and training")
        batch_size: int = setting(256, "images per feature call", ge=1)
        cache_dir: str | None = setting(None, "folder of trained classifiers; unset: $DIFFRATIO_CACHE or "
                                              "~/.cache/diffratio")

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._net: clf.SmallClassifier | None = None
        self._ref: tuple[np.ndarray, np.ndarray] | None = None

    def classifier(self, ctx: EvalContext, shape: tuple[int, int, int]) -> clf.SmallClassifier:
        """The cached classifier for this data (trained on first use)."""
        if self._net is not None:
            return self._net
        cfg = self.config
        name = self._auto_source(ctx) if cfg.train_data == "auto" else cfg.train_data
        if name == "dataset":
            label = ctx.dataset.registered_name or type(ctx.dataset).__name__
            images, labels, k = self._dataset_labelled(ctx)
        else:
            label = Path(name).stem if name.endswith(".npz") else name
            images, labels, k = self._named_labelled(name, shape)
        # the key names the training images themselves, so a changed data set retrains
        key = {"source": label, "data_sha1": fidlib.array_sha1(images, labels), "classes": k}
        train = {"epochs": cfg.epochs, "seed": cfg.seed}
        cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else fidlib.default_cache_dir()
        path = cache / "fcd" / f"classifier-{label}-{fidlib.key_digest({**key, **train})}.pt"
        self._net = clf.load_or_train_classifier(path, key, lambda: (images, labels, k), device=ctx.device, **train)
        return self._net

    @staticmethod
    def _auto_source(ctx: EvalContext) -> str:
        """``dataset`` when it gives labels, else the offline copy of MNIST / Fashion-MNIST it is."""
        ds = ctx.dataset
        if ds.get(torch.zeros(1, dtype=torch.long, device=ctx.device))[1] is not None:
            return "dataset"
        if ds.registered_name in ("mnist", "fashion-mnist"):
            return ds.registered_name
        raise DataError(f"metric 'fcd' needs labelled images to train its classifier: data set "
                        f"{ds.registered_name or type(ds).__name__!r} gives no labels; switch them on or set "
                        "metrics.fcd.train_data to 'mnist', 'fashion-mnist' or an .npz with images and labels")

    def _subset(self, n: int) -> Tensor:
        g = torch.Generator().manual_seed(self.config.seed + 1)
        return torch.randperm(n, generator=g)[: self.config.train_size]

    def _dataset_labelled(self, ctx: EvalContext) -> tuple[Tensor, Tensor, int]:
        ds = ctx.dataset
        xs, ys = [], []
        for idx in self._subset(len(ds)).split(CHUNK):
            x, y = ds.get(idx.to(ctx.device))  # the engine moved the data to the run's device
            if y is None:
                raise DataError(f"metric 'fcd' trains its classifier on labels, but data set "
                                f"{ds.registered_name or type(ds).__name__!r} gives none; switch its labels on or "
                                "set metrics.fcd.train_data to 'mnist', 'fashion-mnist' or an .npz with images and "
                                "labels")
            xs.append(fidlib.dataset_images(ds, x.detach().cpu(), "metric 'fcd'"))
            ys.append(y.detach().cpu().long())
        y = torch.cat(ys)
        return torch.cat(xs), y, max(ds.num_labels, int(y.max()) + 1)

    def _named_labelled(self, name: str, shape: tuple[int, int, int]) -> tuple[Tensor, np.ndarray, int]:
        images, labels, k = clf.labelled_images(name)
        idx = self._subset(len(labels)).numpy()
        return clf.fit_images(images[idx], shape, self.config.fit), labels[idx], k

    def check_data(self, dataset: Dataset) -> None:
        """Stop with "needs image data" unless ``dataset`` gives images (cheap; usable before a run starts)."""
        fidlib.check_image_data(dataset, "metric 'fcd'")

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        cfg = self.config
        n = cfg.num_samples
        self.check_data(ctx.dataset)
        gen = generated_images(ctx, n, "fcd")
        net = self.classifier(ctx, tuple(gen.shape[1:]))  # type: ignore[arg-type]
        if self._ref is None:
            ref = fidlib.dataset_images(ctx.dataset, ctx.dataset.reference(2 * n), "metric 'fcd'")
            if len(ref) < 2 * n:
                raise DataError(f"metric 'fcd' needs {2 * n} reference images, the data set gives {len(ref)}; lower "
                                f"metrics.fcd.num_samples to at most {len(ref) // 2}")
            self._ref = net.embed(ref, cfg.batch_size)
        ref_f, ref_p = self._ref
        gen_f, gen_p = net.embed(gen, cfg.batch_size)
        a, b = fidlib.FeatureStats.from_features(ref_f[:n]), fidlib.FeatureStats.from_features(ref_f[n:])
        coverage, tv = clf.class_balance(gen_p, ref_p[:n], net.num_classes)
        return {"fcd": fidlib.FeatureStats.from_features(gen_f).frechet_distance(a), "floor": a.frechet_distance(b),
                "class_coverage": coverage, "class_tv": tv}
