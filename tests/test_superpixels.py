"""Superpixel baseline and refinement, on real crops of ../shared/data and generated scenes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import torch
from PIL import Image
from pystac.validation import validate_dict
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from scipy import ndimage

from geoseg import metrics
from geoseg.cli import main
from geoseg.config import SuperpixelConfig
from geoseg.errors import ConfigError, InputError
from geoseg.io import outputs
from geoseg.io.cog import validate_cog
from geoseg.io.fileio import clean_leftovers, content_id
from geoseg.superpixels import (
    MODEL_NAME,
    PREDICT_SEGMENTS,
    PixelSpace,
    SuperpixelModel,
    SuperpixelRefiner,
    _masked_grid_slic,
    apply_superpixels,
    fit_space,
    fit_superpixels,
    load_model,
    segment_statistics,
    superpixel_baseline,
    superpixel_labels,
    superpixel_raster,
)

TRANSFORM = from_origin(2_538_000, 1_152_000, 0.5, 0.5)
LAB = PixelSpace(True, 255.0, np.zeros(3), np.ones(3))


def _save_rgb(path: Path, rgb: np.ndarray, nodata_mask: np.ndarray | None = None) -> Path:
    """An RGB GeoTIFF (photometric RGB) with an internal mask where ``nodata_mask`` is set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, _ = rgb.shape
    profile = {
        "driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8",
        "crs": CRS.from_epsg(2056), "transform": TRANSFORM, "photometric": "RGB",
    }  # fmt: skip
    if nodata_mask is not None:
        profile["nodata"] = 0
        rgb = np.where(nodata_mask[..., None], 0, np.maximum(rgb, 1))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    return path


def _dubai_crop(shared: Path, tile: int, index: int, out: Path, side: int = 192) -> Path:
    image = shared / "dubai" / f"tile{tile}" / "images" / f"image_part_{index:03d}.jpg"
    with Image.open(image) as img:
        rgb = np.asarray(img.convert("RGB"))[:side, :side]
    Image.fromarray(rgb).save(out)
    return out


def _scene(layout: np.ndarray, colours: np.ndarray, seed: int) -> np.ndarray:
    """Regions of flat colours plus noise: (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    rgb = colours[layout].astype(np.float64) + rng.normal(0, 6, (*layout.shape, 3))
    return np.clip(rgb, 1, 255).astype(np.uint8)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_lab_matches_scikit_image(shared_data: Path) -> None:
    from skimage.color import rgb2lab

    with Image.open(shared_data / "loveda" / "0_rgb.png") as img:
        rgb = np.asarray(img.convert("RGB"))[:64, :64]
    ours = LAB.transform(np.moveaxis(rgb, -1, 0).astype(np.float32))
    assert np.abs(ours - rgb2lab(rgb)).max() < 1e-3


def _traced_peak(fn, *args, **kwargs) -> tuple[object, int]:
    """``fn``'s result and the peak bytes of Python/numpy allocations it made beyond the start."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result = fn(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_transform_is_chunked_and_exact_on_a_tall_block(shared_data: Path) -> None:
    """CIELAB of a 1024-row block equals scikit-image's, and its temporaries do not grow
    with the block: a block 4x taller costs at most ~its 4x larger output more (a
    whole-block pass holds several float copies of the block, 4x as many bytes too)."""
    from skimage.color import rgb2lab

    with Image.open(shared_data / "loveda" / "0_rgb.png") as img:
        rgb = np.asarray(img.convert("RGB"))[:, :64]
    tall, short = np.moveaxis(rgb, -1, 0), np.moveaxis(rgb[:256], -1, 0)
    ours, tall_peak = _traced_peak(LAB.transform, tall)
    assert np.abs(ours - rgb2lab(rgb)).max() < 1e-3
    short_out, short_peak = _traced_peak(LAB.transform, short)
    tall_extra = tall_peak - ours.nbytes
    short_extra = short_peak - short_out.nbytes
    assert tall_extra < 1.5 * short_extra, (tall_extra, short_extra)


