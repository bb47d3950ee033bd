"""The command-line contract: every command has --help, bad input is one line + exit 2, nothing partial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aitom.cli import LIGHTNING_COMMANDS, TOOL_COMMANDS, build_parser, main
from aitom.io import write_particles, write_volume
from aitom.io.star import particles_table
from aitom.lightning_cli import translate_seed_flag


def subcommand_paths() -> list[list[str]]:
    """Every ``aitom ...`` command path, nested subcommands included (e.g. ``simulate tomogram``)."""
    import argparse

    paths = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions:
            paths.append(prefix)
        for action in actions:
            for name, sub in action.choices.items():
                walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return paths


@pytest.mark.parametrize("path", subcommand_paths(), ids=" ".join)
def test_every_command_has_help(path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*path, "--help"])
    assert stop.value.code == 0
    assert "usage" in capsys.readouterr().out


@pytest.mark.parametrize("path", subcommand_paths(), ids=" ".join)
def test_every_option_with_a_default_says_it_in_its_help(path):
    """A user reading --help must see what an option does when left out (and, in its text, its unit)."""
    import argparse

    parser = build_parser()
    for name in path:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    silent = [
        action.option_strings[-1]
        for action in parser._actions
        if action.option_strings
        and action.default not in (None, False, argparse.SUPPRESS)
        and "default" not in (action.help or "")
    ]
    assert not silent, f"options whose help hides their default: {silent}"


def test_registered_commands_cover_the_design():
    assert "show" in TOOL_COMMANDS
    assert set(LIGHTNING_COMMANDS) == {"fit", "validate", "test", "predict"}


def test_lightning_fit_help_runs_as_a_console_script():
    result = subprocess.run(
        [sys.executable, "-m", "aitom", "fit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--trainer" in result.stdout and "--seed_everything" in result.stdout


def test_seed_flag_is_an_alias_of_seed_everything():
    assert translate_seed_flag(["fit", "--seed", "3", "--seed=4"]) == [
        "fit",
        "--seed_everything",
        "3",
        "--seed_everything=4",
    ]


@pytest.fixture
def volume_file(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    return write_volume(tmp_path / "vol.mrc", rng.normal(size=(24, 32, 40)).astype(np.float32), 10.0)


def test_show_writes_a_png_with_picks(tmp_path, volume_file):
    picks = write_particles(
        tmp_path / "picks.star", particles_table(np.array([[10.0, 12.0, 8.0], [30.0, 20.0, 16.0]]))
    )
    out = tmp_path / "vol.png"
    assert main(["show", str(volume_file), "--out", str(out), "--picks", str(picks)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_refuses_an_existing_output(tmp_path, volume_file, capsys):
    out = tmp_path / "vol.png"
    out.write_bytes(b"keep me")
    assert main(["show", str(volume_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and str(out) in err
    assert out.read_bytes() == b"keep me"


def test_show_on_a_file_that_is_not_mrc_is_one_line_and_exit_2(tmp_path, capsys):
    bogus = tmp_path / "notes.mrc"
    bogus.write_text("this is not a volume\n")
    out = tmp_path / "out.png"
    assert main(["show", str(bogus), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aitom: error:") and err.count("\n") == 1 and str(bogus) in err
    assert "Traceback" not in err
    assert not out.exists()


def test_console_script_exit_code_on_bad_input(tmp_path):
    bogus = tmp_path / "notes.mrc"
    bogus.write_text("nope")
    result = subprocess.run(
        [sys.executable, "-m", "aitom", "show", str(bogus), "--out", str(tmp_path / "o.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_library_chatter_is_dropped_but_other_messages_pass(caplog):
    import logging
    import warnings

    from aitom.cli import quiet_library_chatter

    quiet_library_chatter()
    quiet_library_chatter()  # idempotent: one filter
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert sum(type(f).__name__ == "_DropAdvertisement" for f in rank_zero.filters) == 1
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        quiet_library_chatter()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("a warning about the data", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning about the data"]


def test_show_draws_relion5_centred_picks_at_their_voxels(tmp_path, volume_file, monkeypatch, capsys):
    """RELION 5 tables (centred Å, several tomograms) were refused; now converted as `aitom extract` does."""
    import aitom.io
    from aitom.io.relion5 import relion5_particles_table, voxels_to_centered_angstrom

    voxels = np.array([[10.0, 12.0, 8.0], [30.0, 20.0, 16.0]])  # (x, y, z) in the 40 × 32 × 24 volume
    centred = voxels_to_centered_angstrom(voxels, (40, 32, 24), 10.0)
    table = relion5_particles_table(np.vstack([centred, [[0.0, 0.0, 0.0]]]), ["vol", "vol", "other"])
    picks = write_particles(tmp_path / "relion5.star", table)
    drawn = {}
    monkeypatch.setattr(aitom.io, "save_montage", lambda volume, path, **options: drawn.update(options))
    argv = ["show", str(volume_file), "--out", str(tmp_path / "vol.png"), "--picks", str(picks)]
    assert main(argv) == 2  # two tomograms in the table: which one?
    assert "--tomo-name" in capsys.readouterr().err
    assert main([*argv, "--tomo-name", "vol"]) == 0
    np.testing.assert_allclose(drawn["picks_xyz"], voxels)
    # a plain voxel table with RELION's origin shifts in Å: position = coordinate - origin / 10 Å
    plain = particles_table(voxels + np.array([2.0, 0.0, 0.0])).assign(rlnOriginXAngst=20.0)
    argv[-1] = str(write_particles(tmp_path / "shifted.star", plain))
    assert main([*argv, "--overwrite"]) == 0
    np.testing.assert_allclose(drawn["picks_xyz"], voxels)


def test_show_writes_imod_points_in_imod_model_coordinates(tmp_path, volume_file, capsys):
    """RELION 5 centred-Å picks -> IMOD model coordinates: voxel + (0.5, 0.5, 0), one object per class."""
    from aitom.io.relion5 import relion5_particles_table, voxels_to_centered_angstrom

    voxels = np.array([[10.0, 12.0, 8.0], [30.0, 20.0, 16.0], [5.0, 6.0, 7.0]])  # (x, y, z) in 40 × 32 × 24
    table = relion5_particles_table(voxels_to_centered_angstrom(voxels, (40, 32, 24), 10.0), ["vol"] * 3)
    picks = write_particles(tmp_path / "relion5.star", table.assign(rlnClassNumber=[7, 0, 7]))
    points = tmp_path / "picks.txt"
    argv = ["show", str(volume_file), "--out", str(tmp_path / "vol.png"), "--picks", str(picks)]
    assert main([*argv, "--imod-points", str(points)]) == 0
    assert "object 1 = class 0 (1 picks), object 2 = class 7 (2 picks)" in capsys.readouterr().out
    written = np.loadtxt(points)
    np.testing.assert_array_equal(written[:, :2], [[1, 1], [2, 1], [2, 1]])  # class 0 first, one contour each
    np.testing.assert_allclose(written[:, 2:], voxels[[1, 0, 2]] + [0.5, 0.5, 0.0], atol=1e-3)


def test_show_imod_points_refusals_write_nothing(tmp_path, volume_file, capsys):
    out = tmp_path / "vol.png"
    assert main(["show", str(volume_file), "--out", str(out), "--imod-points", str(tmp_path / "p.txt")]) == 2
    assert "needs --picks" in capsys.readouterr().err
    picks = write_particles(tmp_path / "picks.star", particles_table(np.array([[10.0, 12.0, 8.0]])))
    kept = tmp_path / "kept.txt"
    kept.write_text("keep")
    argv = ["show", str(volume_file), "--out", str(out), "--picks", str(picks), "--imod-points", str(kept)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and str(kept) in err
    assert kept.read_text() == "keep" and not out.exists()
    argv[-1] = str(out)
    assert main(argv) == 2
    assert "same file" in capsys.readouterr().err and not out.exists()
