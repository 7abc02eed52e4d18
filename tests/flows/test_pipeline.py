"""The flows under real Prefect runs (test harness server), real files, real Dask."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import pystac
import pytest
import rasterio
from rasterio.crs import CRS

from geoseg.io.store import open_store
from geoseg.stac.catalog import validate_run_catalog
from tests.flows.conftest import TINY, copy_scene, flow_run_logs, free_port, ingested_copy, mtimes


def _items(catalog_json: str | Path, kind: str) -> list[pystac.Item]:
    catalog = pystac.Catalog.from_file(str(catalog_json))
    return [i for i in catalog.get_items(recursive=True) if i.properties["geoseg:kind"] == kind]


def test_pipeline_end_to_end_on_a_generated_scene(small_run: dict, small_scene) -> None:
    assert set(small_run["states"]) == {"ingest", "train", "segment", "evaluate"}
    (prediction,) = small_run["predictions"]
    # Cluster COG on the scene's grid, with nodata 255.
    with rasterio.open(prediction["clusters"]) as out, rasterio.open(small_scene.image) as src:
        assert out.crs == src.crs == CRS.from_epsg(32633)
        assert out.transform == src.transform and out.shape == src.shape
        assert out.dtypes[0] == "uint8" and out.nodata == 255
        ids = out.read(1)
    assert len(np.unique(ids[ids != 255])) >= 2
    # Polygons with a cluster id per row, in the source CRS; QGIS styles beside the outputs.
    info = pyogrio.read_info(prediction["gpkg"])
    assert info["features"] > 0 and CRS.from_user_input(info["crs"]) == CRS.from_epsg(32633)
    assert list(Path(prediction["clusters"]).parent.glob("*.qml"))
    # The run's log says where the predictions went (the segment flow's line, written once).
    messages = [log.message for log in flow_run_logs(small_run["flow_run_id"])]
    assert any(
        m.startswith(f"1 raster segmented into {Path(small_run['run']) / 'predictions'} (") for m in messages
    )
    # Evaluation against the generated ground truth.
    report = json.loads(Path(small_run["report"]).read_text())
    assert 0.0 <= report["accuracy"] <= 1.0 and report["n_classes"] == 6
    # The run's STAC catalog: self-contained, valid, linked source -> prediction <- model.
    assert validate_run_catalog(Path(small_run["catalog"]).parent) >= 7
    (survey,) = _items(small_run["catalog"], "survey")
    (model,) = _items(small_run["catalog"], "model")
    (pred,) = _items(small_run["catalog"], "prediction")
    assert Path(survey.assets["image"].get_absolute_href()) == small_scene.image.resolve()
    assert Path(pred.assets["clusters"].get_absolute_href()) == Path(prediction["clusters"]).resolve()
    assert "label" in " ".join(pred.stac_extensions)
    assert pred.get_single_link("source").get_href().endswith(f"{survey.id}.json")
    assert pred.get_single_link("derived_from").get_href().endswith(f"{model.id}.json")
    assert model.get_single_link("derived_from").get_href().endswith(f"{survey.id}.json")


def _stac_documents(folder: Path) -> dict[Path, dict]:
    """Every STAC JSON document under ``folder`` (hidden folders skipped), by path."""
    found = {}
    for path in sorted(folder.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "stac_version" in data:
            found[path] = data
    return found


def _hrefs(data: dict) -> list[tuple[str, str]]:
    """(what, href) of a document's links (but self) and assets."""
    links = [(f"link {link['rel']}", link["href"]) for link in data.get("links", []) if link["rel"] != "self"]
    return links + [(f"asset {key}", asset["href"]) for key, asset in data.get("assets", {}).items()]


