"""Record of a quick probe (docs/results/verifier_refine_2d.md), kept as it ran.

Does refining the ratio estimator on the frozen EMA generator make it a better verifier? (2-D)

During training the ratio estimator learns log q_online / p (the ratio step draws from the online generator),
while sampling draws from the EMA generator. Refinement: copy the EMA weights into the online generator and
run K more ratio steps (the method's own ratio_step), so the estimator learns log q_EMA / p.
"""
import copy
import statistics
import sys

import torch

from diffratio.analytic import energy_distance
from diffratio.sampling import draw, load_run

path, step = sys.argv[1], int(sys.argv[2])
ks = [int(k) for k in sys.argv[3].split(",")]
sigmas = [float(s) for s in sys.argv[4].split(",")]
num, seeds, n = 2000, range(5), 8

base = load_run(path, step=step)
ref = base.ctx.dataset.reference(2 * num)
held, floor = ref[:num], energy_distance(ref[num:], ref[:num])


def ed(run, cand, select, sv):
    vals = []
    for seed in seeds:
        x, _ = draw(run, num, seed=seed, candidates=cand, select=select, verifier_sigma=sv)
        vals.append(energy_distance(x.double(), held.double()) / floor)
    return statistics.mean(vals), statistics.stdev(vals)


print(f"run {path} step {step}; floor {floor:.5f}; ratio to the floor, mean +- sd over 5 sampling seeds, N = {n}")
m, s = ed(base, 1, "sir", 0.02)
print(f"N = 1: {m:.2f} +- {s:.2f}")
for k in ks:
    run = load_run(path, step=step)
    if k:
        method = run.method
        method.gen.raw.load_state_dict(copy.deepcopy(method.ema.state_dict()))
        torch.manual_seed(123)
        for _ in range(k):
            method.ratio_step()
    for sv in sigmas:
        row = [f"K = {k:5d}, sigma {sv:g}"]
        for select in ("sir", "best"):
            m, s = ed(run, n, select, sv)
            row.append(f"{select} {m:.2f} +- {s:.2f}")
        print(" | ".join(row), flush=True)
