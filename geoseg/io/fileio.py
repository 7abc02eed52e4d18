"""Safe outputs: atomic writes, ownership, published output sets, locks, and hashing.

A stage never leaves a half-written output behind and never replaces what it does not
own:

- :func:`atomic_path` writes one file or folder under a temporary sibling name and renames
  it into place; it refuses to replace a non-empty folder unless the caller has checked
  that the folder is its own (``replace_folder=True``).
- :func:`claim_folder` / :func:`claim_file` run before any expensive work: the output
  location must be absent, empty, or the stage's own earlier output (its marker), be
  writable, and (where cheap to estimate) have room; ``overwrite`` replaces foreign ones.
- :func:`output_set` writes a set of files (one source's segmentation outputs) into a
  staging folder and publishes them together; a manifest ``.<name>.geoseg-<stage>.json``
  written last marks the set complete. :func:`require_published` is what readers call: a
  file listed in an incomplete manifest is never taken for a result.
- :func:`locked` holds a lock file (holder PID and host) on a store or output folder;
  a second process is refused with a clear message, a dead holder's lock is taken over.
- :func:`made_for_the_run` removes the output folder (and the parents) a failed run created,
  when they are still empty; a folder that existed before is never touched.
- :func:`clean_leftovers` removes what killed runs left (``.tmp-PID``, ``.tiled-PID.tif``,
  ``.superpixels-I-PID.tif``, ``.staging-PID``) when that PID is no longer running.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from geoseg.errors import BusyError, GeosegError, InputError, OutputError
from geoseg.messages import absolute_path

__all__ = [
    "atomic_path",
    "check_free_space",
    "check_set",
    "check_writable",
    "claim_file",
    "claim_folder",
    "clean_leftovers",
    "content_id",
    "describe_os_error",
    "foreign_folder",
    "full_disk_error",
    "locked",
    "made_for_the_run",
    "mark_folder",
    "output_set",
    "owned_by_set",
    "process_alive",
    "published_path",
    "require_published",
    "set_manifest",
    "sha256_file",
    "superpixel_labels_intermediate",
    "tiled_intermediate",
    "user_error_message",
    "write_json_atomic",
    "write_text_atomic",
]

MARKER_PREFIX = ".geoseg-"
NEARLY_FULL_BYTES = 1 << 20  # a failure with less free space than this is reported as disk full
LOCK_NAME = ".geoseg.lock"
# Hidden names of temporary files carry the writer's PID: a rerun removes those of dead PIDs.
# Exactly the names geoseg makes: ``.X.tmp-PID`` / ``.X.old-PID`` / ``.X.staging-PID``,
# ``.X.tiled-PID.tif`` (tiled_intermediate), ``.X.superpixels-I-PID.tif``
# (superpixel_labels_intermediate), and ``.X.ext.tmp-PID.ext`` (atomic_path keeps the
# target's extension, repeated): a user's ``.notes-old-2024.txt`` or ``.notes-old-2024`` is
# not one of them (the word always follows a dot).
_LEFTOVER = re.compile(
    r"^\..*\.(?:tmp|old|tiled|staging|superpixels-\d+)-(\d+)(?:\.tif)?$|^\..*(\.\w+)\.tmp-(\d+)\2$"
)


def tiled_intermediate(target: str | Path) -> Path:
    """``.X.tiled-PID.tif`` beside ``target`` (``X.tif``): the hidden tiled GeoTIFF a COG is
    built from, named so that :func:`clean_leftovers` removes it after a killed run."""
    target = Path(target)
    return target.with_name(f".{target.stem}.tiled-{os.getpid()}.tif")


def superpixel_labels_intermediate(folder: str | Path, stem: str, index: int) -> Path:
    """``.STEM.superpixels-INDEX-PID.tif`` in ``folder``: the superpixel labels of a run's
    ``index``-th source between the fit and the painting, named so that
    :func:`clean_leftovers` removes it after a killed run."""
    return Path(folder) / f".{stem}.superpixels-{index}-{os.getpid()}.tif"


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def content_id(path: str | Path, prefix: str = "model") -> str:
    """A file's identity by content, ``PREFIX-`` and the first 12 hex digits of its sha256:
    the same file anywhere has the same id, and no path of the machine that wrote it."""
    return f"{prefix}-{sha256_file(path)[:12]}"


@contextlib.contextmanager
def atomic_path(target: str | Path, replace_folder: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``target`` only if the block succeeds.

    Works for files and directories. The temporary name lives in the same folder, so
    the final rename is atomic on POSIX file systems. An existing non-empty folder at
    ``target`` is replaced only with ``replace_folder=True`` (the caller checked it is its
    own output): otherwise OutputError, before anything is written.
    """
    target = Path(target)
    if target.is_dir() and not target.is_symlink() and any(target.iterdir()) and not replace_folder:
        raise OutputError(f"{target} is a non-empty folder that geoseg did not write: choose another output")
    target.parent.mkdir(parents=True, exist_ok=True)
    # The target's extension kept last: GDAL warns about a GeoPackage named otherwise.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}{target.suffix}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException as exc:
        full = full_disk_error(exc, target.parent, published_path(target))
        _discard(tmp)
        if full is not None:
            raise full from exc
        raise
    if (target.is_dir() and not target.is_symlink()) or (tmp.is_dir() and target.exists()):
        # Directories cannot be renamed over a non-empty one (nor a file): move the old aside first.
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        _remove(old)
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    else:
        os.replace(tmp, target)


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write text to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_json_atomic(target: str | Path, obj: Any) -> Path:
    """Write JSON (indented, sorted keys kept as given) to ``target`` atomically."""
    return write_text_atomic(target, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _discard(path: Path, attempts: int = 20) -> None:
    """Remove the temporary of a failed write, as far as it can be removed: after Ctrl-C the
    failed work's threads may still be writing into it (ingest's shard tasks), and rmtree
    then meets a folder that is not empty. That error must not replace the user's (a
    traceback instead of "interrupted"): retried a moment, then left to the next run
    (clean_leftovers removes a dead PID's temporaries)."""
    for _ in range(attempts):
        try:
            _remove(path)
            return
        except OSError:
            time.sleep(0.1)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --- ownership and checks before work ---------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    path = absolute_path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: str | Path) -> None:
    """OutputError unless a file can be created in ``folder`` (or its nearest existing parent).

    A real create-and-delete probe: permission bits say nothing for root, and a read-only
    mount or a full disk only shows when writing.
    """
    where = _existing_ancestor(Path(folder))
    if not where.is_dir():
        raise OutputError(f"{where} is a file, not a folder: choose another output location")
    try:
        fd, probe = tempfile.mkstemp(prefix=".geoseg-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"cannot write in {where}: {exc.strerror}: fix its permissions or choose another output"
        ) from None


