"""Shared fixtures: the real imagery beside the checkout, and small generated rasters."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; its absence is an error, not a skip (CI always has it)."""
    assert SHARED_DATA.is_dir(), f"real test data missing: {SHARED_DATA}"
    return SHARED_DATA
