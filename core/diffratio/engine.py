"""The engine: builds a run from a resolved recipe and runs its training loop.

``training_loop`` is the one function that drives every method; read it top to bottom. Everything it
needs is passed in or built from the recipe; there is no global state besides the plugin registry.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffratio import checkpoint as ckpt
from diffratio.components import (
    Backbone,
    Dataset,
    Divergence,
    EvalContext,
    Generator,
    Logger,
    Method,
    Metric,
    NoiseSchedule,
    RatioEstimator,
    Strategy,
)
from diffratio.edm import EDMDenoiser
from diffratio.errors import CheckpointError, DiffRatioError
from diffratio.recipe import Recipe, RunSettings, flatten, meaningful_changes
from diffratio.registry import Registry
from diffratio.visualize import image_grid, save_png, scatter_image


class Interrupted(DiffRatioError):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint written to "
                         f"{path}. Re-run the same command to resume.")


class Diverged(DiffRatioError):
    """Training stopped after ``run.max_nonfinite_steps`` steps in a row with non-finite losses or gradients."""


class NonFiniteGuard:
    """Counts steps with a non-finite scalar (a loss, a gradient norm) and stops a diverged run.

    The Trainables have already skipped those updates on the device (``Trainable.step``); the guard reads
    one flag per step to count them (``nonfinite/skipped_steps``), to keep checkpoints out of a streak of
    bad steps, and to stop after ``limit`` bad steps in a row.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.skipped = 0  # bad steps since the run began (kept in checkpoints)
        self.streak = 0  # bad steps in a row, up to the current one
        self.first_bad = ""  # what was not finite at the first step of the current streak

    def check(self, step: int, scalars: Mapping[str, Tensor | float]) -> bool:
        """Record ``step`` from its scalars (0-d tensors or floats); True when it completes ``limit`` bad
        steps in a row. One process; with several, ``record`` takes the flag all ranks agreed on."""
        return self.record(step, scalars, self.finite(scalars))

    @staticmethod
    def finite(scalars: Mapping[str, Tensor | float]) -> bool:
        """Whether every scalar is finite. One sum is read: it is finite when every scalar is (an overflow
        past 3e38 is a blow-up too), which costs the loop's one host synchronisation per step and little else."""
        tensors = [v for v in scalars.values() if isinstance(v, Tensor)]
        total = sum(v for v in scalars.values() if not isinstance(v, Tensor))
        if tensors:
            total += float(torch.stack(tensors).sum())
        return math.isfinite(total)

    def record(self, step: int, scalars: Mapping[str, Tensor | float], finite: bool) -> bool:
        """Count ``step`` as good or bad (``finite``: of every rank); True when it completes ``limit`` bad
        steps in a row."""
        if finite:
            self.streak = 0
            return False
        self.skipped += 1
        self.streak += 1
        if self.streak == 1:
            bad = ", ".join(f"{k} = {float(v)}" for k, v in scalars.items() if not math.isfinite(float(v)))
            self.first_bad = f"{bad or 'a scalar of another rank'} at step {step}"
        return self.streak >= self.limit

    def error(self, step: int, ckpt_root: Path) -> Diverged:
        last_good = ckpt.find_latest(ckpt_root)
        where = (f"the last checkpoint, {last_good} (step {int(last_good.name)}), is from before the divergence"
                 if last_good is not None else "no checkpoint was written before it")
        return Diverged(f"training diverged: {self.streak} steps in a row had non-finite losses or gradients "
                        f"(run.max_nonfinite_steps = {self.limit}), from {self.first_bad} to step {step}. "
                        f"Their updates were skipped and nothing was saved after the divergence began; {where}. "
                        "Lower the learning rates, set a grad_clip or check the data, and start again with a new "
                        "--run-dir; to carry on from that checkpoint, re-run with a larger run.max_nonfinite_steps.")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped, "streak": self.streak, "first_bad": self.first_bad}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped, self.streak = int(state.get("skipped_steps", 0)), int(state.get("streak", 0))
        self.first_bad = str(state.get("first_bad", ""))


