"""GPU diagnosis of strategy.compile (call 2): dynamo counters, recompiles, and whether triton kernels run.

Run from the repository root: ``python docs/results/compile/gdiag.py diffratio KEY=VALUE ...`` (the device
copy ran as ``.device/s7/gdiag.py``; same code, reformatted for ruff).
"""

import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "benchmarks")
import throughput as tp  # noqa: E402
from diffratio.engine import build_run  # noqa: E402
from diffratio.registry import default_registry  # noqa: E402

method_name, sets = sys.argv[1], sys.argv[2:]
resolved = tp.row_recipe("recipes/imagenet512.toml", sets, method_name)
with tempfile.TemporaryDirectory() as tmp:
    run = build_run(resolved, Path(tmp), default_registry())
    m = run.method
    if method_name == "vsd":
        m.teacher_loaded = True
    for s in range(5):
        t0 = time.time()
        m.train_step(s)
        torch.cuda.synchronize()
        print("step", s, f"{time.time() - t0:.1f}s", flush=True)
    from torch._dynamo.utils import counters

    print({k: dict(v) for k, v in counters.items() if v and k in ("frames", "stats", "graph_break", "recompiles")})
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        m.train_step(5)
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages()]
    print("kernels:", len(names), "triton:", sum("triton" in n for n in names))
    for name in ("gen", "ratio"):
        t = getattr(m, name, None)
        if t is not None:
            mods = [x for x in t.raw.modules() if getattr(x, "_compiled_call_impl", None) is not None]
            print(name, "compiled modules:", len(mods))
