"""More awkward inputs to ``aitom align``, ``aitom hand`` and ``aitom reconstruct``: each must either
work (with a one-line warning where the input is odd but usable) or stop with exit code 2, one line on
stderr naming the file or option and the problem, and no output written or replaced."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from aitom.cli import main
from aitom.commands.reconstruct import ReconstructWarning
from aitom.io import read_volume, write_volume
from tests.align_fixtures import blob_volume
from tests.test_cli_awkward_inputs import RELION5, STEM, _one_error_line, _reconstruct

FAST_ALIGN = ["--step", "60", "--max-shift", "1"]
FAST_HAND = ["--step", "60"]
SERIES = "Unt_083.tomostar"

# --- aitom align ------------------------------------------------------------------------------------------


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    """Two different 16³ blob maps at 10 Å."""
    write_volume(tmp_path / "a.mrc", blob_volume(16), 10.0)
    write_volume(tmp_path / "b.mrc", blob_volume(16, "b"), 10.0)
    return tmp_path / "a.mrc", tmp_path / "b.mrc"


@pytest.mark.parametrize("seed", ["-1", str(2**32), str(2**64)])
@pytest.mark.parametrize("command", ["align", "pick", "pipeline", "estimate", "average"])
def test_seeds_outside_0_to_2_32_exit_2(pair, tmp_path, capsys, command, seed):
    """--seed 2^64 was torch's traceback in align (Overflow when unpacking long long); -1 or 2^32 in pick
    and pipeline a ValueError traceback from Lightning's seed_everything (numpy takes 0 to 2^32 - 1)."""
    a, b = map(str, pair)
    argv = {
        "align": ["align", a, b, *FAST_ALIGN],
        "pick": ["pick", "dog", "--tomogram", a, "--out", str(tmp_path / "picks.star")],
        "pipeline": ["pipeline", "--tomogram", a, "--out", str(tmp_path / "run")],
        "estimate": ["estimate", "snr", "--pairs-a", a, "--pairs-b", b],
        "average": ["average", "--particles", str(tmp_path / "p.star"), "--out", str(tmp_path / "avg")],
    }[command]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--seed", seed])
    assert stop.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith(f"error: argument --seed: must lie in [0, 4294967295], got {seed}")
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.mrc", "b.mrc"]


@pytest.mark.parametrize("source", ["override", "config"])
def test_pipeline_config_seed_outside_0_to_2_32_exits_2(pair, tmp_path, capsys, source):
    """seed: -3 in the config (or seed=-3 as an override) was a ValueError traceback at the picking step,
    after the denoised tomogram had been computed."""
    config = tmp_path / "config.yaml"
    config.write_text("seed: -3\n")
    settings = ["seed=-3"] if source == "override" else ["--config", str(config)]
    assert main(["pipeline", "--tomogram", str(pair[0]), "--out", str(tmp_path / "run"), *settings]) == 2
    assert _one_error_line(capsys) == "seed: must lie in [0, 4294967295], got -3"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("wedge", ["0", "30,30"])
def test_align_zero_width_tilt_range_is_refused(pair, capsys, wedge):
    """``--wedge-a 0`` (read as 'no missing wedge') kept one plane of A's Fourier space and aligned two
    different maps with a score of 0.98."""
    with pytest.raises(SystemExit) as stop:
        main(["align", *map(str, pair), *FAST_ALIGN, "--wedge-a", wedge])
    assert stop.value.code == 2
    assert "observes a single plane of Fourier space" in capsys.readouterr().err


# --- aitom hand -------------------------------------------------------------------------------------------


def _hand(average: Path, reference: Path, *extra: str) -> int:
    return main(["hand", str(average), str(reference), *FAST_HAND, *extra])


@pytest.mark.parametrize("flat", ["average", "reference"])
def test_hand_constant_map_exits_2(pair, tmp_path, capsys, flat):
    """A constant map gave exit code 0 and 'matches the average in neither hand (correlation 0.000 ...)'."""
    zero = tmp_path / "zero.mrc"
    write_volume(zero, torch.zeros(16, 16, 16), 10.0)
    maps = (zero, pair[0]) if flat == "average" else (pair[0], zero)
    assert _hand(*maps) == 2
    assert _one_error_line(capsys) == f"{zero}: map is constant (0 everywhere): no structure to compare"