def test_prediction_is_nearest_centroid_in_chunks() -> None:
    """Over many chunks: the nearest standardised centroid, and never a float64 copy of all
    the segments (the whole raster's segments of a 20000 x 20000 raster are millions)."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(16 * PREDICT_SEGMENTS + 7, 6)).astype(np.float32)
    model = SuperpixelModel(LAB, rng.normal(size=6), rng.uniform(0.5, 2, 6), rng.normal(size=(5, 6)))
    ids, peak = _traced_peak(model.predict, features)
    z = (features.astype(np.float64) - model.scaler_mean) / model.scaler_std
    nearest = ((z[:, None, :] - model.centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    np.testing.assert_array_equal(ids, nearest)
    assert peak < features.nbytes, (peak, features.nbytes)


def test_no_phase_holds_an_array_of_the_raster_size(tmp_path: Path) -> None:
    """The phases whose memory is the superpixels' own (pixel sampling, SLIC blocks with
    the label raster written, the k-means fit) on a 256^2 and a 512^2 raster, 32-px blocks:
    their peak of Python/numpy allocations grows by less than one float32 band of the
    added pixels. A whole-raster pass (a feature image, a float copy of the bands, a
    sampling read of the whole raster) grows by 12 bytes per pixel; what may grow is the
    per-segment features (24 bytes per 64-px segment). GDAL's own cache is outside
    tracemalloc's view (it is bounded by ``bounded_gdal_cache``)."""
    colours = np.array([[200, 40, 40], [40, 160, 60], [60, 60, 200]])
    config = SuperpixelConfig(k=3, size=8, block=32, fit_pixels=1000, fit_segments=100)

    def phases(source: Path, labels: Path) -> None:
        space = fit_space([source], config)
        fit_superpixels([superpixel_raster(source, space, config, labels)], space, config)

    peaks = {}
    for side in (256, 256, 512):  # the first run pays the imports and caches
        layout = (np.indices((side, side)).sum(axis=0) // 97) % 3
        source = _save_rgb(tmp_path / f"scene{side}.tif", _scene(layout, colours, 0))
        _, peaks[side] = _traced_peak(phases, source, tmp_path / f"labels{side}.tif")
        assert (_read(tmp_path / f"labels{side}.tif") > 0).all()  # every pixel in a segment
    added = 512 * 512 - 256 * 256
    assert peaks[512] - peaks[256] < 4 * added, peaks


def test_segments_never_cross_nodata(shared_data: Path) -> None:
    """A nodata column splits the NEON crop: no superpixel has pixels on both sides; nodata is 0."""
    with rasterio.open(shared_data / "neon" / "OSBS_029.tif") as src:
        data = src.read([1, 2, 3], window=((0, 160), (0, 160))).astype(np.float32)
    valid = np.ones(data.shape[1:], bool)
    valid[:, 78:82] = False
    valid[:20, :20] = False
    labels = superpixel_labels(LAB.transform(data), valid, 12, 10.0, 5)
    assert (labels[~valid] == 0).all() and (labels[valid] > 0).all()
    left, right = set(np.unique(labels[:, :78])) - {0}, set(np.unique(labels[:, 82:])) - {0}
    assert left and right and not left & right
    for label in np.unique(labels[labels > 0]):  # SLIC's connectivity pass: one piece each
        assert ndimage.label(labels == label)[1] == 1


def _majority_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of a's labelled pixels that fall in the b segment most of their a segment is in
    (1.0: every segment of ``a`` lies inside one segment of ``b``)."""
    m = a > 0
    pairs = a[m].astype(np.int64) * (int(b.max()) + 1) + b[m]
    pair, count = np.unique(pairs, return_counts=True)
    best = np.zeros(int(a.max()) + 1, np.int64)
    np.maximum.at(best, pair // (int(b.max()) + 1), count)
    return float(best.sum() / m.sum())


def test_masked_grid_slic_is_slic_on_a_fully_valid_block(shared_data: Path) -> None:
    """The nodata path repeats scikit-image's SLIC steps with grid seeds: with nothing
    masked it must give slic's own partition (checked segment by segment)."""
    with rasterio.open(shared_data / "neon" / "OSBS_029.tif") as src:
        features = LAB.transform(src.read([1, 2, 3], window=((0, 240), (0, 240))))
    valid = np.ones(features.shape[:2], bool)
    ours = _masked_grid_slic(features, valid, 12, 10.0, 5)
    theirs = superpixel_labels(features, valid, 12, 10.0, 5)
    assert _majority_share(ours, theirs) == 1.0 and _majority_share(theirs, ours) == 1.0


def test_blocks_with_nodata_cut_the_whole_image_segments(shared_data: Path) -> None:
    """NEON (nodata 255 scattered over every block) in 96-px blocks with a 24-px halo vs one
    block: every block segment lies inside one whole-image segment (it is the whole-image
    segment, cut at the seam), because blocks with nodata seed on the grid too.
    scikit-image's mask seeding (random points moved by k-means) gave 0.60 here."""
    with rasterio.open(shared_data / "neon" / "OSBS_029.tif") as src:
        features = LAB.transform(src.read([1, 2, 3]))
        valid = np.all(src.read_masks([1, 2, 3]) > 0, axis=0)
    assert 0 < (~valid).mean() < 0.1
    whole = superpixel_labels(features, valid, 12, 10.0, 5)
    blocked, offset, step, halo = np.zeros_like(whole), 0, 96, 24
    for r in range(0, 400, step):
        for c in range(0, 400, step):
            r0, c0 = max(0, r - halo), max(0, c - halo)
            window = np.s_[r0 : r + step + halo, c0 : c + step + halo]
            labels = superpixel_labels(features[window], valid[window], 12, 10.0, 5)
            core = labels[r - r0 : r - r0 + step, c - c0 : c - c0 + step]
            blocked[r : r + step, c : c + step] = np.where(core > 0, core + offset, 0)
            offset += int(labels.max())
    assert ((blocked > 0) == valid).all()
    assert _majority_share(blocked, whole) >= 0.99


def test_segment_statistics_are_mean_and_std() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20, 30, 2)).astype(np.float32)
    labels = rng.integers(0, 4, (20, 30)).astype(np.int32)
    stats, counts = segment_statistics(features, labels)
    for label in (1, 2, 3):
        pixels = features[labels == label]
        assert counts[label - 1] == len(pixels)
        np.testing.assert_allclose(stats[label - 1, :2], pixels.mean(0), rtol=1e-5)
        np.testing.assert_allclose(stats[label - 1, 2:], pixels.std(0), rtol=1e-4)


