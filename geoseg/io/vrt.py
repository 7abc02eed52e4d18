"""GDAL VRT mosaics: the files a VRT reads, so that callers can check them like the VRT itself.

A VRT is an XML file naming other rasters (``SourceFilename``, relative to the VRT where
``relativeToVRT="1"``), possibly other VRTs. Segment, ingest and the other stages read a
VRT through GDAL as any raster; the flows check every file it names against the allowed
roots (a VRT inside the roots must not read a file outside them).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from geoseg.errors import InputError

__all__ = ["vrt_members"]

MAX_DEPTH = 8  # VRTs of VRTs: deeper nesting (or a cycle) is refused


def vrt_members(path: str | Path, _depth: int = 0) -> list[Path]:
    """Every file that the VRT at ``path`` reads, nested VRTs expanded (absolute, deduplicated).

    Anything that is not a ``.vrt`` file has no members. GDAL's virtual file systems
    (``/vsicurl/``, ``/vsizip/``...) are refused: the flows read local files only.
    """
    path = Path(path)
    if path.suffix.lower() != ".vrt":
        return []
    if _depth > MAX_DEPTH:
        raise InputError(f"{path}: VRTs nested more than {MAX_DEPTH} deep (a cycle?)")
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise InputError(f"unreadable VRT {path}: {exc}") from exc
    members: dict[Path, None] = {}
    for element in root.iter("SourceFilename"):
        name = (element.text or "").strip()
        if name.startswith("/vsi"):
            raise InputError(f"{path} reads {name}: only local files can be read from a VRT here")
        member = Path(name)
        if element.get("relativeToVRT", "0") == "1" or not member.is_absolute():
            member = path.parent / member
        member = member.resolve()
        members[member] = None
        for nested in vrt_members(member, _depth + 1):
            members[nested] = None
    return list(members)