def check_free_space(folder: str | Path, needed_bytes: int) -> None:
    """OutputError when the file system of ``folder`` has less than ``needed_bytes`` free."""
    where = _existing_ancestor(Path(folder))
    free = shutil.disk_usage(where).free
    if free < needed_bytes:
        have, need = _mib_pair(free, needed_bytes)
        raise OutputError(
            f"{where} has {have} MiB free but about {need} MiB are needed: "
            "free some space or choose another output location"
        )


def _mib_pair(free: int, needed: int) -> tuple[str, str]:
    """Both sizes in MiB with as many decimals (1-3) as make them differ: "0.3 MiB free but
    about 0.3 MiB are needed" read as if there were room."""
    for decimals in (1, 2, 3):
        have, need = f"{free / 2**20:.{decimals}f}", f"{needed / 2**20:.{decimals}f}"
        if have != need:
            break
    return have, need


@contextlib.contextmanager
def made_for_the_run(folder: str | Path) -> Iterator[None]:
    """Run the block; if it fails, remove ``folder`` and the parents of it that did not exist
    before the block, each only while empty (``os.rmdir``). A folder that was there before
    the block, and whatever is in it, stays as it was."""
    target = absolute_path(folder)
    existing = _existing_ancestor(target)
    try:
        yield
    except BaseException:
        where = target
        while where != existing and existing in where.parents:
            try:
                os.rmdir(where)  # refuses a non-empty folder: nothing of anyone's is removed
            except OSError:
                break
            where = where.parent
        raise


