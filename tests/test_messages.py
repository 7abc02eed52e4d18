"""Counts in geoseg's messages: ``1 band``, ``3 bands`` (geoseg.messages.plural), in the lines
users see, on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geoseg.cli import main
from geoseg.messages import plural
from geoseg.models.bundle import model_id
from tests.helpers import make_bundle, write_raster


def test_plural_fits_the_count() -> None:
    assert plural(1, "band") == "1 band"
    assert plural(0, "band") == "0 bands"
    assert plural(3, "band") == "3 bands"
    assert plural(2, "patch") == "2 patches" and plural(1, "class") == "1 class"
    assert plural(2, "class") == "2 classes"
    assert plural(5, "cluster raster") == "5 cluster rasters"
    assert plural(2, "index", "indices") == "2 indices"


def test_one_band_is_one_band_in_the_cli_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A single-band raster given to an RGB model (segment) and a band it lacks (ingest)."""
    gray = write_raster(tmp_path / "gray.tif", np.full((1, 200, 200), 90, np.uint8))
    rgb = make_bundle(tmp_path / "rgb", ["red", "green", "blue"], "uint8", 100.0, 50.0)
    assert main(["segment", str(rgb), str(gray), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{gray} has 1 band (alpha excluded) but model" in line, line
    assert main(["ingest", str(gray), "--out", str(tmp_path / "s.zarr"), "--bands", "1,2"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith(f"{gray} has 1 band; cannot select band 2"), line
    one = make_bundle(tmp_path / "one", ["gray"], "uint8", 100.0, 50.0)
    rgb_tif = write_raster(tmp_path / "rgb.tif", np.full((3, 200, 200), 90, np.uint8))
    assert main(["segment", str(one), str(rgb_tif), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "has 3 bands (alpha excluded)" in capsys.readouterr().err


def test_paths_geoseg_makes_absolute_are_printed_normalised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`geoseg segment` names its sources and model by absolute paths: without ``..`` in them
    (it printed /work/main/../shared/data/x.tif), in errors and in the outputs' tags."""
    import rasterio

    make_bundle(tmp_path / "rgb", ["red", "green", "blue"], "uint8", 100.0, 50.0)
    (tmp_path / "data").mkdir()
    write_raster(tmp_path / "data" / "gray.tif", np.full((1, 200, 200), 90, np.uint8))
    tile = write_raster(tmp_path / "data" / "tile.tif", np.full((3, 200, 200), 90, np.uint8))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert main(["segment", "../rgb", "../data/gray.tif", "--out", "out", "--quiet"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: {tmp_path}/data/gray.tif has 1 band" in line and f"model {tmp_path}/rgb " in line, line
    assert "/../" not in line
    assert main(["segment", "../rgb", "../data/missing.tif", "--out", "out", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"source not found: {tmp_path}/data/missing.tif")
    assert (
        main(["segment", "./../rgb", "../work/../data/tile.tif", "--out", "out", "--no-vectorize", "--quiet"])
        == 0
    )
    with rasterio.open(tmp_path / "work" / "out" / "tile_clusters.tif") as src:
        tags = src.tags()
    assert (tags["GEOSEG_SOURCE"], tags["GEOSEG_MODEL"]) == (str(tile), model_id(tmp_path / "rgb"))


def test_a_dot_dot_after_a_symbolic_link_is_not_collapsed(tmp_path: Path) -> None:
    """``link/..`` is the link target's parent, not the link's: that path stays as it was given."""
    from geoseg.messages import absolute_path

    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere" / "deep")
    given = tmp_path / "link" / ".." / "x.tif"
    assert absolute_path(given) == given
    assert absolute_path(tmp_path / "elsewhere" / "deep" / ".." / "x.tif") == tmp_path / "elsewhere" / "x.tif"
