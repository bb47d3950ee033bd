"""Point-group symmetry: generators against scipy's groups, symmetric orientation errors, and the symmetry
frames of structures found from their atoms (a synthetic structure with a known frame, the library's
constructed ring, and the library maps themselves)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from aitom.errors import InputError
from aitom.geometry import (
    point_group_generators,
    point_group_order,
    point_group_rotations,
    random_rotations,
    rotate_volume,
    rotation_about_axis,
    symmetric_angle_between,
)
from aitom.simulate.library import class_potential, class_symmetry_rotations, symmetry_frame

GROUPS = ["C1", "C2", "C7", "D2", "D7", "T", "O", "I"]


def _same_set(first: np.ndarray, second: np.ndarray, tolerance: float) -> bool:
    distance = np.abs(first[:, None] - second[None]).max(axis=(-1, -2))
    covered = distance.min(1).max() < tolerance and distance.min(0).max() < tolerance
    return len(first) == len(second) and covered


def _closure(generators: np.ndarray) -> np.ndarray:
    elements = [np.eye(3)]
    frontier = list(elements)
    while frontier:
        grown = []
        for element in frontier:
            for generator in generators:
                product = generator @ element
                if all(np.abs(product - known).max() > 1e-6 for known in elements):
                    elements.append(product)
                    grown.append(product)
        frontier = grown
    return np.stack(elements)


@pytest.mark.parametrize("symbol", GROUPS)
def test_generators_generate_scipy_group(symbol):
    group = point_group_rotations(symbol).numpy()
    assert len(group) == point_group_order(symbol)
    assert np.allclose(group[0], np.eye(3))
    assert _same_set(group, Rotation.create_group(symbol).as_matrix(), 1e-9)
    assert _same_set(_closure(point_group_generators(symbol).numpy()), group, 1e-9)


def test_standard_axes():
    def contains(symbol: str, axis: tuple[float, float, float], fold: int) -> bool:
        turn = rotation_about_axis(torch.tensor(axis, dtype=torch.float64), 2 * math.pi / fold)
        return bool((point_group_rotations(symbol) - turn).abs().amax((-1, -2)).min() < 1e-9)

    assert contains("C7", (0, 0, 1), 7) and contains("D7", (1, 0, 0), 2) and not contains("C7", (1, 0, 0), 2)
    assert all(contains("O", axis, 4) for axis in ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    assert all(contains("T", axis, 2) for axis in ((1, 0, 0), (0, 1, 0), (0, 0, 1)))
    assert contains("T", (1, 1, 1), 3)
    golden = (1 + math.sqrt(5)) / 2
    assert contains("I", (0, 1, golden), 5) and all(contains("I", axis, 2) for axis in ((1, 0, 0), (0, 0, 1)))
    with pytest.raises(InputError):
        point_group_order("X3")
    assert point_group_order("D100") == 200 and len(point_group_rotations("C100")) == 100
    with pytest.raises(InputError, match="n above 100"):
        point_group_order("C101")


def test_symmetric_angle_between():
    generator = torch.Generator().manual_seed(0)
    particles = random_rotations(20, generator=generator, dtype=torch.float64)
    group = point_group_rotations("D7")
    equivalent = particles @ group[torch.arange(20) % 14]
    assert symmetric_angle_between(particles, equivalent, group).max() < 1e-6
    assert torch.rad2deg(symmetric_angle_between(particles, equivalent)).max() > 90  # without the symmetry
    # A 5° turn away from an equivalent orientation is 5° away (less than half the group's smallest turn).
    turn = rotation_about_axis(torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64), math.radians(5.0))
    assert torch.allclose(
        torch.rad2deg(symmetric_angle_between(particles @ turn, equivalent, group)),
        torch.full((20,), 5.0, dtype=torch.float64),
        atol=1e-6,
    )


@pytest.mark.parametrize("symbol", ["C3", "D3", "O"])
def test_symmetry_frame_of_synthetic_structure(symbol):
    rng = np.random.default_rng(1)
    subunit = rng.normal(size=(60, 3)) * 6 + np.array([18.0, 5.0, 9.0])
    frame = Rotation.random(random_state=2).as_matrix()
    group = frame @ point_group_rotations(symbol).numpy() @ frame.T
    atoms = np.concatenate([subunit @ rotation.T for rotation in group])
    found, misfit = symmetry_frame(atoms, symbol)
    assert misfit < 0.05
    assert _same_set(point_group_rotations(symbol, frame=found).numpy(), group, 1e-3)


def test_library_ring_frame_is_its_construction():
    # The ring is built as 7 copies about z: its symmetry rotations are the standard C7.
    assert _same_set(class_symmetry_rotations("ring").numpy(), point_group_rotations("C7").numpy(), 1e-3)
    assert len(class_symmetry_rotations("ribosome_30s")) == 1


@pytest.mark.parametrize("name", ["proteasome_20s", "apoferritin"])
def test_library_symmetry_rotations_leave_the_map_unchanged(name):
    """Every symmetry rotation found from the atoms maps the class's potential onto itself at 6 Å
    (correlation >= 0.93, interpolation included), a rotation that is no symmetry does not (< 0.85)."""
    volume = class_potential(name, 6.0)

    def correlation(rotations: torch.Tensor) -> torch.Tensor:
        rotated = rotate_volume(volume.expand(len(rotations), *volume.shape), rotations.float())
        a, b = rotated - rotated.mean((1, 2, 3), keepdim=True), volume - volume.mean()
        return (a * b).sum((1, 2, 3)) / (a.square().sum((1, 2, 3)) * b.square().sum()).sqrt()

    symmetry = class_symmetry_rotations(name)
    assert len(symmetry) == {"proteasome_20s": 14, "apoferritin": 24}[name]
    assert correlation(symmetry).min() >= 0.93
    off = symmetry[1:2] @ rotation_about_axis(torch.tensor([0.2, 0.7, -0.4], dtype=torch.float64), 0.7)
    assert correlation(off).max() < 0.85
