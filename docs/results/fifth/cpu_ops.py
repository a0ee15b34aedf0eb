"""Count the operations of one DiffRatio step under the deepspeed strategy on the CPU, by precision.

Records where DeepSpeed's bf16 mode (``strategy.precision = "bf16-weights"``) adds work that the autocast
mode does not: a small DiT (4 blocks, width 64, 4 heads, 4x16x16 latents, batch 4) built from
recipes/imagenet512.toml, two warm-up steps, then one step under ``torch.profiler``; the operations counted
are the leaf ``aten::`` operations (those that would each launch a kernel, views included), and the
Python callers of ``aten::isfinite``. Also the parameter tensors of DiT-XL/2's generator and 14-block
ratio estimator (what a per-tensor check loops over). Run from the repository root:

    python docs/results/fifth/cpu_ops.py bf16
    python docs/results/fifth/cpu_ops.py bf16-weights
    python docs/results/fifth/cpu_ops.py bf16-weights strategy.engine_config.bf16.check_grad_overflow=false
"""

from __future__ import annotations

import collections
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from diffratio.engine import build_run  # noqa: E402
from diffratio.registry import default_registry  # noqa: E402
from diffratio_builtins.backbones.dit import DiTBackbone  # noqa: E402
from throughput import row_recipe  # noqa: E402

SMALL = ["dataset.name=synthetic-latents", "dataset.shape=[4,16,16]", "run.batch_size=4", "backbone.size='S'",
         "backbone.depth=4", "backbone.hidden=64", "backbone.heads=4", "strategy.name='deepspeed'",
         "strategy.device='cpu'", "method.warmup_ratio_steps=0"]


def python_callers(event: object, depth: int) -> str:
    """The innermost ``depth`` Python frames among the event's callers (``with_stack`` records them as events
    named ``file.py(line): function``)."""
    frames, op = [], event.cpu_parent
    while op is not None and len(frames) < depth:
        if ".py(" in op.name:
            frames.append(op.name)
        op = op.cpu_parent
    return " < ".join(frames) or "(no Python frame)"


def main(precision: str, extra: list[str]) -> None:
    resolved = row_recipe("recipes/imagenet512.toml", [*SMALL, f"strategy.precision='{precision}'", *extra],
                          "diffratio")
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(resolved, Path(tmp), default_registry())
        for step in range(2):
            run.method.train_step(step)
        with profile(activities=[ProfilerActivity.CPU], with_stack=True) as prof:
            run.method.train_step(2)
    leaves = [e for e in prof.events() if not e.cpu_children and e.name.startswith("aten::")]
    print(f"{precision} {' '.join(extra)}: {len(leaves)} leaf aten operations in one step")
    for name, n in collections.Counter(e.name for e in leaves).most_common(12):
        print(f"{n:7d}  {name}")
    finite = collections.Counter(python_callers(e, 3) for e in prof.events() if e.name == "aten::isfinite")
    print("aten::isfinite by its Python callers:")
    for chain, n in finite.most_common(4):
        print(f"{n:7d}  {chain}")
    with torch.device("meta"):
        cfg = DiTBackbone.Config(size="XL", patch_size=2)
        tensors = sum(len(list(DiTBackbone(cfg, data_shape=(4, 64, 64), num_labels=1000, mode=m).parameters()))
                      for m in ("full", "encoder"))
    print(f"DiT-XL/2 parameter tensors, generator and ratio encoder (without its head): {tensors}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
