"""Images/s and peak GPU memory from the console logs of ``dr-train`` runs, as a markdown table.

The console logger prints one ``step N: key=value ...`` line per logging window; images/s is the median
over the windows after the first (which holds start-up and, with ``strategy.compile``, compilation).

    python benchmarks/log_speed.py runs/speed/out/*.log
"""

from __future__ import annotations

import re
import statistics
import sys
from pathlib import Path

LINE = re.compile(r"^step (\d+): (.*)$")


def windows(log: Path) -> list[dict[str, float]]:
    """The scalars of every logging window in ``log``, in order."""
    rows = []
    for line in log.read_text(errors="replace").splitlines():
        m = LINE.match(line.strip())
        if m:
            pairs = (kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)
            rows.append({"step": float(m.group(1)), **{k: float(v) for k, v in pairs}})
    return rows


def main(paths: list[str]) -> int:
    print("| run | windows | images/s (median after the first window) | min - max | peak GPU memory (GiB) |")
    print("|---|---|---|---|---|")
    for p in map(Path, paths):
        rows = windows(p)
        ips = [r["images_per_second"] for r in rows[1:] if "images_per_second" in r]
        if not ips:
            print(f"| {p.stem} | {len(rows)} | (no windows after the first: see {p}) | | |")
            continue
        mem = max((r.get("peak_memory_gib", float("nan")) for r in rows), default=float("nan"))
        print(f"| {p.stem} | {len(ips)} | {statistics.median(ips):,.0f} | {min(ips):,.0f} - {max(ips):,.0f} "
              f"| {mem:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
