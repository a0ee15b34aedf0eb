"""What a run shows: a progress bar within 80 columns, or one compact line per logging interval."""

from __future__ import annotations

import re

from diffratio.progress import WIDTH, Progress, compact, key_numbers

VALUES = {"loss/ratio": 1.3842, "loss/generator": -0.00123456, "ratio/accuracy": 0.5, "generator/grad_norm": 3.2,
          "images_per_second": 123456.7, "nonfinite/skipped_steps": 0.0}


def test_compact_numbers() -> None:
    assert [compact(v) for v in (0.123456, -0.00123456, 4567.0, 123456.7, 2.5e9)] == [
        "0.1235", "-0.001235", "4567", "123k", "2.5G"]


def test_key_numbers_are_the_losses_and_images_per_second() -> None:
    assert key_numbers(VALUES) == "ratio=1.384 generator=-0.001235 img/s=123k"
    assert key_numbers({**VALUES, "nonfinite/skipped_steps": 3.0}).endswith("skipped=3")


def test_log_lines_are_compact(capsys) -> None:
    p = Progress(0, 2000, bar=False, enabled=True)
    p.update(100, VALUES)
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r"step 100/2000 eta \d\d:\d\d ratio=1\.384 generator=-0\.001235 img/s=123k", line), line
    Progress(0, 2000, bar=False, enabled=False).update(100, VALUES)  # other ranks: silent
    assert capsys.readouterr().out == ""


def test_the_bar_fits_80_columns(capsys) -> None:
    with Progress(0, 1_000_000, bar=True, enabled=True) as p:
        p.update(123_456, VALUES)
        p.bar.refresh()
    err = capsys.readouterr().err
    frames = [f for f in re.split(r"[\r\n]", err) if f.strip()]
    assert frames and all(len(f) <= WIDTH for f in frames), frames
    assert any("123456/1000000" in f and "ratio=1.384" in f for f in frames), frames