def _inside_one_material(path: Path, layout: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Pixels whose superpixel (the baseline's: one block, uint8 RGB) covers a single material."""
    with rasterio.open(path) as ds:
        features = LAB.transform(ds.read())
    labels = superpixel_labels(features, np.ones(layout.shape, bool) if valid is None else valid, 8, 10.0, 5)
    materials = np.zeros((int(labels.max()) + 1, int(layout.max()) + 1), bool)
    materials[labels.ravel(), layout.ravel()] = True
    pure = materials.sum(axis=1) == 1
    pure[0] = False  # nodata
    return pure[labels]


def test_ids_are_shared_across_rasters_and_outputs_are_complete(tmp_path: Path) -> None:
    """Two generated scenes with the same three materials in other places: one id per material.

    k = 4: segments that straddle a material edge (large std) may take a cluster of their
    own, so the property is on the segments inside one material (78-97% of each
    material's pixels here, by the geometry of the seed grid): all of them take the
    material's id, the same in both rasters.
    """
    colours = np.array([[200, 40, 40], [40, 160, 60], [60, 60, 200]])
    rows, cols = np.indices((96, 128))
    layout_a = np.where(cols < 64, 0, np.where(rows < 48, 1, 2))
    layout_b = np.where(rows < 32, 2, np.where(cols < 40, 1, 0))
    nodata = np.zeros(layout_a.shape, bool)
    nodata[:16, :16] = True
    a = _save_rgb(tmp_path / "a.tif", _scene(layout_a, colours, 0), nodata)
    b = _save_rgb(tmp_path / "b.tif", _scene(layout_b, colours, 1))
    out_a, out_b = superpixel_baseline([a, b], tmp_path / "out", SuperpixelConfig(k=4, size=8, seed=2))
    ids_a, ids_b = _read(out_a), _read(out_b)
    assert (ids_a[nodata] == 255).all() and (ids_a[~nodata] < 4).all()
    pure_a, pure_b = _inside_one_material(a, layout_a, ~nodata), _inside_one_material(b, layout_b, None)
    majority = []
    for material in range(3):
        in_a = np.bincount(ids_a[pure_a & (layout_a == material)], minlength=4)
        in_b = np.bincount(ids_b[pure_b & (layout_b == material)], minlength=4)
        assert in_a.argmax() == in_b.argmax()  # the same id for the material in both rasters
        assert in_a.max() >= 0.99 * in_a.sum() and in_b.max() >= 0.99 * in_b.sum()
        majority.append(in_a.argmax())
    assert len(set(majority)) == 3
    # the outputs every cluster raster has: COG with nodata, colours, style, preview, STAC item
    assert validate_cog(out_a)[0]
    with rasterio.open(out_a) as ds:
        assert ds.nodata == 255 and ds.crs == CRS.from_epsg(2056) and ds.transform == TRANSFORM
        assert ds.colormap(1)[0] != ds.colormap(1)[1]
        # provenance by content, as segment's: no path of this machine in the file
        assert ds.tags()["GEOSEG_MODEL"] == content_id(tmp_path / "out" / MODEL_NAME)
    assert 'type="paletted"' in out_a.with_suffix(".qml").read_text()
    assert outputs.preview_path(out_a).is_file()
    item_path = tmp_path / "out" / "a_prediction.json"
    validate_dict(json.loads(item_path.read_text()), extensions=[])  # core schema (offline)
    item = pystac.Item.from_file(str(item_path))
    links = {link.rel: Path(link.get_absolute_href()) for link in item.links}
    assert links["via"] == (tmp_path / "out" / MODEL_NAME).resolve() and links["derived_from"] == a.resolve()
    # no temporary label rasters or staging folders left behind: only the two sets' manifests
    hidden = sorted(p.name for p in (tmp_path / "out").glob(".*"))
    assert hidden == [".a.geoseg-baseline.json", ".b.geoseg-baseline.json"]


def test_apply_reproduces_the_fit_and_scores_new_rasters(shared_data: Path, tmp_path: Path) -> None:
    """Fit on real Dubai crops, then the saved JSON model applied: identical on a fitting raster."""
    fit = [_dubai_crop(shared_data, 1, i, tmp_path / f"fit{i}.png") for i in (1, 2)]
    new = _dubai_crop(shared_data, 5, 1, tmp_path / "new.png")
    config = SuperpixelConfig(k=5, size=10, seed=1, block=96)
    fitted = superpixel_baseline(fit, tmp_path / "fit", config)
    model_file = tmp_path / "fit" / MODEL_NAME
    json.loads(model_file.read_text())  # plain JSON, nothing to unpickle
    assert main(["baseline", "superpixels-apply", str(model_file), str(fit[0]), str(new), "--out", str(tmp_path / "apply")]) == 0  # fmt: skip
    again = _read(tmp_path / "apply" / "fit1_clusters.tif")
    assert np.array_equal(again, _read(fitted[0]))
    scored = _read(tmp_path / "apply" / "new_clusters.tif")
    assert scored.max() < 5 and len(np.unique(scored)) >= 3  # real imagery uses several clusters
    model = load_model(model_file)
    assert (
        model.k == 5 and model.settings["size"] == 10 and model.centroids.shape == (5, 6)
    )  # mean + std of L, a, b
    # fitted on another set (--fit-on): only the sources are written, with the same ids
    assert main(["baseline", "superpixels", str(new), "--fit-on", *map(str, fit), "--k", "5", "--size", "10", "--seed", "1", "--block", "96", "--out", str(tmp_path / "fit-on")]) == 0  # fmt: skip
    assert np.array_equal(_read(tmp_path / "fit-on" / "new_clusters.tif"), scored)
    assert not (tmp_path / "fit-on" / "fit1_clusters.tif").exists()


def test_blocks_agree_with_a_whole_image_run(shared_data: Path, tmp_path: Path) -> None:
    """LoveDA 384 x 384 in 120-px blocks vs one block, one model.

    Bound: block corners and the halo (2 x size) lie on SLIC's seed grid, so a fully valid
    block seeds exactly where the whole-image run does, and SLIC's 2 x size search window
    never reaches past the halo in one iteration; a segment cut by a seam keeps the
    statistics of the whole segment (it fits in the halo). The bench measures agreement
    1.0 on LoveDA and Dubai (bench/RESULTS.md); 0.99 leaves room for float differences
    between platforms, and far from the seams (> 2 x halo) the maps must agree on 99.9%.
    """
    with Image.open(shared_data / "loveda" / "0_rgb.png") as img:
        rgb = np.asarray(img.convert("RGB"))[:384, :384]
    source = _save_rgb(tmp_path / "loveda.tif", rgb)
    config = SuperpixelConfig(k=6, size=12, seed=0, block=4096)
    (whole,) = superpixel_baseline([source], tmp_path / "whole", config)
    model = tmp_path / "whole" / MODEL_NAME
    obj = json.loads(model.read_text())
    obj["settings"]["block"] = 120  # a multiple of the size: seams at 120, 240, 360
    model.write_text(json.dumps(obj))
    (blocked,) = apply_superpixels(model, [source], tmp_path / "blocked")
    a, b = _read(whole), _read(blocked)
    agree = a == b
    seams = np.zeros(a.shape, bool)
    for s in (120, 240, 360):
        seams[s - 24 : s + 24] = True
        seams[:, s - 24 : s + 24] = True
    assert agree.mean() >= 0.99, agree.mean()
    assert agree[~seams].mean() >= 0.999, agree[~seams].mean()
    assert metrics.ari(metrics.confusion_matrix(a, b)[:6, :6]) > 0.8


def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    colours = np.array([[200, 40, 40], [40, 160, 60]])
    rgb = _scene(np.indices((40, 60))[1] // 30, colours, 0)
    small = _save_rgb(tmp_path / "small.tif", rgb)
    empty = _save_rgb(tmp_path / "empty.tif", rgb, np.ones((40, 60), bool))
    gray = tmp_path / "gray.png"
    Image.fromarray(rgb[..., 0]).save(gray)
    out = tmp_path / "out"

    def run(*args: str) -> str:
        assert main(["baseline", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        return err

    assert "k=200" in run("superpixels", str(small), "--k", "200", "--size", "8")  # 37 segments at most
    assert "size must be >= 4" in run("superpixels", str(small), "--k", "2", "--size", "3")
    assert "larger than" in run("superpixels", str(small), "--k", "2", "--size", "41")
    assert "all nodata" in run("superpixels", str(empty), "--k", "2", "--size", "8")
    assert not list(out.glob("*_clusters.tif"))  # nothing written before the checks
    assert superpixel_baseline([small], tmp_path / "fit", SuperpixelConfig(k=2, size=8))
    err = run("superpixels-apply", str(tmp_path / "fit" / MODEL_NAME), str(gray))
    assert "gray.png has 1 band (alpha excluded)" in err and "model has 3" in err
    assert "not a geoseg superpixel model" in run("superpixels-apply", str(small), str(small))
    with pytest.raises(ConfigError):
        SuperpixelConfig(size=16, block=32).validate()
    with pytest.raises(InputError, match="not found"):
        superpixel_baseline([tmp_path / "nope.tif"], out, SuperpixelConfig(k=2))


def test_refine_makes_every_superpixel_single_cluster(shared_data: Path) -> None:
    """The hook on a real strip: each segment gets its summed-probability argmax, mean confidence."""
    path = shared_data / "neon" / "OSBS_029.tif"
    rng = np.random.default_rng(0)
    with rasterio.open(path) as src:
        refiner = SuperpixelRefiner(src, [1, 2, 3], np.full(3, 110.0), np.full(3, 50.0), size=12)
        row, rows, width = 100, 90, src.width
        probs = rng.dirichlet(np.ones(4), (rows, width + 8)).transpose(2, 0, 1).astype(np.float32)
        out = refiner(probs, row)
        # the segments the refiner used: its window is rows [row - 2 size, ...) on the seed grid
        top, bottom = (row - 24) // 12 * 12, row + rows + 24
        data = src.read([1, 2, 3], window=((top, bottom), (0, width))).astype(np.float32)
        valid = np.all(src.read_masks([1, 2, 3], window=((top, bottom), (0, width))) > 0, axis=0)
    labels = superpixel_labels(refiner.space.transform(data), valid, 12, 10.0, 5)[
        row - top : row - top + rows
    ]
    ids, confidence = out.argmax(0)[:, :width], out.max(0)[:, :width]
    assert (labels == 0).any()  # NEON's nodata 255 corner reaches these rows: kept as it was
    np.testing.assert_array_equal(out[:, :, :width][:, labels == 0], probs[:, :, :width][:, labels == 0])
    np.testing.assert_array_equal(out[:, :, width:], probs[:, :, width:])  # padding untouched
    for label in np.unique(labels[labels > 0]):
        inside = labels == label
        assert len(np.unique(ids[inside])) == 1
        summed = probs[:, :, :width][:, inside].sum(axis=1)
        assert ids[inside][0] == summed.argmax()
        assert confidence[inside][0] == pytest.approx(summed.max() / inside.sum(), rel=1e-5)


def test_segment_refine_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    """`geoseg segment --refine superpixels`: fewer, larger regions; segments single-cluster."""
    from tests.helpers import make_bundle

    bundle = make_bundle(tmp_path / "model", ["red", "green", "blue"], "uint8", 110.0, 50.0, patch=64)
    source = shared_data / "lausanne" / "big_img"
    (raster,) = sorted(source.glob("*.tif"))
    args = ["segment", str(bundle), str(raster), "--no-vectorize", "--quiet", "--device", "cpu"]
    torch.manual_seed(0)
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert (
        main([*args, "--out", str(tmp_path / "refined"), "--refine", "superpixels", "--refine-size", "10"])
        == 0
    )
    stem = raster.stem
    plain, refined = (_read(tmp_path / d / f"{stem}_clusters.tif") for d in ("plain", "refined"))
    assert plain.shape == refined.shape and (refined != plain).any()
    regions = [sum(ndimage.label(ids == c)[1] for c in np.unique(ids)) for ids in (plain, refined)]
    assert regions[1] < regions[0] / 2, regions  # the salt and pepper goes
    conf = _read(tmp_path / "refined" / f"{stem}_confidence.tif")
    assert conf.max() <= 100
    assert main([*args, "--out", str(tmp_path / "x"), "--refine", "superpixels", "--refine-size", "2"]) == 2


def _labels_tmp_of_child(out: Path, stem: str, index: int, then: str) -> tuple[subprocess.Popen[str], Path]:
    """A child process names its labels temporary with the helper superpixels uses, writes
    it, then runs ``then`` (exits, or keeps running)."""
    code = (
        "import sys; from geoseg.io.fileio import superpixel_labels_intermediate as f; "
        f"p = f(sys.argv[1], {stem!r}, {index}); p.write_bytes(b'labels'); print(p, flush=True); {then}"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, Path(child.stdout.readline().strip())


def test_superpixel_labels_of_a_killed_run_are_cleaned_a_live_runs_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead, dead_tmp = _labels_tmp_of_child(out, "a", 0, "")
    dead.wait()
    live, live_tmp = _labels_tmp_of_child(out, "a", 1, "import time; time.sleep(300)")
    try:
        assert dead_tmp.name == f".a.superpixels-0-{dead.pid}.tif" and dead_tmp.exists()
        assert live_tmp.name == f".a.superpixels-1-{live.pid}.tif" and live_tmp.exists()
        assert clean_leftovers(out) == [dead_tmp]
        assert not dead_tmp.exists() and live_tmp.read_bytes() == b"labels"
        # a later superpixel run into the folder sweeps them too (its output sets clean first)
        again, again_tmp = _labels_tmp_of_child(out, "b", 0, "")
        again.wait()
        cols = np.indices((32, 32))[1]
        source = _save_rgb(
            tmp_path / "s.tif", _scene((cols >= 16).astype(int), np.array([[200, 40, 40], [40, 160, 60]]), 0)
        )
        superpixel_baseline([source], out, SuperpixelConfig(k=2, size=8, seed=0))
        assert not again_tmp.exists() and live_tmp.exists()
        assert not list(out.glob(f".s.superpixels-*-{os.getpid()}.tif"))  # its own were removed when done
    finally:
        live.kill()
        live.wait()


def test_a_raster_failing_mid_way_leaves_no_superpixel_labels(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg baseline superpixels-apply MODEL cut.tif` on a GeoTIFF damaged past its header
    (or Ctrl-C while its superpixels were computed) left `.cut.superpixels-0-PID.tif` in --out
    although the run said nothing half-written was kept: that raster's labels go with it."""
    from tests.helpers import write_raster

    real = shared_data / "lausanne" / "big_img" / "1091-322_00.tif"
    fitted = tmp_path / "fit"
    assert main(["baseline", "superpixels", str(real), "--k", "3", "--out", str(fitted)]) == 0
    with rasterio.open(real) as src:
        pixels = src.read()
    tif = write_raster(tmp_path / "cut.tif", pixels)
    tif.write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])  # opens; the lower half fails
    out = tmp_path / "out"
    capsys.readouterr()
    argv = [
        "baseline",
        "superpixels-apply",
        str(fitted / "superpixel_model.json"),
        str(tif),
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and f"unreadable or corrupt raster {tif}" in err, err
    assert not list(out.glob(".*superpixels-*")) and not list(out.glob("*_clusters.tif"))
