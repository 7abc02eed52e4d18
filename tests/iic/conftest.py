"""Tiny real patch stores for the IIC tests, written per geoseg/store.py with zarr directly.

16 patches of 64 px cut from real Dubai images (tile 1), so the tests train on real
imagery while staying fast. A 4-band variant (RGB + a derived extra band) serves the
band-mismatch test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from geoseg import __version__
from geoseg.io.fileio import sha256_file
from geoseg.io.store import IMAGES, LABELS, ORIGIN, VALID, SourceInfo, StoreMeta

PATCH = 64


def write_store(
    path: Path, images: np.ndarray, valid: np.ndarray, origin: np.ndarray, meta: StoreMeta
) -> Path:
    """A complete patch store: one patch per chunk, attributes last."""
    group = zarr.open_group(str(path), mode="w")
    n, c, p, _ = images.shape
    group.create_array(IMAGES, shape=images.shape, chunks=(1, c, p, p), dtype=images.dtype)[...] = images
    group.create_array(VALID, shape=valid.shape, chunks=(1, p, p), dtype=bool)[...] = valid
    group.create_array(ORIGIN, shape=origin.shape, dtype=np.int64)[...] = origin
    # labels exist in real stores; training must never need them
    group.create_array(LABELS, shape=(n, p, p), chunks=(1, p, p), dtype=np.uint8, fill_value=255)
    meta.complete = True
    group.attrs["geoseg"] = meta.to_attrs()
    return path


def dubai_patches(shared_data: Path, count: int = 16, image: str = "image_part_001.jpg") -> tuple:
    src = shared_data / "dubai" / "tile1" / "images" / image
    rgb = np.asarray(Image.open(src).convert("RGB"))
    h, w, _ = rgb.shape
    patches, origins = [], []
    for row in range(0, h - PATCH + 1, PATCH):
        for col in range(0, w - PATCH + 1, PATCH):
            patches.append(rgb[row : row + PATCH, col : col + PATCH].transpose(2, 0, 1))
            origins.append((0, row, col))
    pick = np.linspace(0, len(patches) - 1, count).astype(int)
    return src, np.stack([patches[i] for i in pick]), np.asarray([origins[i] for i in pick], np.int64)


def make_store(path: Path, shared_data: Path, extra_band: bool = False, count: int = 16) -> Path:
    src, images, origin = dubai_patches(shared_data, count)
    names = ["red", "green", "blue"]
    if extra_band:
        extra = images.astype(np.float32).mean(1, keepdims=True).astype(np.uint8)
        images = np.concatenate([images, extra], 1)
        names.append("nir")
    valid = np.ones((len(images), PATCH, PATCH), bool)
    valid[0, :, :8] = False  # a strip of nodata, as ingest marks it
    flat = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1).astype(np.float64)
    h, w = np.asarray(Image.open(src)).shape[:2]
    meta = StoreMeta(
        sources=[
            SourceInfo(
                path=str(src),
                sha256=sha256_file(src),
                crs_wkt=None,
                transform=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
                width=w,
                height=h,
                band_names=names,
                dtype="uint8",
                nodata=None,
            )
        ],
        patch_size=PATCH,
        stride=PATCH,
        scale=1.0,
        band_names=names,
        band_mean=flat.mean(1).tolist(),
        band_std=flat.std(1).tolist(),
        dtype="uint8",
        geoseg_version=__version__,
    )
    return write_store(path, images, valid, origin, meta)


@pytest.fixture(scope="session")
def dubai_store(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("stores") / "dubai.zarr", shared_data)


@pytest.fixture(scope="session")
def dubai_store_4band(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("stores4") / "dubai4.zarr", shared_data, extra_band=True)
