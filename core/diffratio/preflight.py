"""Checks of a resolved recipe against the world outside it, before anything is built or written.

``dr-train --dry-run`` and the start of training both call ``preflight(recipe)``. It reads small files
only (a ``run.json``), never a data set or a network, and raises one ``RecipeError`` listing every
problem with its dotted key:

- a run initialised from another (``method.init``) must use that run's network: the recipe's
  ``[backbone]`` is compared with the one in the other run's ``run.json``, setting by setting (settings
  declared ``structural=False``, such as the attention backend, may differ);
- a metric that compares images (``Metric.needs_images``) needs a data set that gives images
  (one whose class defines ``to_image``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from diffratio.components import Dataset
from diffratio.config import is_structural
from diffratio.errors import RecipeError
from diffratio.recipe import Recipe

RUN_JSON = "run.json"


def preflight(recipe: Recipe) -> None:
    """Raise ``RecipeError`` listing every problem that the recipe's own validation cannot see."""
    problems = init_backbone_problems(recipe) + metric_data_problems(recipe)
    if problems:
        raise RecipeError(problems)


# --------------------------------------------------------------------------------------------------
# method.init against the initialising run's backbone
# --------------------------------------------------------------------------------------------------


def _init_path(recipe: Recipe) -> str | None:
    method = recipe.components.get("method")
    if method is None or "init" not in attrs.fields_dict(type(method.config)):
        return None
    init = method.config.init
    return str(init) if init else None


def init_run_config(path: str | Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The resolved config of the run that ``method.init`` names, and the file it was read from; (None,
    None) when ``path`` holds none (a bare checkpoint file without one)."""
    p = Path(path)
    if p.is_dir():  # a run directory, or one of its checkpoints/<step> folders
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p
        if (run_dir / RUN_JSON).is_file():
            return _read_run_json(run_dir / RUN_JSON), run_dir / RUN_JSON
        return None, None
    if p.is_file() and p.suffix == ".pt":  # a file written by dr-sample --export carries the config
        import torch

        try:
            state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for an unreadable file
            raise RecipeError([f"recipe.method.init: {p} cannot be read as an exported run: "
                               f"{type(exc).__name__}: {exc}"]) from None
        config = state.get("config") if isinstance(state, dict) else None
        return (config, p) if isinstance(config, dict) else (None, None)
    return None, None


def _read_run_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecipeError([f"recipe.method.init: {path} cannot be read ({exc}); point method.init at an "
                           "intact run directory"]) from None
    config = info.get("config") if isinstance(info, dict) else None
    if not isinstance(config, dict):
        raise RecipeError([f"recipe.method.init: {path} holds no resolved config (no \"config\" table)"])
    return config


def init_backbone_problems(recipe: Recipe) -> list[str]:
    """Differences between the recipe's ``[backbone]`` and that of the run ``method.init`` names."""
    init = _init_path(recipe)
    if init is None:
        return []
    if not Path(init).exists():
        return [f"recipe.method.init: {init} does not exist (give the run directory of a pretraining run; "
                "paths are relative to the working directory)"]
    backbone = recipe.components.get("backbone")
    other, source = init_run_config(init)
    if backbone is None or other is None or source is None:
        return []
    theirs = other.get("backbone")
    if not isinstance(theirs, dict):
        return []
    ours = recipe.to_dict()["backbone"]
    fields = attrs.fields_dict(type(backbone.config))
    if theirs.get("name") != ours["name"]:
        diffs = [f"name: {theirs.get('name')!r} there, {ours['name']!r} here"]
    else:
        diffs = [f"{key}: {theirs[key]!r} there, {value!r} here" for key, value in ours.items()
                 if key in theirs and key in fields and is_structural(fields[key]) and theirs[key] != value]
    if not diffs:
        return []
    return [f"recipe.backbone: differs from the backbone of the run it initialises from (method.init = {init}, "
            f"read from {source}): " + "; ".join(diffs) + ". Use that run's [backbone] settings, or "
            "initialise from a run with this backbone"]


# --------------------------------------------------------------------------------------------------
# Metrics against the data
# --------------------------------------------------------------------------------------------------


def gives_images(dataset_cls: type) -> bool:
    """Whether a data set class can turn samples into images (it defines ``to_image``)."""
    return getattr(dataset_cls, "to_image", None) is not Dataset.to_image


def metric_data_problems(recipe: Recipe) -> list[str]:
    """Metrics that compare images on a data set that gives none."""
    dataset = recipe.components.get("dataset")
    if dataset is None or gives_images(dataset.cls):
        return []
    return [f"recipe.metrics.{name}: the {name!r} metric needs image data, but the data set {dataset.name!r} "
            "gives no images; remove [metrics." + name + "] or train on an image data set"
            for name, metric in recipe.metrics.items() if getattr(metric.cls, "needs_images", False)]
