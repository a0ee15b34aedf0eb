"""`dr-sample --out` names exactly the file written: another suffix is refused before anything is loaded."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from diffratio.cli import sample


def test_out_without_npz_suffix_is_refused(tmp_path: Path) -> None:
    res = CliRunner().invoke(sample, [str(tmp_path), "--num", "4", "--out", str(tmp_path / "x.txt")])
    assert res.exit_code == 2
    assert "does not end in .npz" in res.output and "x.npz" in res.output
    assert not list(tmp_path.iterdir())  # nothing written
