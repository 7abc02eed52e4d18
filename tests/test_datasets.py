"""geoseg.datasets: class tables, palettes, decoders, checked against real masks and torchgeo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from torchgeo.datasets import Potsdam2D, Vaihingen2D

from geoseg.datasets import (
    DUBAI,
    IGNORE,
    ISPRS_IDS,
    ISPRS_RGB,
    LOVEDA,
    POTSDAM3,
    TORCHGEO_ISPRS_ORDER,
    decode_palette,
    get_dataset,
    read_label,
)
from geoseg.errors import ConfigError, InputError


def test_isprs_colours_equal_torchgeo_through_the_class_order() -> None:
    for torchgeo in (Potsdam2D, Vaihingen2D):
        assert sorted(TORCHGEO_ISPRS_ORDER) == list(range(len(torchgeo.classes)))
        for ours, theirs in enumerate(TORCHGEO_ISPRS_ORDER):
            assert ISPRS_RGB.colours[ours] == tuple(torchgeo.colormap[theirs])
            name = torchgeo.classes[theirs].lower()
            assert name.startswith(ISPRS_RGB.classes[ours].split()[0]), (name, ISPRS_RGB.classes[ours])
    # The orders really differ: torchgeo's id 0 is clutter, geoseg's is impervious surfaces.
    assert Potsdam2D.classes[0].lower().startswith("clutter") and ISPRS_RGB.classes[0].startswith(
        "impervious"
    )


def test_potsdam3_merge() -> None:
    rgb = np.array(ISPRS_RGB.colours, np.uint8)[None]  # (1, 6, 3): one pixel per ISPRS class
    merged = POTSDAM3.decode(rgb)[0]
    # impervious, building, low vegetation, tree, car, clutter
    assert merged.tolist() == [0, 1, 2, 2, 0, 1]


def test_dubai_read_label_equals_pil_rgb_decoding(shared_data: Path) -> None:
    # tile2's masks are palette PNGs, tile1's plain RGB: both must decode like PIL's RGB view.
    for mask in (
        shared_data / "dubai/tile2/masks/image_part_001.png",
        shared_data / "dubai/tile1/masks/image_part_003.png",
    ):
        rgb = np.asarray(Image.open(mask).convert("RGB"))
        expected = np.full(rgb.shape[:2], IGNORE, np.uint8)
        for cid, colour in enumerate(DUBAI.colours):
            expected[np.all(rgb == colour, axis=-1)] = cid
        ours = read_label(mask, DUBAI)
        assert np.array_equal(ours, expected)
        assert (ours != IGNORE).mean() > 0.9


def test_id_coded_datasets(shared_data: Path) -> None:
    raw = np.asarray(Image.open(shared_data / "isprs/vaihingen_area1_0_0_512_512_label.png"))
    ids = read_label(shared_data / "isprs/vaihingen_area1_0_0_512_512_label.png", ISPRS_IDS)
    assert np.array_equal(ids == IGNORE, raw == 0)
    assert np.array_equal(ids[raw > 0], raw[raw > 0] - 1)
    loveda = read_label(shared_data / "loveda/0_label.png", LOVEDA)
    raw = np.asarray(Image.open(shared_data / "loveda/0_label.png"))
    assert np.array_equal(loveda, np.where(raw == 0, IGNORE, raw - 1))
    with pytest.raises(InputError, match="single-band"):
        ISPRS_IDS.decode(np.zeros((3, 4, 4), np.uint8))


def test_decode_palette_unknown_colours_are_ignored() -> None:
    label = np.array([[[0, 0, 255], [1, 2, 3]], [[255, 255, 255], [255, 0, 0]]], np.uint8)
    out = decode_palette(label, ISPRS_RGB.palette or {})
    assert out.tolist() == [[1, IGNORE], [0, 5]]
    channels_first = decode_palette(np.moveaxis(label, -1, 0), ISPRS_RGB.palette or {})
    assert np.array_equal(out, channels_first)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown dataset"):
        get_dataset("potsdam-7")
    with pytest.raises(InputError, match="absent"):
        read_label(tmp_path / "absent.png")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00not a tiff at all")
    with pytest.raises(InputError, match=r"bad\.tif"):
        read_label(bad)
    rgb = tmp_path / "rgb.tif"
    with rasterio.open(rgb, "w", driver="GTiff", width=4, height=4, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(InputError, match="colour-coded"):
        read_label(rgb)  # RGB without a dataset
    with pytest.raises(InputError, match="single-band"):
        read_label(rgb, LOVEDA)