def test_a_copied_run_folder_resolves_relative_inside_absolute_outside(
    small_run: dict, small_scene, tmp_path: Path
) -> None:
    """Hrefs to files inside the run folder are relative (model.json too), to files outside it
    absolute: a copy of the run folder elsewhere resolves every href, none into the original."""
    from pystac.validation import validate_dict

    run = Path(small_run["run"]).resolve()
    copy = Path(shutil.copytree(run, tmp_path / "elsewhere" / "deeper" / "pipeline", symlinks=True))
    documents = _stac_documents(copy)
    assert copy / "predictions" / "scene_prediction.json" in documents
    checked = 0
    for path, data in documents.items():
        validate_dict(data, extensions=[], href=str(path))  # core schemas bundled with pystac (offline)
        for what, href in _hrefs(data):
            assert not href.startswith(str(run)), f"{path}: {what} names the original run folder: {href}"
            target = Path(href) if Path(href).is_absolute() else (path.parent / href).resolve()
            assert target.exists(), f"{path}: {what} does not resolve in the copy: {href}"
            if Path(href).is_absolute():  # outside the run folder: the survey raster
                assert target == small_scene.image.resolve(), f"{path}: {what} is absolute: {href}"
            else:
                assert target.is_relative_to(copy), f"{path}: {what} climbs out of the run folder: {href}"
            checked += 1
    assert checked > 20
    via = {
        link["rel"]: link["href"]
        for link in documents[copy / "predictions" / "scene_prediction.json"]["links"]
    }
    assert via["via"] == "../model/model.json"
    assert validate_run_catalog(copy / "catalog") >= 7  # the copy's catalog, run through its own checks


def test_one_root_catalog_per_run_folder_reaches_every_item(small_run: dict) -> None:
    """The run folder's catalog/ is its one root catalog (no <store>.stac/ beside it); it
    validates and reaches every catalog and item of the run folder, and its survey item keeps
    what ingest recorded (created, the patch store)."""
    run = Path(small_run["run"]).resolve()
    documents = _stac_documents(run)
    catalogs = {p for p, d in documents.items() if d["type"] == "Catalog"}
    roots = {p for p in catalogs if not any(link["rel"] == "parent" for link in documents[p]["links"])}
    assert roots == {run / "catalog" / "catalog.json"} == {Path(small_run["catalog"])}
    assert not list(run.glob("*.stac"))
    assert validate_run_catalog(run / "catalog") >= 7
    root = pystac.Catalog.from_file(str(run / "catalog" / "catalog.json"))
    reached = {Path(str(node.get_self_href())).resolve() for node, _, _ in root.walk()}
    items = list(root.get_items(recursive=True))
    reached |= {Path(str(item.get_self_href())).resolve() for item in items}
    own = {p for p, d in documents.items() if d["type"] == "Feature" and p.parent == run / "predictions"}
    assert set(documents) - own == reached  # every catalog and item, but segment's own items
    predictions = [i for i in items if i.properties["geoseg:kind"] == "prediction"]
    listed = {Path(str(i.assets["clusters"].get_absolute_href())).resolve() for i in predictions}
    for path in own:  # segment's item beside its outputs: the same prediction is in the catalog
        clusters = (path.parent / documents[path]["assets"]["clusters"]["href"]).resolve()
        assert clusters in listed
    (survey,) = [i for i in items if i.properties["geoseg:kind"] == "survey"]
    assert survey.common_metadata.created is not None and "patches" in survey.assets
    assert (
        Path(str(survey.assets["patches"].get_absolute_href())).resolve()
        == Path(small_run["store"]).resolve()
    )


def test_rerun_on_the_same_survey_hits_the_cache(small_run: dict, small_scene) -> None:
    from flows.pipeline import pipeline_flow

    run = Path(small_run["run"])
    before = {k: v for k, v in mtimes(run).items() if not k.startswith("catalog")}
    again = pipeline_flow(
        src=str(small_scene.image),
        out=str(run),
        labels=str(small_scene.labels),
        dataset="synthetic",
        **TINY,
    )
    flat = [s for v in again["states"].values() for s in ([v] if isinstance(v, str) else v)]
    assert flat and all(s == "Cached" for s in flat), again["states"]
    after = {k: v for k, v in mtimes(run).items() if not k.startswith("catalog")}
    assert after == before  # nothing rewritten
    assert again["predictions"] == small_run["predictions"]


