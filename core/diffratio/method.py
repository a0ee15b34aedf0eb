"""The ``Method`` kind: one training step's losses, and its inference half, the ``Sampler``.

A method trains with a ``RunContext``; a trained run's ``Sampler`` is built from its config and weights
alone (``Method.build_sampler``, ``Method.inference_weights``), which is all that sampling, the verifier and
exports use (docs/architecture.md, "The Method contract").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from torch import Tensor, nn

from diffratio.components import Component, Generator, RatioEstimator
from diffratio.errors import DiffRatioError

if TYPE_CHECKING:
    from diffratio.engine import RunContext
    from diffratio.inference import InferenceContext


@attrs.frozen
class DataInfo:
    """What the inference networks need to know of the data: shape of one sample, class count (0 =
    unconditional) and EDM's sigma_data."""

    data_shape: tuple[int, ...]
    num_labels: int
    sigma_data: float


class Sampler(ABC):
    """The inference half of a trained method: the networks that draw samples, and nothing else.

    A method holds one while it trains (its EMA networks) and builds one from a run's config and exported
    weights alone (``Method.build_sampler``): ``dr-sample``, the verifier and exports use only this.
    """

    #: the one-step generator that draws samples (EMA weights); None for a method that samples otherwise
    generator: Generator | None = None
    #: the trained ratio estimator, the verifier of ``dr-sample --candidates``; None for a method without one
    ratio: RatioEstimator | None = None
    #: the noise level at which ``ratio`` scores candidates by default; None: the verifier's default
    verifier_sigma: float | None = None

    @abstractmethod
    def sample(self, n: int, class_labels: Tensor | None = None) -> Tensor:
        """``n`` samples (float32, on the device); labels drawn uniformly when the data are labelled and none
        are given."""

    @abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """The inference networks by name: what ``export`` writes and ``load`` reads."""

    def export(self) -> dict[str, dict[str, Tensor]]:
        """The weights of ``networks()`` as full, plain tensors on the CPU (every rank calls it together)."""
        from diffratio.zero import full_parameters  # gathers parameters where ZeRO-3 partitions them

        out = {}
        for name, net in self.networks().items():
            with full_parameters(net):
                out[name] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        return out

    def load(self, weights: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Load what ``export`` wrote; a missing network is a ``DiffRatioError`` naming it."""
        for name, net in self.networks().items():
            if name not in weights:
                raise DiffRatioError(f"the weights hold no {name!r} network (they hold {sorted(weights)}); they "
                                     "were written for another method or recipe")
            net.load_state_dict(weights[name])


class Method(Component, ABC):
    """One training step's losses for a family of models: ``diffratio``, ``vsd``, ``edm``.

    A method builds its models in ``__init__`` from the run context (which resolves the recipe's
    backbone, generator, ratio, divergence and schedule tables), asks the strategy to place them,
    and exposes every stateful object through ``state_dict`` so that checkpoints hold all of it.

    Inference goes through ``sampler`` (set in ``__init__``), the EMA networks that ``sample`` uses.
    ``build_sampler`` builds the same networks from a run's config alone, and ``inference_weights`` picks
    their weights out of a training checkpoint, so sampling a finished run builds no optimiser and loads no
    training data.
    """

    #: component kinds (recipe tables) this method uses besides dataset, strategy, metrics, loggers
    uses: ClassVar[tuple[str, ...]] = ()
    #: the networks that draw samples, with the weights being trained (EMA where the method keeps one)
    sampler: Sampler

    def __init__(self, config: Any, *, ctx: RunContext) -> None:
        self.config = config
        self.ctx = ctx

    @abstractmethod
    def train_step(self, step: int) -> dict[str, Tensor]:
        """Run one step of the loop (a warm-up update, or ratio steps then one generator step); return 0-d
        tensors to log, without waiting for the device.

        Call each trained model's ``Trainable.schedule_lr`` first, so that the learning-rate decay of its
        ``OptimizerConfig`` applies. The engine reads one finite-check of the values' sum per step and averages
        them only when logging; return each network's ``grad_norm`` so non-finite steps are counted.
        """

    def sample(self, n: int, class_labels: Tensor | None = None) -> Tensor:
        """Draw ``n`` samples of the model being trained (``sampler.sample``)."""
        return self.sampler.sample(n, class_labels)

    @classmethod
    @abstractmethod
    def build_sampler(cls, config: Any, *, ctx: InferenceContext) -> Sampler:
        """The inference networks of a run with method config ``config``, untrained: ``Sampler.load`` then
        reads their weights (``inference_weights`` of a checkpoint, or an export)."""

    @classmethod
    @abstractmethod
    def inference_weights(cls, state: Mapping[str, Any]) -> dict[str, dict[str, Tensor]]:
        """The weights ``Sampler.load`` reads, taken from this method's ``state_dict`` as checkpointed."""

    @classmethod
    def inference_data(cls, state: Mapping[str, Any]) -> DataInfo | None:
        """What inference needs to know of the data, from this method's checkpointed ``state_dict`` (which
        keeps ``self.data_info()`` under ``"data"``); None for a checkpoint without it."""
        data = state.get("data")
        return None if data is None else DataInfo(tuple(data["data_shape"]), int(data["num_labels"]),
                                                  float(data["sigma_data"]))

    def data_info(self) -> dict[str, Any]:
        """``DataInfo`` of the run's data as plain values, for ``state_dict()["data"]``."""
        return {"data_shape": list(self.ctx.data_shape), "num_labels": self.ctx.num_labels,
                "sigma_data": float(self.ctx.dataset.sigma_data)}

    @classmethod
    def pretrained_denoiser(cls, weights: Mapping[str, Mapping[str, Tensor]]) -> dict[str, Tensor] | None:
        """The plain ``EDMDenoiser`` state dict these inference weights offer for initialising other methods
        (``method.init``), or None when the method trains no diffusion denoiser."""
        return None

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of each network, printed at start and kept in run.json."""
        return {}

    def images_per_step(self) -> int:
        """Generated (or seen) samples per step, for the images/s display."""
        return self.ctx.settings.batch_size


__all__ = ["DataInfo", "Method", "Sampler"]
