"""The colour-versus-object scene: shapes, classes, determinism, and the property that defines
it (colour varies strongly inside the sky class; each fruit kind keeps its colour across images)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import rasterio

from geoseg.datasets import COLOUR_OBJECT, get_dataset, read_label
from geoseg.synthetic import APPLE, BLUEBERRY, LEMON, SKY, colour_object_image, generate_colour_object


def _stack(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [colour_object_image(seed, i, 64) for i in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def test_shapes_dtypes_and_every_class_present() -> None:
    images, labels = _stack(seed=0, count=60)
    assert images.shape == (60, 3, 64, 64) and images.dtype == np.uint8
    assert labels.shape == (60, 64, 64) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {SKY, LEMON, APPLE, BLUEBERRY}
    assert (labels == SKY).mean(axis=(1, 2)).min() > 0.5  # the sky is in every image, occluded


def test_same_seed_same_images_other_seed_other_images() -> None:
    a, la = _stack(seed=5, count=4)
    b, lb = _stack(seed=5, count=4)
    _c, lc = _stack(seed=6, count=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(la, lc)
    assert not np.array_equal(la[0], la[1])  # fruits move from image to image


def test_sky_colour_varies_more_than_the_gap_between_fruit_kinds() -> None:
    images, labels = _stack(seed=1, count=80)
    pixels = images.transpose(0, 2, 3, 1).astype(np.float64)
    sky = pixels[labels == SKY]
    # inside one class, the sky spans deep blue to near white
    top, bottom = pixels[:, :4][labels[:, :4] == SKY].mean(0), pixels[:, -4:][labels[:, -4:] == SKY].mean(0)
    assert np.linalg.norm(bottom - top) > 150
    spread = np.linalg.norm(sky.std(0))
    for kind in (LEMON, APPLE, BLUEBERRY):
        fruit = pixels[labels == kind]
        assert np.linalg.norm(fruit.std(0)) < spread / 1.5  # a fruit kind keeps its colour
        # ... in every image it appears in (one class across images)
        means = [pixels[i][labels[i] == kind].mean(0) for i in range(80) if (labels[i] == kind).sum() > 20]
        assert len(means) > 5
        assert np.linalg.norm(np.std(means, axis=0)) < 25
    # the blueberry is closer in colour to the top of the sky than the sky's top is to its bottom
    blueberry = pixels[labels == BLUEBERRY].mean(0)
    assert np.linalg.norm(blueberry - top) < np.linalg.norm(bottom - top)


def test_written_files_are_georeferenced_pairs_read_by_the_dataset(tmp_path: Path) -> None:
    files = generate_colour_object(tmp_path, count=5, seed=2)
    assert len(files.images) == len(files.labels) == 5 and files.preview.is_file()
    bounds = []
    for i, (image_path, label_path) in enumerate(zip(files.images, files.labels, strict=True)):
        image, labels = colour_object_image(2, i, 64)
        with rasterio.open(image_path) as src, rasterio.open(label_path) as lab:
            assert np.array_equal(src.read(), image)
            assert src.transform == lab.transform and src.crs == lab.crs and src.crs.is_projected
            assert lab.nodata == 255
            bounds.append(src.bounds)
        assert np.array_equal(read_label(label_path, get_dataset("colour-object")), labels)
    assert all(a.right < b.left for a, b in itertools.pairwise(bounds))  # never overlapping
    assert COLOUR_OBJECT.num_classes == 4