def test_corrupt_input_fails_the_flow_clearly_and_keeps_earlier_outputs(
    prefect_harness: None, small_scene, tmp_path: Path
) -> None:
    from flows.ingest import ingest_flow

    src, run, store = ingested_copy(small_scene, tmp_path)
    before = mtimes(store)
    # Damage the survey in place: same name, garbage after the TIFF header.
    data = bytearray(src.read_bytes())
    data[16:] = b"\x00" * (len(data) - 16)
    src.write_bytes(bytes(data))
    state = ingest_flow(src=str(src), out=str(run), patch_size=32, return_state=True)
    assert state.is_failed()
    assert src.name in state.message, state.message
    assert mtimes(store) == before
    assert open_store(store).num_patches > 0


def test_a_cached_step_whose_outputs_were_deleted_runs_again(
    prefect_harness: None, small_scene, tmp_path: Path
) -> None:
    import shutil

    from flows.ingest import ingest_flow

    src, run, store = ingested_copy(small_scene, tmp_path)
    patches = open_store(store).num_patches
    shutil.rmtree(store)
    # Same parameters and inputs: the cache record exists, but its output does not.
    assert ingest_flow(src=str(src), out=str(run), patch_size=32) == store
    assert open_store(store).num_patches == patches


def test_pipeline_on_the_lausanne_geotiffs_without_labels(
    prefect_harness: None, shared_data: Path, tmp_path: Path
) -> None:
    from flows.pipeline import pipeline_flow

    tiles = sorted((shared_data / "lausanne" / "img").glob("*.tif"))[:3]
    result = pipeline_flow(src=[str(t) for t in tiles], out=str(tmp_path / "run"), **TINY)
    assert "evaluate" not in result["states"] and result["report"] is None
    assert len(result["predictions"]) == len(tiles)
    for tile, prediction in zip(tiles, result["predictions"], strict=True):
        with rasterio.open(prediction["clusters"]) as out, rasterio.open(tile) as src:
            assert out.crs == src.crs == CRS.from_epsg(2056)
            assert out.transform == src.transform and out.shape == src.shape
    assert len(_items(result["catalog"], "prediction")) == len(tiles)
    assert len(_items(result["catalog"], "survey")) == len(tiles)
    assert validate_run_catalog(Path(result["catalog"]).parent) >= 4 + 2 * len(tiles) + 1


@pytest.fixture
def dask_cluster(tmp_path: Path):
    """A `dask scheduler` and a `dask worker` on loopback, as separate processes."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    log = (tmp_path / "dask.log").open("w")
    scheduler = subprocess.Popen(
        [
            bin_dir / "dask",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            ":0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    worker = subprocess.Popen(
        [bin_dir / "dask", "worker", address, "--nthreads", "2", "--nworkers", "1", "--no-dashboard"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        import distributed

        deadline = time.monotonic() + 120
        while True:
            try:
                with distributed.Client(address, timeout=5, set_as_default=False) as client:
                    client.wait_for_workers(1, timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield address
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
        for proc in (worker, scheduler):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def test_dask_address_reaches_a_separately_started_scheduler(
    prefect_harness: None, small_scene, dask_cluster: str, tmp_path: Path
) -> None:
    import distributed

    from flows.ingest import ingest_flow

    src = copy_scene(small_scene, tmp_path / "survey")
    store = ingest_flow(src=str(src), out=str(tmp_path / "run"), patch_size=32, dask_address=dask_cluster)
    assert open_store(store).num_patches > 0

    def prefixes(dask_scheduler) -> dict[str, int]:
        return {name: sum(p.state_counts.values()) for name, p in dask_scheduler.task_prefixes.items()}

    with distributed.Client(dask_cluster, set_as_default=False) as client:
        seen = client.run_on_scheduler(prefixes)
    # The Prefect task ran there, and so did the library's own Dask work of ingest (its
    # shard writers), handed the same scheduler by the task.
    assert "ingest_task" in seen, seen
    assert set(seen) - {"ingest_task"}, f"no library Dask tasks on the scheduler: {seen}"


def deployed_entrypoints() -> list[str]:
    import yaml

    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "prefect.yaml").read_text())
    return sorted({d["entrypoint"] for d in config["deployments"]})


@pytest.mark.parametrize("entrypoint", deployed_entrypoints())
def test_a_deployed_flow_is_the_flows_package_one(entrypoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaded as a worker loads a deployment (the file as a script module named `segment`),
    the flow is still `flows.segment`'s: that is the module pickle names, and a Dask
    scheduler or worker started on its own can import only that one."""
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    flow = load_flow_from_entrypoint(entrypoint)
    path, function = entrypoint.split(":")
    assert flow.fn.__module__ == "flows." + Path(path).stem, flow.fn.__module__
    assert flow is getattr(__import__(flow.fn.__module__, fromlist=[function]), function)


