"""Bad data files are refused before training with one message naming the file and the problem: text
arrays, arrays with no values, a single row, values that overflow float32, non-finite values, Python
objects, and files that are not .npz at all; through the data sets and through `dr-train`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diffratio import DataError
from diffratio_builtins.datasets.images import NpzImages
from diffratio_builtins.datasets.toy2d import NpzPoints
from diffratio_builtins.datasets.validate import check_array, check_shape, to_training_dtype

from conftest import RECIPES, run_cli, sets


def points(path: Path, **kw: object) -> NpzPoints:
    return NpzPoints(NpzPoints.Config(path=str(path), **kw))


def save(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


CASES = {
    "text": (lambda p: save(p, x=np.array([["1.0", "2.0"], ["3.0", "4.0"]])),
             r"points\.npz\['x'\]\): holds <U3 values \(text\), expected numbers"),
    "no-columns": (lambda p: save(p, x=np.zeros((50, 0))),
                   r"points\.npz\['x'\]\): has shape \(50, 0\), which holds no values"),
    "one-row": (lambda p: save(p, x=np.zeros((1, 2))),
                r"points\.npz\['x'\]\): has 1 row\(s\) \(shape \(1, 2\)\); at least 2 are needed"),
    "no-rows": (lambda p: save(p, x=np.zeros((0, 2))), r"has 0 row\(s\)"),
    "one-dimension": (lambda p: save(p, x=np.zeros(5)), r"has shape \(5,\), expected \(N, d\)"),
    "scalar": (lambda p: save(p, x=np.float64(3.0)), r"is a single value \(shape \(\)\)"),
    "overflow": (lambda p: save(p, x=np.array([[0.0, 1.0], [1e39, 0.0], [2.0, 3.0]])),
                 r"row 1 holds a value beyond the range of float32 \(largest magnitude 3\.4e\+38\); rescale"),
    "nan": (lambda p: save(p, x=np.array([[0.0, 1.0], [2.0, 3.0], [np.nan, 0.0]])),
            r"row 2 is not finite \(nan or inf\)"),
    "objects": (lambda p: save(p, x=np.array([[1, "a"], [None, 2.0]], dtype=object)),
                r"points\.npz\['x'\] holds Python objects, not numbers"),
    "text-file": (lambda p: p.write_text("x,y\n1,2\n3,4\n"),
                  r"points\.npz is not an \.npz file \(a zip archive of arrays, as np\.savez writes it\); "
                  r"it begins with b'x,y\\n'"),
    "empty-file": (lambda p: p.write_bytes(b""), r"points\.npz is not an \.npz file"),
    "missing-key": (lambda p: save(p, y=np.zeros((3, 2))), r"has no array 'x' \(arrays: y\)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_npz_points_names_the_file_and_the_problem(tmp_path: Path, case: str) -> None:
    make, match = CASES[case]
    make(tmp_path / "points.npz")
    with pytest.raises(DataError, match=match):
        points(tmp_path / "points.npz")


def test_good_points_pass_and_are_float32(tmp_path: Path) -> None:
    ds = points(save(tmp_path / "p.npz", x=np.arange(20, dtype=np.int64).reshape(10, 2)), holdout=0.0)
    assert ds.points.dtype.is_floating_point and ds.points.shape == (10, 2)
    with pytest.raises(DataError, match=r"dataset\.holdout = 0\.5 leaves 1 to train on"):
        points(save(tmp_path / "q.npz", x=np.zeros((2, 2))), holdout=0.5)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset npz-points \(dataset\.path\): .*nothere\.npz does not exist"):
        points(tmp_path / "nothere.npz")
    with pytest.raises(DataError, match=r"is a folder, expected an \.npz file"):
        points(tmp_path)


def test_images_need_two_images_and_an_npz_file(tmp_path: Path) -> None:
    one = save(tmp_path / "one.npz", images=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"one\.npz\): has 1 row\(s\) \(shape \(1, 3, 4, 4\)\)"):
        NpzImages(NpzImages.Config(path=str(one)))
    (tmp_path / "text.npz").write_text("not images")
    with pytest.raises(DataError, match=r"text\.npz is not an \.npz file"):
        NpzImages(NpzImages.Config(path=str(tmp_path / "text.npz")))


def test_helpers_directly() -> None:
    out = to_training_dtype(np.array([[1, 2], [3, 4]], np.int32), "w")
    assert out.dtype == np.float32
    assert check_array(np.zeros((3, 2), np.float16), "w", expected="(N, d)").dtype == np.float32
    with pytest.raises(DataError, match=r"^w: holds complex128 values \(complex numbers\)"):
        check_array(np.zeros((3, 2), complex), "w", expected="(N, d)")
    with pytest.raises(DataError, match=r"^w: row 0 is not finite"):
        to_training_dtype(np.array([np.inf, 1.0]), "w")
    check_shape((2, 1), "w", expected="(N, d)", ndim=2)
    with pytest.raises(DataError, match=r"has 2 row\(s\)"):
        check_shape((2, 1), "w", expected="(N, d)", min_rows=3)


@pytest.mark.parametrize(("case", "message"), [
    ("text", "holds <U3 values (text), expected numbers"),
    ("text-file", "is not an .npz file (a zip archive of arrays, as np.savez writes it)"),
    ("overflow", "row 1 holds a value beyond the range of float32"),
])
def test_dr_train_refuses_bad_points_cleanly(tmp_path: Path, case: str, message: str) -> None:
    CASES[case][0](tmp_path / "points.npz")
    res = run_cli("dr-train", str(RECIPES / "toy2d.toml"), "--run-dir", str(tmp_path / "run"),
                  *sets("dataset.name='npz-points'", f"dataset.path='{tmp_path / 'points.npz'}'"),
                  "--no-progress", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and message in res.stderr, res.stderr[-2000:]
    assert str(tmp_path / "points.npz") in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.startswith("error:")]) == 1
