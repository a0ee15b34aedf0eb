"""Behaviour unchanged: short toy2d runs (pretraining, DiffRatio, VSD) end with exactly the tensors of the
engine before the ratio / fake-score warm-up became steps of the loop (tests/data/toy2d_reference.json).

A warm-up of W updates now takes W loop steps, so those runs are W steps longer; the state-dict key names
may differ, the tensors may not: per run, the sorted tensor hashes must be equal.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_toy2d_runs_end_with_the_reference_tensors(tmp_path: Path) -> None:
    out = tmp_path / "hashes.json"
    subprocess.run([sys.executable, str(ROOT / "tests" / "data" / "equivalence.py"), str(out), "--warmup-as-steps"],
                   check=True, timeout=900)
    got = json.loads(out.read_text())
    want = json.loads((ROOT / "tests" / "data" / "toy2d_reference.json").read_text())
    assert sorted(got) == sorted(want)
    for run in want:
        assert sorted(got[run].values()) == sorted(want[run].values()), f"{run}: tensors differ from the reference"
