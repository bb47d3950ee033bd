"""Fourier-insertion reconstruction from 2-D tilt images, and ``aitom reconstruct`` on the real 70S stacks.

References: the project's tilt-series simulator (Joseph projector, ``aitom.simulate.tiltseries``), exact
analytic projections of Gaussian blobs for arbitrary projection rotations, NumPy's FFT.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from aitom.cli import main
from aitom.fourier import ctf_2d, fourier_shell_correlation, frequency_grid
from aitom.geometry import relion_angles_to_matrix
from aitom.io import read_particles, read_volume, write_volume
from aitom.io.relion5 import read_tomograms_star
from aitom.ops.reconstruction import (
    FourierSums,
    finish_reconstruction,
    insert_for_reconstruction,
    insert_tilt_images,
    reconstruct_subtomogram,
)
from aitom.simulate.tiltseries import project_tilt_series

SIZE = 32
DATA = Path(__file__).parent / "data" / "relion5"
STEM = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12"


def _blobs(seed: int = 0, n: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centres ``(n, 3)`` (x, y, z voxels from the box centre), widths and amplitudes of Gaussian blobs."""
    generator = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n, 3, generator=generator, dtype=torch.float64) * 2 - 1) * SIZE / 5
    sigmas = 1.2 + 1.3 * torch.rand(n, generator=generator, dtype=torch.float64)
    amplitudes = 0.5 + torch.rand(n, generator=generator, dtype=torch.float64)
    return centres, sigmas, amplitudes


def _blob_volume(centres: torch.Tensor, sigmas: torch.Tensor, amplitudes: torch.Tensor) -> torch.Tensor:
    axis = torch.arange(SIZE, dtype=torch.float64) - SIZE // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    position = torch.stack((x, y, z), dim=-1)[..., None, :]  # (Z, Y, X, 1, 3)
    squared = ((position - centres) ** 2).sum(dim=-1)
    return (amplitudes * torch.exp(-squared / (2 * sigmas**2))).sum(dim=-1)


def _blob_projections(centres, sigmas, amplitudes, rotations: torch.Tensor) -> torch.Tensor:
    """Exact line integrals ``∫ v(M.T (u, v, w)) dw`` of the blobs for every rotation ``M``: ``(T, S, S)``."""
    axis = torch.arange(SIZE, dtype=torch.float64) - SIZE // 2
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    projected = torch.einsum("tij,nj->tni", rotations.double(), centres)[..., :2]  # (T, n, 2)
    du = u[None, ..., None] - projected[:, None, None, :, 0]
    dv = v[None, ..., None] - projected[:, None, None, :, 1]
    scale = amplitudes * math.sqrt(2 * math.pi) * sigmas
    return (scale * torch.exp(-(du**2 + dv**2) / (2 * sigmas**2))).sum(dim=-1)


def _ry(angles_deg: torch.Tensor) -> torch.Tensor:
    radians = torch.deg2rad(angles_deg.double())
    c, s = torch.cos(radians), torch.sin(radians)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack((c, zero, s, zero, one, zero, -s, zero, c), dim=-1).reshape(-1, 3, 3)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack((a.flatten(), b.flatten())).double())[0, 1])


def _filter_images(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    spectrum = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1))), dim=(-2, -1))
    filtered = torch.fft.ifft2(torch.fft.ifftshift(spectrum * kernel, dim=(-2, -1)))
    return torch.fft.fftshift(filtered, dim=(-2, -1)).real


@pytest.fixture(scope="module")
def blobs():
    return _blobs()


@pytest.fixture(scope="module")
def volume(blobs) -> torch.Tensor:
    return _blob_volume(*blobs).float()


@pytest.fixture(scope="module")
def real_rotations() -> torch.Tensor:
    """The 37 projection rotations of the real tilt series Unt_083 (tilts up to ±76°, tilt axis near y)."""
    series = read_tomograms_star(DATA / f"{STEM}_tomograms.star")["Unt_083.tomostar"]
    return torch.tensor(series.rotations, dtype=torch.float32)