def test_hand_average_without_voxel_size_exits_2(pair, tmp_path, capsys):
    """An average whose header says 0 Å was a traceback (rescale_volume: voxel sizes must be positive)."""
    unset = tmp_path / "unset.mrc"
    with mrcfile.new(unset) as file:
        file.set_data(blob_volume(16).numpy())
        file.voxel_size = 0.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _hand(unset, pair[1]) == 2
    assert not caught  # the refusal alone, not also the header's warning
    assert _one_error_line(capsys) == (
        f"{unset}: voxel size 0 Å in the header is not positive; pass --voxel-size"
    )


@pytest.mark.parametrize("reference_voxel_a", [1.0, 12.0])
def test_hand_average_with_unset_voxel_size_says_so(pair, tmp_path, capsys, reference_voxel_a):
    """A 32³ average whose header says 1 Å (unset) was warned 'pass --voxel-size', then refused with
    '--lowpass 40 Å is coarser than the box (32 Å)', which blamed the default low-pass; a 12 Å reference was
    first resampled onto the 32 Å box."""
    average = write_volume(tmp_path / "unset.mrc", blob_volume(32), 1.0)
    reference = write_volume(tmp_path / "reference.mrc", blob_volume(32), reference_voxel_a)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _hand(average, reference) == 2
    assert not caught
    assert _one_error_line(capsys) == (
        f"{average}: voxel size 1 Å in the header looks unset (a 32 Å box cannot hold the 40 Å low-pass); "
        "pass --voxel-size"
    )
    assert _hand(average, reference, "--voxel-size", "12") == 0
    if reference_voxel_a != 1.0:  # a low-pass that fits the unset box: the reference is not resampled to it
        assert _hand(average, reference, "--lowpass", "8") == 2
        assert _one_error_line(capsys) == (
            f"{reference}: this reference's header gives 12 Å voxels, while the data's 1 Å looks unset: pass "
            "the data's --voxel-size (Å)"
        )


@pytest.mark.parametrize("which", [0, 1])
def test_hand_mirrored_out_never_replaces_an_input(pair, capsys, which):
    """``--mirrored-out`` naming the average or the reference, with --overwrite, replaced that input."""
    before = pair[which].read_bytes()
    assert _hand(*pair, "--mirrored-out", str(pair[which]), "--overwrite") == 2
    assert _one_error_line(capsys) == (
        f"{pair[which]}: is also an input ({pair[which]}): write the output to another file"
    )
    assert pair[which].read_bytes() == before


def test_hand_mirrored_out_that_cannot_be_an_mrc_file_exits_2_before_work(pair, tmp_path, capsys):
    """``--mirrored-out R.tif`` wrote MRC data under a TIFF name; ``A.mrc/R.mrc`` failed only after the
    search, naming A.mrc ('cannot create the output folder')."""
    assert _hand(*pair, "--mirrored-out", str(tmp_path / "r.tif")) == 2
    assert "the output is written as an MRC volume" in _one_error_line(capsys)
    assert not (tmp_path / "r.tif").exists()
    under = pair[0] / "r.mrc"
    assert _hand(*pair, "--mirrored-out", str(under)) == 2
    assert _one_error_line(capsys) == f"{under}: cannot be created: {pair[0]} is a file, not a folder"


def test_hand_tiny_average_exits_2(tmp_path, capsys):
    """4³ maps, identical: exit code 0 and 'undecided' (2³: 'neither hand')."""
    tiny = tmp_path / "tiny.mrc"
    write_volume(tiny, torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(0)), 10.0)
    assert _hand(tiny, tiny) == 2
    assert "the average is too small to tell hands apart: (4, 4, 4) voxels" in _one_error_line(capsys)


def test_hand_lowpass_coarser_than_the_box_exits_2(pair, capsys):
    """--lowpass 100000 on a 160 Å box left the mean alone: correlation 1.000 in both hands, exit code 0."""
    assert _hand(*pair, "--lowpass", "100000") == 2
    assert _one_error_line(capsys).startswith("--lowpass 100000 Å is coarser than the box (160 Å)")


# --- aitom reconstruct ------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path) -> Path:
    """tests/data/relion5 as a project folder whose particles table keeps the first particle only."""
    folder = tmp_path / "project"
    shutil.copytree(RELION5, folder)
    blocks = starfile.read(folder / f"{STEM}.star", always_dict=True)
    blocks["particles"] = blocks["particles"].iloc[:1].reset_index(drop=True)
    starfile.write(blocks, folder / f"{STEM}.star", overwrite=True)
    return folder


def _variant(
    project: Path,
    particles: Callable[[dict], None] | None = None,
    tomograms: Callable[[dict], None] | None = None,
) -> tuple[Path, Path]:
    """Copies of the particles and tomograms STAR files with ``particles`` / ``tomograms`` applied to their
    blocks."""
    paths = []
    for name, edit in ((f"{STEM}.star", particles), (f"{STEM}_tomograms.star", tomograms)):
        blocks = starfile.read(project / name, always_dict=True)
        if edit is not None:
            edit(blocks)
        paths.append(project / f"edited_{name}")
        starfile.write(blocks, paths[-1])
    return paths[0], paths[1]