class DataSampler:
    """Random batches of real data by index, from its own seeded generator (its state is checkpointed)."""

    def __init__(self, dataset: Dataset, seed: int, device: torch.device) -> None:
        if len(dataset) == 0:
            raise DiffRatioError(f"data set {type(dataset).registered_name!r} is empty")
        self.dataset = dataset
        self.device = device
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, n: int) -> tuple[Tensor, Tensor | None]:
        idx = torch.randint(len(self.dataset), (n,), generator=self.gen)
        return self.dataset.get(idx.to(self.device, non_blocking=True))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.gen.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gen.set_state(state["rng"].cpu())


class RunContext:
    """What a Method may use to build its models and draw data: built components, derived shapes."""

    def __init__(self, recipe: Recipe, strategy: Strategy, dataset: Dataset, run_dir: Path,
                 registry: Registry) -> None:
        self.recipe = recipe
        self.settings: RunSettings = recipe.settings
        self.strategy = strategy
        self.dataset = dataset
        self.run_dir = run_dir
        self.registry = registry
        self.sampler = DataSampler(dataset, recipe.settings.seed * 1000 + strategy.rank + 1, strategy.device)

    @property
    def device(self) -> torch.device:
        return self.strategy.device

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.dataset.data_shape

    @property
    def num_labels(self) -> int:
        return self.dataset.num_labels

    def component(self, table: str) -> Any:
        """Config and class of a component table (``"divergence"``, ...)."""
        return self.recipe.components[table]

    def build_backbone(self, mode: str = "full") -> Backbone:
        c = self.component("backbone")
        return c.cls(c.config, data_shape=self.data_shape, num_labels=self.num_labels, mode=mode)

    def build_denoiser(self) -> EDMDenoiser:
        return EDMDenoiser(self.build_backbone("full"), sigma_data=self.dataset.sigma_data)

    def build_generator(self) -> Generator:
        c = self.component("generator")
        return c.cls(c.config, denoiser=self.build_denoiser())

    def build_ratio(self) -> RatioEstimator:
        c = self.component("ratio")
        return c.cls(c.config, backbone=self.build_backbone("encoder"), sigma_data=self.dataset.sigma_data)

    def build_divergence(self) -> Divergence:
        c = self.component("divergence")
        return c.cls(c.config)

    def build_schedule(self) -> NoiseSchedule:
        c = self.component("schedule")
        return c.cls(c.config)

    def real_batch(self, n: int) -> tuple[Tensor, Tensor | None]:
        """``n`` real samples (and labels) on the device."""
        return self.sampler.batch(n)

    def random_labels(self, n: int) -> Tensor | None:
        """Uniform class labels for generated samples, or None for unconditional data."""
        if self.num_labels == 0:
            return None
        return torch.randint(self.num_labels, (n,), device=self.device)

    def latents(self, generator: Generator, n: int) -> Tensor:
        return torch.randn(n, *generator.latent_shape(self.data_shape), device=self.device)


class Run:
    """A live run, handed to lifecycle hooks: context, method, loggers and the current step."""

    def __init__(self, ctx: RunContext, method: Method, loggers: list[Logger], metrics: dict[str, Metric]):
        self.ctx = ctx
        self.method = method
        self.loggers = loggers
        self.metrics = metrics
        self.step = 0
        self.train_seconds = 0.0  # wall time spent in training steps, summed over resumes

    @property
    def run_dir(self) -> Path:
        return self.ctx.run_dir


