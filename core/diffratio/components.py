"""The component kinds of diffratio: abstract base classes with their own attrs Config.

Every component is built as ``cls(config, **derived)``: ``config`` is an instance of the class's nested
frozen, kw_only attrs ``Config`` (what a recipe table holds), ``derived`` is what the engine knows from
the data and the run (shapes, label count, other components) and never appears in a recipe.

The kinds and their roles are listed in ``diffratio.kinds.KINDS``; docs/architecture.md explains how they fit together.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from diffratio.trainable import OptimizerConfig, Trainable


@attrs.frozen(kw_only=True)
class EmptyConfig:
    """Config of a component without settings."""


class Component:
    """Mixin shared by all kinds: the nested ``Config`` and the registered ``name``."""

    Config: ClassVar[type] = EmptyConfig
    #: filled in by the registry from the spec record; useful in messages
    registered_name: ClassVar[str] = ""


# --------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------


class Backbone(Component, nn.Module, ABC):
    """A network body mapping ``(x, noise_labels, class_labels)`` to a tensor.

    ``mode="full"``: output has the shape of ``x`` (the raw network ``F`` of an EDM denoiser).
    ``mode="encoder"``: output is a feature vector of size ``feature_dim`` per sample (the down path and
    middle of a U-Net, or the first half of the DiT blocks, pooled); ratio estimators put a head on it.

    Parameter names of the encoder must equal those of the same parts in ``full`` mode, so that a
    ratio estimator can load the matching weights of a pretrained denoiser by name.

    Derived arguments: ``data_shape`` (shape of one sample, e.g. ``(2,)`` or ``(3, 32, 32)``),
    ``num_labels`` (0 = unconditional) and ``mode``.
    """

    #: attention implementations this backbone can use (see ``diffratio.attention``)
    attention_backends: ClassVar[tuple[str, ...]] = ()
    #: run each repeated block under activation checkpointing (see ``run_block``); a backbone with an
    #: ``activation_checkpointing`` config field sets it from there
    checkpoint_blocks: bool = False

    def __init__(self, config: Any, *, data_shape: tuple[int, ...], num_labels: int = 0,
                 mode: str = "full") -> None:
        nn.Module.__init__(self)
        if mode not in ("full", "encoder"):
            raise ValueError(f"backbone mode must be 'full' or 'encoder', not {mode!r}")
        self.config = config
        self.data_shape = tuple(data_shape)
        self.num_labels = num_labels
        self.mode = mode

    @property
    def feature_dim(self) -> int:
        """Width of the pooled features in ``encoder`` mode."""
        raise NotImplementedError(f"{type(self).__name__} has no encoder mode")

    def compile_regions(self) -> list[nn.Module]:
        """The parts that ``strategy.compile_scope = "blocks"`` compiles one by one. A backbone made of
        repeated blocks returns them: dynamo compiles the block's code once and reuses it for every block
        of the same shape, which takes a fraction of a whole-network compilation. Default: the whole
        backbone (one region)."""
        return [self]

    @abstractmethod
    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """``x``: (B, *data_shape); ``noise_labels``: (B,) = c_noise(sigma); ``class_labels``: (B,) ints."""

    def run_block(self, block: nn.Module, *args: Tensor) -> Tensor:
        """``block(*args)``, under activation checkpointing when ``checkpoint_blocks`` is set and autograd
        records: the block's inner activations are then not kept for the backward pass but recomputed by
        it (about one more forward pass of the blocks, for the memory of everything inside them; dropout
        draws the same masks again). Without gradients (samplers, VSD's frozen scores) the block just runs."""
        if self.checkpoint_blocks and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def embed_labels(self, table: nn.Embedding | None, class_labels: Tensor | None,
                     dropout: float = 0.0) -> Tensor | None:
        """The class embedding ``table(class_labels)``, or None for an unconditional backbone (``table`` None).
        A class-conditional backbone called without labels is an error; in training, each sample's
        embedding is zeroed with probability ``dropout`` (label dropout, for classifier-free guidance)."""
        if table is None:
            return None
        if class_labels is None:
            raise ValueError(f"{type(self).__name__} is class-conditional: pass class_labels")
        lab = table(class_labels)
        if self.training and dropout > 0:
            keep = torch.rand(lab.shape[0], 1, device=lab.device) >= dropout
            lab = lab * keep.to(lab.dtype)
        return lab


class Generator(Component, nn.Module, ABC):
    """A one-step generator ``x = g(z, labels)`` built around a backbone.

    It owns ``denoiser``, the (preconditioned) diffusion network it was initialised from, so that a
    pretrained denoiser's state dict loads into it unchanged.
    """

    denoiser: nn.Module

    @abstractmethod
    def forward(self, z: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Map latent noise ``z`` (B, *data_shape) to samples (B, *data_shape) in one evaluation."""

    def latent_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one latent ``z``; the data shape unless a generator says otherwise."""
        return tuple(data_shape)


class RatioEstimator(Component, nn.Module, ABC):
    """The logit ``f(x_sigma, sigma, labels) ~ log q_sigma(x) - log p_sigma(x)`` (generated = class 1)."""

    @abstractmethod
    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Return logits of shape (B,)."""

    def init_from_denoiser(self, state: Mapping[str, Tensor]) -> list[str]:
        """Load the encoder weights that a pretrained denoiser shares with this estimator.

        Returns the names of the tensors loaded; raises ``ValueError`` naming mismatched shapes.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be initialised from a denoiser")


# --------------------------------------------------------------------------------------------------
# Mathematics
# --------------------------------------------------------------------------------------------------


class Divergence(Component, ABC):
    """An f-divergence ``D_F(p_sigma || q_sigma) = E_q[F(r)]``, ``r = p/q = exp(-f)``.

    The generator loss only needs the weight ``h(f) = r^2 F''(r)`` (docs/concepts.md section 3).
    ``F`` itself is used by tests and diagnostics.
    """

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def weight(self, f: Tensor) -> Tensor:
        """``h(f)``, elementwise, for logits ``f = log q_sigma - log p_sigma``."""

    @abstractmethod
    def F(self, r: Tensor) -> Tensor:
        """The convex generator function ``F(r)`` of the divergence."""


class NoiseSchedule(Component, ABC):
    """How noise levels sigma are drawn. How each loss weights them is the method's choice."""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def sample(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """Draw ``n`` noise levels sigma, shape (n,)."""

    @staticmethod
    def noise(x: Tensor, sigma: Tensor) -> Tensor:
        """``x + sigma * eps`` with sigma broadcast over the sample dimensions."""
        return x + sigma.reshape(-1, *([1] * (x.ndim - 1))) * torch.randn_like(x)


# --------------------------------------------------------------------------------------------------
# Data and evaluation
# --------------------------------------------------------------------------------------------------


class Dataset(Component, ABC):
    """Real data held as tensors; the engine draws random batches by index (no per-sample Python)."""

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @property
    @abstractmethod
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""

    @property
    def num_labels(self) -> int:
        """Number of classes; 0 when the data set is unlabelled or labels are switched off."""
        return 0

    @property
    def sigma_data(self) -> float:
        """Standard deviation of the data (EDM's sigma_data): 0.5 for images scaled to [-1, 1]."""
        return 0.5

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def get(self, index: Tensor) -> tuple[Tensor, Tensor | None]:
        """Return ``(x, labels)`` for the indices, ``x`` as float in model units on the data's device."""

    def to(self, device: torch.device) -> Dataset:
        """Move the held tensors to ``device`` (the engine calls it once)."""
        return self

    def reference(self, n: int) -> Tensor:
        """``n`` data points not used for training where possible (for metrics); float, on CPU."""
        g = torch.Generator().manual_seed(12345)
        idx = torch.randperm(len(self), generator=g)[: min(n, len(self))]
        return self.get(idx)[0].cpu()

    def to_image(self, x: Tensor) -> Tensor | None:
        """Map model-space samples to uint8 images (B, C, H, W), or None for non-image data."""
        return None


class Metric(Component, ABC):
    """A quality measurement of a trained method, written to metrics.jsonl and the loggers."""

    #: whether the metric compares images: ``--dry-run`` and the start of training then require a data set
    #: that gives images (one that defines ``Dataset.to_image``)
    needs_images: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def compute(self, ctx: EvalContext) -> dict[str, float]:
        """Return named values, e.g. ``{"energy_distance": 0.01}``."""


@attrs.define
class EvalContext:
    """What a metric sees: a sampler of the current model, the data set and the run."""

    #: n -> generated samples (n, *data_shape), on CPU
    sample: Callable[[int], Tensor]
    dataset: Dataset
    device: torch.device
    run_dir: str
    step: int


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


class Strategy(Component, ABC):
    """Places models and optimisers on devices and steps them: single device, DDP, DeepSpeed."""

    #: whether a checkpoint may be resumed with another number of processes
    resizable: ClassVar[bool] = True

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    def rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def prepare(self, name: str, module: nn.Module, optim: OptimizerConfig) -> Trainable:
        """Move ``module`` to the device and pair it with its optimiser."""

    def prepare_frozen(self, module: nn.Module) -> nn.Module:
        """Place a model that is never trained (VSD's teacher): on the device, in eval mode, without
        gradients. Strategies that compile the trained models or hold their weights in bf16 do the same
        to it, so that a frozen network runs like the trained ones beside it."""
        return module.to(self.device).eval().requires_grad_(False)

    def barrier(self) -> None:
        """Wait for all ranks (no-op on one process)."""

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged scalars over ranks (identity on one process)."""
        return values

    def max_over_ranks(self, values: Sequence[float]) -> list[float]:
        """Elementwise maximum over ranks (identity on one process): how ranks agree on flags (a
        non-finite step, a stop request, a failed write) so that all of them skip, save or stop together."""
        return [float(v) for v in values]

    def gather_object(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (picklable), in rank order, on the main rank; None on the others."""
        return [obj]

    def broadcast_object(self, obj: Any) -> Any:
        """The main rank's ``obj`` on every rank (``obj`` of the other ranks is ignored)."""
        return obj

    def save_files(self, folder: Path) -> None:
        """Write the state the strategy keeps outside ``Trainable.state_dict`` (DeepSpeed's own checkpoints)
        into a checkpoint's temporary folder; every rank calls it at the same step. Nothing by default."""

    def load_files(self, folder: Path) -> None:
        """Read back what ``save_files`` wrote, after the method's state dict is loaded; every rank calls it."""

    def close(self) -> None:
        """Release what the strategy started (a process group) at the end of a run."""

    def autocast(self) -> AbstractContextManager[Any]:
        """Context manager for mixed precision on this strategy's device (none by default)."""
        return nullcontext()


class Logger(Component, ABC):
    """Receives a run's scalars, images and text; the engine fans lifecycle events out to loggers."""

    def __init__(self, config: Any = None, *, run_dir: str) -> None:
        self.config = config if config is not None else self.Config()
        self.run_dir = run_dir

    @abstractmethod
    def log_scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def log_image(self, step: int, tag: str, image: Tensor) -> None:
        """``image``: uint8 (C, H, W)."""

    def log_text(self, step: int, tag: str, text: str) -> None: ...

    def close(self) -> None: ...




def append_dims(x: Tensor, ndim: int) -> Tensor:
    """Reshape a (B,) tensor to broadcast against a tensor of ``ndim`` dimensions."""
    return x.reshape(-1, *([1] * (ndim - 1)))
