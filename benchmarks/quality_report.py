"""The report of ``quality.py``: the markdown table of every evaluation (mean over seeds, then each seed), the
line naming what measured it, and its place between the markers of a results page."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from quality_eval import FRACTIONS, KINDS, results
from quality_train import METHODS, REPO, STUDY_PREFIX, log, method_of, seed_of

BEGIN, END = "<!-- quality.py: begin -->", "<!-- quality.py: end -->"


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of result rows: the teacher, one row per method and budget point, then SIR; each
    cell the mean over seeds and, in parentheses, each seed's value (seeds in increasing order, - if absent)."""
    seeds = sorted({seed_of(r["run"]) for r in rows if r["kind"] != "teacher"})
    order = [*METHODS, *sorted({method_of(r["run"]) for r in rows if r["run"].startswith(STUDY_PREFIX)})]
    groups: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = {}  # (kind, method, fraction, sigma, T) -> seeds
    for r in rows:
        r["gpu_minutes"] = r["train_seconds"] / 60
        if r["kind"] == "teacher":
            groups[(1, 0, 0, 0, 0)] = {-1: r}
        for f in r.get("points", [1.0]) if r["kind"] != "teacher" else []:
            sir = (r.get("sigma") or 0, r.get("temperature", 1.0))
            key = (KINDS.index(r["kind"]), order.index(method_of(r["run"])), f, *sir)
            groups.setdefault(key, {})[seed_of(r["run"])] = r

    def cell(by_seed: dict[int, dict[str, Any]], key: str, fmt: str) -> str:
        values = [by_seed[s].get(key) if s in by_seed else None for s in ([-1] if -1 in by_seed else seeds)]
        if not (present := [v for v in values if v is not None]):
            return ""
        each = ", ".join("-" if v is None else format(v, fmt) for v in values)
        return format(statistics.mean(present), fmt) + (f" ({each})" if len(values) > 1 else "")

    num = max((r["num"] for r in rows), default=0)
    fid = f"FID-{num // 1000}k" if num % 1000 == 0 else f"FID ({num} samples)"
    lines = [
        f"| samples | budget | network evaluations | {fid} | precision | recall | generator updates | GPU minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (kind, m, f, _, _), by_seed in sorted(groups.items(), key=lambda g: (g[0][0] != 1, g[0])):  # teacher first
        first = next(iter(by_seed.values()))
        label = METHODS[order[m]][1] if order[m] in METHODS else f"DiffRatio, DiJS, {order[m]}"
        budget = f"{FRACTIONS[f]} of {first['budget'] / 60:g} min" if kind != 1 else "-"
        if kind == 1:
            label = "teacher: the pretraining's EMA denoiser, Heun"
        elif kind == 2:
            t = first.get("temperature", 1.0)
            named_t = f", T = {t:g}" if t != 1 else ""
            label += f" + SIR (N = {first['candidates']}, sigma_v = {first['sigma']:g}{named_t})"
        lines.append(
            f"| {label} | {budget} | {first['evaluations']} | {cell(by_seed, 'fid', '.2f')} | "
            f"{cell(by_seed, 'precision', '.3f')} | {cell(by_seed, 'recall', '.3f')} | "
            f"{cell(by_seed, 'updates', '.0f')} | {cell(by_seed, 'gpu_minutes', '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def header(command: str, seeds: list[int]) -> str:
    """The line naming what measured the table: command, card, torch, UTC date, commit (-dirty: uncommitted)."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    commit = (git("rev-parse", "--short", "HEAD") or "unknown") + ("-dirty" if git("status", "--porcelain") else "")
    return (
        f"`{command}`: {gpu}; torch {torch.__version__}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; commit "
        f"{commit}. Each cell: the mean over seeds, then each seed's value (seeds {', '.join(map(str, seeds))}).\n"
    )


def marked(path: Path) -> tuple[list[str], int, int]:
    """``path``'s lines and the indices of the lines ``BEGIN`` and ``END``; a clear exit when either is missing."""
    lines = path.read_text().splitlines(keepends=True) if path.is_file() else []
    marks = [line.strip() for line in lines]
    if BEGIN not in marks or END not in marks or marks.index(BEGIN) > marks.index(END):
        raise SystemExit(
            f"--results {path}: the table goes between the line {BEGIN} and, below it, the line "
            f"{END}; add both lines to {path} where the table should go"
        )
    return lines, marks.index(BEGIN), marks.index(END)


def report(args: argparse.Namespace) -> None:
    """Print the table (naming the command that trained the runs, ``RUNS/command.txt``); with ``--results
    FILE``, write it into FILE between the markers, replacing what was there."""
    runs = Path(args.runs)
    command = runs / "command.txt"
    rows = [
        r
        for r in results(runs)  # this script's kinds and run names, not an older layout's
        if r["kind"] in KINDS and re.fullmatch(r"pretrain|.+-s\d+", r["run"])
    ]
    seeds = sorted({seed_of(r["run"]) for r in rows if r["kind"] != "teacher"})
    text = header(command.read_text().strip() if command.exists() else command_line(), seeds) + "\n" + table(rows)
    for name in sorted({method_of(r["run"]) for r in rows if r["run"].startswith(STUDY_PREFIX)}):
        sets = next(runs.glob(f"{name}-s*.sets.json"), None)  # a study's overrides, from one seed's record
        own = [s for s in json.loads(sets.read_text()) if not s.startswith("run.seed=")] if sets else ["?"]
        text += f"\n{name}: `{' '.join(own)}`\n"
    print(text)
    if args.results:
        lines, begin, end = marked(Path(args.results))
        Path(args.results).write_text("".join(lines[: begin + 1]) + text + "".join(lines[end:]))
        log(f"wrote the table into {args.results}")


def command_line() -> str:
    """This invocation as a shell command, the way the docs write it."""
    return shlex.join(["python", "benchmarks/quality.py", *sys.argv[1:]])
