"""PiCIE end to end: train on a generated scene's patch store, segment the scene; centroids
in the bundle and the checkpoint; the collapse stop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
import zarr
from safetensors.torch import load_file

from geoseg.config import SegmentConfig, TrainConfig
from geoseg.errors import TrainingError
from geoseg.iic.model import for_inference
from geoseg.io.store import IMAGES, VALID
from geoseg.models.bundle import WEIGHTS, load_bundle
from geoseg.segment import predict_probabilities, segment
from geoseg.synthetic import generate_scene
from geoseg.train import CHECKPOINT, train, work_dir

K = 4
FAST = {"method": "picie", "k": K, "k2": 12, "batch_size": 4, "lr": 1e-3, "preset": "small", "seed": 1}


@pytest.fixture(scope="module")
def picie_model(scene_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("picie_model") / "model"
    return train(scene_store, out, TrainConfig(steps=6, checkpoint_every=3, **FAST), progress=False)


def test_bundle_records_the_method_and_holds_the_centroids(picie_model: Path) -> None:
    meta = json.loads((picie_model / "model.json").read_text())
    assert meta["method"] == "picie"
    assert meta["architecture"]["trunk"] == "iic" and meta["architecture"]["embed_dim"] == 128
    assert meta["loss"]["k1"] == K and meta["loss"]["k2"] == 12
    assert meta["provenance"]["config"]["method"] == "picie"
    tensors = load_file(str(picie_model / WEIGHTS))
    assert tensors["centroids_b"].shape == (K, 128) and tensors["centroids_a"].shape == (12, 128)
    # the centroids were estimated (unit length), not left at their zero initial value
    assert torch.allclose(tensors["centroids_b"].norm(dim=1), torch.ones(K), atol=1e-4)


def test_inference_is_the_softmax_of_minus_the_cosine_distance_to_the_k1_centroids(
    picie_model: Path, scene_store: Path
) -> None:
    model, _ = load_bundle(picie_model)
    x = torch.from_numpy(np.asarray(zarr.open_group(str(scene_store), mode="r")[IMAGES][:2])).float()
    with torch.no_grad():
        z = model.embed(x)  # (N, D, h, w)
        centroids = model.centroids_b
        dist = 1 - torch.einsum("ndhw,kd->nkhw", z, centroids / centroids.norm(dim=1, keepdim=True))
        expected = F.interpolate((-dist).softmax(1), size=x.shape[-2:], mode="bilinear", align_corners=False)
        got = predict_probabilities(for_inference(model), x)
    assert torch.allclose(got, expected, atol=1e-4)
    assert (
        torch.equal(got.argmax(1), expected.argmax(1))
        or (got.argmax(1) != expected.argmax(1)).float().mean() < 1e-3
    )


def test_segment_writes_the_scene_with_the_bundle_clusters(picie_model: Path, scene, tmp_path: Path) -> None:
    [result] = segment(picie_model, [scene.image], tmp_path, SegmentConfig(vectorize=False), progress=False)
    with rasterio.open(result.clusters) as src, rasterio.open(scene.image) as img:
        ids = src.read(1)
        assert (src.width, src.height, src.transform) == (img.width, img.height, img.transform)
    used = np.unique(ids)
    assert used.max() < K and len(used) >= 2  # a real clustering, within the bundle's k


def test_resumed_run_continues_exactly_centroids_included(scene_store: Path, tmp_path: Path) -> None:
    whole = train(
        scene_store, tmp_path / "whole", TrainConfig(steps=4, checkpoint_every=2, **FAST), progress=False
    )
    part = tmp_path / "part"
    train(scene_store, part, TrainConfig(steps=2, checkpoint_every=2, **FAST), progress=False)
    resumed = train(scene_store, part, TrainConfig(steps=4, checkpoint_every=2, **FAST), progress=False)
    a, b = load_file(str(whole / WEIGHTS)), load_file(str(resumed / WEIGHTS))
    assert a.keys() == b.keys()
    for name in ("centroids_b", "centroids_b2", "centroids_a", "centroids_a2", "project.weight"):
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def fpn_model(scene_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fpn_model") / "fpn"
    return train(scene_store, out, TrainConfig(steps=1, trunk="resnet18-fpn", **FAST), progress=False)


def test_resnet18_fpn_trunk_trains_and_reloads(fpn_model: Path) -> None:
    model, meta = load_bundle(fpn_model)
    assert meta.architecture["trunk"] == "resnet18-fpn"
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        z = model.embed(x)
        probs = model(x, heads="b")["b"][0]
    assert z.shape == (1, 128, 16, 16)  # FPN read at stride 4
    assert torch.allclose(z.norm(dim=1), torch.ones(1, 16, 16), atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(1, 64, 64), atol=1e-5)
    # a side that is no multiple of the trunk's stride 32 (a training patch of 100 px)
    with torch.no_grad():
        odd = model(torch.rand(2, 3, 100, 75) * 255, heads="b")["b"][0]
    assert odd.shape == (2, K, 100, 75)


def test_resnet18_fpn_segments_a_raster_seamlessly(fpn_model: Path, tmp_path: Path) -> None:
    # 700 x 650 px, sides that are no multiple of the trunk's stride 32; 608 px windows
    # (the default would take one window here) overlap by the seam, twice the ResNet's
    # ~250 px receptive radius: several windows per axis
    big = generate_scene(tmp_path / "big", size=700, seed=4)
    with rasterio.open(big.image) as src:
        data = src.read(window=rasterio.windows.Window(0, 0, 700, 650))
        profile = src.profile | {"height": 650}
    image = tmp_path / "big_650.tif"
    with rasterio.open(image, "w", **profile) as dst:
        dst.write(data)
    config = SegmentConfig(window=608, vectorize=False)
    [result] = segment(fpn_model, [image], tmp_path / "out", config, progress=False)
    with rasterio.open(result.clusters) as src:
        stitched = src.read(1)
    model, meta = load_bundle(fpn_model)
    x = np.pad(data.astype(np.float32), ((0, 0), (0, -650 % 32), (0, -700 % 32)), mode="edge")
    whole = predict_probabilities(model, torch.from_numpy(x)[None], meta.scale).argmax(1)[0].numpy()
    assert stitched.shape == (650, 700)
    agreement = float(np.mean(whole[:650, :700] == stitched))
    assert agreement >= 0.995, f"stitched windows vs one pass agree on {agreement:.4%} of pixels"


def test_collapse_stops_with_the_method_and_step_and_writes_no_bundle(
    scene_store: Path, tmp_path: Path
) -> None:
    # one flat colour, no jitter, and a nodata frame wider than the trunk's reach: every
    # valid pixel's embedding is the same, so one cluster takes them all
    flat = tmp_path / "flat.zarr"
    src = zarr.open_group(str(scene_store), mode="r")
    dst = zarr.open_group(str(flat), mode="w")
    for name, array in src.arrays():
        data = np.asarray(array[...])
        if name == IMAGES:
            data = np.full_like(data, 120)
        if name == VALID:
            data[:] = False
            data[:, 24:40, 24:40] = True
        dst.create_array(name, shape=data.shape, chunks=array.chunks, dtype=data.dtype)[...] = data
    dst.attrs.update(dict(src.attrs))
    out = tmp_path / "collapsed"
    config = TrainConfig(steps=4, checkpoint_every=2, jitter=0.0, **FAST)
    with pytest.raises(TrainingError, match=r"method 'picie' collapsed at step 2: one cluster took 100\.0%"):
        train(flat, out, config, progress=False)
    assert not out.exists()
    assert not (work_dir(out) / CHECKPOINT).exists()  # nothing good to keep: no checkpoint
