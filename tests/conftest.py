"""Shared fixtures: the real imagery beside the checkout, and small generated rasters."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
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


def mount_tmpfs(path: Path, size: str) -> None:
    """A real file system of ``size`` bytes ("2m") at ``path``: the full-disk tests' disk."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({done.stderr.strip()}): needs root")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a tmpfs of the given size under tmp_path (unmounted afterwards)."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        path = tmp_path / f"fs{len(mounted)}"
        mount_tmpfs(path, size)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_read_only(path: Path) -> None:
    """The file system mounted at ``path`` becomes read-only (root ignores permission bits)."""
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