def test_simulator_full_tilt_range_recovers_the_volume(volume, device):
    """±90° at 1° with the simulator's projector: FSC with the truth > 0.9 up to 0.40 cycles/voxel."""
    angles = torch.arange(-90.0, 90.0, 1.0)
    tilts = project_tilt_series(volume, angles)
    reconstruction, _ = reconstruct_subtomogram(
        tilts.to(device), _ry(angles).float().to(device), wiener_constant=1e-3
    )
    frequency, fsc = fourier_shell_correlation(reconstruction.cpu(), volume)
    assert bool((fsc[frequency <= 0.40] > 0.9).all()), fsc
    assert _correlation(reconstruction.cpu(), volume) > 0.999
    # same scale: line integrals in voxel units come back as values per voxel
    assert float((reconstruction.cpu() * volume).sum() / (volume * volume).sum()) == pytest.approx(
        1.0, abs=0.03
    )


def test_exact_projections_recover_the_volume_up_to_the_band_limit(blobs, volume, device):
    """±90° at 1°, exact line integrals: FSC with the truth > 0.9 up to 0.44 cycles/voxel (shell 14 of 16)."""
    angles = torch.arange(-90.0, 90.0, 1.0)
    rotations = _ry(angles)
    images = _blob_projections(*blobs, rotations).float()
    reconstruction, _ = reconstruct_subtomogram(
        images.to(device), rotations.float().to(device), wiener_constant=1e-3
    )
    frequency, fsc = fourier_shell_correlation(reconstruction.cpu(), volume)
    assert bool((fsc[frequency <= 0.44] > 0.9).all()), fsc


def test_real_geometry_and_particle_frame(blobs, real_rotations, device):
    """Exact projections through the real 37-tilt geometry; RELION's particle frame uses M = R_tilt A."""
    angles = torch.tensor([[53.913, 104.84, -78.58]], dtype=torch.float64)
    particle_matrix = relion_angles_to_matrix(angles)[0]
    centres, sigmas, amplitudes = blobs
    particle = (centres @ particle_matrix.T, sigmas, amplitudes)  # the reference rotated actively by A
    images = _blob_projections(*particle, real_rotations).float()
    tomogram_frame, weight = reconstruct_subtomogram(
        images.to(device), real_rotations.to(device), wiener_constant=1e-3
    )
    truth = _blob_volume(*particle).float()
    missing = weight.cpu() < 1e-3 * weight.max().cpu()
    wedge_filtered = torch.fft.ifftn(
        torch.fft.ifftshift(torch.fft.fftshift(torch.fft.fftn(truth)) * ~missing)
    ).real
    assert _correlation(tomogram_frame.cpu(), wedge_filtered) > 0.99
    assert _correlation(tomogram_frame.cpu(), truth) > 0.9
    in_particle_frame, _ = reconstruct_subtomogram(
        images.to(device),
        (real_rotations.double() @ particle_matrix).float().to(device),
        wiener_constant=1e-3,
    )
    reference = _blob_volume(*blobs).float()
    assert _correlation(in_particle_frame.cpu(), reference) > 0.9
    mirrored = reference.flip(0).roll(1, 0)  # the other hand (z -> -z about the box centre)
    assert (
        _correlation(in_particle_frame.cpu(), reference)
        > _correlation(in_particle_frame.cpu(), mirrored) + 0.2
    )


def test_weight_is_zero_in_the_missing_wedge(device):
    angles = torch.arange(-60.0, 60.1, 3.0)
    images = torch.zeros(len(angles), SIZE, SIZE, device=device)
    _, weight = reconstruct_subtomogram(images, _ry(angles).float().to(device))
    grid = frequency_grid((SIZE,) * 3, device=device) * SIZE  # (kx, ky, kz) in voxels
    kx, kz = grid[..., 0].abs(), grid[..., 2].abs()
    radius = grid.norm(dim=-1)
    band = (radius >= 4) & (radius < SIZE / 2 - 1)
    deep_in_wedge = band & (torch.rad2deg(torch.atan2(kz, kx)) > 70)
    well_observed = band & (torch.rad2deg(torch.atan2(kz, kx)) < 50)
    assert float(weight[deep_in_wedge].max()) < 1e-6
    assert float(weight[well_observed].min()) > 0.05
    # Friedel symmetric, up to float32 rounding of the scatter-add (its order differs on CUDA)
    scale = float(weight.abs().max())
    torch.testing.assert_close(
        weight, weight.flip(0, 1, 2).roll((1, 1, 1), (0, 1, 2)), rtol=1e-5, atol=1e-6 * scale
    )


