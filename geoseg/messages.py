"""How geoseg's messages (errors, log lines, what the CLI prints) write counts: ``1 band``,
``3 bands``, never ``1 bands`` or ``band(s)``."""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``count`` and ``noun`` in the number that fits: ``plural(1, "band")`` is ``1 band``,
    ``plural(3, "band")`` ``3 bands``, ``plural(2, "patch")`` ``2 patches``; an irregular
    plural is given as ``plural_form``."""
    if count == 1:
        return f"{count} {noun}"
    if plural_form is None:
        plural_form = noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")
    return f"{count} {plural_form}"
