"""Fault injection: foreign outputs, kills, full and read-only disks, concurrent runs, NaN rasters.

Every case asserts both the user's message (one line, exit 2, naming the file) and that no
user file was lost and no partial output is visible. The table of cases and results is in
docs/faults.md. Small real file systems (tmpfs with ``size=``, remounted read-only) are
mounted where the test process may mount (root in CI and the dev container); elsewhere
those cases are skipped with the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.baseline import kmeans_baseline
from geoseg.cli import main
from geoseg.config import IngestConfig, SegmentConfig, TrainConfig
from geoseg.errors import InputError, OutputError
from geoseg.ingest import ingest
from geoseg.io.fileio import LOCK_NAME, output_set, require_published, set_manifest
from geoseg.io.store import open_store
from geoseg.models.bundle import META, WEIGHTS, load_meta
from geoseg.segment import output_paths, segment
from geoseg.train import _checkpoint_step, train, work_dir
from tests.conftest import mount_tmpfs, remount_read_only
from tests.helpers import write_raster

ROOT = Path(__file__).resolve().parents[1]
TILE = "lausanne/img/1091-322_00.tif"  # 175 x 120 px RGB, EPSG:2056
BIG = "lausanne/big_img"  # 875 x 600 px: a segment long enough to be killed midway
TRAIN_ARGS = ["--batch-size", "4", "--k", "3", "--k-a", "6", "--half-t", "2", "--preset", "small", "--quiet"]
FAST_SEGMENT = SegmentConfig(vectorize=False, window=64)  # few windows: seconds per segment
TINY = {"batch_size": 4, "k": 3, "k_a": 6, "half_t": 2, "preset": "small", "seed": 0}


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tile(shared_data: Path) -> Path:
    return shared_data / TILE


@pytest.fixture(scope="module")
def big(shared_data: Path) -> Path:
    return next((shared_data / BIG).glob("*.tif"))


@pytest.fixture(scope="module")
def store(tile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("store") / "tile.zarr"
    return ingest([tile], out, IngestConfig(patch_size=32, workers=1), progress=False)


@pytest.fixture(scope="module")
def bundle(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "model"
    return train(store, out, TrainConfig(steps=2, checkpoint_every=1, **TINY), progress=False)


@pytest.fixture(scope="module")
def clusters(bundle: Path, tile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published cluster raster of the tile (read, never changed, by the tests)."""
    (result,) = segment(bundle, [tile], tmp_path_factory.mktemp("clusters"), FAST_SEGMENT, progress=False)
    return result.clusters


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on a read-only file system (root ignores permission bits, not a ro mount)."""
    path = tmp_path / "ro"
    mount_tmpfs(path, "1m")
    (path / "inside").mkdir()
    (path / "inside" / "keep.txt").write_text("keep\n")
    remount_read_only(path)
    yield path / "inside"
    subprocess.run(["umount", "-l", str(path)], check=False)


# --- helpers ----------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """Run the geoseg command in-process; (exit status, the one error line or '')."""
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("geoseg ") and ": error: " in line]
    assert len(lines) <= 1, err
    return rc, lines[0] if lines else ""


def cli_process(*args: object, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-m", "geoseg.cli", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def visible(folder: Path) -> dict[str, str]:
    """The non-hidden files of a folder and their hashes: what a user or QGIS sees."""
    return {p.name: digest(p) for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def wait_for(condition: Callable[[], bool], child: subprocess.Popen[str], timeout: float = 600) -> bool:
    """Poll until ``condition``; False when the child ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            return False
        assert time.monotonic() < deadline, "condition never reached"
        time.sleep(0.005)
    return True


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def hold_lock(folder: Path, beside: bool = False) -> subprocess.Popen[str]:
    """Another live process holding geoseg's lock on ``folder``."""
    code = (
        "import sys, time; from pathlib import Path; from geoseg.io.fileio import locked; "
        f"cm = locked(Path(sys.argv[1]), beside={beside}); cm.__enter__(); print('held', flush=True); "
        "time.sleep(300)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


# --- output ownership ---------------------------------------------------------------------------


def test_train_refuses_a_foreign_folder_before_training(store: Path, tmp_path: Path, capsys) -> None:
    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "thesis.txt").write_text("important\n")
    rc, line = run_cli(capsys, "train", store, "--out", precious, "--steps", "2", *TRAIN_ARGS)
    assert rc == 2 and str(precious) in line and "--overwrite" in line
    assert (precious / "thesis.txt").read_text() == "important\n" and (precious / "sub").is_dir()
    assert not work_dir(precious).exists()  # refused before any training started
    # --overwrite, which the line names, deleted the folder and everything in it for the
    # bundle: it replaces only a bundle (as ingest's --overwrite only a store)
    rc, line = run_cli(capsys, "train", store, "--out", precious, "--steps", "2", "--overwrite", *TRAIN_ARGS)
    assert rc == 2 and "not a model bundle" in line and str(precious) in line, line
    assert (precious / "thesis.txt").read_text() == "important\n" and (precious / "sub").is_dir()
    assert not work_dir(precious).exists()