def _stack_path(project: Path) -> Path:
    name = starfile.read(project / f"{STEM}.star", always_dict=True)["particles"]["rlnImageName"][0]
    return project / name


def _aitom_warnings(caught: pytest.WarningsRecorder) -> list[str]:
    """The messages of aitom's own warnings (the one-line ``aitom: warning:`` kind) among ``caught``."""
    return [str(warning.message) for warning in caught if warning.category.__module__.startswith("aitom.")]


def _run(particles: Path, tomograms: Path, out: Path, *extra: str) -> int:
    return _reconstruct(particles, tomograms, out, "--coordinate-pixel-size", "12", *extra)


def test_reconstruct_infinite_coordinate_pixel_size_names_the_option(project, tmp_path, capsys):
    """It was blamed on the particles file ('particle 1 lies outside tomogram ... (inf, inf, inf) Å')."""
    particles, tomograms = _variant(project)
    out = tmp_path / "out"
    assert _reconstruct(particles, tomograms, out, "--coordinate-pixel-size", "inf") == 2
    assert (
        _one_error_line(capsys) == "--coordinate-pixel-size must be a positive, finite number of Å, got inf"
    )
    assert not out.exists()


def test_reconstruct_unreadable_visible_frames_say_what_is_expected(project, tmp_path, capsys):
    """The message was Python's: \"invalid literal for int() with base 10: 'abc'\"."""

    def edit(blocks: dict) -> None:
        blocks["particles"]["rlnTomoVisibleFrames"] = ["[1,abc]"]

    particles, tomograms = _variant(project, particles=edit)
    assert _run(particles, tomograms, tmp_path / "out") == 2
    assert _one_error_line(capsys) == (
        f"{particles}: rlnTomoVisibleFrames: visible frames must be 0 or 1, got '[1,abc]'"
    )


@pytest.mark.parametrize("header_pixel", [0.0, 1.0])
def test_reconstruct_stack_without_pixel_size_uses_the_star_files(project, tmp_path, capsys, header_pixel):
    """A stack whose header leaves the pixel size unset stopped the run (after a warning to pass
    --voxel-size, which reconstruct does not have); RELION uses rlnImagePixelSize, and so does aitom now,
    with one warning."""
    stack = _stack_path(project)
    with mrcfile.open(stack, mode="r+") as file:
        file.voxel_size = header_pixel
    particles, tomograms = _variant(project)
    out = tmp_path / "out"
    with pytest.warns(ReconstructWarning) as caught:
        assert _run(particles, tomograms, out) == 0
    assert _aitom_warnings(caught) == [
        f"{stack}: the header's pixel size looks unset (0 or 1 Å), as in 1 of 1 particle stacks: "
        "rlnImagePixelSize 12 Å is used"
    ]
    assert read_volume(out / "subtomograms" / "000001.mrc")[1].voxel_size_a == (12.0, 12.0, 12.0)


def test_reconstruct_all_zero_stack_exits_2(project, tmp_path, capsys):
    """A stack of zeros (a particle cut from outside its tilt images) gave an all-zero subtomogram, exit 0."""
    stack = _stack_path(project)
    with mrcfile.open(stack, mode="r+") as file:
        file.data[...] = 0
    particles, tomograms = _variant(project)
    out = tmp_path / "out"
    assert _run(particles, tomograms, out) == 2
    assert _one_error_line(capsys) == (
        f"{stack}: the visible tilt images are constant (0 everywhere): nothing to reconstruct (remove the "
        "particle from the table)"
    )
    assert not out.exists()


