"""Every sub-command's --help shows its defaults and units (what `geoseg X --help` prints)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from geoseg.cli import build_parser, main
from geoseg.config import IngestConfig


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every leaf sub-command, by its words (``("model", "align")``)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.update(_commands(child, (*prefix, name)) or {(*prefix, name): child})
    return found


COMMANDS = _commands(build_parser())


def _help(words: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def test_the_sub_commands_are_all_found() -> None:
    assert {("ingest",), ("train",), ("segment",), ("vectorize",), ("demo",), ("model", "align")} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_help_shows_every_default_and_describes_every_option(
    words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(words, capsys)
    for action in COMMANDS[words]._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help, f"geoseg {' '.join(words)} {action.option_strings[0]} has no help text"
        if action.default is not None and action.default is not False:
            shown = f"(default: {action.default})"
            assert shown in text, f"{action.option_strings[0]}: {shown} missing from:\n{text}"


def test_ingest_patch_size_defaults_to_the_config_default(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["ingest", "a.tif", "--out", "s.zarr"])
    assert args.patch_size == IngestConfig().patch_size == 128
    assert "--patch-size PATCH_SIZE patch side in pixels" in _help(("ingest",), capsys)


@pytest.mark.parametrize(
    ("words", "option", "unit"),
    [
        (("ingest",), "--min-valid", "fraction"),
        (("ingest",), "--stride", "pixels"),
        (("segment",), "--overlap", "fraction"),
        (("segment",), "--min-area", "CRS units squared"),
        (("segment",), "--simplify", "CRS units"),
        (("segment",), "--window", "pixels"),
        (("vectorize",), "--block-size", "pixels"),
        (("train",), "--half-t", "pixels"),
        (("demo",), "--size", "pixels"),
    ],
)
def test_help_states_units(
    words: tuple[str, ...], option: str, unit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(words, capsys)
    entry = re.search(rf"{option} [A-Z_]+ (.*?)(?= --|$)", text)
    assert entry and unit in entry.group(1), (option, unit, text)


def test_ctrl_c_prints_one_line_and_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C (SIGINT) during a stage: one line saying how to resume, no traceback."""
    import geoseg.cli

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(geoseg.cli, "_run_train", interrupted)
    assert main(["train", "s.zarr", "--out", "m"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "geoseg train: interrupted; run the same command again to resume"
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", "train", "s.zarr", "--out", "m"])
    monkeypatch.setattr(geoseg.cli, "_run_ingest", interrupted)
    assert main(["ingest", "a.tif", "--out", "s.zarr"]) == 130
    assert (
        capsys.readouterr().err.strip() == "geoseg ingest: interrupted; run the same command again to resume"
    )
    assert main(["ingest", "a.tif", "--out", "s.zarr", "--overwrite"]) == 130  # built beside, dropped
    assert capsys.readouterr().err.strip() == (
        "geoseg ingest: interrupted; the old store is kept as it was: run the same command again to rebuild it"
    )
    monkeypatch.setattr(geoseg.cli, "_run_segment", interrupted)  # output sets are published whole
    assert main(["segment", "m", "a.tif", "--out", "p"]) == 130
    assert capsys.readouterr().err.strip() == (
        "geoseg segment: interrupted; nothing half-written was kept: run the same command again to finish"
    )


def test_a_band_list_counting_from_0_says_bands_are_numbered_from_1(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg ingest ... --bands 0,1,2` (numpy's numbering) printed `bad band list (0, 1, 2)`,
    which did not say what is wrong with it; nothing is created."""
    out = tmp_path / "s.zarr"
    tile = shared_data / "lausanne" / "img" / "1091-322_00.tif"
    assert main(["ingest", str(tile), "--out", str(out), "--patch-size", "64", "--bands", "0,1,2"]) == 2
    err = capsys.readouterr().err
    assert "bands are numbered from 1 (the first band is 1, as in GDAL), got --bands 0,1,2" in err, err
    assert "Traceback" not in err and not out.exists()
