"""Named clusters: `geoseg model name` on bundles and registries, and every output that shows them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pystac
import pytest
import rasterio
from PIL import Image
from rasterio.windows import Window

from geoseg.cli import main
from geoseg.config import SegmentConfig
from geoseg.errors import ConfigError, InputError
from geoseg.models import registry
from geoseg.models.align import align_clusters
from geoseg.models.bundle import CLUSTERS_TAG, META, clusters_from_tag, load_meta
from geoseg.models.names import ClusterEdits, name_clusters, parse_colours, parse_names, read_legend
from tests.helpers import crop, make_bundle, reference_tiles
from tests.helpers import make_spread_bundle as make_aligned_bundle

RGB = ["red", "green", "blue"]


def test_assignments_and_their_errors() -> None:
    assert parse_names(["3=roofs", " 0 = red  roofs ", "5="]) == {3: "roofs", 0: "red roofs", 5: None}
    assert parse_colours(["3=#c0392b", "1=0af"]) == {3: (192, 57, 43), 1: (0, 170, 255)}
    for bad, match in (
        (["roofs"], "not ID=VALUE"),
        (["x=roofs"], "whole number"),
        (["-1=roofs"], ">= 0"),
        (["1=" + "a" * 65], "longer than 64"),
        (["1=tab\u0007bell"], "control characters"),
        (["2=roofs", "2=#c0392b"], "is a colour: give it as --color 2=#c0392b"),  # --color 1=#... 2=#...
        (["2=#0af"], "is a colour"),
        (["2=roofs", "2=trees"], "cluster 2 is named twice: 'roofs' and 'trees'"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_names(bad)
    with pytest.raises(ConfigError, match="not #RRGGBB"):
        parse_colours(["3=red"])


def test_legend_files_csv_and_json(tmp_path: Path) -> None:
    csv = tmp_path / "legend.csv"
    csv.write_text("\ufeffid,name,colour\n0,roads,#7f7f7f\n3,Gebäude,\n")  # a spreadsheet's BOM
    edits = read_legend(csv)
    assert edits.names == {0: "roads", 3: "Gebäude"} and edits.colours == {0: (127, 127, 127)}
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"1": "trees", "2": {"name": "water", "colour": [0, 0, 200]}}))
    assert read_legend(flat) == ClusterEdits({1: "trees", 2: "water"}, {2: (0, 0, 200)})
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"id": 4, "name": "grass", "color": "#0f0"}]))
    assert read_legend(listed) == ClusterEdits({4: "grass"}, {4: (0, 255, 0)})
    twice = tmp_path / "twice.csv"
    twice.write_text("id,name\n1,a\n1,b\n")
    with pytest.raises(InputError, match="cluster 1 is listed twice"):
        read_legend(twice)
    headless = tmp_path / "headless.csv"
    headless.write_text("1,a\n")
    with pytest.raises(InputError, match="header row"):
        read_legend(headless)
    with pytest.raises(InputError, match="not found"):
        read_legend(tmp_path / "absent.csv")


def test_cli_names_a_bundle_and_refuses_unknown_ids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = make_bundle(tmp_path / "m", RGB, "uint8", 110.0, 50.0)  # k = 4: dark, bright, green, None
    legend = tmp_path / "legend.json"
    legend.write_text(json.dumps({"1": "sand", "2": "trees"}))
    names = ["model", "name", str(bundle), "3=roofs", "0=roads", "1=beach"]
    assert main([*names, "--color", "3=#c0392b", "--legend", str(legend)]) == 0  # names win over the legend's
    out = capsys.readouterr().out
    assert "#c0392b  roofs" in out and "beach" in out
    clusters = {c.id: c for c in load_meta(bundle).clusters}
    assert {i: c.name for i, c in clusters.items()} == {0: "roads", 1: "beach", 2: "trees", 3: "roofs"}
    assert clusters[3].colour == (192, 57, 43) and clusters[0].colour != (192, 57, 43)
    before = (bundle / META).read_bytes()
    assert main(["model", "name", str(bundle), "9=lake", "2=forest"]) == 2
    err = capsys.readouterr().err
    assert "has no cluster 9" in err and "ids 0-3" in err and "Traceback" not in err
    assert (bundle / META).read_bytes() == before, "a refused edit changes nothing"
    assert main(["model", "name", str(bundle), "2="]) == 0  # cleared: back to "cluster 2"
    assert "cluster 2" in capsys.readouterr().out and load_meta(bundle).clusters[2].name is None
    assert sorted(p.name for p in bundle.iterdir()) == ["model.json", "weights.safetensors"]  # no temporaries
    assert main(["model", "name", str(tmp_path), "1=x"]) == 2
    assert "neither a model bundle" in capsys.readouterr().err


def test_cli_takes_names_after_the_options_as_the_docs_write_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """docs/usage-segment.md: `geoseg model name model/ --legend legend.csv 5=water` (ID=NAME
    after an option) printed argparse's usage and "unrecognized arguments: 5=water", exit 2;
    so did `model name REG --registry REG 3=x` instead of its "given twice" line."""
    bundle = make_bundle(tmp_path / "m", RGB, "uint8", 110.0, 50.0)  # k = 4
    legend = tmp_path / "legend.csv"
    legend.write_text("id,name,colour\n1,sand,#aaaa00\n3,roofs,#c0392b\n")
    assert main(["model", "name", str(bundle), "--legend", str(legend), "3=water"]) == 0  # ID=NAME wins
    assert main(["model", "name", str(bundle), "--color", "2=#00aa00", "2=trees", "0=roads"]) == 0
    capsys.readouterr()
    clusters = {c.id: c for c in load_meta(bundle).clusters}
    assert {i: c.name for i, c in clusters.items()} == {0: "roads", 1: "sand", 2: "trees", 3: "water"}
    assert clusters[3].colour == (192, 57, 43) and clusters[2].colour == (0, 170, 0)
    reg = tmp_path / "registry"
    registry.promote(reg, registry.register(bundle, reg).version)
    assert main(["model", "name", str(reg), "--registry", str(reg), "1=x"]) == 2
    err = capsys.readouterr().err
    assert "given twice" in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit):  # other stray words are still argparse's error
        main(["model", "name", str(bundle), "--color", "2=#00aa00", "roofs"])
    assert "unrecognized arguments: roofs" in capsys.readouterr().err


def test_cli_output_into_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    """`geoseg model name model/ 2=pines | head -1` printed a BrokenPipeError traceback once
    `head` had left: the names are saved, and geoseg stops quietly (status 141, as `ls | head`)."""
    import os
    import subprocess
    import sys

    bundle = make_bundle(tmp_path / "m", ["red", "green", "blue"], "uint8", 100.0, 50.0)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (head) has gone before geoseg prints
    try:
        run = subprocess.run(
            [sys.executable, "-m", "geoseg.cli", "model", "name", str(bundle), "2=pines"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr, run.stderr
    assert run.returncode == 141, run.stderr
    assert load_meta(bundle).clusters[2].name == "pines"


def test_cli_model_name_takes_the_registry_positionally_or_with_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`model name` accepts --registry as list/register/promote/rollback do; the positional
    form keeps working; both at once, or --registry naming a bundle, is one line, exit 2."""
    reg = tmp_path / "registry"
    bundle = make_bundle(tmp_path / "m", RGB, "uint8", 110.0, 50.0)  # k = 4
    registry.promote(reg, registry.register(bundle, reg).version)
    assert main(["model", "name", str(reg), "0=roofs"]) == 0  # positional, as before
    assert main(["model", "name", "--registry", str(reg), "1=sand", "2=trees", "--color", "2=#00aa00"]) == 0
    assert main(["model", "name", "--version", "v0001", "--registry", str(reg), "3=water"]) == 0
    capsys.readouterr()
    assert registry.cluster_names(reg, "v0001") == {0: "roofs", 1: "sand", 2: "trees", 3: "water"}
    named = {c.id: c for c in load_meta(reg / "v0001").clusters}
    assert named[2].colour == (0, 170, 0)
    assert [e["action"] for e in registry.load_state(reg).events].count("name") == 3
    before = (reg / registry.STATE).read_bytes(), (reg / "v0001" / META).read_bytes()
    odd = tmp_path / "k=4"
    odd.mkdir()
    for argv, says in (
        (["model", "name", str(reg), "1=x", "--registry", str(reg)], "given twice"),
        (["model", "name", "--registry", str(reg), str(odd), "1=x"], "given twice"),  # a folder with "="
        (["model", "name", "--registry", str(bundle), "1=x"], "is a model bundle, not a registry"),
        (["model", "name", "--registry", str(tmp_path / "absent"), "1=x"], "model registry not found"),
        (["model", "name", "--color", "1=#000000"], "name which model?"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert ((reg / registry.STATE).read_bytes(), (reg / "v0001" / META).read_bytes()) == before
    assert registry.cluster_names(reg, "v0001") == {0: "roofs", 1: "sand", 2: "trees", 3: "water"}
    with pytest.raises(SystemExit):
        main(["model", "name", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "[--registry REGISTRY]" in usage and "[REGISTRY_OR_BUNDLE]" in usage


def test_registry_names_carry_to_the_next_aligned_version(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Name the promoted model; retraining's alignment to it carries the names by id."""
    reg = tmp_path / "registry"
    first = make_aligned_bundle(tmp_path / "first", seed=3)
    registry.promote(reg, registry.register(first, reg).version)
    assert main(["model", "name", str(reg), "0=roofs", "2=trees", "--color", "2=#00aa00"]) == 0
    capsys.readouterr()
    assert registry.cluster_names(reg, "v0001") == {0: "roofs", 2: "trees"}
    assert registry.load_state(reg).events[-1]["action"] == "name"
    name_clusters(reg / "current", ClusterEdits({1: "grass"}))  # the version folder itself: logged too
    event = registry.load_state(reg).events[-1]
    assert event["version"] == "v0001" and event["names"] == {"0": "roofs", "1": "grass", "2": "trees"}
    name_clusters(reg / "v0001", ClusterEdits({1: None}))
    assert registry.cluster_names(reg, "v0001") == {0: "roofs", 2: "trees"}
    retrained = make_aligned_bundle(tmp_path / "retrained", seed=4)  # another model: no names, own ids
    align_clusters(retrained, reg / "current", reference_tiles(shared_data)[:2])
    aligned = {c.id: c for c in load_meta(retrained).clusters}
    assert aligned[0].name == "roofs" and aligned[2].name == "trees" and aligned[2].colour == (0, 170, 0)
    registry.promote(reg, registry.register(retrained, reg).version)
    assert main(["model", "list", "--registry", str(reg)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("clusters: 0=roofs, 2=trees") == 2  # both versions show their names
    catalog = pystac.Catalog.from_file(str(reg / "catalog.json"))
    item = next(i for i in catalog.get_items() if i.id == "v0002")
    assert item.properties["geoseg:cluster_names"] == {"0": "roofs", "2": "trees"}
    with pytest.raises(ConfigError, match="no cluster 7"):
        name_clusters(reg, ClusterEdits({7: "x"}), version="v0001")
    with pytest.raises(ConfigError, match="no model version 'v0009'"):
        name_clusters(reg, ClusterEdits({1: "x"}), version="v0009")


@pytest.fixture(scope="module")
def named_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("named")
    bundle = make_bundle(root / "model", RGB, "uint8", 110.0, 50.0)
    name_clusters(bundle, ClusterEdits({0: "roads", 1: "red | roofs", 3: "trees"}, {1: (192, 57, 43)}))
    lausanne = shared_data / "lausanne" / "big_img" / "1091-322_00.tif"
    source = crop(lausanne, root / "scene.tif", Window(300, 300, 256, 256))
    from geoseg.segment import segment

    (result,) = segment(bundle, [source], root / "out", SegmentConfig(batch_size=8), progress=False)
    return result


def test_segment_outputs_carry_the_names(named_run) -> None:
    labels = {0: "roads", 1: "red | roofs", 2: "green", 3: "trees"}  # 2: the bundle's own name
    with rasterio.open(named_run.clusters) as src:
        table = clusters_from_tag(src.tags()[CLUSTERS_TAG])
        assert src.colormap(1)[1][:3] == (192, 57, 43)
        present = {int(v) for v in np.unique(src.read(1))} - {255}
    assert table is not None and {c.id: c.label for c in table} == labels
    assert 'label="red | roofs"' in named_run.clusters_qml.read_text()
    frame = pyogrio.read_dataframe(named_run.gpkg, layer=named_run.gpkg.stem)
    for cid, name in frame.groupby("cluster_id")["class_name"].first().items():
        assert name == labels[int(cid)]
    style = pyogrio.read_dataframe(named_run.gpkg, layer="layer_styles").styleQML[0]
    assert 'label="red | roofs"' in style and 'label="trees"' in style
    item = pystac.Item.from_file(str(named_run.stac_item))
    classes = item.assets["clusters"].extra_fields["classification:classes"]
    by_value = {c["value"]: c for c in classes}
    assert by_value[1]["title"] == "red | roofs" and by_value[1]["name"] == "red_roofs"
    assert by_value[1]["color_hint"] == "C0392B" and by_value[255]["nodata"] is True
    assert item.properties["label:classes"][0]["classes"] == [0, 1, 2, 3]
    # the preview: the map, then a legend with a swatch of each cluster it shows
    with Image.open(named_run.preview_png) as png:
        rgb = np.asarray(png.convert("RGB"))
    assert rgb.shape[0] == 256 and rgb.shape[1] > 256
    legend = {tuple(c) for c in rgb[:, 256:].reshape(-1, 3)}
    palette = {c.id: tuple(c.colour) for c in table}
    assert {palette[i] for i in present} <= legend
    assert not {palette[i] for i in set(palette) - present} & legend, "absent clusters stay out"


def test_evaluate_report_names_the_clusters(named_run, tmp_path: Path) -> None:
    from geoseg.evaluate import evaluate

    with rasterio.open(named_run.clusters) as src:
        ids = src.read(1)
        grid = {"crs": src.crs, "transform": src.transform, "width": src.width, "height": src.height}
    truth = tmp_path / "truth.tif"
    with rasterio.open(truth, "w", driver="GTiff", count=1, dtype="uint8", nodata=255, **grid) as dst:
        dst.write(np.where(ids == 255, 255, ids % 2).astype(np.uint8), 1)  # two classes
    report = evaluate([named_run.clusters], [truth], tmp_path / "eval")
    assert report["cluster_names"]["1"] == "red | roofs" and report["cluster_names"]["0"] == "roads"
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "| 1 | red \\| roofs |" in markdown  # the | of the name escaped in the table


@pytest.fixture
def read_only_bundle(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A model bundle on a read-only file system (a tmpfs remounted ro: root ignores
    permission bits, not a read-only mount); skipped where the test may not mount."""
    import subprocess

    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        bundle = make_bundle(mount / "model", ["red", "green", "blue"], "uint8", 100.0, 50.0)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield bundle
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_naming_a_read_only_bundle_names_its_model_json_and_what_to_do(
    read_only_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (read_only_bundle / META).read_bytes()
    assert main(["model", "name", str(read_only_bundle), "1=roofs"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"geoseg model: error: cannot write {read_only_bundle / META}: Read-only file system: "
        f"make {read_only_bundle} writable, or copy the bundle to a writable folder and name the copy"
    )
    assert ".tmp-" not in line
    assert (read_only_bundle / META).read_bytes() == before


def test_naming_a_read_only_registry_says_to_make_the_registry_writable_not_to_copy(
    tmp_path: Path, small_fs, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg model name --registry RO/models 1=water` on a read-only mount advised "copy the
    bundle to a writable folder and name the copy": a copy is not the promoted version the next
    retraining aligns to, nor logged in registry.json. The line names model.json and the registry."""
    from tests.conftest import remount_read_only

    fs = small_fs("4m")
    reg = fs / "models"
    registry.promote(reg, registry.register(make_aligned_bundle(tmp_path / "m"), reg).version)
    before = {p: (reg / p).read_bytes() for p in (registry.STATE, f"v0001/{META}")}
    remount_read_only(fs)
    for argv, named in (
        (["model", "name", "--registry", str(reg), "1=water"], reg),
        (["model", "name", str(reg), "1=water"], reg),
        (["model", "name", str(reg / "v0001"), "1=water"], reg.resolve()),
    ):
        assert main(argv) == 2, argv
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == (
            f"geoseg model: error: cannot write {reg / 'v0001' / META}: Read-only file system: "
            f"make the model registry {named} writable: a registry's version is named in place"
        ), line
    assert {p: (reg / p).read_bytes() for p in before} == before


def test_naming_a_registry_version_holds_the_registry_lock_so_no_registration_is_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Naming rewrites the version's model.json and registry.json (its event). Outside the
    registry's lock, a retrain registering a version at the same moment could lose its entry
    to this registry.json (or this event to its). With another process holding the lock (a
    registration), naming is refused by name and changes nothing."""
    import subprocess
    import sys

    reg = tmp_path / "models"
    registry.promote(reg, registry.register(make_aligned_bundle(tmp_path / "m"), reg).version)
    before = {p: (reg / p).read_bytes() for p in (registry.STATE, f"v0001/{META}")}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom geoseg.io.fileio import locked\n"
         f"with locked({str(reg)!r}, 'model registry'):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert main(["model", "name", "--registry", str(reg), "1=water"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert f"model registry {reg} is in use by process {holder.pid}" in line, line
        assert {p: (reg / p).read_bytes() for p in before} == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["model", "name", "--registry", str(reg), "1=water"]) == 0  # the holder is gone
    assert load_meta(reg / "v0001").clusters[1].name == "water"
    assert registry.load_state(reg).events[-1]["names"] == {"1": "water"}
