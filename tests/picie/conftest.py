"""A generated scene and its patch store (real GeoTIFF, real ingest) for the PiCIE tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoseg.config import IngestConfig
from geoseg.ingest import ingest
from geoseg.synthetic import SceneFiles, generate_scene


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    return generate_scene(tmp_path_factory.mktemp("picie_scene"), size=256, seed=3)


@pytest.fixture(scope="session")
def scene_store(scene: SceneFiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("picie_store") / "scene.zarr"
    return ingest([scene.image], out, IngestConfig(patch_size=64, workers=1), progress=False)
