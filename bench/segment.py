"""Benchmark: segmentation throughput vs a FLOP limit, peak memory on a wide raster, and
vectorize vs GDAL's gdal_polygonize on the same cluster raster.

    python bench/segment.py                 # the recorded run (about 5-10 min on 2 cores)
    python bench/segment.py --rss-rows 20000  # the full 20000 x 20000 raster (hours on 2 cores)

What it measures, all in one run on one machine:

1. FLOPs per pixel of the small IIC network (torch's FlopCounterMode on one window), the
   CPU's measured float32 matmul GFLOP/s (the practical peak: convolutions run as GEMMs),
   hence a limit in Mpx/s, and the Mpx/s that ``geoseg.segment`` reaches on a generated
   raster (window overlap included in the limit: each pixel is predicted by more than one
   window).
2. Peak RSS of ``geoseg segment`` in a fresh process on a generated raster 20000 pixels
   wide (written with windowed writes in a temporary folder). Memory is bounded by one
   strip of windows x the raster width, independent of the height (finished rows are
   written and dropped), so by default only ``--rss-rows`` rows are segmented to keep the
   run short on 2 shared cores; ``--rss-rows 20000`` runs the whole 20000 x 20000 raster.
3. ``geoseg.vectorize`` vs ``gdal_polygonize`` (Debian's gdal-bin; installed here with
   apt-get when missing) on the same generated cluster raster, both writing a GeoPackage.
4. ``--parts windows``: the default window (:mod:`geoseg.window_size`) against the old
   defaults (the patch size, overlap 0.25) side by side, end to end with the GeoPackage:
   Mpx/s, the share of the FLOP limit, and the agreement of cluster ids.
5. ``--parts scale``: one raster's row bands on 1, 2 and 4 Dask worker processes of a
   LocalCluster (one thread each): Mpx/s, speed-up, efficiency per core, and a stated
   projection for N machines.
6. ``--parts serial``: what the driver does alone after the bands (copy them into two
   tiled GeoTIFFs, then the two COGs), against COGs copied from a VRT over per-band
   GeoTIFFs, on ``--serial-size``^2 generated ids (no network).
7. ``--parts precision``: ``geoseg segment --precision fp32`` against ``bf16`` end to end on
   the ``--windows-size`` raster: Mpx/s and the agreement of cluster ids.
8. ``--parts limit``: the default end to end (GeoPackage included) on ``--limit-sizes``
   rasters, alternated with the GEMM peak (the best of 2048^2 and 4096^2 products, all
   threads) and with the network alone on 512-px windows, ``--limit-repeats`` times: each
   run's share of the FLOP limit against the *highest* peak of the whole part, so a moment
   of slower GEMMs never inflates a share.

    python bench/segment.py --parts windows,scale --json /tmp/segment-bench.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from geoseg.config import Precision, SegmentConfig
from geoseg.iic.model import Architecture, build_model
from geoseg.models.bundle import ModelMeta, default_clusters, save_bundle

CRS = "EPSG:2056"
TRANSFORM = Affine(0.5, 0, 2_600_000.0, 0, -0.5, 1_200_000.0)


def make_model(out: Path, patch: int = 128) -> Path:
    torch.manual_seed(0)
    arch = Architecture(in_channels=3, k_a=24, k_b=6, preset="small")
    model = build_model(arch).eval()
    model.set_normalisation([110.0] * 3, [50.0] * 3)
    meta = ModelMeta(
        architecture=arch.to_dict(),
        band_names=["red", "green", "blue"],
        band_mean=[110.0] * 3,
        band_std=[50.0] * 3,
        dtype="uint8",
        patch_size=patch,
        scale=1.0,
        loss={},
        clusters=default_clusters(6),
    )
    return save_bundle(model, meta, out)


def write_scene(path: Path, height: int, width: int, rows_per_write: int = 512, seed: int = 0) -> Path:
    """A textured RGB GeoTIFF written block by block (never whole in memory)."""
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8",
        "crs": CRS, "transform": TRANSFORM, "tiled": True, "blockxsize": 512, "blockysize": 512,
        "compress": "deflate", "zlevel": 1, "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, height, rows_per_write):
            h = min(rows_per_write, height - row)
            coarse = rng.random((3, -(-h // 16), -(-width // 16)), dtype=np.float32)
            smooth = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :h, :width]
            noise = rng.normal(0, 0.05, (3, h, width)).astype(np.float32)
            dst.write(
                np.clip((smooth + noise) * 255, 0, 255).astype(np.uint8), window=Window(0, row, width, h)
            )
    return path


def flops_per_pixel(model_dir: Path, side: int = 256) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    from geoseg.models.bundle import load_bundle

    model, _ = load_bundle(model_dir)
    x = torch.rand(1, 3, side, side) * 255
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x, heads="b")
    return counter.get_total_flops() / (side * side)


def matmul_gflops(device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """Best-of float32 GEMM rate on ``device``: the practical peak for convolutions."""
    a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def gemm_peak(device: str = "cpu") -> float:
    """The machine's practical float32 peak: the best of a 2048^2 and a 4096^2 GEMM (on some
    2-vCPU VMs the smaller one does not keep both vCPUs busy)."""
    return max(matmul_gflops(device, 2048), matmul_gflops(device, 4096, repeats=3))


def window_overhead(model_dir: Path, height: int, width: int, config: SegmentConfig) -> float:
    """Predicted pixels / raster pixels for the grid segment uses."""
    from geoseg.models.bundle import load_bundle
    from geoseg.strips import plan_grid

    model, meta = load_bundle(model_dir)
    grid = plan_grid(model, meta, config, height, width)
    return len(grid) * grid.win_height * grid.win_width / (height * width)


_RSS_CHILD = """
import resource, sys, time
from geoseg.config import SegmentConfig
from geoseg.segment import segment
t = time.perf_counter()
segment(sys.argv[1], [sys.argv[2]], sys.argv[3], SegmentConfig(vectorize=False, batch_size=8), progress=False)
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(own / 1024, time.perf_counter() - t)
"""


def peak_rss(model_dir: Path, source: Path, out: Path) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of segmenting ``source`` in a fresh Python process."""
    done = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(model_dir), str(source), str(out)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    rss, seconds = done.stdout.split()[-2:]
    return float(rss), float(seconds)


