"""geoseg.evaluate (the stage) and ``geoseg evaluate``: generated rasters with known answers, and real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import from_origin

from geoseg import metrics
from geoseg.cli import main
from geoseg.config import EvaluateConfig
from geoseg.datasets import get_dataset, read_label
from geoseg.errors import ConfigError, InputError
from geoseg.evaluate import evaluate
from geoseg.models.bundle import default_clusters

REPORT_FILES = ("report.json", "report.md", "confusion.png", "clusters.png")


def _tif(path: Path, array: np.ndarray, nodata: int | None = None, crs: bool = True) -> Path:
    profile = {
        "driver": "GTiff",
        "width": array.shape[1],
        "height": array.shape[0],
        "count": 1,
        "dtype": array.dtype.name,
        "nodata": nodata,
    }
    if crs:
        profile.update(crs=CRS.from_epsg(32617), transform=from_origin(400000, 3300000, 0.5, 0.5))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)
    return path


def _scene(seed: int, shape: tuple[int, int] = (60, 80), noise: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Labels in 3 classes, predictions = a fixed relabelling (class c -> cluster (c + 1) % 3) plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), shape[0] * shape[1] // 3 + 1)[: shape[0] * shape[1]]
    labels = rng.permutation(labels).reshape(shape).astype(np.uint8)
    pred = ((labels + 1) % 3).astype(np.uint8)
    flip = rng.random(shape) < noise
    pred[flip] = rng.integers(0, 3, flip.sum())
    return pred, labels


def test_transductive_report_matches_metrics(tmp_path: Path) -> None:
    preds, labels, tables = [], [], []
    for i in range(3):
        pred, lab = _scene(i)
        preds.append(_tif(tmp_path / f"p{i}.tif", pred))
        labels.append(_tif(tmp_path / f"l{i}.tif", lab))
        tables.append(metrics.confusion_matrix(pred, lab)[:3, :3])
    table = sum(tables)
    expected = metrics.score(table, metrics.hungarian_mapping(table))
    report = evaluate(preds, labels, tmp_path / "report", EvaluateConfig(n_examples=2))
    assert report["protocol"] == "transductive"
    assert report["matching"] == "hungarian"
    assert report["mapping"] == {"0": 2, "1": 0, "2": 1}  # the relabelling undone
    assert report["n_pixels"] == 3 * 60 * 80
    assert report["accuracy"] == pytest.approx(expected.accuracy, abs=1e-6)
    assert report["miou"] == pytest.approx(expected.miou, abs=1e-6)
    assert list(report["per_class_iou"].values()) == pytest.approx(expected.per_class_iou.tolist(), abs=1e-6)
    assert report["nmi"] == pytest.approx(metrics.nmi(table), abs=1e-6)
    assert report["ari"] == pytest.approx(metrics.ari(table), abs=1e-6)
    assert [r["n_pixels"] for r in report["per_image"]] == [60 * 80] * 3
    for name in REPORT_FILES:
        assert (tmp_path / "report" / name).is_file()
    assert len(report["files"]["examples"]) == 2
    colours = [c.colour for c in default_clusters(3)]  # the class colours without a dataset
    for example in report["files"]["examples"]:
        with Image.open(tmp_path / "report" / example) as png:
            picture = np.asarray(png.convert("RGB"))
        # title strip over prediction | ground truth, and the classes' legend to their right
        assert picture.shape[0] == 60 + 16 and picture.shape[1] > 80 * 2 + 4
        legend = picture[:, 80 * 2 + 4 :].reshape(-1, 3)
        shown = {tuple(int(v) for v in px) for px in legend}
        assert all(colour in shown for colour in colours), "a class's swatch is missing from the legend"
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["accuracy"] == report["accuracy"] and on_disk["protocol"] == "transductive"
    # A rerun into the same folder with fewer examples leaves only its own.
    again = evaluate(preds[:1], labels[:1], tmp_path / "report", EvaluateConfig(n_examples=1))
    on_disk_examples = sorted(
        str(p.relative_to(tmp_path / "report")) for p in (tmp_path / "report").rglob("*.png")
    )
    assert [e for e in on_disk_examples if e.startswith("examples")] == again["files"]["examples"]


def test_honest_protocol_fits_mapping_on_the_other_set(tmp_path: Path) -> None:
    # Fit set: cluster 0 holds class 1 and cluster 1 holds class 0.
    fit_pred = np.array([[0, 0, 0, 1, 1, 1]], np.uint8)
    fit_lab = np.array([[1, 1, 1, 0, 0, 0]], np.uint8)
    # Scored set: cluster 0 holds class 0 (3 px), cluster 1 holds class 1 (2 px) and class 0 (1 px).
    pred = np.array([[0, 0, 0, 1, 1, 1]], np.uint8)
    lab = np.array([[0, 0, 0, 1, 1, 0]], np.uint8)
    args = [
        _tif(tmp_path / n, a)
        for n, a in (("fp.tif", fit_pred), ("fl.tif", fit_lab), ("p.tif", pred), ("l.tif", lab))
    ]
    report = evaluate(
        [args[2]],
        [args[3]],
        tmp_path / "r",
        EvaluateConfig(n_examples=0),
        fit_predictions=[args[0]],
        fit_labels=[args[1]],
    )
    assert report["protocol"] == "honest"
    assert report["mapping"] == {"0": 1, "1": 0}
    assert report["accuracy"] == pytest.approx(1 / 6, abs=1e-6)  # only the stray class-0 pixel of cluster 1
    assert report["fit"]["n_pixels"] == 6
    assert report["transductive"]["mapping"] == {"0": 0, "1": 1}
    assert report["transductive"]["accuracy"] == pytest.approx(5 / 6, abs=1e-6)
    # NMI/ARI do not depend on the mapping: the same as for the scored pixels alone
    table = metrics.confusion_matrix(pred, lab)[:2, :2]
    assert report["nmi"] == pytest.approx(metrics.nmi(table), abs=1e-6)


def test_many_to_one_over_clustering(tmp_path: Path) -> None:
    pred, lab = _scene(7)
    pred = (pred * 2 + (np.indices(pred.shape)[1] % 2)).astype(
        np.uint8
    )  # 6 clusters, each class split in two
    p, q = _tif(tmp_path / "p.tif", pred), _tif(tmp_path / "l.tif", lab)
    one = evaluate([p], [q], tmp_path / "one", EvaluateConfig(n_examples=0))
    many = evaluate([p], [q], tmp_path / "many", EvaluateConfig(n_examples=0, many_to_one=True))
    assert one["n_clusters"] == 6 and many["matching"] == "many-to-one"
    assert many["accuracy"] >= one["accuracy"]
    assert sorted(v for v in many["mapping"].values()) == [0, 0, 1, 1, 2, 2]
    assert sum(v is None for v in one["mapping"].values()) == 3
    assert any("many-to-one" in note for note in one["notes"])


def test_ignore_and_missing_predictions(tmp_path: Path) -> None:
    pred, lab = _scene(3)
    raw = lab + 1  # raw ids 1..3, 0 = ignore (like ISPRS/LoveDA)
    raw[:10] = 0
    changed = pred.copy()
    changed[:10] = (changed[:10] + 1) % 3  # differs only where ignored
    changed[-1, :5] = 255  # five labelled pixels without prediction
    cfg = EvaluateConfig(ignore=0, n_examples=0)
    a = evaluate([_tif(tmp_path / "a.tif", pred)], [_tif(tmp_path / "l.tif", raw)], tmp_path / "ra", cfg)
    b = evaluate([_tif(tmp_path / "b.tif", changed, nodata=255)], [tmp_path / "l.tif"], tmp_path / "rb", cfg)
    n_labelled = int((raw != 0).sum())
    assert a["n_pixels"] == b["n_pixels"] == n_labelled
    assert a["classes"] == ["class 0", "class 1", "class 2", "class 3"]
    assert a["per_class_iou"]["class 0"] is None  # ignored everywhere: undefined, not zero
    assert b["n_missing"] == 5
    correct_a = round(a["accuracy"] * n_labelled)
    hit_by_missing = int(
        sum(a["mapping"][str(c)] == t for c, t in zip(pred[-1, :5], raw[-1, :5], strict=True))
    )
    assert round(b["accuracy"] * n_labelled) == correct_a - hit_by_missing


def test_block_streaming_equals_whole_image(tmp_path: Path) -> None:
    pred, lab = _scene(11, shape=(97, 131))
    p, q = _tif(tmp_path / "p.tif", pred), _tif(tmp_path / "l.tif", lab)
    whole = evaluate([p], [q], tmp_path / "w", EvaluateConfig(n_examples=0))
    blocks = evaluate([p], [q], tmp_path / "b", EvaluateConfig(n_examples=0, block_pixels=1024))
    assert whole["cluster_class_counts"] == blocks["cluster_class_counts"]
    assert whole["accuracy"] == blocks["accuracy"]


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    p = _tif(tmp_path / "pred_a.tif", np.zeros((20, 30), np.uint8))
    q = _tif(tmp_path / "label_b.tif", np.zeros((20, 31), np.uint8))
    with pytest.raises(InputError, match=r"pred_a\.tif.*label_b\.tif"):
        evaluate([p], [q], tmp_path / "r")
    assert not (tmp_path / "r" / "report.json").exists()


def test_bad_inputs(tmp_path: Path) -> None:
    p = _tif(tmp_path / "p.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="2 files for predictions but 1 for labels"):
        evaluate([p, p], [p], tmp_path / "r")
    with pytest.raises(InputError, match=r"^1 file for predictions but 2 for labels"):  # "1 predictions"
        evaluate([p], [p, p], tmp_path / "r")
    with pytest.raises(InputError, match="not found"):
        evaluate([p], [tmp_path / "missing.png"], tmp_path / "r")
    # a mistyped glob reaches evaluate unexpanded: the missing file is named, not the counts
    with pytest.raises(InputError, match=r"file not found: .*mask/\*\.png \(a shell pattern"):
        evaluate([p, p], [tmp_path / "mask" / "*.png"], tmp_path / "r")
    with pytest.raises(InputError, match="no labelled pixels"):
        evaluate([p], [_tif(tmp_path / "l.tif", np.full((8, 8), 255, np.uint8))], tmp_path / "r")
    with pytest.raises(ConfigError, match="unknown dataset"):
        evaluate([p], [p], tmp_path / "r", EvaluateConfig(dataset="nope"))
    q = _tif(tmp_path / "other_grid.tif", np.zeros((8, 8), np.uint8))
    with rasterio.open(q, "r+") as dst:
        dst.transform = from_origin(400010, 3300000, 0.5, 0.5)
    with pytest.raises(InputError, match="different grids"):
        evaluate([p], [q], tmp_path / "r")
    assert main(["evaluate", str(p), "--labels", str(p), str(p), "--out", str(tmp_path / "r")]) == 2


def test_a_refused_evaluation_leaves_no_empty_report_folder(tmp_path: Path) -> None:
    """`geoseg evaluate ... --labels <8 of 9 masks> --out r2/`: the one error line, and no
    empty r2/ (or its created parents) left behind; a folder that was there stays, with its files."""
    p = _tif(tmp_path / "p.tif", np.zeros((8, 8), np.uint8))
    assert main(["evaluate", str(p), str(p), "--labels", str(p), "--out", str(tmp_path / "new" / "r")]) == 2
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match="unknown dataset"):
        evaluate([p], [p], tmp_path / "r", EvaluateConfig(dataset="dubia"))
    assert not (tmp_path / "r").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(InputError, match="2 files for predictions but 1 for labels"):
        evaluate([p, p], [p], kept)
    assert kept.is_dir() and list(kept.iterdir()) == []


def test_palette_file_and_colour_coded_labels(tmp_path: Path) -> None:
    pred, lab = _scene(5)
    colours = [(10, 20, 30), (200, 0, 0), (0, 200, 0)]
    rgb = np.asarray(colours, np.uint8)[lab]
    rgb[0, 0] = (1, 2, 3)  # a colour not in the palette: ignored
    Image.fromarray(rgb).save(tmp_path / "label.png")
    palette = tmp_path / "palette.json"
    palette.write_text(
        json.dumps(
            {
                "name": "mine",
                "classes": [
                    {"name": n, "colour": "#{:02X}{:02X}{:02X}".format(*c)}
                    for n, c in zip("abc", colours, strict=True)
                ],
            }
        )
    )
    _tif(tmp_path / "pred.tif", pred)
    out = tmp_path / "r"
    code = main(
        [
            "evaluate",
            str(tmp_path / "pred.tif"),
            "--labels",
            str(tmp_path / "label.png"),
            "--palette",
            str(palette),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["classes"] == ["a", "b", "c"] and report["dataset"] == "mine"
    assert report["n_pixels"] == lab.size - 1
    bad = tmp_path / "bad.json"
    bad.write_text('{"classes": [{"name": "x"}]}')
    with pytest.raises(InputError, match="bad palette"):
        evaluate([tmp_path / "pred.tif"], [tmp_path / "label.png"], out, EvaluateConfig(palette=str(bad)))


def test_kmeans_on_dubai_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    """Real imagery through the CLI: baseline k-means on tiles 5-6, then honest and transductive reports."""
    dubai = shared_data / "dubai"
    tiles = {t: sorted((dubai / f"tile{t}" / "images").glob("*.jpg")) for t in (5, 6)}
    masks = {t: sorted((dubai / f"tile{t}" / "masks").glob("*.png")) for t in (5, 6)}
    fit_on = [str(p) for t in (5, 6) for p in tiles[t]]
    for t in (5, 6):
        args = [
            "baseline",
            "kmeans",
            *map(str, tiles[t]),
            "--k",
            "5",
            "--out",
            str(tmp_path / f"t{t}"),
            "--fit-on",
            *fit_on,
        ]
        assert main(args) == 0
    preds = {t: [tmp_path / f"t{t}" / f"{p.stem}_clusters.tif" for p in tiles[t]] for t in (5, 6)}
    all_preds = [str(p) for t in (5, 6) for p in preds[t]]
    all_masks = [str(p) for t in (5, 6) for p in masks[t]]
    out = tmp_path / "transductive"
    images = [str(p) for t in (5, 6) for p in tiles[t]]
    assert (
        main(
            [
                "evaluate",
                *all_preds,
                "--labels",
                *all_masks,
                "--dataset",
                "dubai",
                "--out",
                str(out),
                "--images",
                *images,
            ]
        )
        == 0
    )
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["protocol"] == "transductive" and report["n_clusters"] == 5
    dataset = get_dataset("dubai")
    labelled = sum(int((read_label(m, dataset) != 255).sum()) for m in all_masks)
    assert report["n_pixels"] == labelled
    for example in report["files"]["examples"]:
        with Image.open(out / example) as png:
            assert png.size[0] > 3 * png.size[1] * 0.9  # three panels side by side
    # Constant-prediction floor for this data: k-means must beat it, or the pipeline is broken.
    shares = np.zeros(5)
    for m in all_masks:
        shares += np.bincount(read_label(m, dataset).ravel(), minlength=256)[:5]
    assert report["accuracy"] > shares.max() / shares.sum()

    honest = tmp_path / "honest"
    args = [
        "evaluate",
        *map(str, preds[6]),
        "--labels",
        *map(str, masks[6]),
        "--dataset",
        "dubai",
        "--out",
        str(honest),
    ]
    args += ["--fit-on", *map(str, preds[5]), "--fit-labels", *map(str, masks[5])]
    assert main(args) == 0
    h = json.loads((honest / "report.json").read_text())
    assert h["protocol"] == "honest"
    assert h["fit"]["predictions"] == [str(p) for p in preds[5]]
    assert (
        h["accuracy"] <= h["transductive"]["accuracy"] + 1e-9
    )  # the mapping fitted elsewhere cannot do better


def test_cluster_unseen_in_fit_set_counts_as_error(tmp_path: Path) -> None:
    fit_pred = np.array([[0, 0, 1, 1]], np.uint8)
    fit_lab = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 2, 2]], np.uint8)  # cluster 2 never appears where the mapping is fitted
    lab = np.array([[0, 1, 2, 2]], np.uint8)
    f = [
        _tif(tmp_path / f"{n}.tif", a)
        for n, a in (("fp", fit_pred), ("fl", fit_lab), ("p", pred), ("l", lab))
    ]
    report = evaluate(
        [f[2]],
        [f[3]],
        tmp_path / "r",
        EvaluateConfig(n_examples=0),
        fit_predictions=[f[0]],
        fit_labels=[f[1]],
    )
    assert report["mapping"] == {"0": 0, "1": 1, "2": None}
    assert report["accuracy"] == pytest.approx(0.5)
    assert report["per_class_iou"]["class 2"] == 0.0
    assert any("no labelled pixels in the fit set" in note for note in report["notes"])
    assert report["transductive"]["accuracy"] == pytest.approx(1.0)


def test_paletted_labels_whose_colour_tables_differ_need_a_dataset(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dubai's tile2 masks are palette PNGs with a colour table per file (005: index 0 =
    building #3C1098; 006: index 0 = land #8429F6): without --dataset their indices would be
    scored (and ingested) as one class id each, silently mixing classes."""
    from geoseg.config import IngestConfig
    from geoseg.ingest import ingest

    tile = shared_data / "dubai" / "tile2"
    masks = [tile / "masks" / f"image_part_00{i}.png" for i in (5, 6)]
    preds = []
    for mask in masks:
        with rasterio.open(mask) as src:
            shape = (src.height, src.width)
        preds.append(_tif(tmp_path / f"{mask.stem}_clusters.tif", np.zeros(shape, np.uint8), crs=False))
    out = tmp_path / "r"
    args = ["evaluate", *map(str, preds), "--labels", *map(str, masks), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(masks[0]) in err and str(masks[1]) in err
    assert "index 0 is #3C1098 in one, #8429F6 in the other" in err
    assert "pass --dataset or --palette" in err and "dubai" in err and "isprs" in err
    assert not (out / "report.json").exists()
    # One table (the same file twice): indices are consistent, scored as ids as before.
    assert (
        main(
            [
                "evaluate",
                str(preds[0]),
                str(preds[0]),
                "--labels",
                str(masks[0]),
                str(masks[0]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    # With the dataset the colours are decoded: accepted.
    assert main([*args, "--dataset", "dubai", "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["dataset"] == "dubai"

    # Ingest stores labels as they are without --dataset: refused the same way, no store.
    images = [tile / "images" / f"{m.stem}.jpg" for m in masks]
    config = IngestConfig(patch_size=128, min_valid=0.0)
    with pytest.raises(
        InputError,
        match=r"different colour tables .* pass --dataset to decode the colours \(known datasets: ",
    ):
        ingest(images, tmp_path / "s.zarr", config, labels=masks, progress=False)
    assert not (tmp_path / "s.zarr").exists()
    assert (
        main(
            [
                "ingest",
                *map(str, images),
                "--labels",
                *map(str, masks),
                "--out",
                str(tmp_path / "s.zarr"),
                "--patch-size",
                "128",
            ]
        )
        == 2
    )
    assert "--dataset" in capsys.readouterr().err
    ingest(
        images,
        tmp_path / "s.zarr",
        IngestConfig(patch_size=128, min_valid=0.0, dataset="dubai"),
        labels=masks,
        progress=False,
    )


def test_a_full_disk_while_writing_the_report_names_the_file(tmp_path: Path, small_fs, capsys) -> None:
    """`geoseg evaluate ... --out full/rep` on a nearly full disk said "cannot write a file: no
    space left on the device": which file, on which disk? Now the report file is named."""

    fs = small_fs("1m")
    pred, lab = _scene(0, (300, 400))
    preds, labels = [_tif(tmp_path / "p.tif", pred)], [_tif(tmp_path / "l.tif", lab)]
    (fs / "fill").write_bytes(b"\0" * (1024 * 1024 - 48 * 1024))  # ~48 KiB left: not the figures
    out = fs / "rep"
    assert main(["evaluate", str(preds[0]), "--labels", str(labels[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in err and "no space left on the device of " + str(out) in err, err
    assert not (out / "report.json").exists()


def test_images_given_as_labels_are_named_with_what_to_check(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg evaluate pred/*_clusters.tif --labels tile5/images/*.jpg --dataset dubai` (the
    images, not the masks: no pixel has a Dubai class colour) said only "no labelled pixels in
    the scored set (all ignored or no overlap)": the line now names the label files and what to
    check. The predictions are the images' own size (a k-means floor of the same JPEGs)."""
    images = sorted((shared_data / "dubai" / "tile5" / "images").glob("*.jpg"))[:2]
    preds = []
    for image in images:
        with Image.open(image) as im:
            width, height = im.size
        preds.append(_tif(tmp_path / f"{image.stem}_clusters.tif", np.zeros((height, width), np.uint8)))
    argv = ["evaluate", *map(str, preds), "--labels", *map(str, images), "--dataset", "dubai"]
    assert main([*argv, "--out", str(tmp_path / "report")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith(
        f"geoseg evaluate: error: no labelled pixels in the scored set: no pixel of its labels ({images[0]}"
        " and 1 more) is a class of dataset 'dubai' (are they the ground-truth masks, and is --dataset right?)"
    ), line
    assert not (tmp_path / "report").exists()