def test_ctf_wiener_and_premultiplied_match_the_ctf_free_reconstruction(blobs, real_rotations, device):
    images = _blob_projections(*blobs, real_rotations).float()
    defocus_um = torch.linspace(1.5, 3.5, len(images))
    ctfs = ctf_2d((SIZE, SIZE), pixel_size_a=8.0, defocus_u_um=defocus_um, rfft=False, centered=True)
    raw = _filter_images(images, ctfs)
    premultiplied = _filter_images(images, ctfs**2)
    rotations = real_rotations.to(device)
    free, _ = reconstruct_subtomogram(images.to(device), rotations, wiener_constant=0.01)
    wiener, weight = reconstruct_subtomogram(raw.to(device), rotations, ctfs.to(device), wiener_constant=0.01)
    premult, _ = reconstruct_subtomogram(
        premultiplied.to(device), rotations, ctfs.to(device), wiener_constant=0.01, ctf_premultiplied=True
    )
    flipped, _ = reconstruct_subtomogram(raw.to(device), rotations, ctfs.to(device), mode="phase_flip")
    assert _correlation(wiener.cpu(), free.cpu()) > 0.9
    assert _correlation(premult.cpu(), free.cpu()) > 0.9
    assert (
        _correlation(flipped.cpu(), free.cpu()) > 0.5
    )  # |CTF|-weighted: right sign, not amplitude-corrected
    uncorrected, _ = reconstruct_subtomogram(raw.to(device), rotations, wiener_constant=0.01)
    assert _correlation(uncorrected.cpu(), free.cpu()) < 0.5  # the CTF does matter here
    assert float(weight.min()) >= 0.0


def test_insert_single_image_on_the_central_plane(device):
    """A 0° image lands on the kz = 0 plane of the 3-D spectrum with its 2-D DFT values (NumPy reference)."""
    image = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    data, weight = insert_tilt_images(image.to(device), torch.eye(3, dtype=torch.float64)[None].to(device))
    reference = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image[0].numpy())))
    grid = np.stack(np.meshgrid(np.arange(8) - 4, np.arange(8) - 4, indexing="xy"), axis=-1)
    inside = (grid**2).sum(axis=-1) < 16
    np.testing.assert_allclose(data[4].cpu().numpy()[inside], reference[inside], atol=1e-10)
    assert float(data[4].cpu().abs().numpy()[~inside].max()) == 0.0
    assert float(weight.sum()) == pytest.approx(inside.sum()) and float(weight[4].sum()) == pytest.approx(
        inside.sum()
    )
    assert float(data.abs().sum() - data[4].abs().sum()) == 0.0