def gdal_polygonize() -> list[str]:
    for name in ("gdal_polygonize.py", "gdal_polygonize"):
        if found := shutil.which(name):
            return [found]
    print("installing gdal-bin (Debian) for gdal_polygonize ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "gdal-bin"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    for name in ("gdal_polygonize.py", "gdal_polygonize"):
        if found := shutil.which(name):
            return [found]
    raise SystemExit("gdal_polygonize not found after installing gdal-bin")


def cluster_raster(path: Path, side: int, seed: int = 1) -> Path:
    """A 6-cluster map with realistic region sizes (smooth noise quantised), nodata corner."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    field = zoom(rng.random((side // 32, side // 32)), 32, order=1)[:side, :side]
    ids = np.digitize(field, np.quantile(field, [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])).astype(np.uint8)
    ids[: side // 10, : side // 10] = 255
    with rasterio.open(
        path, "w", driver="GTiff", height=side, width=side, count=1, dtype="uint8", crs=CRS,
        transform=TRANSFORM, nodata=255, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(ids, 1)
    return path


def speed(model: Path, side: int, config: SegmentConfig, tmp: Path) -> dict[str, object]:
    from geoseg.segment import segment

    fpp = flops_per_pixel(model)
    from geoseg.train import resolve_device

    peak = matmul_gflops(resolve_device(config.device).type)
    scene = write_scene(tmp / "scene.tif", side, side)
    overhead = window_overhead(model, side, side, config)
    t = time.perf_counter()
    segment(model, [scene], tmp / "speed", config, progress=False)
    seconds = time.perf_counter() - t
    mpx = side * side / 1e6
    return {
        "raster": f"{side}x{side} RGB uint8",
        "network_gflop_per_mpx": round(fpp / 1e3, 1),
        "window_overhead": round(overhead, 3),
        "matmul_gflops": round(peak, 1),
        "limit_mpx_s": round(peak * 1e9 / (fpp * overhead) / 1e6, 3),
        "limit_mpx_s_no_overlap": round(peak * 1e9 / fpp / 1e6, 3),
        "measured_mpx_s": round(mpx / seconds, 3),
        "seconds": round(seconds, 1),
    }


OLD_DEFAULTS = {  # the default before geoseg.window_size: the patch size, overlap 0.25
    "patch 64: window 64, overlap 0.25": SegmentConfig(window=64, overlap=0.25),
    "patch 128: window 128, overlap 0.25": SegmentConfig(window=128, overlap=0.25),
}


def _read_ids(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def windows(model: Path, side: int, device: str, tmp: Path, repeats: int = 2) -> dict[str, object]:
    """The new default window vs the old defaults, side by side on one raster, end to end.

    End to end: reads, blending, COGs, preview, STAC item and the GeoPackage (vectorize on).
    Runs alternate (best of ``repeats`` each: the cores are shared); the agreement is the
    fraction of pixels with the same cluster id as the new default's output.
    """
    from geoseg.segment import segment
    from geoseg.train import resolve_device

    scene = write_scene(tmp / "windows.tif", side, side, seed=3)
    configs = {"new default (geoseg.window_size)": SegmentConfig(), **OLD_DEFAULTS}
    configs = {name: dataclasses.replace(c, device=device, vectorize=True) for name, c in configs.items()}
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    outputs: dict[str, Path] = {}
    for _ in range(repeats):
        for i, (name, config) in enumerate(configs.items()):
            out = tmp / f"windows-{i}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            (result,) = segment(model, [scene], out, config, progress=False)
            seconds[name].append(time.perf_counter() - t)
            outputs[name] = result.clusters
    new_ids = _read_ids(outputs["new default (geoseg.window_size)"])
    fpp = flops_per_pixel(model)
    peak = matmul_gflops(resolve_device(device).type)
    mpx = side * side / 1e6
    rows = {}
    for name, config in configs.items():
        overhead = window_overhead(model, side, side, config)
        best = min(seconds[name])
        limit = peak * 1e9 / (fpp * overhead) / 1e6
        rows[name] = {
            "window_overhead": round(overhead, 3),
            "seconds": [round(x, 2) for x in seconds[name]],
            "mpx_s": round(mpx / best, 3),
            "limit_mpx_s": round(limit, 3),
            "of_limit": round(mpx / best / limit, 3),
            "same_ids_as_new": float(np.mean(_read_ids(outputs[name]) == new_ids)),
        }
    new_best = min(seconds["new default (geoseg.window_size)"])
    for name in OLD_DEFAULTS:
        rows[name]["new_is_faster_by"] = round(min(seconds[name]) / new_best, 2)
    return {
        "raster": f"{side}x{side} RGB uint8",
        "end_to_end": "reads, blending, COGs, preview, STAC item, GeoPackage",
        "matmul_gflops": round(peak, 1),
        "network_gflop_per_mpx": round(fpp / 1e3, 1),
        "runs": rows,
    }


def alternated(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run, ``repeats`` times, alternated (the cores are shared)."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t = time.perf_counter()
            run()
            seconds[name].append(round(time.perf_counter() - t, 2))
    return seconds


def side_by_side(seconds: dict[str, list[float]], mpx: float, digits: int) -> dict[str, object]:
    """Best-of rates of a baseline and a candidate (``seconds`` in that order), and the ratio."""
    (base, base_s), (new, new_s) = seconds.items()
    return {
        "seconds": seconds,
        f"{base}_mpx_s": round(mpx / min(base_s), digits),
        f"{new}_mpx_s": round(mpx / min(new_s), digits),
        f"{new}_faster_by": round(min(base_s) / min(new_s), 2),
    }


def _band_vrt(
    path: Path, parts: list[tuple[Path, int, int]], band: int, crs: object, transform: Affine, width: int
) -> Path:
    """A VRT of band ``band`` of per-band GeoTIFFs ((file, top row, rows) each), stacked by rows."""
    sources = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="1">{file.name}</SourceFilename>'
        f"<SourceBand>{band}</SourceBand>"
        f'<SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{rows}"/>'
        f'<DstRect xOff="0" yOff="{top}" xSize="{width}" ySize="{rows}"/></SimpleSource>'
        for file, top, rows in parts
    )
    height = sum(rows for _, _, rows in parts)
    geotransform = ", ".join(str(v) for v in transform.to_gdal())
    path.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{crs}</SRS>'
        f"<GeoTransform>{geotransform}</GeoTransform>"
        f'<VRTRasterBand dataType="Byte" band="1"><NoDataValue>255</NoDataValue>{sources}'
        "</VRTRasterBand></VRTDataset>"
    )
    return path


def serial(side: int, band_rows: int, tmp: Path, repeats: int = 2) -> dict[str, object]:
    """The driver's serial phase of a raster segmented in bands on a cluster, without the network.

    Today (:mod:`geoseg.distributed`): the workers' band zarrs are copied into two tiled
    GeoTIFFs, which are copied into the two COGs. The alternative the issue names: workers
    write per-band GeoTIFFs and the COGs are copied from a VRT over them (one copy less).
    Same generated ids and confidence for both, alternated, best of ``repeats``; the COGs'
    pixels are compared.
    """
    import zarr

    from geoseg.bands import Band
    from geoseg.distributed import _assemble, band_path
    from geoseg.io.cog import create_raster, tiled_profile, to_cog
    from geoseg.io.outputs import NODATA

    rng = np.random.default_rng(0)
    regions = rng.integers(0, 6, (side // 16 + 1, side // 16 + 1), dtype=np.uint8)
    ids = np.kron(regions, np.ones((16, 16), np.uint8))[:side, :side]
    confidence = rng.integers(40, 100, (side, side), dtype=np.uint8)
    crs = rasterio.crs.CRS.from_string(CRS)
    plan = [
        Band(i, 0, 0, 0, top, min(side, top + band_rows)) for i, top in enumerate(range(0, side, band_rows))
    ]
    work = tmp / "serial"
    work.mkdir()
    tifs = []
    for band in plan:
        both = np.stack([ids[band.top : band.bottom], confidence[band.top : band.bottom]])
        array = zarr.create_array(
            store=str(band_path(work, band.index)),
            shape=both.shape,
            chunks=(2, min(band.rows, 512), min(side, 4096)),
            dtype="uint8",
            fill_value=NODATA,
        )
        array[:] = both
        tif = work / f"band-{band.index:05d}.tif"
        profile = tiled_profile(
            crs, TRANSFORM * Affine.translation(0, band.top), band.rows, side, "uint8", NODATA
        )
        with create_raster(tif, profile | {"count": 2}) as dst:
            dst.write(both)
        tifs.append((tif, band.top, band.rows))

    class Source:  # what _assemble reads of the source raster
        height = width = side

    Source.crs, Source.transform = crs, TRANSFORM  # type: ignore[attr-defined]
    colormap = {i: (40 * i, 100, 200, 255) for i in range(6)}

    def cogs(ids_src: Path, conf_src: Path, tag: str) -> None:
        to_cog(ids_src, work / f"clusters-{tag}.tif", "mode", colormap=colormap, description="cluster id")
        to_cog(conf_src, work / f"confidence-{tag}.tif", "average", description="confidence")

    def today() -> None:
        ids_tmp, conf_tmp = work / "ids.tif", work / "conf.tif"
        _assemble(Source, plan, work, ids_tmp, conf_tmp)
        cogs(ids_tmp, conf_tmp, "today")
        ids_tmp.unlink()
        conf_tmp.unlink()

    def via_vrt() -> None:
        wkt = crs.to_wkt()
        cogs(
            _band_vrt(work / "ids.vrt", tifs, 1, wkt, TRANSFORM, side),
            _band_vrt(work / "conf.vrt", tifs, 2, wkt, TRANSFORM, side),
            "vrt",
        )

    seconds = alternated({"today": today, "vrt": via_vrt}, repeats)
    same = all(
        np.array_equal(_read_ids(work / f"{kind}-today.tif"), _read_ids(work / f"{kind}-vrt.tif"))
        for kind in ("clusters", "confidence")
    )
    return {
        "raster": f"{side}x{side}, {len(plan)} bands of {band_rows} rows",
        **side_by_side(seconds, side * side / 1e6, digits=1),
        "same_pixels": same,
    }


def precision(model: Path, side: int, device: str, tmp: Path, repeats: int = 3) -> dict[str, object]:
    """``SegmentConfig.precision`` fp32 vs bf16, end to end (GeoPackage included), alternated
    in one process, best of ``repeats`` each; the agreement of their cluster ids."""
    from geoseg.segment import segment

    scene = write_scene(tmp / "precision.tif", side, side, seed=3)
    outputs: dict[str, Path] = {}

    def run(name: Precision) -> Callable[[], object]:
        def once() -> None:
            out = tmp / f"precision-{name}"
            shutil.rmtree(out, ignore_errors=True)
            (result,) = segment(
                model, [scene], out, SegmentConfig(device=device, precision=name), progress=False
            )
            outputs[name] = result.clusters

        return once

    seconds = alternated({"fp32": run("fp32"), "bf16": run("bf16")}, repeats)
    return {
        "raster": f"{side}x{side} RGB uint8",
        **side_by_side(seconds, side * side / 1e6, digits=3),
        "same_ids": float(np.mean(_read_ids(outputs["fp32"]) == _read_ids(outputs["bf16"]))),
    }


def network_mpx_s(model_dir: Path, device: str, side: int = 512, passes: int = 4) -> float:
    """Predicted Mpx/s of the network alone (segment's inference copy, channels-last) on
    ``side``-px windows, one per pass as segment runs them on a CPU."""
    from geoseg.iic.model import for_inference
    from geoseg.models.bundle import load_bundle
    from geoseg.train import resolve_device

    model, _ = load_bundle(model_dir, resolve_device(device))
    model = for_inference(model)
    x = (torch.rand(1, 3, side, side) * 255).to(next(model.parameters()).device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(x, heads="b")
        t = time.perf_counter()
        for _ in range(passes):
            model(x, heads="b")
        if x.device.type == "cuda":
            torch.cuda.synchronize()
    return passes * side * side / (time.perf_counter() - t) / 1e6


def limit(model: Path, sides: list[int], device: str, tmp: Path, repeats: int = 3) -> dict[str, object]:
    """The default segment end to end against the FLOP limit, alternated with the peak."""
    from geoseg.segment import segment
    from geoseg.train import resolve_device

    kind = resolve_device(device).type
    config = SegmentConfig(device=device, vectorize=True)
    scenes = {side: write_scene(tmp / f"limit-{side}.tif", side, side, seed=5) for side in sides}
    fpp = flops_per_pixel(model)
    peaks: list[float] = []
    network: list[float] = []
    seconds: dict[int, list[float]] = {side: [] for side in sides}
    for _ in range(repeats):
        peaks.append(gemm_peak(kind))
        network.append(network_mpx_s(model, device))
        for side, scene in scenes.items():
            out = tmp / f"limit-out-{side}"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            segment(model, [scene], out, config, progress=False)
            seconds[side].append(round(time.perf_counter() - t, 2))
    peak = max(peaks)
    rows = {}
    for side in sides:
        overhead = window_overhead(model, side, side, config)
        limit_mpx_s = peak * 1e9 / (fpp * overhead) / 1e6
        rates = [side * side / 1e6 / s for s in seconds[side]]
        rows[f"{side}x{side}"] = {
            "window_overhead": round(overhead, 3),
            "seconds": seconds[side],
            "mpx_s": [round(r, 3) for r in rates],
            "limit_mpx_s": round(limit_mpx_s, 3),
            "of_limit": [round(r / limit_mpx_s, 3) for r in rates],
        }
    return {
        "end_to_end": "reads, blending, COGs, preview, STAC item, GeoPackage",
        "gemm_peaks_gflops": [round(p, 1) for p in peaks],
        "network_gflop_per_mpx": round(fpp / 1e3, 1),
        "network_alone_mpx_s": [round(n, 3) for n in network],
        "network_alone_of_peak": [round(n * fpp / 1e3 / peak, 3) for n in network],
        "runs": rows,
    }


def _band_phase(stream: list[dict]) -> float:
    """Wall seconds from the first band's start to the last band's end (the task stream)."""
    spans = [s for t in stream if str(t["key"]).startswith("segment-band-") for s in t["startstops"]]
    return max(s["stop"] for s in spans) - min(s["start"] for s in spans) if spans else 0.0


def halo_factor(model_dir: Path, height: int, width: int, config: SegmentConfig) -> float:
    """Window rows the bands compute / window rows of the grid (1 = no recomputed halo)."""
    from geoseg.bands import plan_bands
    from geoseg.models.bundle import load_bundle
    from geoseg.strips import plan_grid

    model, meta = load_bundle(model_dir)
    grid = plan_grid(model, meta, config, height, width)
    bands = plan_bands(grid, height, config.band_rows)
    return sum(b.end_chunk - b.first_window_row for b in bands) / len(grid.row_offsets)


def scale(model: Path, height: int, width: int, workers: list[int], tmp: Path) -> dict[str, object]:
    """Throughput of one raster's bands on 1, 2, 4 Dask worker processes (one thread each).

    Each count gets a fresh LocalCluster; torch runs one thread per worker (Dask's
    nanny sets OMP_NUM_THREADS=1), so the workers are the parallelism. The serial part
    (planning, assembling the bands into the GeoTIFFs, COGs, preview) is the run's wall
    time minus the band phase of the task stream; the projection for N machines keeps
    it serial (Amdahl) and divides the band work by N machines at the measured rate.
    """
    import distributed

    from geoseg.segment import segment

    scene = write_scene(tmp / "scale.tif", height, width, seed=4)
    config = SegmentConfig(vectorize=False, device="cpu", band_rows=512)
    mpx = height * width / 1e6
    t = time.perf_counter()
    segment(model, [scene], tmp / "scale-single", config, progress=False)
    single = time.perf_counter() - t
    cores = os.cpu_count() or 1
    runs: dict[str, dict[str, object]] = {}
    for n in workers:
        with distributed.LocalCluster(
            n_workers=n, threads_per_worker=1, dashboard_address=None, processes=True
        ) as cluster, distributed.Client(cluster) as client:  # fmt: skip
            client.wait_for_workers(n)
            segment(
                model,
                [scene],
                tmp / f"warm-{n}",
                config,
                progress=False,
                dask_address=cluster.scheduler_address,
            )
            with distributed.get_task_stream(client=client) as stream:
                t = time.perf_counter()
                segment(model, [scene], tmp / f"scale-{n}", config, progress=False,
                        dask_address=cluster.scheduler_address)  # fmt: skip
                seconds = time.perf_counter() - t
            bands = _band_phase(stream.data)
        runs[str(n)] = {"seconds": round(seconds, 2), "mpx_s": round(mpx / seconds, 3),
                        "band_phase_s": round(bands, 2), "serial_s": round(seconds - bands, 2)}  # fmt: skip
    base = float(runs[str(workers[0])]["seconds"])  # type: ignore[arg-type]
    for n in workers:
        run = runs[str(n)]
        speedup = base / float(run["seconds"])  # type: ignore[arg-type]
        run["speedup_vs_1"] = round(speedup, 2)
        run["efficiency_per_core"] = round(speedup / min(n, cores), 2)
    best = min(runs.values(), key=lambda run: float(run["seconds"]))  # type: ignore[arg-type]
    serial, band_phase = float(best["serial_s"]), float(best["band_phase_s"])  # type: ignore[arg-type]
    projection = {
        str(machines): round(mpx / (serial + band_phase / machines), 3) for machines in (1, 2, 4, 10, 100)
    }
    return {
        "raster": f"{height}x{width} RGB uint8",
        "band_rows": config.band_rows,
        "halo_factor": round(halo_factor(model, height, width, config), 3),
        "single_process_s": round(single, 2),
        "single_process_mpx_s": round(mpx / single, 3),
        "cores": cores,
        "workers": runs,
        "projection_mpx_s_for_n_machines": projection,
        "projection_note": f"PROJECTION, not a measurement: machines like this one ({cores} cores) "
        f"at the fastest measured worker count; serial part {serial:.1f} s kept serial",
    }


def vector_race(size: int, tmp: Path, repeats: int = 2) -> dict[str, object]:
    import pyogrio

    from geoseg.vectorize import vectorize

    clusters = cluster_raster(tmp / "clusters.tif", size)
    command = gdal_polygonize()
    gdal_runs, our_runs = [], []
    for _ in range(repeats):  # alternated, best of each: the 2 cores are shared with others
        (tmp / "gdal.gpkg").unlink(missing_ok=True)
        t = time.perf_counter()
        subprocess.run(
            [
                *command,
                "-q",
                "-8",
                str(clusters),
                "-f",
                "GPKG",
                str(tmp / "gdal.gpkg"),
                "polygons",
                "cluster_id",
            ],
            check=True,
        )
        gdal_runs.append(time.perf_counter() - t)
        t = time.perf_counter()
        vectorize(clusters, tmp / "geoseg.gpkg")  # default block size: 4096
        our_runs.append(time.perf_counter() - t)
    gdal_seconds, ours = min(gdal_runs), min(our_runs)
    return {
        "raster": f"{size}x{size} uint8, 6 clusters",
        "gdal_polygonize_s": round(gdal_seconds, 2),
        "geoseg_vectorize_s": round(ours, 2),
        "speedup": round(gdal_seconds / ours, 2),
        "runs_gdal_s": [round(x, 2) for x in gdal_runs],
        "runs_geoseg_s": [round(x, 2) for x in our_runs],
        "gdal_features": pyogrio.read_info(tmp / "gdal.gpkg")["features"],
        "geoseg_features": pyogrio.read_info(tmp / "geoseg.gpkg")["features"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speed-size", type=int, default=1024, help="side of the throughput raster")
    parser.add_argument("--rss-width", type=int, default=20000)
    parser.add_argument("--rss-rows", type=int, default=512, help="rows of the RSS raster (20000: full)")
    parser.add_argument("--vector-size", type=int, default=8192, help="side of the cluster raster")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--parts",
        default="speed,rss,vectorize",
        help="comma-separated subset of speed,rss,vectorize,windows,scale,serial,precision,limit",
    )
    parser.add_argument("--windows-size", type=int, default=1024, help="side of the windows raster")
    parser.add_argument("--scale-rows", type=int, default=4096, help="rows of the scale raster")
    parser.add_argument("--scale-width", type=int, default=1024, help="width of the scale raster")
    parser.add_argument("--scale-workers", default="1,2,4", help="Dask worker processes to compare")
    parser.add_argument("--limit-sizes", default="1024,2048,4096", help="raster sides of the limit part")
    parser.add_argument("--limit-repeats", type=int, default=3)
    parser.add_argument("--serial-size", type=int, default=8192, help="side of the serial-phase raster")
    args = parser.parse_args()

    results: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, GPU: {'yes' if torch.cuda.is_available() else 'none'}",
    }
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        model = make_model(tmp / "model")
        config = SegmentConfig(vectorize=False, device=args.device)

        parts = set(args.parts.split(","))
        if "speed" in parts:  # 1. throughput vs the FLOP limit
            results["segment"] = speed(model, args.speed_size, config, tmp)
            print(json.dumps(results["segment"]), flush=True)
        if "rss" in parts:  # 2. peak RSS on a raster 20000 pixels wide
            wide = write_scene(tmp / "wide.tif", args.rss_rows, args.rss_width)
            rss, rss_seconds = peak_rss(model, wide, tmp / "rss")
            results["rss"] = {
                "raster": f"{args.rss_width} wide x {args.rss_rows} rows RGB uint8",
                "peak_rss_mib": round(rss, 1),
                "seconds": round(rss_seconds, 1),
            }
            print(json.dumps(results["rss"]), flush=True)
            wide.unlink()
        if "windows" in parts:  # 4. the new default window vs the old defaults, end to end
            results["windows"] = windows(
                make_model(tmp / "model64", patch=64), args.windows_size, args.device, tmp
            )
            print(json.dumps(results["windows"]), flush=True)
        if "scale" in parts:  # 5. one raster's bands on 1, 2, 4 Dask worker processes
            counts = [int(n) for n in args.scale_workers.split(",")]
            results["scale"] = scale(model, args.scale_rows, args.scale_width, counts, tmp)
            print(json.dumps(results["scale"]), flush=True)
        if "precision" in parts:  # 7. the network in fp32 vs bf16, end to end
            results["precision"] = precision(
                make_model(tmp / "model64p", patch=64), args.windows_size, args.device, tmp
            )
            print(json.dumps(results["precision"]), flush=True)
        if "limit" in parts:  # 8. the default end to end against the FLOP limit
            sides = [int(n) for n in args.limit_sizes.split(",")]
            results["limit"] = limit(
                make_model(tmp / "model64l", patch=64), sides, args.device, tmp, args.limit_repeats
            )
            print(json.dumps(results["limit"]), flush=True)
        if "serial" in parts:  # 6. the driver's serial phase after the bands: today vs a VRT
            results["serial"] = serial(args.serial_size, 1024, tmp)
            print(json.dumps(results["serial"]), flush=True)
        if "vectorize" in parts:  # 3. vectorize vs gdal_polygonize on the same cluster raster
            results["vectorize"] = vector_race(args.vector_size, tmp)
            print(json.dumps(results["vectorize"]), flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
