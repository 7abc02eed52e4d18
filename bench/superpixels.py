"""Superpixel baseline benchmark: size choice, seams, speed, memory, refinement cost.

Parts (``--parts``, comma-separated):

- ``size``: the default superpixel size, chosen on a validation split of the fitting
  data only: Dubai tiles 1-3 fit (model and Hungarian mapping), tile 4 scored; tiles 5-6
  (the quality table's scored set) are never read.
- ``seams``: cluster maps computed in blocks vs in one block (same fitted model) on real
  rasters that fit in memory: pixel agreement, overall and away from the seams.
- ``seams-nodata``: the same on rasters with nodata crossing the seams (NEON, nodata 255;
  LoveDA with a nodata collar and disc burned in), agreement over the valid pixels.
- ``speed``: end to end (fit + apply, COG + styles + preview + STAC written) on a
  generated RGB scene, beside raw k-means in the same run.
- ``rss``: peak RSS of the baseline in a fresh process on a generated 20000 x 20000 raster.
- ``refine``: ``geoseg segment`` with and without ``--refine superpixels``, same run.

    python bench/superpixels.py --parts size,seams,speed,refine --out /tmp/sp-bench
    python bench/superpixels.py --parts rss --rss-side 20000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image

from geoseg.config import BaselineConfig, SegmentConfig, SuperpixelConfig
from geoseg.superpixels import MODEL_NAME, apply_superpixels, superpixel_baseline

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def _load(name: str):  # the sibling bench scripts, without making bench/ a package
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


quality = _load("quality")
bench_segment = _load("segment")


# --- size on the validation split ------------------------------------------------------------


def size_sweep(data: Path, sizes: list[int], seeds: list[int], work: Path) -> dict:
    full = quality.dubai_split(data)
    fit = [p for p in full.fit if p[0].parent.parent.name != "tile4"]
    val = [p for p in full.fit if p[0].parent.parent.name == "tile4"]
    split = quality.Split("dubai-val", "dubai", 5, fit, val, "fit tiles 1-3, validate on tile 4")
    rows = {}
    for size in sizes:
        quality.SUPERPIXELS.clear()
        quality.SUPERPIXELS.update(size=size)
        mious, accs, seconds = [], [], []
        for seed in seeds:
            start = time.perf_counter()
            report = quality.run_case(split, "superpixels", "honest", seed, work / f"size{size}")
            seconds.append(time.perf_counter() - start)
            mious.append(report["miou"])
            accs.append(report["accuracy"])
            print(
                f"size {size} seed {seed}: mIoU {report['miou']:.4f} acc {report['accuracy']:.4f}", flush=True
            )
        rows[size] = {"miou": mious, "accuracy": accs, "seconds": seconds}
    quality.SUPERPIXELS.clear()
    best = max(rows, key=lambda s: statistics.mean(rows[s]["miou"]))
    return {"split": split.note, "seeds": seeds, "sizes": rows, "best": best}


# --- seams ----------------------------------------------------------------------------------


def _png(src: Path, out: Path, side: int | None = None) -> Path:
    with Image.open(src) as img:
        rgb = np.asarray(img.convert("RGB"))
    if side:
        rgb = rgb[:side, :side]
    Image.fromarray(rgb).save(out)
    return out


def _with_nodata(src: Path, out: Path) -> Path:
    """LoveDA tile 0 as an RGB GeoTIFF with nodata 0 burned in where an orthophoto has none:
    a collar along one corner's diagonal and a disc centred on a block corner (512, 512),
    so nodata crosses the seams of every block size measured."""
    with Image.open(src) as img:
        rgb = np.maximum(np.asarray(img.convert("RGB")), 1)
    rows, cols = np.indices(rgb.shape[:2])
    nodata = (rows + cols < 300) | ((rows - 512) ** 2 + (cols - 512) ** 2 < 150**2)
    rgb = np.where(nodata[..., None], 0, rgb)
    profile = {
        "driver": "GTiff", "width": rgb.shape[1], "height": rgb.shape[0], "count": 3,
        "dtype": "uint8", "nodata": 0, "photometric": "RGB",
        "crs": "EPSG:2056", "transform": rasterio.transform.from_origin(2_538_000, 1_152_000, 0.3, 0.3),
    }  # fmt: skip
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    return out


def seams(data: Path, work: Path, size: int, blocks: list[int], nodata: bool = False) -> list[dict]:
    """Agreement of block vs one-block runs of one model, over the pixels valid in the source."""
    if nodata:
        images = {
            "neon OSBS_029 400x400 (nodata 255, scattered)": data / "neon" / "OSBS_029.tif",
            "loveda 1024x1024, nodata collar + disc (11%)": _with_nodata(
                data / "loveda" / "0_rgb.png", work / "loveda-nodata.tif"
            ),
        }
    else:
        images = {
            "loveda 1024x1024": _png(data / "loveda" / "0_rgb.png", work / "loveda.png"),
            "dubai tile5 image 1": _png(
                data / "dubai" / "tile5" / "images" / "image_part_001.jpg", work / "dubai.png"
            ),
        }
    out = []
    for name, path in images.items():
        config = SuperpixelConfig(k=6, size=size, block=8192)
        (whole,) = superpixel_baseline([path], work / f"{path.stem}-whole", config, overwrite=True)
        model = work / f"{path.stem}-whole" / MODEL_NAME
        with rasterio.open(whole) as ds:
            reference = ds.read(1)
        with rasterio.open(path) as ds:
            valid = np.all(ds.read_masks() > 0, axis=0)
        for block in blocks:
            obj = json.loads(model.read_text())
            obj["settings"]["block"] = block
            moved = work / f"{path.stem}-model-{block}.json"
            moved.write_text(json.dumps(obj))
            (blocked,) = apply_superpixels(moved, [path], work / f"{path.stem}-b{block}", overwrite=True)
            with rasterio.open(blocked) as ds:
                ids = ds.read(1)
            step = max(size, block // size * size)
            near = np.zeros(ids.shape, bool)
            for s in range(step, max(ids.shape), step):
                near[max(0, s - 2 * size) : s + 2 * size] = True
                near[:, max(0, s - 2 * size) : s + 2 * size] = True
            agree = ids == reference
            row = {
                "raster": name,
                "shape": list(ids.shape),
                "size": size,
                "block": step,
                "nodata_share": round(float(1 - valid.mean()), 4),
                "nodata_kept": bool((ids[~valid] == 255).all() and (reference[~valid] == 255).all()),
                "agreement": round(float(agree[valid].mean()), 4),
                "agreement_near_seams": round(float(agree[near & valid].mean()), 4),
                "agreement_away": round(float(agree[~near & valid].mean()), 4),
                "share_near_seams": round(float(near.mean()), 3),
            }
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


# --- speed and memory -------------------------------------------------------------------------


def speed(side: int, work: Path, size: int) -> dict:
    from geoseg.baseline import kmeans_baseline

    scene = bench_segment.write_scene(work / "scene.tif", side, side)
    import skimage.segmentation  # noqa: F401  imports are not part of the throughput
    import sklearn.cluster  # noqa: F401

    start, cpu = time.perf_counter(), time.process_time()
    superpixel_baseline([scene], work / "sp", SuperpixelConfig(k=6, size=size))
    sp, sp_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    kmeans_baseline([scene], work / "km", BaselineConfig(k=6))
    km, km_cpu = time.perf_counter() - start, time.process_time() - cpu
    mpx = side * side / 1e6
    row = {  # CPU seconds (all threads) measure the work on a machine shared with other jobs
        "raster": f"{side}x{side} RGB uint8 (generated)",
        "superpixels_seconds": round(sp, 1),
        "superpixels_cpu_seconds": round(sp_cpu, 1),
        "superpixels_mpx_per_wall_s": round(mpx / sp, 3),
        "superpixels_mpx_per_cpu_s": round(mpx / sp_cpu, 3),
        "kmeans_seconds": round(km, 1),
        "kmeans_cpu_seconds": round(km_cpu, 1),
        "kmeans_mpx_per_cpu_s": round(mpx / km_cpu, 3),
    }
    print(json.dumps(row), flush=True)
    return row


_RSS_CHILD = """
import functools, resource, sys, time
import geoseg.superpixels as sp
from geoseg.config import SuperpixelConfig