def test_a_deployed_flow_runs_on_a_separately_started_scheduler(
    prefect_harness: None, small_scene, dask_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prefect deployment run 'segment/local' --param dask_address=tcp://...` against a
    `dask scheduler` and `dask worker`s failed at once with "UnfinishedRun: Run is in PENDING
    state" (the scheduler's log: "No module named 'segment'"): the deployment's flow, loaded
    from flows/segment.py as a script module, was pickled by that module's name. The flow
    loaded from its entrypoint now runs there, as the flow imported from the package does."""
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    ingest_flow = load_flow_from_entrypoint("flows/ingest.py:ingest_flow")
    src = copy_scene(small_scene, tmp_path / "survey")
    state = ingest_flow(
        src=str(src), out=str(tmp_path / "run"), patch_size=32, dask_address=dask_cluster, return_state=True
    )
    assert state.is_completed(), state.message
    assert open_store(state.result()).num_patches > 0


CUSTOM_FLOW = """
from pathlib import Path

from prefect import flow

from flows.ingest import ingest_step
from flows.runner import flow_options
from geoseg.config import IngestConfig


def sources(src: str) -> list[Path]:  # a helper of this file: pickled as custom.sources
    return [Path(src)]


@flow(name="custom", **flow_options())
def custom_flow(src: str, out: str, dask_address: str | None = None) -> str:
    store, _ = ingest_step(sources(src), Path(out), IngestConfig(patch_size=32))
    return str(store)
"""


def test_a_task_the_scheduler_cannot_load_is_one_line_naming_it_and_what_to_do(
    prefect_harness: None, small_scene, dask_cluster: str, tmp_path: Path
) -> None:
    """A flow the scheduler cannot unpickle (here a user's flow file of its own, which only
    the flow's process can import; before the fix above, every deployment) failed with
    Prefect's "UnfinishedRun: Run is in PENDING state, its result is not available" and a
    traceback: now the task's name, Dask's reason and what to do, in one line."""
    from prefect.flows import load_flow_from_entrypoint

    from geoseg.errors import ConfigError

    script = tmp_path / "mine" / "custom.py"
    script.parent.mkdir()
    script.write_text(CUSTOM_FLOW)
    custom = load_flow_from_entrypoint(f"{script}:custom_flow")
    src = copy_scene(small_scene, tmp_path / "survey")
    state = custom(src=str(src), out=str(tmp_path / "run"), dask_address=dask_cluster, return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError) as raised:
        state.result()
    line = str(raised.value)
    assert line.startswith("ingest never ran on the Dask cluster (Error during deserialization"), line
    assert line.endswith("restart them after updating geoseg") and "\n" not in line, line
    assert not (tmp_path / "run" / "patches.zarr").exists()