def claim_folder(folder: str | Path, stage: str, marker: str | None = None, overwrite: bool = False) -> bool:
    """Check an output folder before work; True when it holds an earlier output to replace.

    Accepted: an absent or empty folder, or one holding ``marker`` or the stage's hidden
    ``.geoseg-<stage>`` (:func:`mark_folder`), i.e. the stage's own earlier output. A foreign file or
    non-empty folder is refused (OutputError naming it) unless ``overwrite``.
    """
    folder = Path(folder)
    marker = marker or MARKER_PREFIX + stage
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            if not overwrite:
                raise OutputError(
                    f"{folder} exists and is not a folder: pass --overwrite to replace it or choose another output"
                )
        elif foreign_folder(folder, stage, marker) and not overwrite:
            raise OutputError(
                f"{folder} is a non-empty folder that is not a geoseg {stage} output: "
                "choose another output (or pass --overwrite to replace it)"
            )
    check_writable(folder if folder.is_dir() else folder.parent)
    return folder.exists()


def foreign_folder(folder: str | Path, stage: str, marker: str | None = None) -> bool:
    """Whether ``folder`` is a non-empty folder that is not the stage's own output (neither
    ``marker`` nor ``.geoseg-<stage>`` in it): replacing it would delete someone's files."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    return _has_content(folder) and not _marked(folder, stage, marker or MARKER_PREFIX + stage)


def _has_content(folder: Path) -> bool:
    """Anything in the folder besides a geoseg lock (a killed run's lock makes no folder foreign)."""
    return any(entry.name != LOCK_NAME for entry in folder.iterdir())


def _marked(folder: Path, stage: str, marker: str) -> bool:
    return (folder / marker).exists() or (folder / (MARKER_PREFIX + stage)).exists()


def mark_folder(folder: str | Path, stage: str) -> Path:
    """Write the stage's marker into an output folder (it is then the stage's own)."""
    marker = Path(folder) / (MARKER_PREFIX + stage)
    if not marker.exists():
        marker.write_text(f"written by geoseg {stage}; geoseg may replace what is in this folder\n")
    return marker


def claim_file(path: str | Path, stage: str, owned: bool = False, overwrite: bool = False) -> None:
    """Check an output file before work: absent, the stage's own (``owned``), or ``overwrite``.

    A folder at the path is always refused: a file output never replaces a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a folder: give a file name for the output")
    if path.exists() and not owned and not overwrite:
        raise OutputError(
            f"{path} exists and was not written by geoseg {stage}: pass --overwrite to replace it "
            "or choose another output"
        )
    check_writable(path.parent)


# --- output sets -------------------------------------------------------------------------------


def set_manifest(folder: str | Path, name: str, stage: str) -> Path:
    """Where the manifest of the output set ``name`` of ``stage`` lives in ``folder``."""
    return Path(folder) / f".{name}.geoseg-{stage}.json"


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), dict | list) else None


def owned_by_set(folder: str | Path, name: str, stage: str) -> set[str]:
    """File names that the set's manifest (complete or not) says the stage wrote."""
    data = _read_manifest(set_manifest(folder, name, stage))
    return set(data["files"]) if data else set()


def check_set(
    folder: str | Path, name: str, stage: str, targets: Iterable[Path], overwrite: bool = False
) -> None:
    """Before work: every existing target must belong to the set's manifest (or ``overwrite``)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder: choose another output folder")
    owned = owned_by_set(folder, name, stage)
    for target in targets:
        if target.is_dir():
            raise OutputError(
                f"{target} is a folder where geoseg {stage} writes a file: move it or choose another output folder"
            )
        if target.exists() and target.name not in owned and not overwrite:
            raise OutputError(
                f"{target} exists and was not written by geoseg {stage}: "
                "pass --overwrite to replace it or choose another output folder"
            )
    check_writable(folder)


@contextlib.contextmanager
def output_set(folder: str | Path, name: str, stage: str) -> Iterator[Path]:
    """Yield a staging folder; when the block succeeds, publish its files into ``folder``.

    Publishing: the manifest is first rewritten as incomplete (listing the old and the new
    files, so a crash leaves a set that readers refuse and a rerun may replace), then each
    staged file is renamed onto its final name, files of the previous set that the new one
    lacks are removed, and the complete manifest (names and sizes) is written last. A
    failed block removes the staging folder; nothing in ``folder`` changes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean_leftovers(folder)
    staging = folder / f".{name}.staging-{os.getpid()}"  # published_path knows this name
    _remove(staging)
    staging.mkdir()
    try:
        yield staging
        _publish(staging, folder, name, stage)
    except BaseException as exc:
        full = full_disk_error(exc, folder, folder)
        _remove(staging)
        if full is not None:
            raise full from exc
        raise
    _remove(staging)


_STAGING = re.compile(r"^\..+\.staging-\d+$")


def published_path(path: str | Path) -> Path:
    """Where a file written in an :func:`output_set` staging folder will be published (the
    staging folder's parent); any other path as it is. For files that name their final
    neighbours while still staged (a STAC item's relative hrefs)."""
    path = Path(path)
    return path.parent.parent / path.name if _STAGING.match(path.parent.name) else path


def _publish(staging: Path, folder: Path, name: str, stage: str) -> None:
    manifest = set_manifest(folder, name, stage)
    new = sorted(p.name for p in staging.iterdir())
    old = owned_by_set(folder, name, stage)
    write_json_atomic(manifest, {"stage": stage, "complete": False, "files": sorted(old | set(new))})
    for file_name in new:
        os.replace(staging / file_name, folder / file_name)
    for file_name in sorted(old - set(new)):
        _remove(folder / file_name)
    sizes = {n: (folder / n).stat().st_size for n in new}
    write_json_atomic(manifest, {"stage": stage, "complete": True, "files": sizes})


def require_published(path: str | Path) -> None:
    """InputError when ``path`` belongs to an output set whose publication did not finish.

    Files that no manifest lists (a user's own raster, a baseline's output) are accepted.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    for manifest in path.parent.glob(".*.geoseg-*.json"):
        data = _read_manifest(manifest)
        if data is None or path.name not in data["files"]:
            continue
        if data.get("complete") is True:
            continue
        raise InputError(
            f"{path} belongs to an unfinished {data.get('stage', 'geoseg')} output set ({manifest.name}): "
            "rerun that stage into the same folder"
        )


def clean_leftovers(folder: str | Path, prefix: str = "") -> list[Path]:
    """Remove temporary files of killed runs (dead PIDs on this host) from ``folder``; with
    ``prefix``, only those whose names start with it (the temporaries of one output)."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _LEFTOVER.match(entry.name) if entry.name.startswith(prefix) else None
        if match and not _alive(int(match.group(1) or match.group(3))):
            _remove(entry)
            removed.append(entry)
    return removed


# --- locks -------------------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """Whether a process of this PID exists on this machine (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _alive(pid: int) -> bool:
    return pid == os.getpid() or process_alive(pid)


@contextlib.contextmanager
def locked(folder: str | Path, what: str = "output folder", beside: bool = False) -> Iterator[Path]:
    """Hold ``folder/.geoseg.lock`` (created exclusively, with PID, host and time) while the block runs.

    ``beside``: the lock is ``.<folder name>.geoseg.lock`` next to the folder instead, for
    folders that the stage itself recreates (a patch store). Another live holder:
    BusyError naming it. A holder that died on this host (its PID is gone): its lock is
    taken over. The lock is removed when the block ends.
    """
    folder = Path(folder)
    lock = folder.with_name(f".{folder.name}{LOCK_NAME}") if beside else folder / LOCK_NAME
    lock.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # The record is written to a file of our own first and then linked to the lock's name
    # (exclusive, atomic): a lock is never seen empty, so an empty one is never taken for a
    # dead holder's while its owner is still writing it (two holders at once).
    claim = lock.with_name(f"{lock.name}.{threading.get_ident()}.tmp-{os.getpid()}")
    claim.write_text(json.dumps(record))
    try:
        taken = _claim(claim, lock, folder, what, record)
    finally:
        claim.unlink(missing_ok=True)
    try:
        yield lock
    finally:  # a re-entrant hold (not taken) leaves the outer hold's lock in place
        if taken and _read_lock(lock) == record:
            lock.unlink(missing_ok=True)


def _claim(claim: Path, lock: Path, folder: Path, what: str, record: dict[str, Any]) -> bool:
    """Link ``claim`` to ``lock``: True when taken, False when this process holds it already;
    a live other holder is a BusyError, a dead holder's lock (this host) is taken over."""
    for _ in range(3):
        try:
            _link_exclusive(claim, lock)
        except FileExistsError:
            holder = _read_lock(lock)
            if holder is None or (
                holder.get("host") == record["host"] and not _alive(int(holder.get("pid", -1)))
            ):
                lock.unlink(missing_ok=True)  # a dead holder's (or an empty, half-written) lock
                continue
            if holder.get("pid") == record["pid"] and holder.get("host") == record["host"]:
                return False
            raise BusyError(
                f"{what} {folder} is in use by process {holder.get('pid')} on {holder.get('host')} "
                f"(since {holder.get('since')}): wait for it to finish, or delete {lock} if that process is gone"
            ) from None
        return True
    raise BusyError(f"cannot take the lock {lock}: delete it if no geoseg process uses {folder}")


def _link_exclusive(claim: Path, lock: Path) -> None:
    """Give ``claim``'s content the name ``lock`` unless it exists (FileExistsError). A file
    system without hard links gets an exclusive create and a write instead."""
    try:
        os.link(claim, lock)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(claim.read_text())


def _read_lock(lock: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- errors ------------------------------------------------------------------------------------

_USER_ERRNOS = {
    errno.ENOSPC: "no space left on the device: free some space or choose another output location",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another output location",
    errno.EROFS: "read-only file system: choose another output location",
    errno.EACCES: "permission denied: fix the permissions or choose another location",
    errno.EPERM: "operation not permitted: fix the permissions or choose another location",
    errno.ENAMETOOLONG: "file name too long: choose a shorter path",
}


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def describe_os_error(exc: OSError) -> str | None:
    """One line for an OSError the user can fix (disk full, read-only, permissions), else None."""
    advice = _USER_ERRNOS.get(exc.errno or 0)
    if advice is None:
        return None
    name = str(exc.filename or "a file")
    name = name if len(name) <= 200 else name[:200] + "..."
    verb = "write" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "use"
    return f"cannot {verb} {name}: {advice}"


def user_error_message(exc: BaseException, out: str | Path | None = None) -> str | None:
    """The one line for a failure the user can fix, or None for a bug (which keeps its traceback).

    What ``geoseg STAGE`` prints after ``error:`` and what a failed flow run logs
    (``flows.settings.logs_user_errors``): a GeosegError's message, an OSError of the user's
    making (:func:`describe_os_error`), a NUL in a path, or any failure while ``out``'s file
    system is full (GDAL then reports a misleading read error).
    """
    if isinstance(exc, GeosegError):
        return str(exc)
    if isinstance(exc, OSError) and exc.filename is None and out is not None and exc.errno in _FULL_ERRNOS:
        # a write that names no file (zarr's attribute write fails as its file is closed):
        # "cannot write a file" named nothing the user could free space on
        what = (
            "no space left on the device"
            if exc.errno == errno.ENOSPC
            else "disk quota exceeded on the device"
        )
        return f"{what} of {out}: free some space or choose another output location"
    if isinstance(exc, OSError) and (message := describe_os_error(exc)):
        return message
    if isinstance(exc, ValueError | OSError) and "embedded null" in str(exc):
        return f"a path contains a NUL character: {exc}"
    if out is not None and _nearly_full(Path(out)):
        return (
            f"no space left on the device of {out}: free some space or choose another output location ({exc})"
        )
    return None


def full_disk_error(exc: BaseException, where: Path, named: Path, needed: int = 0) -> OutputError | None:
    """The one line for a write that failed while ``where``'s file system is full, taken
    before the failed write's partial files are removed: once they are gone the disk no longer
    looks full, and GDAL's reason ("Failed to commit transaction") says nothing of space.
    ``needed``: bytes the failed write needed, for a writer that gives its space back when it
    fails (SQLite rolls a GeoPackage's transaction back): full means less free than that.
    None for any other failure, which keeps its own message or traceback."""
    if not isinstance(exc, Exception) or isinstance(exc, GeosegError) or not _nearly_full(where, needed):
        return None
    reason = "" if isinstance(exc, OSError) and exc.errno == errno.ENOSPC else f" ({exc})"
    return OutputError(
        f"no space left on the device of {named}: free some space or choose another output location{reason}"
    )


def _nearly_full(path: Path, needed: int = 0) -> bool:
    try:
        return shutil.disk_usage(_existing_ancestor(path)).free < NEARLY_FULL_BYTES + needed
    except OSError:
        return False