# --------------------------------------------------------------------------------------------------
# Helpers of the loop
# --------------------------------------------------------------------------------------------------


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore ``rng_state``'s states (CPU byte tensors, wherever the checkpoint was mapped to)."""
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def on_main(strategy: Strategy, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on the main rank only and hand its result to every rank; when it raises, every rank
    raises (the main rank its own error, the others a ``DiffRatioError`` quoting it)."""
    result, error = None, None
    if strategy.is_main:
        try:
            result = fn()
        except Exception as exc:  # every rank must leave the broadcast below, whatever went wrong
            error = exc
    if strategy.world_size > 1:
        result, message = strategy.broadcast_object((result, None if error is None else str(error)))
        if message is not None and error is None:
            raise DiffRatioError(f"stopped because the main rank (rank 0) failed: {message}")
    if error is not None:
        raise error
    return result


def rank_state(state: Mapping[str, Any], strategy: Strategy) -> Mapping[str, Any] | None:
    """This rank's data sampler and RNG states in a checkpoint, or None when it was written by another
    number of processes and this rank had no counterpart (rank 0 always has one)."""
    saved = int(state.get("world_size", 1))
    if saved == strategy.world_size:
        return state["ranks"][strategy.rank] if saved > 1 else state
    if "ranks" in state and strategy.rank < saved:
        return state["ranks"][strategy.rank]
    return state if strategy.rank == 0 else None


def finite_mean(values: list[Tensor | float]) -> float:
    """Mean of the finite values (non-finite ones belong to skipped steps, counted apart); nan if none is."""
    t = torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in values])
    return float(torch.nanmean(torch.where(torch.isfinite(t), t, torch.nan)))


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def check_free_space(run_dir: Path, min_gb: float) -> None:
    free = shutil.disk_usage(run_dir).free / 2**30
    if free < min_gb:
        raise DiffRatioError(f"only {free:.2f} GiB free on the disk of {run_dir}; at least {min_gb} GiB is "
                             "required (run.min_free_disk_gb). Free space or choose another --run-dir.")


def check_writable(run_dir: Path) -> None:
    probe = run_dir / f".write-test-{os.getpid()}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise DiffRatioError(f"run directory {run_dir} is not writable: {exc}. Fix its permissions or "
                             "choose another --run-dir.") from exc


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, str]:
    """Every dotted key whose value differs between two resolved configs, as ``"old -> new"``."""
    a, b = flatten(old), flatten(new)
    return {k: f"{a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<unset>") != b.get(k, "<unset>")}


def plugin_versions(recipe: Recipe, registry: Registry) -> dict[str, Any]:
    out = {}
    for table, comp in [*recipe.components.items(), *(("metrics." + k, v) for k, v in recipe.metrics.items()),
                        *(("loggers." + k, v) for k, v in recipe.loggers.items())]:
        prov = registry.entry(comp.kind, comp.name).provider
        out[table] = {"name": comp.name, "plugin": prov.plugin, "package": prov.package, "version": prov.version}
    return out


def write_json_atomic(path: Path, obj: Any) -> None:
    ckpt.write_atomic(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


@contextmanager
def graceful_signals() -> Iterator[list[int]]:
    """Turn the first SIGINT/SIGTERM into a request (checked at step ends); a second one interrupts."""
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        print(f"\n{signal.Signals(signum).name} received: finishing the step and writing a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    previous = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.signal(s, handler)
    except ValueError:  # not the main thread: no handlers
        previous = {}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def visualize(run: Run, n: int = 1024) -> Tensor | None:
    """A picture of current samples: scatter over data for 2-D data, a grid for images."""
    ds = run.ctx.dataset
    with torch.random.fork_rng(devices=[run.ctx.device] if run.ctx.device.type == "cuda" else []):
        torch.manual_seed(run.ctx.settings.seed + 7)
        if ds.data_shape == (2,):
            samples = run.method.sample(n).float().cpu()
            return scatter_image(ds.reference(n), samples)
        samples = run.method.sample(64)
    images = ds.to_image(samples)
    return image_grid(images.cpu()) if images is not None else None


def evaluate(run: Run) -> dict[str, float]:
    """Compute every metric of the recipe on samples of the current model (RNG of training untouched)."""
    results: dict[str, float] = {}
    device = run.ctx.device

    def sample(n: int) -> Tensor:
        out, bs = [], max(run.ctx.settings.batch_size, 256)
        for i in range(0, n, bs):
            out.append(run.method.sample(min(bs, n - i)).float().cpu())
        return torch.cat(out)

    for name, metric in run.metrics.items():
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(run.ctx.settings.seed + 11)
            ectx = EvalContext(sample=sample, dataset=run.ctx.dataset, device=device,
                               run_dir=str(run.run_dir), step=run.step)
            for k, v in metric.compute(ectx).items():
                results[f"{name}/{k}" if k != name else name] = float(v)
    return results


# --------------------------------------------------------------------------------------------------
# Building a run
# --------------------------------------------------------------------------------------------------


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.settings.name


def build_strategy(recipe: Recipe) -> Strategy:
    """The recipe's strategy; distributed ones join their process group here."""
    comp = recipe.components["strategy"]
    return comp.cls(comp.config)


def build_run(recipe: Recipe, run_dir: Path, registry: Registry, strategy: Strategy | None = None) -> Run:
    """Build data, method, loggers and metrics (and the strategy unless given); no checkpoint is read here."""
    comps = recipe.components
    strategy = strategy if strategy is not None else build_strategy(recipe)
    torch.manual_seed(recipe.settings.seed * 7919 + strategy.rank)
    dataset: Dataset = comps["dataset"].cls(comps["dataset"].config).to(strategy.device)
    ctx = RunContext(recipe, strategy, dataset, run_dir, registry)
    method: Method = comps["method"].cls(comps["method"].config, ctx=ctx)
    loggers: list[Logger] = []
    if strategy.is_main:
        loggers = [r.cls(r.config, run_dir=str(run_dir)) for r in recipe.loggers.values()]
    metrics = {name: r.cls(r.config) for name, r in recipe.metrics.items()}
    return Run(ctx, method, loggers, metrics)


def prepare_run_dir(recipe: Recipe, run_dir: Path, registry: Registry, *, is_main: bool = True) -> Path | None:
    """Create/validate the run directory; return the checkpoint to resume from, if any.

    Resuming refuses when settings that change the meaning of the checkpoint differ from run.json.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiffRatioError(f"cannot create the run directory {run_dir}: {exc}. Choose another --run-dir.") from exc
    check_writable(run_dir)
    check_free_space(run_dir, recipe.settings.min_free_disk_gb)
    ckpt_root = run_dir / "checkpoints"
    if is_main:
        for leftover in ckpt.remove_partial_writes(ckpt_root):
            print(f"removed {leftover}: an unfinished checkpoint write of a killed run", file=sys.stderr)
    latest = ckpt.find_latest(ckpt_root)
    if latest is None and ckpt.list_checkpoints(ckpt_root):
        raise CheckpointError(f"every checkpoint under {ckpt_root} is damaged (see the warnings above); nothing "
                              "to resume from. Move the run directory away (or delete its checkpoints) to start "
                              "afresh.")
    run_json = run_dir / "run.json"
    config = recipe.to_dict()
    if latest is not None and run_json.exists():
        old = json.loads(run_json.read_text()).get("config", {})
        changes = meaningful_changes(old, config)
        if changes:
            raise DiffRatioError(
                f"run directory {run_dir} holds a checkpoint of a different configuration:\n"
                + "\n".join(f"  - {c}" for c in changes)
                + "\nUse the original settings to resume, or a new --run-dir (or run.name) to start afresh.")
        harmless = [f"{k}: {v}" for k, v in changed_settings(old, config).items()]
        if harmless and is_main:
            print("resuming with changed settings that keep the checkpoint's meaning: " + "; ".join(harmless),
                  flush=True)
    if is_main:
        info = {
            "config": config,
            "recipe_file": recipe.source,
            "recipe_text": recipe.text,
            "sets": list(recipe.sets),
            "plugins": plugin_versions(recipe, registry),
            "git_revision": git_revision(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "argv": sys.argv,
        }
        if run_json.exists():
            prev = json.loads(run_json.read_text())
            info["started"] = prev.get("started")
            info["resumes"] = [*prev.get("resumes", []), time.strftime("%Y-%m-%dT%H:%M:%S")] if latest else []
        else:
            info["started"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json_atomic(run_json, info)
    return latest


def record_parameter_counts(run: Run) -> dict[str, int]:
    counts = run.method.parameter_counts()
    run_json = run.run_dir / "run.json"
    if run.ctx.strategy.is_main and run_json.exists():
        info = json.loads(run_json.read_text())
        info["parameters"] = counts
        write_json_atomic(run_json, info)
    return counts


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------


def training_loop(
    recipe: Recipe,  # resolved recipe: run settings and every component's config
    run_dir: Path,  # where run.json, checkpoints/, tensorboard/, samples/ and metrics.jsonl live
    registry: Registry,  # plugin registry (components and lifecycle hooks)
    progress: bool = True,  # show a progress bar (main rank only)
) -> Run:
    """Train ``recipe`` in ``run_dir``, resuming from its latest checkpoint; return the finished run.

    With several processes (``ddp``, ``deepspeed``) every rank runs this function; the main rank alone
    prepares the run directory, logs, samples, evaluates and commits checkpoints, and the ranks agree at
    every step on whether it was finite and whether to stop, so that all of them skip, save and stop at
    the same step.
    """
    s = recipe.settings
    strategy = build_strategy(recipe)
    main = strategy.is_main
    latest = on_main(strategy, lambda: prepare_run_dir(recipe, run_dir, registry))
    run = build_run(recipe, run_dir, registry, strategy)
    method, ctx = run.method, run.ctx

    guard = NonFiniteGuard(s.max_nonfinite_steps)

    # Resume: every stateful object comes back by name (the main rank has verified the checkpoint).
    if latest is not None:
        state = ckpt.load_state(latest, map_location="cpu", verify=False)
        saved_ranks = int(state.get("world_size", 1))
        if saved_ranks != strategy.world_size and not strategy.resizable:
            raise DiffRatioError(f"{latest} was written by {saved_ranks} processes; strategy "
                                 f"{recipe.components['strategy'].name!r} shards its state per process and "
                                 f"cannot resume it with {strategy.world_size}. Launch {saved_ranks} processes.")
        method.load_state_dict(state["method"])
        strategy.load_files(latest)
        own = rank_state(state, strategy)
        if own is not None:
            ctx.sampler.load_state_dict(own["data"])
            set_rng_state(own["rng"], strategy.device)
        else:  # a rank the checkpoint did not have: fresh streams, distinct from every earlier one
            torch.manual_seed(s.seed * 7919 + strategy.rank + 104_729 * int(state["step"]))
            ctx.sampler.gen.manual_seed(s.seed * 1000 + strategy.rank + 1 + 104_729 * int(state["step"]))
        if saved_ranks != strategy.world_size and main:
            print(f"resuming a checkpoint of {saved_ranks} processes with {strategy.world_size}: the models and "
                  "optimisers continue; ranks without a counterpart draw data and noise from new seeds", flush=True)
        guard.load_state_dict(state.get("nonfinite", {}))
        run.step, run.train_seconds = int(state["step"]), float(state.get("train_seconds", 0.0))
        del state

    counts = record_parameter_counts(run)
    if main:
        params = ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in counts.items())
        where = f"resuming from step {run.step} ({latest})" if latest else "starting"
        print(f"diffratio: {recipe.components['method'].name} on {recipe.components['dataset'].name}, "
              f"{strategy.world_size} x {strategy.device}; parameters: {params}; {where}; run dir {run_dir}",
              flush=True)
    registry.emit("diffratio_on_run_start", extra=run.loggers, run=run)
    tmp_token = strategy.broadcast_object(os.getpid())  # names the temporary folder all ranks write into

    def save() -> Path:
        """Write the checkpoint of this step; every rank calls it at the same step.

        The main rank creates the temporary folder, every rank adds the strategy's own files (DeepSpeed),
        the main rank adds ``state.pt`` (with every rank's data sampler and RNG states) and commits. The
        ranks agree after each phase, so a failure anywhere stops all of them with ``CheckpointError``.
        """
        root = run_dir / "checkpoints"
        own = {"data": ctx.sampler.state_dict(), "rng": rng_state(strategy.device)}
        ranks = strategy.gather_object(own)
        state = {"step": run.step, "train_seconds": run.train_seconds, "method": method.state_dict(), **own,
                 "nonfinite": guard.state_dict(), "world_size": strategy.world_size}
        if strategy.world_size > 1:
            state["ranks"] = ranks
        tmp = ckpt.temp_folder(root, run.step, tmp_token)

        def agreed(phase: Callable[[], Any]) -> Any:
            result, error = None, None
            try:
                result = phase()
            except Exception as exc:  # decided below, together with the other ranks
                error = exc
            if strategy.max_over_ranks([error is not None])[0]:
                if error is not None and not isinstance(error, OSError):
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise error
                raise ckpt.write_error(root, run.step, tmp, error or OSError(
                    "another rank could not write its part (see its error)"))
            return result

        def write() -> None:
            strategy.save_files(tmp)
            if main:
                ckpt.write_files(tmp, {ckpt.STATE_FILE: state})

        agreed(lambda: ckpt.begin_checkpoint(tmp) if main else None)
        agreed(write)
        agreed(lambda: ckpt.commit_checkpoint(root, run.step, tmp, keep=s.keep_checkpoints) if main else None)
        path = root / ckpt.step_dir_name(run.step)
        if main:
            registry.emit("diffratio_on_checkpoint", extra=run.loggers, run=run, step=run.step, path=str(path))
        return path

    def log_samples() -> None:
        """A picture of current samples (main rank; its randomness is forked from training's)."""
        image = visualize(run)
        if image is not None:
            save_png(image, run_dir / "samples" / f"step-{run.step:09d}.png")
            for lg in run.loggers:
                lg.log_image(run.step, "samples", image)

    def log_evaluation() -> None:
        """The recipe's metrics (main rank; the other ranks wait at the next step's collectives)."""
        results = evaluate(run)
        if results:
            line = {"step": run.step, "train_seconds": round(run.train_seconds, 3), **results}
            with open(run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(line) + "\n")
            registry.emit("diffratio_on_evaluation", extra=run.loggers, run=run, step=run.step, results=results)
            print("eval " + " ".join(f"{k}={v:.5g}" for k, v in results.items()), flush=True)

    def stop() -> None:
        bar.close()
        registry.emit("diffratio_on_run_end", extra=run.loggers, run=run, step=run.step)
        _close(run)
        strategy.close()

    bar = _progress_bar(run.step, s.steps, enabled=progress and main)
    pending: dict[str, list[Tensor | float]] = {}
    t_last, step_last = time.perf_counter(), run.step
    checkpoint_due = False  # a checkpoint step fell inside a streak of skipped steps: write at the next good one
    with graceful_signals() as signals:
        while run.step < s.steps:
            t0 = time.perf_counter()
            scalars = method.train_step(run.step)
            run.step += 1
            # one agreement per step: was it finite on every rank, and has any rank been asked to stop?
            bad, stop_signal = strategy.max_over_ranks([not guard.finite(scalars), signals[0] if signals else 0])
            stop_signal = int(stop_signal)
            diverged = guard.record(run.step, scalars, finite=not bad)  # a non-finite step was skipped
            run.train_seconds += time.perf_counter() - t0
            if diverged:
                stop()
                raise guard.error(run.step, run_dir / "checkpoints")  # no save: keep the last good checkpoint
            for k, v in scalars.items():
                pending.setdefault(k, []).append(v.detach() if isinstance(v, Tensor) else v)
            last = run.step == s.steps

            if run.step % s.log_every == 0 or last:
                # average the scalars since the last log over the steps where they were finite
                values = {k: finite_mean(v) for k, v in pending.items()}
                values = strategy.all_reduce_mean(values)
                pending.clear()
                now = time.perf_counter()
                values["images_per_second"] = ((run.step - step_last) * method.images_per_step()
                                               * strategy.world_size / max(now - t_last, 1e-9))
                t_last, step_last = now, run.step
                values["nonfinite/skipped_steps"] = float(guard.skipped)
                if strategy.device.type == "cuda":
                    values["peak_memory_gib"] = torch.cuda.max_memory_allocated(strategy.device) / 2**30
                if main:
                    bar.set_postfix_str(" ".join(f"{k}={v:.4g}" for k, v in values.items()), refresh=False)
                    bar.update(run.step - bar.n)
                registry.emit("diffratio_on_step_end", extra=run.loggers, run=run, step=run.step, scalars=values)
            if main and s.sample_every and run.step % s.sample_every == 0 and not last:
                log_samples()
            if main and s.eval_every and run.step % s.eval_every == 0 and not last:
                log_evaluation()
            checkpoint_due = checkpoint_due or run.step % s.checkpoint_every == 0
            if (checkpoint_due and guard.streak == 0) or last or stop_signal:
                path = save()
                checkpoint_due = False
            if stop_signal:
                stop()
                raise Interrupted(stop_signal, run.step, path)
    bar.close()

    if main:
        log_samples()
        log_evaluation()
        print(f"finished {run.step} steps in {run.train_seconds:.1f} s of training; outputs in {run_dir}",
              flush=True)
    registry.emit("diffratio_on_run_end", extra=run.loggers, run=run, step=run.step)
    _close(run)
    strategy.close()
    return run


def _close(run: Run) -> None:
    for lg in run.loggers:
        lg.close()


def _progress_bar(initial: int, total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, unit="step",
                mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DDP / DeepSpeed / compile wrappers."""
    while hasattr(module, "module") and isinstance(module.module, nn.Module):
        module = module.module
    return getattr(module, "_orig_mod", module)


__all__ = ["training_loop", "RunContext", "Run", "DataSampler", "Interrupted", "Diverged", "CheckpointError",
           "unwrap"]
