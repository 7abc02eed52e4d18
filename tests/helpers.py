"""The writers several test modules share: small GeoTIFFs, crops of real rasters, and tiny
random model bundles (written once here, so every test builds its inputs the same way).

Tiny random IIC networks in eval mode need no training: a random trunk already gives
structured, non-trivial cluster maps on real imagery.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geoseg.iic.model import Architecture, build_model, for_inference
from geoseg.io.cog import create_raster
from geoseg.models.align import permute_head_b
from geoseg.models.bundle import Cluster, ModelMeta, default_clusters, load_bundle, save_bundle

__all__ = [
    "NAMES",
    "OLD_CLUSTERS",
    "SWISS_ORIGIN",
    "K",
    "crop",
    "make_bundle",
    "make_spread_bundle",
    "permuted_copy",
    "predict",
    "reference_tiles",
    "write_raster",
]

K = 4  # clusters of the tiny bundles
NAMES = ["dark", "bright", "green", None]
SWISS_ORIGIN = (2_538_000.0, 1_152_000.0)  # LV95, near Lausanne
OLD_CLUSTERS = [
    Cluster(0, (10, 20, 30), "roofs"),
    Cluster(1, (200, 40, 40), "roads"),
    Cluster(2, (30, 160, 60), "trees"),
    Cluster(3, (240, 230, 90), "grass"),
]


# --- rasters ------------------------------------------------------------------------------


def write_raster(
    path: Path,
    data: np.ndarray,
    nodata: float | None = None,
    crs: str | None = "EPSG:2056",
    origin: tuple[float, float] = SWISS_ORIGIN,
) -> Path:
    """A small GeoTIFF of (C, H, W) ``data``: 0.5 m pixels from ``origin``, or no
    georeferencing at all with ``crs=None``."""
    count, height, width = data.shape
    transform = Affine(0.5, 0, origin[0], 0, -0.5, origin[1]) if crs else None
    with create_raster(
        path, {"driver": "GTiff", "height": height, "width": width, "count": count, "dtype": data.dtype,
        "crs": CRS.from_string(crs) if crs else None, "transform": transform, "nodata": nodata},
    ) as dst:  # fmt: skip
        dst.write(data)
    return path


def crop(src_path: Path, out: Path, window: Window) -> Path:
    """A real raster's window as its own GeoTIFF (same CRS, the window's transform, nodata)."""
    with rasterio.open(src_path) as src:
        profile = src.profile | {
            "height": window.height,
            "width": window.width,
            "transform": src.window_transform(window),
        }
        profile.pop("blockysize", None)
        profile["tiled"] = False
        data = src.read(window=window)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def reference_tiles(shared_data: Path) -> list[Path]:
    return [shared_data / "lausanne" / "img" / f"1091-322_{i:02d}.tif" for i in (0, 5, 11, 19)]


# --- model bundles ------------------------------------------------------------------------


def make_bundle(
    path: Path,
    band_names: list[str],
    dtype: str,
    mean: float,
    std: float,
    patch: int = 128,
    scale: float = 1.0,
    seed: int = 0,
) -> Path:
    torch.manual_seed(seed)
    arch = Architecture(in_channels=len(band_names), k_a=8, k_b=K, preset="small")
    model = build_model(arch).eval()
    model.set_normalisation([mean] * len(band_names), [std] * len(band_names))
    clusters = [Cluster(c.id, c.colour, NAMES[c.id]) for c in default_clusters(K)]
    meta = ModelMeta(
        architecture=arch.to_dict(),
        band_names=band_names,
        band_mean=[mean] * len(band_names),
        band_std=[std] * len(band_names),
        dtype=dtype,
        patch_size=patch,
        scale=scale,
        loss={},
        clusters=clusters,
    )
    return save_bundle(model, meta, path)


def make_spread_bundle(
    out: Path, seed: int = 0, k: int = K, clusters: list[Cluster] | None = None, spread: float = 3.0
) -> Path:
    """A tiny random IIC model whose head B splits real imagery into all k clusters."""
    torch.manual_seed(seed)
    arch = Architecture(in_channels=3, k_a=6, k_b=k, subheads=1, preset="small")
    model = build_model(arch).eval()
    model.set_normalisation([110.0, 115.0, 100.0], [50.0, 48.0, 45.0])
    with torch.no_grad():
        for conv in model.head_b:
            conv.weight.normal_(0.0, spread)
            conv.bias.zero_()
    meta = ModelMeta(
        architecture=arch.to_dict(),
        band_names=["red", "green", "blue"],
        band_mean=[110.0, 115.0, 100.0],
        band_std=[50.0, 48.0, 45.0],
        dtype="uint8",
        patch_size=64,
        scale=1.0,
        loss={"lamb_a": 1.0, "lamb_b": 1.0, "half_t": 2},
        clusters=clusters or [Cluster(i, (i * 40, 255 - i * 40, 90)) for i in range(k)],
    )
    return save_bundle(model, meta, out)


def predict(bundle: Path, raster: Path) -> np.ndarray:
    """Head-B ids of the whole raster in one pass, through segment's inference copy of the
    network (near-ties of the argmax depend on the convolution algorithm)."""
    model = for_inference(load_bundle(bundle)[0])
    with rasterio.open(raster) as src:
        x = torch.from_numpy(src.read().astype(np.float32))[None]
    with torch.inference_mode():
        return model(x.contiguous(memory_format=torch.channels_last), heads="b")["b"][0].argmax(1)[0].numpy()


def permuted_copy(src: Path, out: Path, perm: list[int]) -> Path:
    """The same model with head-B channel i moved to perm[i], and a fresh colour table."""
    model, meta = load_bundle(src)
    permute_head_b(model, perm)
    meta.clusters = [Cluster(i, (i, i, i)) for i in range(len(perm))]
    return save_bundle(model, meta, out)
