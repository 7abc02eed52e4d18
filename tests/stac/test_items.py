"""geoseg.stac.items: the href rules shared by the item writers and the run catalog."""

from __future__ import annotations

from pathlib import Path

import pytest

import geoseg.stac
from geoseg.stac.items import is_url

STAC = Path(geoseg.stac.__file__).parent


@pytest.mark.parametrize(
    ("href", "url"),
    [
        ("https://example.com/a.tif", True),
        ("s3://bucket/key.tif", True),
        ("file:///data/a.tif", True),
        ("/data/a.tif", False),
        ("./a.tif", False),
        ("../models/m/model.json", False),
        ("a.tif", False),
    ],
)
def test_is_url(href: str, url: bool) -> None:
    assert is_url(href) is url


def test_the_url_check_is_written_once_in_geoseg_stac() -> None:
    """Every module of geoseg.stac asks ``is_url``; the "://" test itself lives in one place."""
    places = [
        f"{path.name}:{number}"
        for path in sorted(STAC.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if '"://"' in line
    ]
    assert len(places) == 1, places
