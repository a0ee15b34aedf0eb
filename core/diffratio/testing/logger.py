"""Conformance of loggers."""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any

import torch

from diffratio.components import Logger
from diffratio.testing._shared import Reporter, check_config, check_stored_config, names_component


def _hook_arguments() -> dict[str, list[str]]:
    from diffratio.hooks import Hookspecs

    return {name: [p for p in inspect.signature(fn).parameters if p != "self"]
            for name, fn in vars(Hookspecs).items() if name.startswith("diffratio_on_")}


@names_component("logger")
def check_logger(cls: type, config: Any = None, *, run_dir: str | Path | None = None) -> None:
    """Scalars, an image and text are accepted and the logger closes; every lifecycle method it defines
    (``diffratio_on_step_end`` ...) takes a subset of that hook's arguments, as pluggy passes them."""
    rep = Reporter("logger", cls)
    rep.require(isinstance(cls, type) and issubclass(cls, Logger), "must derive from diffratio.Logger")
    config = check_config(cls, config, kind="logger")
    hooks = _hook_arguments()
    for name in dir(cls):
        if name.startswith("diffratio_on_"):
            rep.require(name in hooks, f"{name} is not a lifecycle hook (hooks: {', '.join(sorted(hooks))})")
            params = list(inspect.signature(getattr(cls, name)).parameters)[1:]  # without self
            extra = [p for p in params if p not in hooks[name]]
            rep.require(not extra, f"{name} takes {extra}, which the hook does not pass (it passes {hooks[name]})")
    with tempfile.TemporaryDirectory() as tmp:
        lg = cls(config, run_dir=str(run_dir or tmp))
        check_stored_config(rep, lg, config)
        lg.log_scalars(1, {"loss/conformance": 0.5, "images_per_second": 100.0})
        lg.log_image(1, "samples", torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8))
        lg.log_text(1, "config", "conformance check")
        lg.close()


