"""The files a VRT reads: relative and absolute sources, nested VRTs, refused virtual file systems."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoseg.errors import InputError
from geoseg.io.vrt import vrt_members


def vrt(path: Path, *sources: tuple[str, bool]) -> Path:
    body = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="{int(rel)}">{name}</SourceFilename></SimpleSource>'
        for name, rel in sources
    )
    path.write_text(
        f'<VRTDataset rasterXSize="1" rasterYSize="1"><VRTRasterBand band="1">{body}</VRTRasterBand></VRTDataset>'
    )
    return path


def test_members_are_resolved_relative_to_the_vrt_and_nested_vrts_expanded(tmp_path: Path) -> None:
    (tmp_path / "tiles").mkdir()
    inner = vrt(tmp_path / "tiles" / "inner.vrt", ("b.tif", True), ("/abs/c.tif", False))
    outer = vrt(
        tmp_path / "outer.vrt", ("tiles/a.tif", True), ("tiles/inner.vrt", True), ("tiles/a.tif", True)
    )
    assert vrt_members(outer) == [
        (tmp_path / "tiles" / "a.tif").resolve(),
        inner.resolve(),
        (tmp_path / "tiles" / "b.tif").resolve(),
        Path("/abs/c.tif"),
    ]
    assert vrt_members(tmp_path / "tiles" / "a.tif") == []  # not a VRT


def test_cycles_virtual_file_systems_and_broken_xml_are_clear_errors(tmp_path: Path) -> None:
    loop = vrt(tmp_path / "loop.vrt", ("loop.vrt", True))
    with pytest.raises(InputError, match="nested more than"):
        vrt_members(loop)
    remote = vrt(tmp_path / "remote.vrt", ("/vsicurl/http://example.com/x.tif", False))
    with pytest.raises(InputError, match="only local files"):
        vrt_members(remote)
    broken = tmp_path / "broken.vrt"
    broken.write_text("<VRTDataset>")
    with pytest.raises(InputError, match=f"unreadable VRT {broken}"):
        vrt_members(broken)
