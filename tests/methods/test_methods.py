"""The method interface: refused settings, bundles of every method through the shared stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from geoseg.cli import main
from geoseg.config import TrainConfig
from geoseg.errors import ConfigError, InputError
from geoseg.methods import get_method, warm_start_settings
from geoseg.models.align import permute_head_b
from geoseg.models.bundle import (
    META,
    WEIGHTS,
    ModelMeta,
    default_clusters,
    load_bundle,
    load_meta,
    save_bundle,
)
from geoseg.train import build_network


def _bundle(tmp_path: Path, method: str, padding: str = "zeros") -> Path:
    config = TrainConfig(
        method=method, k=3, padding=padding, **{"picie": {"k2": 8}, "iic": {"k_a": 8}}.get(method, {})
    )
    model = build_network(config, 3).eval()
    if method == "picie":
        for name in ("centroids_b", "centroids_b2", "centroids_a", "centroids_a2"):
            buf = getattr(model, name)
            buf.copy_(torch.nn.functional.normalize(torch.randn_like(buf), dim=1))
    meta = ModelMeta(
        architecture=model.arch.to_dict(),
        band_names=["red", "green", "blue"],
        band_mean=[0.0] * 3,
        band_std=[1.0] * 3,
        dtype="uint8",
        patch_size=64,
        scale=1.0,
        loss=get_method(method).loss_settings(config),
        clusters=default_clusters(3),
        method=method,
    )
    return save_bundle(model, meta, tmp_path / method)


@pytest.mark.parametrize("option", [["--half-t", "5"], ["--k-a", "24"], ["--head-schedule", "sum"]])
def test_cli_refuses_another_methods_setting_by_name_before_any_work(
    tmp_path: Path, option: list[str], capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "model"
    code = main(["train", str(tmp_path / "missing.zarr"), "--out", str(out), "--method", "picie", *option])
    assert code == 2
    assert f"{option[0]} is a setting of --method iic, not of --method picie" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "model.work").exists()


def test_cli_refuses_a_picie_setting_with_iic_and_an_unknown_method(tmp_path: Path, capsys) -> None:
    assert main(["train", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "m"), "--k2", "50"]) == 2
    assert "--k2 is a setting of --method picie, not of --method iic" in capsys.readouterr().err
    assert (
        main(["train", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "m"), "--g-segment-number", "off"])
        == 2
    )
    assert "--g-segment-number is a setting of --method cirs, not of --method iic" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "m"), "--method", "dino"])
    assert exc.value.code == 2
    assert "invalid choice: 'dino'" in capsys.readouterr().err


def test_library_config_refuses_by_name() -> None:
    with pytest.raises(
        ConfigError, match="half_t is a setting of method 'iic'; method 'picie' does not use it"
    ):
        TrainConfig(method="picie", half_t=3).validate()
    with pytest.raises(ConfigError, match="trunk is a setting of method 'picie'"):
        TrainConfig(trunk="resnet18-fpn").validate()
    with pytest.raises(ConfigError, match="tau is a setting of method 'lgmi'; method 'cirs' does not use it"):
        TrainConfig(method="cirs", tau=0.5).validate()
    with pytest.raises(
        ConfigError, match="g_steps is a setting of method 'cirs'; method 'lgmi' does not use it"
    ):
        TrainConfig(method="lgmi", g_steps=10).validate()
    with pytest.raises(ConfigError, match="unknown method 'dino'; known methods: iic, picie, lgmi, cirs"):
        TrainConfig(method="dino").validate()


def test_bundle_of_an_unknown_method_names_the_bundle(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "picie")
    data = json.loads((bundle / META).read_text())
    data["method"] = "dino"
    (bundle / META).write_text(json.dumps(data))
    with pytest.raises(InputError, match=rf"model bundle {bundle} was trained with method 'dino'"):
        load_bundle(bundle)


def test_missing_method_tensor_names_the_bundle_and_the_tensor(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "picie")
    state = load_file(str(bundle / WEIGHTS))
    del state["centroids_b"]
    save_file(state, str(bundle / WEIGHTS))
    with pytest.raises(
        InputError, match=rf"model bundle {bundle} \(method picie\) lacks tensor\(s\) centroids_b"
    ):
        load_bundle(bundle)


def test_bundles_from_before_methods_load_as_iic(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "iic")
    data = json.loads((bundle / META).read_text())
    del data["method"]
    (bundle / META).write_text(json.dumps(data))
    model, meta = load_bundle(bundle)
    assert meta.method == "iic" and type(model).__name__ == "IICNet"


@pytest.mark.parametrize("method", ["iic", "picie", "lgmi", "cirs"])
def test_every_method_gives_k_probabilities_and_aligns_by_permutation(tmp_path: Path, method: str) -> None:
    model, _meta = load_bundle(_bundle(tmp_path, method))
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        before = model(x, heads="b")["b"][0]
        assert before.shape == (2, 3, 32, 32)
        assert torch.allclose(before.sum(1), torch.ones(2, 32, 32), atol=1e-5)
        perm = [2, 0, 1]  # trained cluster i becomes id perm[i]
        permute_head_b(model, perm)
        after = model(x, heads="b")["b"][0]
    for i, p in enumerate(perm):
        assert torch.allclose(after[:, p], before[:, i], atol=1e-6)


@pytest.mark.parametrize("method", ["iic", "picie", "lgmi", "cirs"])
def test_warm_start_settings_rebuild_the_same_architecture(tmp_path: Path, method: str) -> None:
    meta = load_meta(_bundle(tmp_path, method))
    config = TrainConfig(k=meta.arch.k_b, **warm_start_settings(meta)).validate()
    assert config.method == method
    assert build_network(config, 3).arch == meta.arch


@pytest.mark.parametrize("method", ["iic", "lgmi", "cirs", "picie"])
def test_replicate_padding_gives_no_cue_of_position_and_survives_the_bundle(
    tmp_path: Path, method: str
) -> None:
    """With zero padding a network tells the border from the inside, so a constant image
    gets several clusters (Dimitrov 2021's padding artefacts); with replicate padding its
    maps are the same everywhere (CIRS's 2x2 up-convolutions: the same every 4 pixels,
    away from the edge).
    The setting is part of the architecture: a bundle and a warm start keep it."""
    bundle = _bundle(tmp_path, method, padding="replicate")
    model, meta = load_bundle(bundle)
    assert meta.arch.padding == "replicate"
    assert TrainConfig(k=3, **warm_start_settings(meta)).validate().padding == "replicate"
    if method == "picie":  # random centroids: give the embedding a pattern to read
        model.centroids_b.copy_(torch.eye(3, model.centroids_b.shape[1]))
    constant = torch.full((1, 3, 48, 48), 140.0)
    with torch.no_grad():
        maps = model(constant, heads="b")["b"][0][0]
        zero_padded = load_bundle(_bundle(tmp_path / "zeros", method))[0](constant, heads="b")["b"][0][0]
    # CIRS: its decoder pads the up-convolutions' 4-pixel pattern by replication, which
    # differs from the pattern within 5 pixels of the edge
    period, ring = (4, 8) if method == "cirs" else (1, 0)
    centre = maps[:, 24 : 24 + period, 24 : 24 + period]
    tiled = centre.repeat(1, 48 // period, 48 // period)
    inside = slice(ring, 48 - ring)
    assert torch.allclose(maps[:, inside, inside], tiled[:, inside, inside], atol=1e-5)
    if method != "picie":  # PiCIE's bundle has its own random centroids; the others read the border
        assert (zero_padded - zero_padded[:, 24:25, 24:25]).abs().amax() > 1e-3


def test_padding_is_refused_for_picies_resnet_trunk() -> None:
    with pytest.raises(ConfigError, match="padding 'replicate' is for PiCIE's iic trunk"):
        TrainConfig(method="picie", trunk="resnet18-fpn", padding="replicate").validate()
    with pytest.raises(ConfigError, match="unknown padding 'circular'"):
        TrainConfig(padding="circular").validate()  # type: ignore[arg-type]