def test_train_refuses_another_bundle_unless_overwrite(
    store: Path, bundle: Path, tmp_path: Path, capsys
) -> None:
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    before = digest(other / WEIGHTS)
    rc, line = run_cli(capsys, "train", store, "--out", other, "--steps", "1", *TRAIN_ARGS)
    assert rc == 2 and "holds a model bundle" in line and str(other) in line
    assert digest(other / WEIGHTS) == before
    rc, _ = run_cli(capsys, "train", store, "--out", other, "--steps", "1", "--overwrite", *TRAIN_ARGS)
    assert rc == 0 and digest(other / WEIGHTS) != before
    assert load_meta(other).provenance  # a complete bundle replaced it


def test_train_out_an_existing_file_fails_before_training(store: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    rc, line = run_cli(capsys, "train", store, "--out", target, "--steps", "2", *TRAIN_ARGS)
    assert rc == 2 and str(target) in line and target.read_text() == "mine\n"
    assert not list(tmp_path.glob(".notes.txt.tmp-*")) and not work_dir(target).exists()


def test_vectorize_never_replaces_a_folder_or_a_foreign_file(clusters: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a\n")
    rc, line = run_cli(capsys, "vectorize", clusters, "--out", folder)
    assert rc == 2 and str(folder) in line and (folder / "a.txt").read_text() == "a\n"
    foreign = tmp_path / "roads.gpkg"
    foreign.write_bytes(b"someone else's GeoPackage")
    rc, line = run_cli(capsys, "vectorize", clusters, "--out", foreign)
    assert rc == 2 and str(foreign) in line and "--overwrite" in line
    assert foreign.read_bytes() == b"someone else's GeoPackage"
    own = tmp_path / "own.gpkg"
    assert run_cli(capsys, "vectorize", clusters, "--out", own)[0] == 0
    rc, line = run_cli(capsys, "vectorize", clusters, "--out", own)
    assert rc == 0, line
    assert run_cli(capsys, "vectorize", clusters, "--out", foreign, "--overwrite")[0] == 0
    assert foreign.read_bytes()[:16] == b"SQLite format 3\x00"


@pytest.mark.parametrize("stage", ["segment", "evaluate", "baseline"])
def test_out_an_existing_file_is_one_line(
    stage: str, bundle: Path, tile: Path, tmp_path: Path, capsys
) -> None:
    target = tmp_path / "taken"
    target.write_text("mine\n")
    args = {
        "segment": ["segment", bundle, tile, "--out", target, "--quiet"],
        "evaluate": ["evaluate", tile, "--labels", tile, "--out", target],
        "baseline": ["baseline", "kmeans", tile, "--k", "3", "--out", target],
    }[stage]
    rc, line = run_cli(capsys, *args)
    assert rc == 2 and str(target) in line and target.read_text() == "mine\n"


def test_segment_refuses_foreign_files_of_its_output_names(
    bundle: Path, tile: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "seg"
    out.mkdir()
    mine = output_paths(tile, out)["preview_png"]
    mine.write_bytes(b"my own drawing")
    rc, line = run_cli(capsys, "segment", bundle, tile, "--out", out, "--quiet")
    assert rc == 2 and str(mine) in line and mine.read_bytes() == b"my own drawing"
    assert visible(out) == {mine.name: digest(mine)}


# --- output sets: kills, a failed publish, leftovers ------------------------------------------


def test_segment_killed_at_several_points_never_shows_a_mixed_set(
    bundle: Path, big: Path, tmp_path: Path
) -> None:
    out = tmp_path / "seg"
    config = SegmentConfig(vectorize=False, window=128)  # few windows: the run is short but killable
    segment(bundle, [big], out, config, progress=False)
    old = visible(out)
    clusters = output_paths(big, out)["clusters"]
    points: dict[str, Callable[[], bool]] = {
        "staging created": lambda: bool(list(out.glob(".*.staging-*"))),
        "cluster COG staged": lambda: bool(list(out.glob(f".*.staging-*/{clusters.name}"))),
    }
    killed = []
    for name, reached in points.items():
        child = cli_process(
            "segment", bundle, big, "--out", out, "--quiet", "--no-vectorize", "--window", "128"
        )
        if wait_for(reached, child):
            child.send_signal(signal.SIGKILL)
            killed.append(name)
        child.wait()
        now = visible(out)
        if child.returncode == -signal.SIGKILL:
            assert now == old, name  # the earlier complete set, untouched
        else:  # it finished first: the new set is complete
            assert child.returncode == 0, child.stderr.read() if child.stderr else ""
            old = now
        require_published(clusters)  # readers accept what is visible
    assert "staging created" in killed
    results = segment(bundle, [big], out, config, progress=False)  # the rerun cleans up
    assert not [p for p in out.iterdir() if ".staging-" in p.name or ".tiled-" in p.name or ".tmp-" in p.name]
    manifest = json.loads(set_manifest(out, big.stem, "segment").read_text())
    assert manifest["complete"] and sorted(manifest["files"]) == sorted(visible(out))
    assert results[0].clusters == clusters and not (out / LOCK_NAME).exists()


def test_a_publish_that_fails_midway_is_refused_by_every_reader(
    bundle: Path, tile: Path, tmp_path: Path, capsys
) -> None:
    from flows.tasks import outputs_exist

    out = tmp_path / "seg"
    (result,) = segment(bundle, [tile], out, FAST_SEGMENT, progress=False)
    names = sorted(visible(out))
    blocker = out / names[-1]  # a folder appears where the last file is about to be published
    blocker.unlink()
    blocker.mkdir()
    (blocker / "x").write_text("x")
    with pytest.raises(OSError), output_set(out, tile.stem, "segment") as staging:
        for name in names:
            (staging / name).write_bytes(b"new")
    assert (out / names[0]).read_bytes() == b"new"  # the set is mixed now, and marked so:
    with pytest.raises(InputError, match="unfinished segment output set"):
        require_published(result.clusters)
    rc, line = run_cli(capsys, "vectorize", result.clusters, "--out", tmp_path / "v.gpkg")
    assert rc == 2 and "unfinished" in line and str(result.clusters) in line
    rc, line = run_cli(
        capsys, "evaluate", result.clusters, "--labels", result.clusters, "--out", tmp_path / "ev"
    )
    assert rc == 2 and "unfinished" in line
    assert not outputs_exist({"clusters": str(result.clusters.resolve())})
    shutil.rmtree(blocker)
    segment(bundle, [tile], out, FAST_SEGMENT, progress=False)  # the rerun replaces it
    require_published(result.clusters)
    assert not list(out.glob(".*.staging-*"))


def test_a_rerun_removes_leftovers_of_dead_runs_only(bundle: Path, tile: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    out.mkdir()
    dead = dead_pid()
    leftovers = [
        out / f".{tile.stem}_clusters.tiled-{dead}.tif",
        out / f".{tile.stem}_clusters.tif.tmp-{dead}",
        out / f".{tile.stem}_polygons.gpkg.tmp-{dead}.gpkg",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
    (out / f".{tile.stem}.staging-{dead}").mkdir()
    users = [out / f".notes-old-{dead}.txt", out / f".notes-old-{dead}", out / f".draft.tmp-{dead}.txt"]
    # ... not names geoseg makes (its words follow a dot: ``.X.old-PID``)
    for path in users:
        path.write_text("mine\n")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        live = out / f".{tile.stem}_confidence.tiled-{holder.pid}.tif"
        live.write_bytes(b"another run is writing this")
        segment(bundle, [tile], out, FAST_SEGMENT, progress=False)
        assert not any(p.exists() for p in leftovers) and not (out / f".{tile.stem}.staging-{dead}").exists()
        assert live.read_bytes() == b"another run is writing this"
        assert all(p.read_text() == "mine\n" for p in users)
    finally:
        holder.kill()
        holder.wait()


def test_train_killed_at_checkpoints_resumes_and_takes_over_its_lock(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    work = work_dir(out)
    for kill_at in (1, 3):  # after the first checkpoint, then a resumed run after its third
        child = cli_process(
            "train", store, "--out", out, "--steps", "100000", "--checkpoint-every", "1", *TRAIN_ARGS
        )
        assert wait_for(lambda n=kill_at: (_checkpoint_step(work) or 0) >= n, child), child.communicate()
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert json.loads((work / LOCK_NAME).read_text())["pid"] == child.pid  # a dead holder's lock
        assert not out.exists()  # no partial bundle is ever visible
    reached = _checkpoint_step(work) or 0
    train(store, out, TrainConfig(steps=reached + 1, checkpoint_every=1, **TINY), progress=False)
    meta = load_meta(out)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, reached + 2)) and meta.band_mean and not (work / LOCK_NAME).exists()


# --- full disks ----------------------------------------------------------------------------------


def test_segment_refuses_before_work_when_the_disk_is_too_small(
    bundle: Path, big: Path, small_fs, capsys
) -> None:
    out = small_fs("256k") / "seg"
    rc, line = run_cli(capsys, "segment", bundle, big, "--out", out, "--quiet")
    assert rc == 2 and "MiB free" in line and "free some space" in line
    assert not out.exists() or visible(out) == {}


def test_segment_on_a_disk_that_fills_up_leaves_no_partial_set(
    bundle: Path, tile: Path, small_fs, capsys
) -> None:
    fs = small_fs("160k")  # room for the rasters, not for the GeoPackage
    out = fs / "seg"
    rc, line = run_cli(capsys, "segment", bundle, tile, "--out", out, "--quiet")
    assert rc == 2 and "no space left" in line and str(out) in line
    # nothing partial, no staging, no manifest: the folder the run created was empty, and is gone
    assert not out.exists()
    assert not set_manifest(out, tile.stem, "segment").exists()


def test_ingest_onto_too_small_a_disk_is_refused_before_the_store_is_created(
    tile: Path, small_fs, capsys
) -> None:
    """The store's size is known once planned (N patches, uncompressed images): a disk too
    small for it was found only by a shard task, after part of the store had been written."""
    out = small_fs("24k") / "tile.zarr"
    rc, line = run_cli(capsys, "ingest", tile, "--out", out, "--patch-size", "32", "--workers", "1")
    assert rc == 2 and "MiB free but about" in line and "MiB are needed" in line, line
    assert not out.exists()


def test_ingest_on_a_full_disk_is_one_line_and_the_store_stays_unusable(tile: Path, small_fs, capsys) -> None:
    """Disks just large enough for the patches pass the free-space check and fill up while
    writing: at a shard, a marker, the attribute write of the finish (zarr's write of
    zarr.json, whose OSError names no file: it printed "cannot write a file: no space left
    on the device") or the catalog. Each is one line naming a path in the store's folder."""
    mid_write = 0
    for size in range(80, 112, 4):
        out = small_fs(f"{size}k") / "tile.zarr"
        rc, line = run_cli(capsys, "ingest", tile, "--out", out, "--patch-size", "32", "--workers", "1")
        if rc == 0:
            continue
        assert rc == 2, line
        if "MiB free" in line:
            assert not out.exists(), line
            continue
        mid_write += 1
        assert f"no space left on the device of {out}" in line, line
        assert "cannot write a file" not in line, line
        if not line.split(" of ", 1)[1].startswith(f"{out}.stac"):  # the catalog comes after `complete`
            with pytest.raises(InputError):
                open_store(out)  # an incomplete store is never taken for a result
    assert mid_write >= 2  # the sizes cover writes that fail part of the way


def test_train_refuses_before_training_when_the_disk_is_too_small(store: Path, small_fs, capsys) -> None:
    out = small_fs("1m") / "model"
    rc, line = run_cli(capsys, "train", store, "--out", out, "--steps", "2", *TRAIN_ARGS)
    assert rc == 2 and "MiB free" in line
    assert not out.exists() and not work_dir(out).exists()  # not even an empty model.work


def test_a_free_space_refusal_never_reads_as_if_there_were_room(
    bundle: Path, shared_data: Path, small_fs, capsys
) -> None:
    """`geoseg segment` of neon/OSBS_029.tif into a 300 KiB file system said "has 0.3 MiB free
    but about 0.3 MiB are needed": the two sizes are written with the decimals that tell them apart."""
    out = small_fs("300k") / "seg"
    rc, line = run_cli(
        capsys, "segment", bundle, shared_data / "neon" / "OSBS_029.tif", "--out", out, "--quiet"
    )
    assert rc == 2, line
    match = re.search(r"has ([0-9.]+) MiB free but about ([0-9.]+) MiB are needed", line)
    assert match, line
    assert float(match[1]) < float(match[2]), line


# --- unwritable outputs ------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["ingest", "train", "segment", "vectorize", "evaluate", "baseline"])
def test_a_read_only_output_folder_is_one_line_before_work(
    stage: str, store: Path, bundle: Path, tile: Path, clusters: Path, read_only_dir: Path, capsys
) -> None:
    out = read_only_dir / "out"
    args = {
        "ingest": ["ingest", tile, "--out", out, "--patch-size", "32"],
        "train": ["train", store, "--out", out, "--steps", "2", *TRAIN_ARGS],
        "segment": ["segment", bundle, tile, "--out", out, "--quiet"],
        "vectorize": ["vectorize", clusters, "--out", read_only_dir / "v.gpkg"],
        "evaluate": ["evaluate", clusters, "--labels", clusters, "--out", out],
        "baseline": ["baseline", "kmeans", tile, "--k", "3", "--out", out],
    }[stage]
    rc, line = run_cli(capsys, *args)
    assert rc == 2 and "Read-only file system" in line and str(read_only_dir) in line
    assert (read_only_dir / "keep.txt").read_text() == "keep\n"


# --- concurrency -------------------------------------------------------------------------------


def test_a_locked_store_refuses_a_second_ingest_until_its_holder_dies(
    tile: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "tile.zarr"
    holder = hold_lock(out, beside=True)
    try:
        rc, line = run_cli(capsys, "ingest", tile, "--out", out, "--patch-size", "32", "--workers", "1")
        assert rc == 2 and f"in use by process {holder.pid}" in line and str(out) in line
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    rc, _ = run_cli(capsys, "ingest", tile, "--out", out, "--patch-size", "32", "--workers", "1")
    assert rc == 0 and open_store(out).num_patches > 0  # the dead holder's lock was taken over


def test_a_locked_segment_folder_refuses_a_second_run(
    bundle: Path, tile: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "seg"
    holder = hold_lock(out)
    try:
        rc, line = run_cli(capsys, "segment", bundle, tile, "--out", out, "--quiet")
        assert rc == 2 and f"in use by process {holder.pid}" in line
        assert visible(out) == {}
    finally:
        holder.kill()
        holder.wait()


def test_a_locked_evaluation_folder_refuses_a_second_run(clusters: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ev"
    holder = hold_lock(out)
    try:
        rc, line = run_cli(capsys, "evaluate", clusters, "--labels", clusters, "--out", out)
        assert rc == 2 and f"in use by process {holder.pid}" in line
        assert visible(out) == {}
    finally:
        holder.kill()
        holder.wait()
    rc, line = run_cli(capsys, "evaluate", clusters, "--labels", clusters, "--out", out)
    assert rc == 0, line  # the dead holder's lock is taken over
    assert (out / "report.json").is_file() and not (out / LOCK_NAME).exists()


def test_two_concurrent_ingests_never_traceback_and_the_store_is_right(tile: Path, tmp_path: Path) -> None:
    out = tmp_path / "tile.zarr"
    children = [
        cli_process("ingest", tile, "--out", out, "--patch-size", "32", "--workers", "1") for _ in range(2)
    ]
    outcomes = [(c.wait(), c.stderr.read() if c.stderr else "") for c in children]
    for rc, err in outcomes:
        assert "Traceback" not in err and (rc == 0 or (rc == 2 and "in use by process" in err)), err
    assert any(rc == 0 for rc, _ in outcomes)
    reference = ingest([tile], tmp_path / "ref.zarr", IngestConfig(patch_size=32, workers=1), progress=False)
    assert np.array_equal(open_store(out).images[...], open_store(reference).images[...])


# --- NaN and infinity ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_raster(tile: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real tile as float32 with a NaN block and +-inf pixels."""
    with rasterio.open(tile) as src:
        data = src.read().astype(np.float32)
    data[:, :40, :40] = np.nan
    data[1, 60:70, 100:110] = np.inf
    data[2, 80:84, 10:20] = -np.inf
    return write_raster(tmp_path_factory.mktemp("nan") / "nan.tif", data.astype(np.float32))


def _finite(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return np.isfinite(src.read()).all(0)


def test_nan_and_inf_are_nodata_in_ingest_training_and_segment(nan_raster: Path, tmp_path: Path) -> None:
    out = ingest([nan_raster], tmp_path / "nan.zarr", IngestConfig(patch_size=32, workers=1), progress=False)
    patches = open_store(out)
    finite = _finite(nan_raster)
    padded = np.pad(finite, ((0, 32), (0, 32)), constant_values=False)
    valid, images = patches.valid[...], patches.images[...]
    for mask, (_, row, col) in zip(valid, patches.origin, strict=True):
        assert np.array_equal(mask, padded[row : row + 32, col : col + 32])  # NaN/inf pixels are invalid
    assert np.isfinite(images).all()
    expected = images.transpose(1, 0, 2, 3)[:, valid].astype(np.float64).mean(1)
    assert np.allclose(patches.meta.band_mean, expected, rtol=1e-4)  # statistics of the finite pixels
    assert all(np.isfinite(patches.meta.band_std))
    model = train(out, tmp_path / "model", TrainConfig(steps=2, checkpoint_every=1, **TINY), progress=False)
    (result,) = segment(model, [nan_raster], tmp_path / "seg", FAST_SEGMENT, progress=False)
    with rasterio.open(result.clusters) as src:
        ids = src.read(1)
    assert np.array_equal(ids == 255, ~finite)


def test_nan_and_inf_are_nodata_in_the_kmeans_baseline(nan_raster: Path, tmp_path: Path, capsys) -> None:
    rc, _ = run_cli(capsys, "baseline", "kmeans", nan_raster, "--k", "3", "--out", tmp_path / "b")
    assert rc == 0
    (written,) = kmeans_baseline([nan_raster], tmp_path / "b2")
    with rasterio.open(written) as src:
        ids = src.read(1)
    assert np.array_equal(ids == 255, ~_finite(nan_raster))


# --- validation of what is read -------------------------------------------------------------------


def test_labels_on_another_grid_are_refused_at_ingest(tile: Path, tmp_path: Path) -> None:
    with rasterio.open(tile) as src:
        profile = {
            "driver": "GTiff",
            "height": src.height,
            "width": src.width,
            "count": 1,
            "dtype": "uint8",
            "crs": src.crs,
            "transform": Affine.translation(100_000, 0) @ src.transform,  # same size, 100 km east
        }
        label = tmp_path / "labels.tif"
        with rasterio.open(label, "w", **profile) as dst:
            dst.write(np.zeros((1, src.height, src.width), np.uint8))
    with pytest.raises(InputError, match="another grid"):
        ingest(
            [tile],
            tmp_path / "s.zarr",
            IngestConfig(patch_size=32, workers=1),
            labels=[label],
            progress=False,
        )
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("patch_size", -1, "patch_size"), ("scale", 0, "scale"), ("band_std", [0, 1, 1], "band_std")],
)
def test_model_json_values_are_range_checked(
    key: str, value: object, message: str, bundle: Path, tile: Path, tmp_path: Path, capsys
) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    data = json.loads((edited / META).read_text())
    data[key] = value
    (edited / META).write_text(json.dumps(data))
    rc, line = run_cli(capsys, "segment", edited, tile, "--out", tmp_path / "seg", "--quiet")
    assert rc == 2 and message in line and str(edited / META) in line
    assert not (tmp_path / "seg").exists()


def test_register_and_promote_refuse_bundles_whose_weights_do_not_load(
    bundle: Path, tmp_path: Path, capsys
) -> None:
    from geoseg.models import registry

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / WEIGHTS).write_bytes((broken / WEIGHTS).read_bytes()[:1000])
    reg = tmp_path / "registry"
    rc, line = run_cli(capsys, "model", "register", broken, "--registry", reg)
    assert rc == 2 and str(broken / WEIGHTS) in line and registry.load_state(reg).versions == []
    version = registry.register(bundle, reg).version
    (reg / version / WEIGHTS).write_bytes(b"damaged")
    rc, line = run_cli(capsys, "model", "promote", version, "--registry", reg)
    assert rc == 2 and "cannot load weights" in line and registry.load_state(reg).current is None


def test_weights_get_the_same_mode_as_the_rest_of_the_bundle(bundle: Path) -> None:
    assert (bundle / WEIGHTS).stat().st_mode == (bundle / META).stat().st_mode


def test_debug_shows_the_traceback(bundle: Path, tile: Path, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("mine\n")
    with pytest.raises(OutputError):
        main(["--debug", "segment", str(bundle), str(tile), "--out", str(target), "--quiet"])
