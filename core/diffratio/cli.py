"""Command-line tools: ``dr-train``, ``dr-plugins`` and ``dr-sample``.

Errors a user can fix (``DiffRatioError``) are printed as one clear message without a traceback and
exit with status 2; a run stopped by a signal exits with 128 + the signal number, after writing a
checkpoint where one can be written.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import click

from diffratio.errors import DiffRatioError
from diffratio.signals import StopRequested, handled_signals


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A ``DiffRatioError`` becomes its message and exit status 2 (or its ``exit_code``); a signal, a one-line
    message and 128 + its number. Never a traceback for either."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DiffRatioError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        except StopRequested as stop:
            click.echo(f"stopped by {stop}", err=True)
            sys.exit(128 + stop.signum)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set run.steps=500 (value rule: docs/recipes.md). Repeatable.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and the providing plugins; train nothing.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default runs/<run.name>). Re-running with the same one resumes.")
@click.option("--no-progress", is_flag=True, help="No progress bar (log lines only).")
@friendly_errors
def train(recipe: Path, sets: tuple[str, ...], dry_run: bool, run_dir: Path | None, no_progress: bool) -> None:
    """Train with RECIPE (a TOML file); re-running the same command resumes from the last checkpoint."""
    with handled_signals():  # from here to exit: a signal stops cleanly, a second one at once
        from diffratio.engine import default_run_dir, plugin_versions, training_loop
        from diffratio.preflight import preflight
        from diffratio.recipe import load_recipe
        from diffratio.registry import default_registry

        registry = default_registry()
        resolved = load_recipe(recipe, sets, registry=registry)
        preflight(resolved)
        run_dir = run_dir or default_run_dir(resolved)
        if dry_run:
            click.echo(json.dumps({"run_dir": str(run_dir), "config": resolved.to_dict(),
                                   "plugins": plugin_versions(resolved, registry)}, indent=2))
            return
        training_loop(resolved, run_dir, registry, progress=not no_progress)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--kind", default=None, help="Only this kind (method, divergence, backbone, ...).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def plugins(kind: str | None, as_json: bool) -> None:
    """List every registered component: kind, name, providing package and version, and its config fields
    (type and bounds, default, meaning)."""
    from diffratio.config import config_fields
    from diffratio.errors import DiffRatioError
    from diffratio.registry import default_registry

    registry = default_registry()
    if kind is not None and kind not in registry.components:
        raise DiffRatioError(f"unknown --kind {kind!r}; the kinds are: {', '.join(registry.components)}")
    rows, docs = [], []
    for k, entries in registry.components.items():
        if kind and k != kind:
            continue
        for name in sorted(entries):
            e = entries[name]
            docs.append(config_fields(e.spec.cls.Config))
            fields = [{"name": r.key, "type": r.type, "bounds": r.bounds, "default": _default(r), "doc": r.meaning}
                      for r in docs[-1]]
            rows.append({"kind": k, "name": name, "package": e.provider.package, "version": e.provider.version,
                         "plugin": e.provider.plugin, "description": e.spec.description, "fields": fields})
    if as_json:
        click.echo(json.dumps({"components": rows, "failures": [attrs.asdict(f) for f in registry.failures]},
                              indent=2, default=_type_name))
        return
    for r, fields in zip(rows, docs, strict=True):
        click.echo(f"{r['kind']:<11} {r['name']:<18} {r['package']} {r['version']}  {r['description']}")
        for f in fields:
            value = "" if f.default == "see below" else f" = {f.default}"
            click.echo(f"{'':<31}{f.key}{value}  ({f.type_and_bounds})" + (f": {f.meaning}" if f.meaning else ""))
    for f in registry.failures:
        click.echo(f"FAILED      plugin {f.plugin!r} (package {f.package}): {f.error}", err=True)


def _type_name(value: Any) -> Any:
    """A default that JSON cannot spell as it is: a nested config as its table, anything else as text."""
    return attrs.asdict(value) if attrs.has(type(value)) else str(value)


def _default(row: Any) -> Any:
    """A field's default as ``dr-plugins`` shows it (a ``FieldDoc`` row)."""
    return "(required)" if row.value is attrs.NOTHING else row.value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--num", type=click.IntRange(min=1), default=1000, show_default=True, help="Samples to draw.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output .npz file (required unless only --export is wanted).")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a PNG (image grid, or scatter plot for 2-D data).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the draw.")
@click.option("--batch", type=click.IntRange(min=1), default=500, show_default=True,
              help="Most samples (candidates included) in one network pass.")
@click.option("--candidates", type=click.IntRange(min=1), default=1, show_default=True,
              help="One-step candidates per sample, scored by the ratio estimator (1 = plain sampling).")
@click.option("--select", type=click.Choice(["best", "sir"]), default="sir", show_default=True,
              help="best: keep the candidate of largest weight exp(-f), which collapses the samples onto the modes "
                   "the ratio favours; sir: resample one with probabilities proportional to exp(-f) "
                   "(sampling-importance-resampling), which keeps every mode.")
@click.option("--verifier-sigma", type=click.FloatRange(min=0), default=None,
              help="Noise level at which the ratio scores candidates (default: the run's method.verifier_sigma, "
                   "which defaults to diffratio.verifier.DEFAULT_VERIFIER_SIGMA).")
@click.option("--verifier-temperature", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="SIR resamples in proportion to exp(-f / T): 1 trusts the ratio estimator as it is, larger "
                   "values trust it less (a noisy estimator's weights shrunk towards uniform).")
@click.option("--export", "export", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the run's inference weights (generator EMA and ratio estimator) with its config to this "
                   "one .pt file, which dr-sample then accepts in place of RUN_DIR.")
@friendly_errors
def sample(run_dir: Path, num: int, out: Path | None, grid: Path | None, seed: int, batch: int, candidates: int,
           select: str, verifier_sigma: float | None, verifier_temperature: float, export: Path | None) -> None:
    """Draw samples from RUN_DIR (latest checkpoint, EMA weights; or a file written by --export) into an .npz.

    Only the networks that sample are built: no optimiser, and no training data unless the samples must be
    turned into images.

    With --candidates N each sample is chosen among N one-step samples by the run's ratio estimator
    (the learned density ratio as a verifier; methods with a ratio estimator only). --select best collapses
    the samples onto the modes the ratio favours (less diversity); --select sir does not.
    """
    from diffratio.sampling import export_run, sample_run

    if out is None and export is None:
        raise click.UsageError("give --out FILE.npz (samples), --export FILE.pt, or both")
    if out is not None and out.suffix != ".npz":
        raise click.BadParameter(f"{out} does not end in .npz; the samples are written as an .npz file "
                                 f"(e.g. --out {out.with_suffix('.npz')})", param_hint="--out")
    if export is not None:
        export_run(run_dir, export)
        click.echo(f"exported {run_dir} to {export}")
    if out is not None:
        sample_run(run_dir, num=num, out=out, grid=grid, seed=seed, batch=batch, candidates=candidates,
                   select=select, verifier_sigma=verifier_sigma,  # type: ignore[arg-type]
                   temperature=verifier_temperature)
