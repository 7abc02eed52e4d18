"""LGMI and CIRS end to end: a few training steps on a generated scene's patch store (real
ingest), the bundle, then segment the scene into a valid COG of the bundle's k clusters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geoseg.cli import main
from geoseg.config import SegmentConfig, TrainConfig
from geoseg.io.cog import validate_cog
from geoseg.models.bundle import load_bundle
from geoseg.segment import segment
from geoseg.train import train
from tests.picie.conftest import scene, scene_store  # noqa: F401  (the PiCIE tests' fixtures)

K = 4
SETTINGS = {
    "lgmi": {"local_dim": 16},
    "cirs": {"g_steps": 2, "s_steps": 2, "g_dim": 8},  # both turns within the few steps
}


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def trained(request, scene_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:  # noqa: F811
    method = request.param
    out = tmp_path_factory.mktemp(f"{method}_model") / "model"
    config = TrainConfig(
        method=method, k=K, steps=4, checkpoint_every=2, batch_size=4, lr=1e-3, seed=1, **SETTINGS[method]
    )
    return method, train(scene_store, out, config, progress=False)


def test_bundle_records_the_method_and_its_settings(trained: tuple[str, Path]) -> None:
    method, bundle = trained
    meta = json.loads((bundle / "model.json").read_text())
    assert meta["method"] == method and meta["provenance"]["steps"] == 4
    assert meta["loss"]["objective"].startswith(method)
    for name, value in SETTINGS[method].items():
        assert meta["provenance"]["config"][name] == value
    model, loaded = load_bundle(bundle)
    assert type(model).__name__ == {"lgmi": "LGMINet", "cirs": "CIRSNet"}[method] and loaded.arch.k_b == K
    x = torch.rand(1, 3, 40, 40) * 255
    with torch.no_grad():
        probs = model.eval()(x, heads="b")["b"][0]
    assert probs.shape == (1, K, 40, 40) and torch.allclose(probs.sum(1), torch.ones(1, 40, 40), atol=1e-5)


def test_segment_writes_a_valid_cog_of_k_clusters_on_the_scene_grid(
    trained: tuple[str, Path],
    scene,  # noqa: F811
    tmp_path: Path,
) -> None:
    _method, bundle = trained
    [result] = segment(bundle, [scene.image], tmp_path, SegmentConfig(vectorize=False), progress=False)
    ok, errors, _warnings = validate_cog(result.clusters)
    assert ok, errors
    with rasterio.open(result.clusters) as src, rasterio.open(scene.image) as img:
        ids = src.read(1)
        assert (src.width, src.height, src.transform, src.crs) == (
            img.width,
            img.height,
            img.transform,
            img.crs,
        )
    used = np.unique(ids)
    assert used.max() < K and len(used) >= 2  # a real clustering within the bundle's k


@pytest.mark.parametrize(
    ("method", "option", "owner"),
    [
        ("lgmi", ["--g-steps", "10"], "cirs"),
        ("cirs", ["--tau", "0.5"], "lgmi"),
        ("iic", ["--a1", "2"], "cirs"),
    ],
)
def test_cli_refuses_another_methods_setting(
    tmp_path: Path, method: str, option: list[str], owner: str, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "model"
    code = main(["train", str(tmp_path / "missing.zarr"), "--out", str(out), "--method", method, *option])
    assert code == 2
    assert (
        f"{option[0]} is a setting of --method {owner}, not of --method {method}" in capsys.readouterr().err
    )
    assert not out.exists()