def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(key))


def probe(name, fn):  # VmHWM reset before each phase (clear_refs 5), read after it
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before, start = status("VmRSS"), time.perf_counter()
        out = fn(*args, **kwargs)
        print("PHASE", name, round(before), round(status("VmHWM")), round(status("VmRSS")),
              round(time.perf_counter() - start, 1), flush=True)
        return out
    return wrapper


for name in PHASES:
    setattr(sp, name, probe(name, getattr(sp, name)))
sp.SuperpixelModel.predict = probe("predict", sp.SuperpixelModel.predict)
print("PHASE imports 0", round(status("VmHWM")), round(status("VmRSS")), 0, flush=True)
t = time.perf_counter()
sp.superpixel_baseline([sys.argv[1]], sys.argv[2], SuperpixelConfig(k=6, size=int(sys.argv[3])))
use = resource.getrusage(resource.RUSAGE_SELF)
print(use.ru_utime + use.ru_stime, use.ru_maxrss / 1024, time.perf_counter() - t)
"""
# the phases of superpixel_baseline whose own peak RSS the child prints (MiB: before, peak, after)
PHASES = ["check_sources", "fit_space", "superpixel_raster", "fit_superpixels", "to_cog", "_paint"]


def rss(side: int, work: Path, size: int) -> dict:
    start = time.perf_counter()
    scene = bench_segment.write_scene(work / "big.tif", side, side)
    written = time.perf_counter() - start
    done = subprocess.run(
        [sys.executable, "-c", f"PHASES = {PHASES!r}\n{_RSS_CHILD}", str(scene), str(work / "big-out"), str(size)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    cpu, peak, seconds = (float(v) for v in done.stdout.split()[-3:])
    phases: dict[str, dict] = {}  # the highest peak of each phase (superpixel_raster runs once per raster)
    for line in done.stdout.splitlines():
        if line.startswith("PHASE "):
            _, name, before, high, after, took = line.split()
            phase = {
                "rss_before_mib": int(before),
                "peak_mib": int(high),
                "rss_after_mib": int(after),
                "seconds": float(took),
            }
            if name not in phases or phase["peak_mib"] > phases[name]["peak_mib"]:
                phases[name] = phase
    row = {
        "raster": f"{side}x{side} RGB uint8 (generated, {written:.0f} s to write)",
        "peak_rss_mib": round(peak, 1),
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "mpx_per_cpu_s": round(side * side / 1e6 / cpu, 3),
        "phases": phases,
    }
    print(json.dumps(row), flush=True)
    return row


def refine_cost(side: int, work: Path, size: int, repeats: int = 2) -> dict:
    from geoseg.segment import segment

    model = bench_segment.make_model(work / "model")
    scene = bench_segment.write_scene(work / "refine.tif", side, side)
    times: dict[str, list[float]] = {"plain": [], "refined": []}
    cpu: dict[str, list[float]] = {"plain": [], "refined": []}
    for _ in range(repeats):  # alternated, best of each
        for name, refine in (("plain", None), ("refined", "superpixels")):
            config = SegmentConfig(vectorize=False, refine=refine, refine_size=size, device="cpu")  # type: ignore[arg-type]
            start, cpu0 = time.perf_counter(), time.process_time()
            segment(model, [scene], work / name, config, progress=False)
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu0)
    plain, refined = min(times["plain"]), min(times["refined"])
    row = {
        "raster": f"{side}x{side} RGB uint8 (generated), small preset, window 128",
        "plain_seconds": round(plain, 2),
        "refined_seconds": round(refined, 2),
        "extra_fraction_wall": round(refined / plain - 1, 3),
        "plain_cpu_seconds": round(min(cpu["plain"]), 2),
        "refined_cpu_seconds": round(min(cpu["refined"]), 2),
        "extra_fraction_cpu": round(min(cpu["refined"]) / min(cpu["plain"]) - 1, 3),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--parts", default="size,seams,speed,refine")
    parser.add_argument("--sizes", nargs="+", type=int, default=[8, 12, 16, 24, 32])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=SuperpixelConfig().size, help="size for the other parts")
    parser.add_argument("--blocks", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--speed-side", type=int, default=4096)
    parser.add_argument("--rss-side", type=int, default=20000)
    parser.add_argument("--refine-side", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None, help="work folder (kept)")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="geoseg-superpixels-"))
    work.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    results: dict = {}
    if "size" in parts:
        results["size"] = size_sweep(args.data, args.sizes, args.seeds, work / "size")
    if "seams" in parts:
        (work / "seams").mkdir(exist_ok=True)
        results["seams"] = seams(args.data, work / "seams", args.size, args.blocks)
    if "seams-nodata" in parts:
        (work / "seams-nodata").mkdir(exist_ok=True)
        results["seams_nodata"] = seams(args.data, work / "seams-nodata", args.size, args.blocks, nodata=True)
    if "speed" in parts:
        (work / "speed").mkdir(exist_ok=True)
        results["speed"] = speed(args.speed_side, work / "speed", args.size)
    if "rss" in parts:
        (work / "rss").mkdir(exist_ok=True)
        results["rss"] = rss(args.rss_side, work / "rss", args.size)
    if "refine" in parts:
        (work / "refine").mkdir(exist_ok=True)
        results["refine"] = refine_cost(args.refine_side, work / "refine", args.size)
    name = "_".join(sorted(parts))
    (work / f"results_{name}.json").write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
