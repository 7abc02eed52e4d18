"""The generated scene: deterministic, georeferenced, every class present, textured, aligned labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from geoseg.datasets import SYNTHETIC, get_dataset, read_label
from geoseg.errors import ConfigError
from geoseg.synthetic import BUILDING, CAR, GRASS, ROAD, TREE, WATER, class_shares, generate_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory):
    return generate_scene(tmp_path_factory.mktemp("scene"), size=512, seed=3, bands="rgbn")


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_same_seed_same_pixels_other_seed_other_scene(tmp_path: Path) -> None:
    a = generate_scene(tmp_path / "a", size=256, seed=7)
    b = generate_scene(tmp_path / "b", size=256, seed=7)
    c = generate_scene(tmp_path / "c", size=256, seed=8)
    assert np.array_equal(_read(a.image), _read(b.image))
    assert np.array_equal(_read(a.labels), _read(b.labels))
    assert not np.array_equal(_read(a.labels), _read(c.labels))


def test_georeferenced_with_requested_crs_and_grid(tmp_path: Path) -> None:
    files = generate_scene(
        tmp_path, size=256, seed=0, crs="EPSG:2056", resolution=0.5, origin=(2.5e6, 1.15e6)
    )
    for path in (files.image, files.labels):
        with rasterio.open(path) as src:
            assert src.crs == CRS.from_epsg(2056)
            assert src.transform.a == 0.5 and src.transform.e == -0.5
            assert (src.transform.c, src.transform.f) == (2.5e6, 1.15e6)
            assert (src.width, src.height) == (256, 256)
    with rasterio.open(files.image) as src:
        assert src.count == 3 and src.dtypes[0] == "uint8"
        assert src.descriptions == ("red", "green", "blue")
    with rasterio.open(files.labels) as src:
        assert src.nodata == 255
        assert src.colormap(1)[WATER][:3] == SYNTHETIC.colours[WATER]


def test_every_class_present_with_plausible_shares(scene) -> None:
    labels = _read(scene.labels)[0]
    shares = class_shares(labels)
    assert set(np.unique(labels)) == set(range(SYNTHETIC.num_classes))
    assert 0.3 < shares["grass"] < 0.8
    assert 0.05 < shares["road"] < 0.3
    assert 0.05 < shares["building"] < 0.35
    assert 0.02 < shares["tree"] < 0.3
    assert 0.02 < shares["water"] < 0.3
    assert 0.001 < shares["car"] < 0.03


def test_textured_not_flat(scene) -> None:
    image = _read(scene.image).astype(np.float64)
    labels = _read(scene.labels)[0]
    for cid in (ROAD, BUILDING, TREE, GRASS, WATER):
        pixels = image[:3, labels == cid]
        assert pixels.std(axis=1).min() > 3.0, SYNTHETIC.classes[cid]
        # More than a handful of distinct colours: noise, not a flat fill.
        assert len(np.unique(pixels[1])) > 20, SYNTHETIC.classes[cid]


def test_labels_are_pixel_aligned_with_the_image(scene) -> None:
    """A nearest-class-mean classifier fits the true labels far better than shifted ones."""
    image = _read(scene.image).astype(np.float64).reshape(4, -1).T
    labels = _read(scene.labels)[0]

    def fit_accuracy(lab: np.ndarray) -> float:
        flat = lab.ravel()
        means = np.stack([image[flat == c].mean(axis=0) for c in range(SYNTHETIC.num_classes)])
        nearest = np.argmin(((image[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        return float((nearest == flat).mean())

    aligned = fit_accuracy(labels)
    shifted = fit_accuracy(np.roll(labels, (6, 6), axis=(0, 1)))
    assert aligned > shifted + 0.05


def test_physics_of_the_colours(scene) -> None:
    """Vegetation is bright in NIR, water dark; cars are small and sit on roads."""
    image = _read(scene.image).astype(np.float64)
    labels = _read(scene.labels)[0]
    nir = image[3]
    assert nir[labels == TREE].mean() > 2 * nir[labels == ROAD].mean()
    assert nir[labels == WATER].mean() < 0.5 * nir[labels == ROAD].mean()
    cars = labels == CAR
    # Every car pixel has road within a car's length (cars are drawn on roads).
    from scipy import ndimage

    near_road = ndimage.binary_dilation(labels == ROAD, iterations=10)
    assert near_road[cars].all()


def test_class_table_and_dataset_registration(scene) -> None:
    table = json.loads(scene.classes.read_text())
    assert [c["name"] for c in table["classes"]] == list(SYNTHETIC.classes)
    assert get_dataset("synthetic") is SYNTHETIC
    # The registered dataset decodes the labels file to the same ids.
    assert np.array_equal(read_label(scene.labels, SYNTHETIC), _read(scene.labels)[0])
    assert scene.preview.stat().st_size > 1000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"size": 10}, "size"), ({"bands": "rgbx"}, "bands"), ({"crs": "EPSG:4326"}, "projected")],
)
def test_bad_parameters_are_config_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        generate_scene(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())
