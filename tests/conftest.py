"""Shared fixtures: the real imagery beside the checkout, and small generated rasters."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; its absence is an error, not a skip (CI always has it)."""
    assert SHARED_DATA.is_dir(), f"real test data missing: {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(autouse=True)
def prefect_console_on_this_tests_stderr() -> Iterator[None]:
    """Prefect, once imported (a test importing ``flows``), hangs its console handler on the
    root logger, bound to the stderr of that moment: pytest's capture of an earlier test,
    closed since, so the next geoseg line logged in-process printed a logging error. A real
    process has one stderr; each test gets its own, so the handler follows it."""
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.stream = sys.stderr  # not setStream: it flushes the closed one first
            handler.console.file = sys.stderr  # type: ignore[attr-defined]
    yield
