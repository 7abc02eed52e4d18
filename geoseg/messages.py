"""How geoseg's messages (errors, log lines, what the CLI prints) write counts and paths.

Counts: ``1 band``, ``3 bands``, never ``1 bands`` or ``band(s)`` (:func:`plural`). Paths: a
path the user typed is printed as typed; where geoseg makes one absolute (segment's sources
and model, the folder a write check or a free-space check names) it goes through
:func:`absolute_path`, normalised: ``/work/shared/data/x.tif``, not
``/work/main/../shared/data/x.tif``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["absolute_path", "plural"]


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``count`` and ``noun`` in the number that fits: ``plural(1, "band")`` is ``1 band``,
    ``plural(3, "band")`` ``3 bands``, ``plural(2, "patch")`` ``2 patches``; an irregular
    plural is given as ``plural_form``."""
    if count == 1:
        return f"{count} {noun}"
    if plural_form is None:
        plural_form = noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")
    return f"{count} {plural_form}"


def absolute_path(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute and normalised (``os.path.normpath``: ``.`` and ``..`` collapsed),
    as geoseg names a file in messages and provenance tags. Where ``..`` follows a symbolic
    link, collapsing it by name would name another file: the path is then only made absolute."""
    given = Path(path).absolute()
    normal = Path(os.path.normpath(given))
    if normal == given or os.path.realpath(normal) == os.path.realpath(given):
        return normal
    return given
