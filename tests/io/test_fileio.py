"""geoseg.io.fileio: atomic writes whose failure leaves the user's error, not the cleanup's."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from geoseg.io.fileio import atomic_path


def test_an_interrupted_atomic_folder_still_being_written_raises_the_interrupt(tmp_path: Path) -> None:
    """Ctrl-C during `geoseg ingest --overwrite` printed a traceback ending in
    `OSError: [Errno 39] Directory not empty: 'valid'` (exit 1): the shard threads were still
    writing into the half-built store while atomic_path removed it. The interrupt comes
    through; the old folder is untouched; the temporary is gone once the writer stops."""
    target = tmp_path / "survey.zarr"
    target.mkdir()
    (target / "old").write_text("old store\n")
    stop = threading.Event()

    def writer(folder: Path) -> None:  # a shard task that goes on after the interrupt
        shard = folder / "valid"
        i = 0
        while not stop.is_set():
            try:
                shard.mkdir(exist_ok=True)
                (shard / f"c.{i}").write_bytes(b"x" * 64)
            except FileNotFoundError:  # its store was removed under it: the task fails
                return
            i += 1

    thread = None
    with pytest.raises(KeyboardInterrupt), atomic_path(target, replace_folder=True) as tmp:
        tmp.mkdir()
        thread = threading.Thread(target=writer, args=(tmp,), daemon=True)
        thread.start()
        threading.Timer(0.3, stop.set).start()  # the task ends a moment later
        time.sleep(0.05)
        raise KeyboardInterrupt
    assert thread is not None
    thread.join(5)
    assert (target / "old").read_text() == "old store\n"
    assert [p.name for p in tmp_path.iterdir()] == ["survey.zarr"], "no temporary left once removable"