def test_batches_equal_single_reconstructions(real_rotations, device):
    generator = torch.Generator().manual_seed(4)
    images = torch.randn(2, 37, SIZE, SIZE, generator=generator).to(device)
    rotations = torch.stack((real_rotations, real_rotations.flip(0))).to(device)
    batched, batched_weight = reconstruct_subtomogram(images, rotations)
    for i in range(2):
        single, single_weight = reconstruct_subtomogram(images[i], rotations[i])
        torch.testing.assert_close(batched[i], single, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(batched_weight[i], single_weight)


def test_bad_arguments_raise():
    images = torch.zeros(3, 8, 8)
    with pytest.raises(ValueError, match="rotations"):
        reconstruct_subtomogram(images, torch.eye(3)[None])
    with pytest.raises(ValueError, match="mode"):
        reconstruct_subtomogram(images, torch.eye(3).expand(3, 3, 3), mode="magic")
    with pytest.raises(ValueError, match="images"):
        insert_tilt_images(torch.zeros(3, 8, 6), torch.eye(3).expand(3, 3, 3))


@pytest.fixture
def real_subset(tmp_path) -> dict[str, Path]:
    """Particles STAR of the 5 particles whose stacks are copied in tests/data/relion5 (absolute paths)."""
    blocks = starfile.read(DATA / f"{STEM}.star", always_dict=True)
    particles = blocks["particles"]
    paths = [DATA / name for name in particles["rlnImageName"]]
    keep = [path.is_file() for path in paths]
    blocks["particles"] = particles[keep].assign(rlnImageName=[str(p) for p, k in zip(paths, keep) if k])
    star = tmp_path / "particles.star"
    starfile.write(blocks, star)
    tomograms = tmp_path / "tomograms.star"
    shutil.copy(DATA / f"{STEM}_tomograms.star", tomograms)
    return {"particles": star, "tomograms": tomograms, "blocks": blocks}


def _reconstruct(paths: dict, out: Path, *extra: str) -> int:
    return main(
        [
            "reconstruct",
            "--particles",
            str(paths["particles"]),
            "--tomograms",
            str(paths["tomograms"]),
            "--out",
            str(out),
            *extra,
        ]
    )


def test_cli_reconstructs_the_real_stacks(real_subset, tmp_path):
    out = tmp_path / "out"
    assert (
        _reconstruct(real_subset, out, "--in-particle-frame", "--coordinate-pixel-size", "12", "--average")
        == 0
    )
    average, header = read_volume(out / "average.mrc")
    assert average.shape == (32, 32, 32) and header.voxel_size_a == pytest.approx((12.0, 12.0, 12.0))
    table = read_particles(out / "particles.star", require=("rlnImageName", "rlnTomoName"))
    assert len(table) == 5
    for name, weight_name in zip(table["rlnImageName"], table["rlnCtfImage"]):
        volume, header = read_volume(out / name)
        weight, _ = read_volume(out / weight_name)
        assert volume.shape == weight.shape == (32, 32, 32)
        assert header.voxel_size_a == pytest.approx((12.0, 12.0, 12.0))
        assert bool(torch.isfinite(volume).all()) and float(weight.min()) >= 0.0
    assert table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy().max() == 0.0
    first = real_subset["blocks"]["particles"].iloc[0]
    np.testing.assert_allclose(  # 12 A coordinates of a tomogram at 12 A come back unchanged
        table[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy()[0],
        first[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(dtype=float),
    )
    assert table["aitomSourceAngleRot"].iloc[0] == first["rlnAngleRot"]


def _write_blocks(blocks: dict, path: Path) -> Path:
    starfile.write(blocks, path, overwrite=True)
    return path


@pytest.mark.parametrize(
    "problem", ["unknown_tomogram", "short_stack", "pixel_size", "stack_pixel_size", "missing_column"]
)
def test_cli_bad_input_exits_2_and_writes_nothing(real_subset, tmp_path, problem, capsys):
    blocks = {name: block.copy() for name, block in real_subset["blocks"].items()}
    particles = blocks["particles"]
    if problem == "unknown_tomogram":
        particles.loc[particles.index[0], "rlnTomoName"] = "Unt_999.tomostar"
    elif problem == "short_stack":
        stack, _ = read_volume(Path(particles["rlnImageName"].iloc[0]), allow_2d=True)
        short = write_volume(tmp_path / "short.mrcs", stack[:20], 12.0)
        particles.loc[particles.index[0], "rlnImageName"] = str(short)
    elif problem == "stack_pixel_size":  # the stack's header disagrees with rlnImagePixelSize (12 Å)
        stack, _ = read_volume(Path(particles["rlnImageName"].iloc[0]), allow_2d=True)
        other = write_volume(tmp_path / "other.mrcs", stack, 10.0)
        particles.loc[particles.index[0], "rlnImageName"] = str(other)
    elif problem == "pixel_size":
        blocks["optics"] = blocks["optics"].assign(rlnTomoTiltSeriesPixelSize=1.5)
    else:
        blocks["particles"] = particles.drop(columns="rlnImageName")
    paths = dict(real_subset, particles=_write_blocks(blocks, tmp_path / "bad.star"))
    out = tmp_path / "out"
    assert _reconstruct(paths, out) == 2
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("aitom: error:")
    if problem == "stack_pixel_size":
        assert message[0].endswith("other.mrcs: pixel size 10 Å in the header, rlnImagePixelSize 12 Å")
    assert not out.exists()


def test_cli_stack_of_visible_frames_only_equals_the_full_stack(real_subset, tmp_path):
    """A stack may hold one image per frame or one per visible frame (here 34 of 37): same subtomogram."""
    blocks = {name: block.copy() for name, block in real_subset["blocks"].items()}
    first = blocks["particles"].iloc[:1].copy()
    stack, _ = read_volume(Path(first["rlnImageName"].iloc[0]), allow_2d=True)
    visible = np.array(
        [int(v) for v in first["rlnTomoVisibleFrames"].iloc[0].strip("[]").split(",")], dtype=bool
    )
    assert visible.sum() == 34
    visible_only = write_volume(tmp_path / "visible.mrcs", stack[torch.from_numpy(visible)], 12.0)
    results = []
    for name, path in (("full", first["rlnImageName"].iloc[0]), ("visible", str(visible_only))):
        blocks["particles"] = first.assign(rlnImageName=[path])
        paths = dict(real_subset, particles=_write_blocks(blocks, tmp_path / f"{name}.star"))
        assert _reconstruct(paths, tmp_path / name, "--invert", "no") == 0
        results.append(read_volume(tmp_path / name / "subtomograms" / "000001.mrc")[0])
    torch.testing.assert_close(results[0], results[1])


def test_gradients_float64():
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(2, 6, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    rotations = _ry(torch.tensor([-30.0, 20.0]))
    ctfs = 0.5 + torch.rand(2, 6, 6, generator=generator, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: reconstruct_subtomogram(x, rotations, ctfs, padding_factor=1)[0], (images,)
    )


def test_merged_sums_equal_one_reconstruction_of_all_tilts(real_rotations, device):
    """Summing the per-particle accumulators = reconstructing all their tilt images as one particle."""
    generator = torch.Generator().manual_seed(6)
    images = torch.randn(2, 37, SIZE, SIZE, generator=generator).to(device)
    rotations = torch.stack((real_rotations, real_rotations.flip(0))).to(device)
    sums = insert_for_reconstruction(images, rotations)
    merged = FourierSums(*(field.sum(dim=0) for field in sums))
    volume, weight = finish_reconstruction(merged, SIZE)
    expected, expected_weight = reconstruct_subtomogram(images.flatten(0, 1), rotations.flatten(0, 1))
    torch.testing.assert_close(volume, expected, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(weight, expected_weight, atol=1e-4, rtol=1e-4)


def test_mirrored_angles_bring_the_mirrored_reference_onto_the_mirrored_particle():
    from aitom.commands.reconstruct import mirrored_angles_deg
    from aitom.geometry import random_rotations, relion_angles_to_matrix, rotate_volume
    from aitom.geometry.euler import matrix_to_relion_angles
    from aitom.ops.handedness import mirror_volume

    generator = torch.Generator().manual_seed(3)
    reference = torch.zeros(24, 24, 24, dtype=torch.float64)
    reference[8:16, 10:14, 11:13] = 1.0  # an asymmetric L
    reference[8:10, 10:18, 11:13] = 1.0
    reference[14:16, 10:12, 11:19] = 1.0
    angles = matrix_to_relion_angles(random_rotations(3, generator=generator, dtype=torch.float64)).numpy()
    flipped = mirrored_angles_deg(angles)
    for a, b in zip(
        relion_angles_to_matrix(torch.tensor(angles)), relion_angles_to_matrix(torch.tensor(flipped))
    ):
        expected = mirror_volume(rotate_volume(reference, a), "z")
        got = rotate_volume(mirror_volume(reference, "z"), b)
        assert torch.corrcoef(torch.stack([expected.flatten(), got.flatten()]))[0, 1] > 0.999


def test_cli_flip_hand_mirrors_volumes_and_weights(real_subset, tmp_path):
    assert _reconstruct(real_subset, tmp_path / "a", "--invert", "no", "--average") == 0
    assert _reconstruct(real_subset, tmp_path / "b", "--invert", "no", "--average", "--flip-hand") == 0
    from aitom.ops.handedness import mirror_volume

    for name in ("subtomograms/000001.mrc", "weights/000001.mrc", "average.mrc"):
        plain, _ = read_volume(tmp_path / "a" / name)
        flipped, _ = read_volume(tmp_path / "b" / name)
        torch.testing.assert_close(flipped, mirror_volume(plain, "z"))
