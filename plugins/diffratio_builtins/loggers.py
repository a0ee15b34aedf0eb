"""Built-in loggers: TensorBoard event files and plain console lines."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from torch import Tensor

from diffratio import Logger
from diffratio.config import setting


class TensorBoardLogger(Logger):
    """Scalars, sample images and text into ``RUN_DIR/tensorboard`` (open with ``tensorboard --logdir``)."""

    @attrs.frozen(kw_only=True)
    class Config:
        subdir: str = setting("tensorboard", "folder of the event files inside the run directory")
        flush_secs: int = setting(30, "seconds between writes of pending events to disk", ge=1)

    def __init__(self, config: Config | None = None, *, run_dir: str) -> None:
        super().__init__(config, run_dir=run_dir)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / self.config.subdir), flush_secs=self.config.flush_secs)

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def log_image(self, step: int, tag: str, image: Tensor) -> None:
        self.writer.add_image(tag, image, step, dataformats="CHW")

    def log_text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

    # lifecycle events (called by the engine through the registry)
    def diffratio_on_run_start(self, run: Any) -> None:
        self.log_text(run.step, "config", "```\n" + run.ctx.recipe.text + "\n```")

    def diffratio_on_step_end(self, run: Any, step: int, scalars: Mapping[str, float]) -> None:
        self.log_scalars(step, scalars)

    def diffratio_on_evaluation(self, run: Any, step: int, results: Mapping[str, float]) -> None:
        self.log_scalars(step, {f"eval/{k}": v for k, v in results.items()})
        self.log_scalars(int(run.train_seconds), {f"eval_vs_seconds/{k}": v for k, v in results.items()})


class ConsoleLogger(Logger):
    """One line of scalars per logging interval on standard output (for batch jobs without a terminal)."""

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        print(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in values.items()), file=sys.stdout,
              flush=True)

    def diffratio_on_step_end(self, run: Any, step: int, scalars: Mapping[str, float]) -> None:
        self.log_scalars(step, scalars)
