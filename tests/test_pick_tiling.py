"""``aitom pick``: the picks do not depend on ``--tile-voxels`` (DoG, template matching; saliency finds the
same particles), and
``--template-voxel-size`` sets the templates' voxel size (not the tomogram's)."""

from __future__ import annotations

import argparse
import itertools
import math
import subprocess
import sys

import pytest
import torch

from aitom.commands import pick
from aitom.data.tomogram import TomogramTileDataset, axis_tiles
from aitom.errors import InputError
from aitom.geometry import rotate_volume, so3_grid
from aitom.io import read_particles, write_volume

SHAPE = (40, 64, 56)
#: blob centres (z, y, x): some near the faces, some where tiles of 36-48 voxels meet
CENTRES = [(6, 8, 7), (20, 30, 27), (33, 55, 48), (12, 22, 44), (28, 40, 12), (20, 12, 30), (8, 50, 20)]
CENTRES += [(30, 26, 34), (16, 58, 8), (35, 6, 50), (4, 36, 33), (24, 47, 52)]
COLUMNS = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]


def _template(box: int, voxel_fraction: float = 1.0) -> torch.Tensor:
    """An asymmetric blob pair in a cube of ``box`` voxels of ``voxel_fraction`` × 10 Å."""
    z, y, x = torch.meshgrid(*[(torch.arange(float(box)) - box / 2) * voxel_fraction] * 3, indexing="ij")
    return torch.exp(-(x**2 + y**2 + z**2) / 8) + 0.8 * torch.exp(-((x - 3.5) ** 2 + y**2 + z**2) / 2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 40×64×56 tomogram (10 Å voxels): rotated copies of a 12³ template plus noise; the template at
    10 Å, the same template sampled at 5 Å (box 24) with its header right (5 Å) and wrong (1 Å), and a round
    8³ blob (a second template)."""
    folder = tmp_path_factory.mktemp("tiling")
    template = _template(12)
    grid = so3_grid(90.0)
    generator = torch.Generator().manual_seed(3)
    tomogram = 0.15 * torch.randn(SHAPE, generator=generator)
    for index, (z, y, x) in enumerate(CENTRES):
        low = [max(0, c - 6) for c in (z, y, x)]
        high = [min(n, c + 6) for c, n in zip((z, y, x), SHAPE)]
        block = rotate_volume(template, grid[index % len(grid)])
        tomogram[tuple(slice(a, b) for a, b in zip(low, high))] += block[
            tuple(slice(a - c + 6, b - c + 6) for a, b, c in zip(low, high, (z, y, x)))
        ]
    names = ("tomogram", "template", "fine", "fine_unset", "blob")
    paths = {name: folder / f"{name}.mrc" for name in names}
    write_volume(paths["tomogram"], tomogram, 10.0)
    write_volume(paths["template"], template, 10.0)
    write_volume(paths["fine"], _template(24, 0.5), 5.0)
    write_volume(paths["fine_unset"], _template(24, 0.5), 1.0)
    z, y, x = torch.meshgrid(*[torch.arange(8.0) - 4] * 3, indexing="ij")
    write_volume(paths["blob"], torch.exp(-(x**2 + y**2 + z**2) / 4), 10.0)  # a second class: a round blob
    return paths


def run_pick(argv: list[str]) -> int:
    """``aitom pick ARGV`` as the command line runs it (InputError -> exit code 2)."""
    parser = argparse.ArgumentParser(prog="aitom")
    pick.add_parser(parser.add_subparsers(dest="command"))
    try:
        return pick.run(parser.parse_args(["pick", *argv]))
    except InputError:
        return 2


def picks(files, tmp_path, argv: list[str], tile: int | None):
    """The pick table of ``aitom pick ARGV`` on the tomogram, with ``--tile-voxels tile`` (None: one tile)."""
    out = tmp_path / f"picks_{len(list(tmp_path.iterdir()))}.star"
    tiling = ["--tile-voxels", str(tile if tile is not None else max(SHAPE))]
    assert run_pick([*argv, "--tomogram", str(files["tomogram"]), "--out", str(out), *tiling]) == 0
    return read_particles(out)


def assert_same_picks(tiled, whole) -> None:
    """Same positions (and classes, angles) in the same order; scores equal to float tolerance."""
    assert len(tiled) == len(whole) > 3
    assert tiled[COLUMNS].to_numpy().tolist() == whole[COLUMNS].to_numpy().tolist()
    scores = "rlnAutopickFigureOfMerit"
    assert tiled[scores].to_numpy() == pytest.approx(whole[scores].to_numpy(), rel=1e-4, abs=1e-5)
    if "rlnClassNumber" in whole:
        assert tiled["rlnClassNumber"].tolist() == whole["rlnClassNumber"].tolist()
    angles = [column for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi") if column in whole]
    if angles:
        assert tiled[angles].to_numpy() == pytest.approx(whole[angles].to_numpy(), abs=1e-3)


@pytest.mark.parametrize("boundary", ["clamp", "periodic"])
@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(64, 36, 26), (56, 48, 20), (40, 40, 12), (57, 20, 9)]
)
def test_tile_cores_partition_the_axis_away_from_shared_faces(length, tile, overlap, boundary):
    tiles = axis_tiles(length, tile, overlap, boundary)
    cores = [(start, stop) for _, start, stop in tiles]
    assert cores[0][0] == 0 and cores[-1][1] == length
    assert all(stop == next_start for (_, stop), (next_start, _) in itertools.pairwise(cores))
    for index, (start, core_start, core_stop) in enumerate(tiles):
        shared_before = index > 0 or boundary == "periodic"
        shared_after = index < len(tiles) - 1 or boundary == "periodic"
        assert core_start - start >= (overlap // 2 if shared_before and len(tiles) > 1 else 0)
        assert start + tile - core_stop >= (overlap - overlap // 2 if shared_after and len(tiles) > 1 else 0)


def test_periodic_tiles_hold_the_opposite_faces(files):
    """A periodic tile across a face holds the voxels of the opposite face (the FFT's wrap-around)."""
    dataset = TomogramTileDataset(files["tomogram"], tile_voxels=32, overlap_voxels=16, boundary="periodic")
    whole = torch.from_numpy(dataset.array[:].astype("float32"))
    item = dataset[0]
    origin = item["origin_zyx"].tolist()
    assert origin == [-8, -8, -8]
    index = [torch.arange(o, o + 32) % n for o, n in zip(origin, SHAPE)]
    assert torch.equal(item["volume"][0], whole[index[0]][:, index[1]][:, :, index[2]])


@pytest.mark.parametrize("tile", [36, 48])
def test_dog_picks_do_not_depend_on_the_tiles(files, tmp_path, tile):
    """Default overlap (2 × (4 σ2 + min distance)) and the default false-alarm threshold (1e-3) from the
    whole tomogram's scores. Before: each tile set its own threshold and the overlap was 2 × 1.73 σ."""
    argv = ["dog", "--sigma-voxels", "2"]
    assert_same_picks(picks(files, tmp_path, argv, tile), picks(files, tmp_path, argv, None))


def test_dog_fixed_threshold_and_num_peaks_do_not_depend_on_the_tiles(files, tmp_path):
    argv = ["dog", "--sigma-voxels", "2", "--threshold", "0.01", "--num-peaks", "9"]
    tiled, whole = picks(files, tmp_path, argv, 36), picks(files, tmp_path, argv, None)
    assert len(whole) == 9
    assert_same_picks(tiled, whole)


def _matches(table, tolerance: float = 3.0) -> tuple[int, int]:
    """(blobs with a pick within ``tolerance`` voxels, picks within ``tolerance`` of a blob)."""
    picked = torch.tensor(table[COLUMNS].to_numpy(dtype="float64"))
    truth = torch.tensor([centre[::-1] for centre in CENTRES], dtype=torch.float64)
    close = torch.cdist(picked, truth) <= tolerance
    return int(close.any(0).sum()), int(close.any(1).sum())


def test_untiled_saliency_picks_are_those_of_saliency_pick(files, tmp_path):
    from aitom.io import read_volume
    from aitom.ops.saliency import saliency_pick

    table = picks(files, tmp_path, ["saliency", "--radius-voxels", "4"], None)
    coordinates, scores = saliency_pick(read_volume(files["tomogram"])[0], 4.0)
    assert table[COLUMNS[::-1]].to_numpy().tolist() == coordinates.tolist()
    assert table["rlnAutopickFigureOfMerit"].to_numpy() == pytest.approx(scores.numpy(), rel=1e-5)


@pytest.mark.parametrize("tile", [40, 48])
def test_tiled_saliency_finds_every_blob_as_the_whole_tomogram_does(files, tmp_path, tile):
    """Saliency's Robust PCA is per tile, so its scores depend on the tiling; with the default overlap
    (2 × (2 × radius + smoothing reach + min distance) = 34 voxels) and one threshold over all tiles, the
    tiled picks find every blob, none twice and nothing else, like the whole tomogram's."""
    argv = ["saliency", "--radius-voxels", "4"]
    for table in (picks(files, tmp_path, argv, tile), picks(files, tmp_path, argv, None)):
        assert _matches(table) == (len(CENTRES), len(CENTRES)) == (len(CENTRES), len(table))


@pytest.mark.parametrize("tile", [40, 48])
def test_template_picks_do_not_depend_on_the_tiles(files, tmp_path, tile):
    """Default overlap (about twice the box), periodic tiles at the faces, the default false-alarm threshold
    (1e-4) from the whole tomogram's scores."""
    argv = ["template", "--template", str(files["template"]), "--angular-step", "90", "--no-wedge"]
    assert_same_picks(picks(files, tmp_path, argv, tile), picks(files, tmp_path, argv, None))


def test_template_peak_false_alarm_picks_do_not_depend_on_the_tiles(files, tmp_path):
    """The peak-tail threshold from the local maxima of the whole tomogram."""
    argv = ["template", "--template", str(files["template"]), "--angular-step", "90", "--no-wedge"]
    argv += ["--peak-false-alarm-rate", "0.05"]
    assert_same_picks(picks(files, tmp_path, argv, 40), picks(files, tmp_path, argv, None))


@pytest.mark.parametrize("tile", [40, 48])
def test_several_templates_picks_do_not_depend_on_the_tiles(files, tmp_path, tile):
    """Two templates: each one's scores are calibrated by the whole tomogram's pooled statistics, and the
    candidates are the maxima of the best calibrated score, decided once the tiles are merged. Before, every
    tile calibrated its own maps, so the scores (and near the threshold, the picks) depended on the tiling."""
    argv = ["template", "--template", str(files["template"]), str(files["blob"]), "--angular-step", "90"]
    argv += ["--no-wedge"]
    tiled, whole = picks(files, tmp_path, argv, tile), picks(files, tmp_path, argv, None)
    assert set(whole["rlnClassNumber"]) == {1, 2}
    assert_same_picks(tiled, whole)


def test_several_templates_maps_stitched_from_tiles_equal_the_whole(files, tmp_path):
    """--maps with two templates: the stitched best calibrated score and its rotation index are the whole
    tomogram's."""
    from aitom.io import read_volume

    maps = []
    for tile in (40, None):
        argv = ["template", "--template", str(files["template"]), str(files["blob"]), "--angular-step", "90"]
        out = tmp_path / f"maps_{tile}.star"
        tiling = ["--tile-voxels", str(tile or max(SHAPE))]
        command = [*argv, "--no-wedge", "--tomogram", str(files["tomogram"]), "--out", str(out), "--maps"]
        assert run_pick([*command, *tiling]) == 0
        maps.append(
            [
                read_volume(tmp_path / f"maps_{tile}_tomogram_{name}.mrc")[0]
                for name in ("scores", "rotation_index")
            ]
        )
    assert float(maps[1][0].max()) > 5  # z-scores: the particles stand out of the noise
    assert torch.allclose(maps[0][0], maps[1][0], atol=1e-4)
    assert (maps[0][1] != maps[1][1]).float().mean() < 1e-3  # ties between rotations may go either way


def test_template_voxel_size_sets_the_templates_not_the_tomograms(files, tmp_path):
    """A 5 Å template whose header says 1 Å, with --template-voxel-size 5, is resampled to the tomogram's
    10 Å like the same template with its header right: the same picks."""
    common = ["template", "--angular-step", "90", "--no-wedge"]
    right = picks(files, tmp_path, [*common, "--template", str(files["fine"])], None)
    fixed = [*common, "--template", str(files["fine_unset"]), "--template-voxel-size", "5"]
    assert_same_picks(picks(files, tmp_path, fixed, None), right)


@pytest.mark.parametrize("value", ["-5", "nan", "inf"])
def test_template_voxel_size_must_be_a_positive_length(files, tmp_path, value):
    out = tmp_path / "picks.star"
    argv = ["template", "--tomogram", str(files["tomogram"]), "--template", str(files["fine"])]
    argv += ["--out", str(out), f"--template-voxel-size={value}"]
    parser = argparse.ArgumentParser(prog="aitom")
    pick.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(InputError, match=r"--template-voxel-size must be a positive number of Å"):
        pick.run(parser.parse_args(["pick", *argv]))
    assert not out.exists()


def test_template_voxel_size_zero_is_one_line_and_exit_2(files, tmp_path):
    out = tmp_path / "picks.star"
    argv = ["pick", "template", "--tomogram", str(files["tomogram"]), "--template", str(files["fine"])]
    argv += ["--out", str(out), "--template-voxel-size", "0"]
    result = subprocess.run([sys.executable, "-m", "aitom.cli", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--template-voxel-size" in result.stderr and "Å" in result.stderr
    assert not out.exists()


def test_default_overlap_covers_the_filter_and_the_peak_spacing():
    """DoG: 2 × (4 σ2 rounded + min distance); saliency: 2 × (2 × SLIC spacing + smoothing kernel radius +
    min distance)."""
    from aitom.tasks.pick import DoGPicker, SaliencyPicker

    assert DoGPicker(2.0, 2.2).tile_overlap_voxels == 2 * (math.floor(4 * 2.2 + 0.5) + 4)
    # saliency: 2 × (2 × grid spacing 4 + the σ 4/3 smoothing kernel's radius 5 + min distance 4)
    assert SaliencyPicker(4.0).tile_overlap_voxels == 2 * (2 * 4 + 5 + 4)


def test_template_maps_stitched_from_periodic_tiles_equal_the_whole(files, tmp_path):
    """--maps: the score and rotation-index maps stitched from the tile cores are the whole tomogram's."""
    from aitom.io import read_volume

    maps = []
    for tile in (40, None):
        argv = ["template", "--template", str(files["template"]), "--angular-step", "90", "--no-wedge"]
        out = tmp_path / f"maps_{tile}.star"
        tiling = ["--tile-voxels", str(tile or max(SHAPE))]
        command = [*argv, "--tomogram", str(files["tomogram"]), "--out", str(out), "--maps", *tiling]
        assert run_pick(command) == 0
        maps.append(
            [
                read_volume(tmp_path / f"maps_{tile}_tomogram_{name}.mrc")[0]
                for name in ("scores", "rotation_index")
            ]
        )
    assert torch.allclose(maps[0][0], maps[1][0], atol=1e-5)
    assert (maps[0][1] != maps[1][1]).float().mean() < 1e-3  # ties between rotations may go either way


def test_a_tile_smaller_than_the_needed_overlap_names_the_particle_size(files, tmp_path):
    """DoG σ 30 voxels needs tiles overlapping by 2 × (4 σ2 + 2 σ) voxels: more than 32-voxel tiles."""
    argv = ["dog", "--sigma-voxels", "30", "--tile-voxels", "32"]
    argv += ["--tomogram", str(files["tomogram"]), "--out", str(tmp_path / "picks.star")]
    parser = argparse.ArgumentParser(prog="aitom")
    pick.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(
        InputError, match=r"needs tiles overlapping by 384 voxels, more than --tile-voxels 32"
    ):
        pick.run(parser.parse_args(["pick", *argv]))


def test_whitened_scores_hardly_depend_on_the_tiles(files, tmp_path):
    """--whiten whitens every tile by the whole tomogram's power spectrum (Welch's estimate over segments),
    so the tiles share one filter. The filter still acts circularly on each tile, so the stitched score map
    is close to, not equal to, the whole tomogram's: within 0.005 of scores up to 0.49 (measured 0.0034;
    with each tile's own spectrum, as before, 0.030)."""
    from aitom.io import read_volume

    scores = []
    for tile in (40, None):
        argv = ["template", "--template", str(files["template"]), "--angular-step", "90", "--no-wedge"]
        out = tmp_path / f"maps_{tile}.star"
        tiling = ["--tile-voxels", str(tile or max(SHAPE))]
        command = [*argv, "--whiten", "--tomogram", str(files["tomogram"]), "--out", str(out), "--maps"]
        assert run_pick([*command, *tiling]) == 0
        scores.append(read_volume(tmp_path / f"maps_{tile}_tomogram_scores.mrc")[0])
    assert float(scores[1].max()) > 0.4
    assert float((scores[0] - scores[1]).abs().max()) < 0.005
