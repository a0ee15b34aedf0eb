"""Errors a user can act on. The CLI prints their message without a traceback and exits non-zero."""

from __future__ import annotations

from collections.abc import Sequence


class DiffRatioError(Exception):
    """Base of every error whose message tells the user what to fix."""


class RecipeError(DiffRatioError):
    """One or more problems in a recipe or its --set overrides, each a line with a dotted path."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        n = len(self.errors)
        head = "recipe has 1 problem:" if n == 1 else f"recipe has {n} problems:"
        super().__init__("\n".join([head, *(f"  - {e}" for e in self.errors)]))


class PluginError(DiffRatioError):
    """A plugin is missing, duplicated or broken."""


class CheckpointError(DiffRatioError):
    """A checkpoint cannot be written or read."""


class DataError(DiffRatioError):
    """A data set cannot be read or is inconsistent."""


class MissingDependencyError(DiffRatioError):
    """An optional package is needed for what the recipe asks."""

    def __init__(self, package: str, purpose: str, install: str | None = None) -> None:
        install = install or f"pip install {package}"
        super().__init__(f"{purpose} needs the optional package {package!r}, which is not installed: "
                         f"run `{install}`")
