"""geoseg.io.fileio: atomic writes whose failure leaves the user's error, not the cleanup's."""

from __future__ import annotations

import subprocess
import sys
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


def test_a_lock_is_never_seen_empty_so_no_second_process_takes_it_while_it_is_written(
    tmp_path: Path,
) -> None:
    """Another process reads the lock while one process takes and releases it 2000 times: it
    sees either no lock or a whole record, never an empty file (which it would take for a
    half-written, abandoned lock and remove: two holders, a patch store written twice)."""
    folder = tmp_path / "out"
    loop = (
        "import sys; from pathlib import Path; from geoseg.io.fileio import locked\n"
        "for _ in range(2000):\n"
        "    with locked(Path(sys.argv[1]), beside=True): pass\n"
    )
    lock = tmp_path / ".out.geoseg.lock"
    taker = subprocess.Popen([sys.executable, "-c", loop, str(folder)])
    whole = empty = 0
    while taker.poll() is None:
        try:
            content = lock.read_bytes()
        except FileNotFoundError:
            continue
        if content:
            whole += 1
        else:
            empty += 1
    assert taker.returncode == 0
    assert whole > 0, "the reader never saw the lock: the test proves nothing"
    assert empty == 0, f"the lock was seen empty {empty} times (of {empty + whole} reads)"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lock, no claim file left
