"""The engine: ``training_loop`` drives every method; read it top to bottom.

Everything it needs is passed in or built from the recipe (``diffratio.run``); the run directory
(``rundir``), checkpoints and resume (``checkpoint``), non-finite steps (``guard``), signals (``signals``)
and the display (``progress``) live in their own modules.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from diffratio import checkpoint as ckpt
from diffratio.errors import CheckpointError, DiffRatioError
from diffratio.guard import Diverged, NonFiniteGuard
from diffratio.outputs import finish, log_evaluation, log_samples
from diffratio.progress import Progress
from diffratio.ranks import on_main
from diffratio.recipe import Recipe
from diffratio.registry import Registry
from diffratio.run import DataSampler, Run, RunContext, build_run, build_strategy, default_run_dir, plugin_versions
from diffratio.rundir import RunDirectory, Start, update_run_json
from diffratio.signals import StopRequested, handled_signals


class Interrupted(DiffRatioError):
    """The run stopped on SIGINT/SIGTERM; the exit status is 128 + the signal number."""

    def __init__(self, signum: int, what: str) -> None:
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} {what}. Re-run the same command to resume.")


def training_loop(
    recipe: Recipe,  # resolved recipe: run settings and every component's config
    run_dir: Path,  # where run.json, checkpoints/, tensorboard/, samples/ and metrics.jsonl live
    registry: Registry,  # plugin registry: components and lifecycle hooks
    progress: bool = True,  # progress bar on the main rank; False: one log line per logging interval
) -> Run:
    """Train ``recipe`` in ``run_dir``, resuming from its newest intact checkpoint; return the finished run.

    With several processes every rank runs this function; the main rank alone holds the run directory, logs,
    samples, evaluates and commits checkpoints. No step waits for the device: each step's scalars stay there
    until a read (each logging interval, each checkpoint), where the ranks agree on the non-finite steps and
    on a stop request, so that all of them save and stop at the same step.
    """
    s = recipe.settings
    with handled_signals() as signals, started(recipe, run_dir, registry) as run:
        strategy, main, hook = run.ctx.strategy, run.ctx.strategy.is_main, registry.pm.hook
        owed = False  # a checkpoint step fell inside a streak of non-finite steps: write at the next good one
        with signals.deferring(), Progress(run.step, s.steps, bar=progress, enabled=main and not run.finished) as shown:
            while run.step < s.steps:
                t0 = time.perf_counter()
                run.guard.push(run.step + 1, run.method.train_step(run.step))
                run.step += 1
                last, log = run.step == s.steps, run.step % s.log_every == 0 or run.step == s.steps
                owed = owed or run.step % s.checkpoint_every == 0
                stop = signals.received if strategy.world_size == 1 else 0  # several ranks agree at reads
                if log or owed or stop or run.guard.full:
                    stop = run.guard.read(strategy, stop=signals.received)  # the host waits for the device
                run.train_seconds += time.perf_counter() - t0
                if run.guard.diverged_at:
                    raise run.guard.error(run.step, ckpt.find_latest(run_dir / "checkpoints"))
                if log:
                    scalars = shown.log(run)
                    if main:
                        hook.diffratio_on_step_end(run=run, step=run.step, scalars=scalars)
                if main and s.sample_every and run.step % s.sample_every == 0 and not last:
                    log_samples(run)
                if main and s.eval_every and run.step % s.eval_every == 0 and not last:
                    log_evaluation(run)
                if (owed and run.guard.streak == 0) or last or stop:
                    path, owed = ckpt.save(run), False
                    if main:
                        hook.diffratio_on_checkpoint(run=run, step=run.step, path=str(path))
                if stop:
                    raise Interrupted(stop, f"at step {run.step}; checkpoint written to {path}")
        if not run.finished:
            finish(run)
    return run


@contextmanager
def started(recipe: Recipe, run_dir: Path, registry: Registry) -> Iterator[Run]:
    """The run, built and resumed; on the main rank the run directory is locked and prepared first, the loggers
    attached to the hooks and ``diffratio_on_run_start`` called. However the run ends, the hooks hear
    ``diffratio_on_run_end``, loggers and strategy close and the lock is released; a start that fails (or is
    stopped) removes the run directory it created when nothing else is in it."""
    strategy = build_strategy(recipe)
    folder = RunDirectory(recipe, run_dir, registry) if strategy.is_main else None
    training = False
    run: Run | None = None
    try:
        start: Start = on_main(strategy, folder.prepare if folder else lambda: None)  # type: ignore[arg-type]
        run = build_run(recipe, run_dir, registry, strategy, loggers=not start.complete)
        if start.checkpoint is not None:
            ckpt.resume(run, start.checkpoint, folder.state if folder else None)
        if folder:
            folder.state = None
        if start.complete:
            run.finished = True
            if strategy.is_main:
                _say_complete(run)
            yield run
            return
        _say_start(run, start)
        with registry.attached(run.loggers):
            if strategy.is_main:
                registry.pm.hook.diffratio_on_run_start(run=run)
            training = True
            try:
                yield run
            finally:
                if strategy.is_main:
                    registry.pm.hook.diffratio_on_run_end(run=run, step=run.step)
    except StopRequested as stop:
        if folder and not training:
            folder.remove_if_unused()
        what = (f"during the final evaluation at step {run.step}; its checkpoint is written" if training and run
                else "during start-up, before training began")
        raise Interrupted(stop.signum, what) from None
    except BaseException:
        if folder and not training:
            folder.remove_if_unused()
        raise
    finally:
        for lg in run.loggers if run else []:
            lg.close()
        strategy.close()
        if folder:
            folder.release()


def _say_start(run: Run, start: Start) -> None:
    counts = run.method.parameter_counts()
    if not run.ctx.strategy.is_main:
        return
    update_run_json(run.run_dir, parameters=counts)
    params = ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in counts.items())
    where = f"resuming from step {run.step} ({start.checkpoint})" if start.checkpoint else "starting"
    comps, strategy = run.ctx.recipe.components, run.ctx.strategy
    print(f"diffratio: {comps['method'].name} on {comps['dataset'].name}, {strategy.world_size} x "
          f"{strategy.device}; parameters: {params}; {where}; run dir {run.run_dir}", flush=True)


def _say_complete(run: Run) -> None:
    outputs = [p for p in ("checkpoints", "metrics.jsonl", "samples", "tensorboard") if (run.run_dir / p).exists()]
    print(f"run {run.run_dir} is complete: trained {run.step} steps (run.steps = {run.ctx.settings.steps}) with its "
          f"final evaluation; nothing to do. Outputs in {run.run_dir}: {', '.join(outputs)}. Raise run.steps to "
          "train further.", flush=True)


__all__ = ["training_loop", "started", "RunContext", "Run", "DataSampler", "Interrupted", "Diverged",
           "NonFiniteGuard", "CheckpointError", "build_run", "build_strategy", "default_run_dir", "plugin_versions"]
