"""IMOD point lists in the five-column form point2model reads: object contour x y z, numbered from 1.

IMOD model coordinates put the first voxel's centre at (0.5, 0.5, 0) (X, Y from the pixel corner, Z the
section index); aitom's voxel coordinates put it at (0, 0, 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aitom.errors import InputError
from aitom.io import write_imod_points


def test_points_are_written_by_object(tmp_path, device):
    points = torch.tensor([[10.0, 20.0, 30.0], [1.5, 2.25, 3.0], [7.0, 8.0, 9.125]], device=device)
    path = write_imod_points(tmp_path / "picks.txt", points, object_ids=[2, 1, 2])
    lines = path.read_text().splitlines()
    assert lines == ["1 1 2.000 2.750 3.000", "2 1 10.500 20.500 30.000", "2 1 7.500 8.500 9.125"]
    table = np.loadtxt(path)
    assert table.shape == (3, 5) and table[:, :2].min() >= 1  # point2model's default: numbered from 1


def test_default_single_object_and_empty_list(tmp_path):
    path = write_imod_points(tmp_path / "one.txt", np.array([[1.0, 2.0, 3.0]]))
    assert path.read_text() == "1 1 1.500 2.500 3.000\n"
    assert write_imod_points(tmp_path / "none.txt", np.zeros((0, 3))).read_text() == ""


def test_bad_input_and_protected_output(tmp_path):
    with pytest.raises(ValueError, match="start at 1"):
        write_imod_points(tmp_path / "zero.txt", np.zeros((1, 3)), object_ids=[0])
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        write_imod_points(tmp_path / "flat.txt", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        write_imod_points(tmp_path / "nan.txt", np.array([[1.0, np.nan, 2.0]]))
    assert not (tmp_path / "nan.txt").exists()
    path = tmp_path / "kept.txt"
    path.write_text("keep")
    with pytest.raises(InputError, match="exists"):
        write_imod_points(path, np.zeros((1, 3)))
    assert path.read_text() == "keep"
