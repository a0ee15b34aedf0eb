"""A diffratio plugin: the squared Hellinger divergence and a FiLM-conditioned MLP backbone.

diffratio finds this module through the entry point in pyproject.toml and calls its hook functions,
which yield one spec record per component: a name for recipes and the class that implements it.
"""

from __future__ import annotations

from collections.abc import Iterator

from diffratio import BackboneSpec, ComponentSpec, DivergenceSpec, hookimpl

from hellinger_example.backbone import FiLMBackbone
from hellinger_example.divergence import SquaredHellinger

__all__ = ["FiLMBackbone", "SquaredHellinger"]


@hookimpl
def diffratio_divergences() -> Iterator[ComponentSpec]:
    yield DivergenceSpec(name="hellinger", cls=SquaredHellinger, description="squared Hellinger, h = sqrt(r) / 2")


@hookimpl
def diffratio_backbones() -> Iterator[ComponentSpec]:
    yield BackboneSpec(name="film-mlp", cls=FiLMBackbone, description="MLP with FiLM noise conditioning")