def test_reconstruct_ctf_scale_factor_zero_everywhere_exits_2(project, tmp_path, capsys):
    """rlnCtfScalefactor 0 in every frame: a traceback (refusing to write 32768 NaN voxels)."""

    def edit(blocks: dict) -> None:
        blocks[SERIES]["rlnCtfScalefactor"] = 0.0

    particles, tomograms = _variant(project, tomograms=edit)
    out = tmp_path / "out"
    assert _run(particles, tomograms, out) == 2
    assert _one_error_line(capsys) == (
        f"{particles}: particle 1 ({_stack_path(project).name}): rlnCtfScalefactor of tilt series {SERIES} "
        "is 0 in every visible frame: nothing to reconstruct (remove it from the table, or pass --no-ctf)"
    )
    assert not out.exists()
    assert _run(particles, tomograms, out, "--no-ctf") == 0


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda tilts: tilts.__setitem__("rlnCtfScalefactor", -1.0),
            f"data_{SERIES} rlnCtfScalefactor: -1 (row 1) is negative: it weights the tilt's CTF, 0 to 1",
        ),
        (
            lambda tilts: (
                tilts.__setitem__("rlnDefocusU", tilts["rlnDefocusU"] / 1e4)
                or tilts.__setitem__("rlnDefocusV", tilts["rlnDefocusV"] / 1e4)
            ),
            f"tilt series {SERIES}: every rlnDefocusU/V is below 100 Å (largest 3.33507): RELION writes "
            "defocus in Å (2 µm = 20000 Å); pass --no-ctf if the CTF is unknown",
        ),
        (
            lambda tilts: tilts.__setitem__(
                "rlnMicrographPreExposure", tilts["rlnMicrographPreExposure"] * 100
            ),
            f"tilt series {SERIES}: rlnMicrographPreExposure reaches 9201.9 e⁻/Å², beyond 1000: dose "
            "weighting would leave no signal (e⁻/nm² instead of e⁻/Å²?); pass --no-dose-weighting to ignore "
            "the exposure",
        ),
    ],
    ids=["negative_ctf_scale", "defocus_in_micrometres", "exposure_in_e_per_nm2"],
)
def test_reconstruct_impossible_ctf_or_dose_exits_2(project, tmp_path, capsys, edit, expected):
    """Each ran to exit code 0: a negative CTF weight flipped the CTF of a tilt; defoci of 3 Å (µm written
    in a column of Å) amplified the subtomograms 200-fold; exposures ×100 left a subtomogram uncorrelated
    (0.14) with the right one."""
    particles, tomograms = _variant(project, tomograms=lambda blocks: edit(blocks[SERIES]))
    out = tmp_path / "out"
    assert _run(particles, tomograms, out) == 2
    assert _one_error_line(capsys) == f"{tomograms}: {expected}"
    assert not out.exists()


def test_reconstruct_voltage_without_dose_model_names_the_file(project, tmp_path, capsys):
    """120 kV: 'dose weighting is calibrated for 200 and 300 kV only, got 120.0 kV', naming no file."""

    def edit(blocks: dict) -> None:
        blocks["global"]["rlnVoltage"] = 120.0

    particles, tomograms = _variant(project, tomograms=edit)
    out = tmp_path / "out"
    assert _run(particles, tomograms, out) == 2
    assert _one_error_line(capsys) == (
        f"{tomograms}: tilt series {SERIES}: dose weighting is calibrated for 200 and 300 kV only, got 120.0 "
        "kV (pass --no-dose-weighting)"
    )
    assert not out.exists()
    assert _run(particles, tomograms, out, "--no-dose-weighting") == 0


def test_reconstruct_overfocus_is_warned_about(project, tmp_path, capsys):
    """Negative defoci (a sign flipped on export) were used silently."""

    def edit(blocks: dict) -> None:
        for column in ("rlnDefocusU", "rlnDefocusV"):
            blocks[SERIES][column] = -blocks[SERIES][column]

    particles, tomograms = _variant(project, tomograms=edit)
    out = tmp_path / "out"
    with pytest.warns(ReconstructWarning) as caught:
        assert _run(particles, tomograms, out) == 0
    assert _aitom_warnings(caught) == [
        f"{tomograms}: tilt series {SERIES}: negative rlnDefocusU/V (overfocus) in 37 of 37 tilts; RELION's "
        "defocus is positive for underfocus: check the sign"
    ]
    assert np.isfinite(read_volume(out / "subtomograms" / "000001.mrc")[0].numpy()).all()


def test_reconstruct_says_when_coordinate_pixel_size_is_not_used(project, tmp_path):
    """With RELION 5's centred Å positions, --coordinate-pixel-size was ignored without a word."""

    def edit(blocks: dict) -> None:
        particles = blocks["particles"]
        for axis in "XYZ":
            particles[f"rlnCenteredCoordinate{axis}Angst"] = 0.0
        blocks["particles"] = particles.drop(columns=["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"])

    particles, tomograms = _variant(project, particles=edit)
    with pytest.warns(ReconstructWarning) as caught:
        assert _run(particles, tomograms, tmp_path / "out") == 0
    assert _aitom_warnings(caught) == [
        f"{particles}: --coordinate-pixel-size is not used: the positions are "
        "rlnCenteredCoordinateX/Y/ZAngst (Å from the tomogram centre)"
    ]
