"""Slice montages: a real PNG of plausible size, picks drawn where their spheres cut the shown slices,
class colours, protected outputs."""

from __future__ import annotations

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
import torch

from aitom.errors import InputError
from aitom.io import save_montage, slice_positions
from aitom.io.montage import PICK_COLOUR

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(24, 32, 40)).astype(np.float32)


def render(volume, path, **kwargs) -> np.ndarray:
    save_montage(volume, path, n_slices=4, **kwargs)
    return matplotlib.image.imread(path)[..., :3]


def test_slice_positions_are_centres_of_equal_parts():
    assert slice_positions(32, 4) == [4, 12, 20, 28]
    assert slice_positions(24, 16) == [int((k + 0.5) * 1.5) for k in range(16)]
    assert slice_positions(3, 10) == [0, 1, 2]
    with pytest.raises(ValueError, match="at least 1"):
        slice_positions(10, 0)


def test_writes_a_png_of_plausible_size(tmp_path, volume, device):
    path = save_montage(torch.from_numpy(volume).to(device), tmp_path / "out" / "montage.png", title="noise")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert path.stat().st_size > 20_000
    height, width, _ = matplotlib.image.imread(path).shape
    assert 600 <= width <= 1200 and 900 <= height <= 1400  # 4 columns x (1 + 4 rows) panels of 220 px
    assert [p.name for p in path.parent.iterdir()] == ["montage.png"]


def test_picks_are_drawn_in_their_colour(tmp_path, volume):
    plain = render(volume, tmp_path / "plain.png")
    picked = render(volume, tmp_path / "picked.png", picks_xyz=[[20.0, 16.0, 12.0]], pick_radius_voxels=6)
    assert plain.shape == picked.shape
    changed = np.any(np.abs(picked - plain) > 1e-6, axis=-1)
    assert changed.sum() > 100
    red = np.array(matplotlib.colors.to_rgb(PICK_COLOUR))
    close_to_red = np.linalg.norm(picked[changed] - red, axis=-1) < 0.35
    assert close_to_red.mean() > 0.5  # antialiased circle edges blend with the grey image


def test_picks_away_from_every_shown_slice_change_nothing(tmp_path, volume):
    # shown: XY z = 12 and z = 3, 9, 15, 21; XZ y = 16; YZ x = 20. A radius-2 sphere at (2, 2, 6) cuts none.
    plain = render(volume, tmp_path / "plain.png")
    missed = render(
        volume, tmp_path / "missed.png", picks_xyz=np.array([[2.0, 2.0, 6.0]]), pick_radius_voxels=2
    )
    np.testing.assert_array_equal(plain, missed)


def test_classes_get_their_own_colours(tmp_path, volume):
    picks = np.array([[10.0, 10.0, 12.0], [30.0, 22.0, 12.0]])
    image = render(
        volume, tmp_path / "classes.png", picks_xyz=picks, pick_classes=[1, 2], pick_radius_voxels=5
    )
    plain = render(volume, tmp_path / "plain.png")
    changed = image[np.any(np.abs(image - plain) > 1e-6, axis=-1)]
    for colour in ("tab:blue", "tab:orange"):  # tab10 colours of classes 1 and 2 (circles and legend)
        rgb = np.array(matplotlib.colors.to_rgb(colour))
        assert (np.linalg.norm(changed - rgb, axis=-1) < 0.05).sum() > 20


def test_existing_output_is_protected(tmp_path, volume):
    path = tmp_path / "montage.png"
    path.write_bytes(b"keep")
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        save_montage(volume, path)
    assert path.read_bytes() == b"keep"
    save_montage(volume, path, overwrite=True, n_slices=1)
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_bad_arguments(tmp_path, volume):
    with pytest.raises(InputError, match="cannot write images"):
        save_montage(volume, tmp_path / "montage.mrc")
    with pytest.raises(ValueError, match="Z, Y, X"):
        save_montage(volume[0], tmp_path / "flat.png")
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        save_montage(volume, tmp_path / "bad.png", picks_xyz=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="pick_classes"):
        save_montage(volume, tmp_path / "bad.png", picks_xyz=[[1.0, 2.0, 3.0]], pick_classes=[1, 2])
    assert list(tmp_path.iterdir()) == []


def test_fsc_plot_is_a_png_and_keeps_an_existing_file(tmp_path):
    from aitom.io import save_fsc_plot

    report = {
        "frequency_per_a": [0.0, 0.01, 0.02],
        "classes": [{"class": 1, "particles": 5, "fsc": [1.0, 0.6, 0.1]}],
    }
    path = tmp_path / "fsc.png"
    save_fsc_plot(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path.write_bytes(b"keep")
    with pytest.raises(InputError, match="exists"):
        save_fsc_plot(report, path)
    assert path.read_bytes() == b"keep"
