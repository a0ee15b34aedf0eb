"""benchmarks/overhead.py on CPU, as CI runs it: the table of every stage and the summary line last."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from conftest import ROOT

STAGES = ("edm", "diffratio", "vsd")


def test_cpu_run_prints_the_table_and_the_summary_line_last(tmp_path: Path) -> None:
    out = tmp_path / "overhead.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--device", "cpu", "--steps", "5",
                           "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    summary = re.fullmatch(r"overhead: min framework/plain ratio = (\d+\.\d\d)", lines[-1])
    assert summary is not None, lines[-1]

    assert lines[0].startswith("# Framework overhead on "), lines[0]
    header = "\n".join(lines[:10])
    assert f"torch {torch.__version__}" in header
    assert re.search(r"commit [0-9a-f]{7,}", header), header
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", header), header
    assert "backbone.model_channels = 16" in header and "run.batch_size = 4" in header  # what CPU shrinks, said
    assert ("Fashion-MNIST" in header) == Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists()

    cols = ["stage", "mode", "batch", "plain images/s", "framework images/s", "framework/plain", "plain peak memory",
            "framework peak memory", "memory framework/plain", "plain host operations", "framework host operations",
            "Python calls plain / framework", "GPU ms per step plain / framework", "GFLOP per step plain / framework"]
    assert f"| {' | '.join(cols)} |" in lines
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")][1:]
    assert [(r[0], r[1]) for r in rows] == [(s, "eager") for s in STAGES]  # compiled is skipped on CPU
    ratios = []
    for stage, _mode, batch, plain, framework, ratio, *memory, plain_ops, framework_ops, calls, gpu_ms, gflop in rows:
        assert batch == "4", stage
        plain_ips, framework_ips = float(plain.replace(",", "")), float(framework.replace(",", ""))
        assert plain_ips > 0 and framework_ips > 0, stage
        assert abs(float(ratio) - framework_ips / plain_ips) < 0.03 * float(ratio), stage  # of rounded images/s
        assert memory == ["n/a"] * 3 and gpu_ms == "n/a", stage  # no device memory or kernels on CPU
        # the framework's step dispatches no more host operations than the plain loop's (a few for its guard)
        assert int(framework_ops.replace(",", "")) <= int(plain_ops.replace(",", "")) + 40, stage
        # nor more Python calls: the framework's own bookkeeping (listing modules' tensors, wrappers) stays
        # below what a plain loop spends
        plain_calls, framework_calls = (int(c.replace(",", "")) for c in calls.split(" / "))
        assert 0 < framework_calls <= plain_calls, (stage, calls)
        # both sides do the same floating-point work, so the ratio measures the framework's overhead alone
        plain_gflop, framework_gflop = (float(g.replace(",", "")) for g in gflop.split(" / "))
        assert plain_gflop > 0 and abs(framework_gflop - plain_gflop) <= 0.001 * plain_gflop, (stage, gflop)
        ratios.append(float(ratio))
    assert abs(float(summary.group(1)) - min(ratios)) <= 0.006

    assert out.read_text().strip() == proc.stdout.strip()  # --out writes the same table
