"""Quality of saved samples (``dr-sample`` .npz files) against a registered image data set.

Runs the built-in ``fcd`` metric (small-classifier Frechet distance, its real-vs-real floor and class
coverage) and, with ``--fid N``, FID-N with precision/recall in the standard Inception space, each
against the data set's held-out split. Prints a markdown table.

    python benchmarks/sample_quality.py --data fashion-mnist --set pad_to_32=true \
        --samples one-step=A.npz --samples heun-35=B.npz [--num 2000] [--fid 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from diffratio.components import EvalContext
from diffratio.recipe import resolve_recipe
from diffratio.registry import default_registry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="registered data set name, e.g. fashion-mnist")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="data set option KEY=VALUE")
    ap.add_argument("--samples", action="append", required=True, help="LABEL=FILE.npz with uint8 images")
    ap.add_argument("--num", type=int, default=2000, help="samples per set for FCD")
    ap.add_argument("--fid", type=int, default=0, help="also FID-N with precision/recall (slow on CPU)")
    args = ap.parse_args()

    reg = default_registry()
    doc = {"method": {"name": "edm"}, "backbone": {"name": "mlp"}, "dataset": {"name": args.data}}
    recipe = resolve_recipe(doc, [f"dataset.{s}" for s in args.sets], registry=reg)
    ds = recipe.components["dataset"]
    dataset = ds.cls(ds.config)
    metrics = {"fcd": reg.get("metric", "fcd").cls(reg.get("metric", "fcd").cls.Config(num_samples=args.num))}
    if args.fid:
        fid_cls = reg.get("metric", "fid").cls
        metrics["fid"] = fid_cls(fid_cls.Config(num_samples=args.fid, num_reference=args.fid,
                                                precision_recall=True))
    rows = []
    for item in args.samples:
        label, path = item.split("=", 1)
        with np.load(path) as f:
            images = torch.from_numpy(f["images"])
        x = images.float() / 127.5 - 1  # model space of the image data sets

        def sample(n: int, x: torch.Tensor = x, label: str = label) -> torch.Tensor:
            if n > len(x):
                raise SystemExit(f"{label}: {len(x)} images, {n} requested")
            return x[:n]

        ctx = EvalContext(sample=sample, dataset=dataset, device=torch.device("cpu"), run_dir=".", step=0)
        row = {"samples": label, "file": path}
        for name, metric in metrics.items():
            t = time.time()
            row.update({f"{name}/{k}": v for k, v in metric.compute(ctx).items()})
            row[f"{name}/seconds"] = round(time.time() - t, 1)
        rows.append(row)
        print(row, flush=True)
    keys = [k for k in rows[0] if k != "file"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
