"""Training on real Dubai patches: the loss falls, bundles reload exactly, runs resume, errors are clear."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from geoseg.cli import main
from geoseg.config import TrainConfig
from geoseg.errors import ConfigError, TrainingError
from geoseg.iic.data import PatchDataset, StepBatchSampler
from geoseg.iic.transforms import PairedTransform
from geoseg.io.store import open_store
from geoseg.models.bundle import load_bundle, save_bundle
from geoseg.train import build_network, pair_losses, read_metrics, train, work_dir

from .conftest import make_store, write_store

FAST = {"batch_size": 8, "half_t": 2, "lr": 1e-3, "k": 4, "k_a": 12, "seed": 0}


@pytest.fixture(scope="module")
def trained(dubai_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainConfig]:
    # weight_ema 0: the label-free checkpoint selection keeps the weights (IIC's default
    # keeps the weights' moving average instead: test_the_bundle_keeps_the_weights_moving_average)
    config = TrainConfig(steps=8, checkpoint_every=4, weight_ema=0.0, **FAST)
    out = train(dubai_store, tmp_path_factory.mktemp("run") / "model", config, progress=False)
    return out, config


def _fixed_batch_loss(model: torch.nn.Module, store: Path, config: TrainConfig) -> float:
    """Head-B loss of one fixed batch and one fixed second view (BatchNorm in training mode)."""
    data = PatchDataset([store])
    batch = [data[i] for i in range(8)]
    x = torch.stack([b["image"] for b in batch])
    valid = torch.stack([b["valid"] for b in batch])
    transform = PairedTransform(rgb=(0, 1, 2), jitter=config.jitter, flip=True)
    model.train()
    with torch.no_grad():
        return pair_losses(model, x, valid, transform, torch.Generator().manual_seed(123), config, "b")[
            "b"
        ].item()


def test_a_few_cpu_steps_lower_the_loss(trained, dubai_store: Path) -> None:
    out, config = trained
    fresh = build_network(config, 3)
    fresh.set_normalisation(*PatchDataset([dubai_store]).band_statistics())
    model, _ = load_bundle(out)
    before = _fixed_batch_loss(fresh, dubai_store, config)
    after = _fixed_batch_loss(model, dubai_store, config)
    assert after < before - 0.05, (before, after)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(np.isfinite(r["loss_a"]) and np.isfinite(r["loss_b"]) for r in rows)
    with Image.open(out / "training_curve.png") as curve:  # titled: says which run it is
        assert curve.info["Title"] == f"iic training of {out.name}: k = {config.k}, 8 steps"


def test_bundle_metadata_and_label_free_selection(trained, dubai_store: Path) -> None:
    out, config = trained
    meta = json.loads((out / "model.json").read_text())
    store = open_store(dubai_store)
    assert meta["band_names"] == store.meta.band_names
    assert meta["band_mean"] == pytest.approx(store.meta.band_mean, rel=1e-6)
    assert meta["architecture"]["k_b"] == config.k and meta["architecture"]["k_a"] == config.k_a
    assert meta["patch_size"] == 64 and meta["dtype"] == "uint8"
    assert meta["loss"]["half_t"] == config.half_t and meta["loss"]["rgb_bands"] == [0, 1, 2]
    assert meta["provenance"]["stores"][0]["sources"][0]["sha256"] == store.meta.sources[0].sha256
    assert len(meta["clusters"]) == config.k
    assert meta["selection"]["labels_used"] is False
    # the kept weights are those of the checkpoint with the lowest smoothed head-B loss
    hist = {h["step"]: h["ema_b"] for h in meta["history"]}
    assert set(hist) == {4, 8}
    assert meta["selection"]["step"] == min(hist, key=hist.get)
    best = load_file(str(work_dir(out) / "best.safetensors"))
    weights = load_file(str(out / "weights.safetensors"))
    assert all(torch.equal(best[k], weights[k]) for k in weights)


def test_the_bundle_predicts_with_the_sub_head_of_lowest_smoothed_loss(
    dubai_store: Path, tmp_path: Path
) -> None:
    config = TrainConfig(steps=8, checkpoint_every=4, subheads=3, weight_ema=0.0, **FAST)
    out = train(dubai_store, tmp_path / "model", config, progress=False)
    selection = json.loads((out / "model.json").read_text())["selection"]
    rows = read_metrics(out / "metrics.jsonl")
    assert all(np.mean(r["loss_b_subheads"]) == pytest.approx(r["loss_b"], rel=1e-5) for r in rows)
    ema = np.asarray(rows[0]["loss_b_subheads"])  # recomputed from the logged per-step losses
    for row in rows[1 : selection["step"]]:
        ema = 0.95 * ema + 0.05 * np.asarray(row["loss_b_subheads"])
    assert selection["subhead_ema_loss_b"] == pytest.approx(ema.tolist(), rel=1e-6)
    chosen = int(np.argmin(ema))
    assert selection["subhead"] == chosen
    best = load_file(str(work_dir(out) / "best.safetensors"))  # sub-heads in training order
    weights = load_file(str(out / "weights.safetensors"))
    order = [chosen, *(i for i in range(3) if i != chosen)]
    for head in ("head_a", "head_b"):
        for slot, trained_as in enumerate(order):
            assert torch.equal(weights[f"{head}.{slot}.weight"], best[f"{head}.{trained_as}.weight"])
    assert not torch.equal(best["head_b.0.weight"], best["head_b.1.weight"])


def test_the_bundle_keeps_the_weights_moving_average(dubai_store: Path, tmp_path: Path) -> None:
    """With weight_ema d the bundle holds d * w1 + (1 - d) * w2 after two steps (w1, w2: the
    weights after steps 1 and 2, from runs without the average); training itself is unchanged."""

    def raw_weights(steps: int, decay: float) -> tuple[dict[str, torch.Tensor], Path]:
        out = train(
            dubai_store, tmp_path / f"{steps}-{decay}", TrainConfig(steps=steps, weight_ema=decay, **FAST),
            progress=False,
        )  # fmt: skip
        return load_file(str(work_dir(out) / "checkpoint" / "model.safetensors")), out

    w1, _ = raw_weights(1, 0.0)
    w2, _ = raw_weights(2, 0.0)
    last, averaged = raw_weights(2, 0.25)
    assert all(torch.equal(last[k], w2[k]) for k in w2)  # the average does not steer training
    kept = load_file(str(averaged / "weights.safetensors"))
    floats = [k for k in w2 if w2[k].dtype.is_floating_point]
    assert any(not torch.equal(w1[k], w2[k]) for k in floats)
    for name in floats:
        torch.testing.assert_close(kept[name], 0.25 * w1[name] + 0.75 * w2[name], rtol=1e-5, atol=1e-6)
    selection = json.loads((averaged / "model.json").read_text())["selection"]
    assert selection["weight_ema"] == 0.25 and selection["step"] == 2
    assert "moving average (decay 0.25) of the weights" in selection["rule"]


def test_the_weights_moving_average_is_iic_s_default_only() -> None:
    assert TrainConfig().effective_weight_ema == 0.98
    for method in ("picie", "lgmi", "cirs"):
        assert TrainConfig(method=method).effective_weight_ema == 0.0
    assert TrainConfig(weight_ema=0.0).effective_weight_ema == 0.0
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="weight_ema must be in"):
            TrainConfig(weight_ema=bad).validate()


def test_saved_and_reloaded_bundle_predicts_identically(trained, dubai_store: Path, tmp_path: Path) -> None:
    out, _ = trained
    model, meta = load_bundle(out)
    x = PatchDataset([dubai_store])[3]["image"][None]
    with torch.no_grad():
        first = model(x)["b"][0]
    again, _ = load_bundle(save_bundle(model, meta, tmp_path / "copy"))
    with torch.no_grad():
        second = again(x)["b"][0]
    assert torch.equal(first, second)
    assert first.shape == (1, 4, 64, 64)
    assert torch.allclose(first.sum(1), torch.ones(1, 64, 64), atol=1e-5)


def test_resumed_run_continues_from_the_saved_step(dubai_store: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=6, checkpoint_every=3, **FAST)
    whole = train(dubai_store, tmp_path / "whole", config, progress=False)
    # an interrupted run: its checkpoint is at step 3, and it had logged a step past it
    part = tmp_path / "part"
    train(dubai_store, part, TrainConfig(steps=3, checkpoint_every=3, **FAST), progress=False)
    shutil.rmtree(part)  # killed before any bundle was written
    with open(work_dir(part) / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 4, "loss_b": 0.0}) + "\n")
    state = json.loads((work_dir(part) / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    resumed = train(dubai_store, part, config, progress=False)
    rows = read_metrics(resumed / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[3]["loss_b"] != 0.0
    # deterministic on the CPU: resuming gives exactly the uninterrupted run
    ref = read_metrics(whole / "metrics.jsonl")
    assert [r["loss_b"] for r in rows] == [r["loss_b"] for r in ref]
    a = load_file(str(whole / "weights.safetensors"))
    b = load_file(str(resumed / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished run re-run is a no-op that rewrites the same bundle
    again = train(dubai_store, part, config, progress=False)
    assert [r["step"] for r in read_metrics(again / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    # a different run into the same place is refused, not silently mixed
    with pytest.raises(ConfigError, match="different training run"):
        train(dubai_store, part, TrainConfig(steps=6, **{**FAST, "k": 5}), progress=False)


def test_a_copied_run_folder_resumes_from_its_checkpoint(dubai_store: Path, tmp_path: Path) -> None:
    """`cp -r` of a folder holding the patch store and the bundle (with its .work), then the
    same training there: the same run (a checkpoint matches by what it trains on, not by
    paths), so nothing is retrained and nothing asks for --overwrite."""
    run = tmp_path / "run"
    shutil.copytree(dubai_store, run / "patches.zarr")
    config = TrainConfig(steps=2, checkpoint_every=2, **FAST)
    train(run / "patches.zarr", run / "model", config, progress=False)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(run)  # the original is gone
    before = load_file(str(copy / "model" / "weights.safetensors"))
    again = train(copy / "patches.zarr", copy / "model", config, progress=False)
    assert [r["step"] for r in read_metrics(again / "metrics.jsonl")] == [1, 2]
    after = load_file(str(again / "weights.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    provenance = json.loads((again / "model.json").read_text())["provenance"]
    assert provenance["stores"][0]["path"] == str((copy / "patches.zarr").resolve())


def test_rerunning_a_finished_run_keeps_the_cluster_names(dubai_store: Path, tmp_path: Path) -> None:
    """`geoseg model name` on a bundle, then the same `geoseg train` again: names and colours stay."""
    from geoseg.models.bundle import load_meta
    from geoseg.models.names import ClusterEdits, name_clusters

    config = TrainConfig(steps=2, checkpoint_every=2, **FAST)
    out = train(dubai_store, tmp_path / "model", config, progress=False)
    name_clusters(out, ClusterEdits(names={1: "roofs"}, colours={1: (192, 57, 43)}))
    again = train(dubai_store, out, config, progress=False)
    cluster = load_meta(again).clusters[1]
    assert (cluster.name, tuple(cluster.colour)) == ("roofs", (192, 57, 43))
    # more steps of the same run (steps may change on a resume): still named
    longer = train(dubai_store, out, TrainConfig(steps=3, checkpoint_every=2, **FAST), progress=False)
    assert load_meta(longer).clusters[1].name == "roofs"


def test_a_resume_asking_fewer_steps_records_the_steps_the_weights_had(
    dubai_store: Path, tmp_path: Path
) -> None:
    """`geoseg train --steps 1` into a bundle trained for 3 trains nothing and keeps its weights:
    model.json's provenance then says 3 steps, in its config too, not the 1 asked for."""
    out = train(
        dubai_store, tmp_path / "model", TrainConfig(steps=3, checkpoint_every=3, **FAST), progress=False
    )
    before = load_file(str(out / "weights.safetensors"))
    again = train(dubai_store, out, TrainConfig(steps=1, checkpoint_every=3, **FAST), progress=False)
    provenance = json.loads((again / "model.json").read_text())["provenance"]
    assert provenance["steps"] == provenance["config"]["steps"] == 3
    assert provenance["config"]["epochs"] is None
    after = load_file(str(again / "weights.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_band_count_mismatch_is_a_clear_error(
    trained, dubai_store: Path, dubai_store_4band: Path, tmp_path: Path
) -> None:
    out, _ = trained
    config = TrainConfig(steps=1, init_from=str(out), **FAST)
    # the message names both sides: the bundle and the patch store
    with pytest.raises(ConfigError, match=rf"expects 3 bands.*the patch store {dubai_store_4band} has 4"):
        train(dubai_store_4band, tmp_path / "retrained", config, progress=False)
    model, _ = load_bundle(out)
    with pytest.raises(ConfigError, match="expects 3 bands, got 4"):
        model(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ConfigError, match="band count"):
        train([dubai_store, dubai_store_4band], tmp_path / "x", TrainConfig(steps=1, **FAST), progress=False)


def test_init_from_starts_from_the_bundle_weights(trained, dubai_store: Path, tmp_path: Path) -> None:
    out, _ = trained
    config = TrainConfig(steps=1, init_from=str(out), **{**FAST, "lr": 1e-12})
    retrained = train(dubai_store, tmp_path / "re", config, progress=False)
    old = load_file(str(out / "weights.safetensors"))
    new = load_file(str(retrained / "weights.safetensors"))
    conv = "trunk.0.weight"
    assert torch.allclose(old[conv], new[conv], atol=1e-6)
    assert json.loads((retrained / "model.json").read_text())["provenance"]["init_from"] == str(out)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(shared_data: Path, tmp_path: Path) -> None:
    store = make_store(tmp_path / "nan.zarr", shared_data)
    group = open_store(store).group
    images = np.asarray(group["images"][:]).astype(np.float32)
    # poison a patch of step 2's batch only
    poisoned = StepBatchSampler(16, 8, 0, 0, 2).batch_for(1)[0]
    images[poisoned, 0, 5, 5] = np.nan
    meta = open_store(store).meta
    meta.dtype = "float32"
    shutil.rmtree(store)
    write_store(store, images, np.ones((16, 64, 64), bool), np.zeros((16, 3), np.int64), meta)
    config = TrainConfig(steps=4, checkpoint_every=1, **FAST)
    with pytest.raises(TrainingError, match="step 1"):
        train(store, tmp_path / "m", config, progress=False)
    state = json.loads((work_dir(tmp_path / "m") / "checkpoint" / "state.json").read_text())
    assert state["step"] == 1
    assert not (tmp_path / "m").exists()  # no bundle that looks complete
    weights = load_file(str(work_dir(tmp_path / "m") / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_cli_train(dubai_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--steps", "2", "--batch-size", "4", "--half-t", "1", "--k", "3", "--k-a", "9"]
    code = main(["train", str(dubai_store), "--out", str(tmp_path / "cli"), *args, "--quiet"])
    assert code == 0
    assert (tmp_path / "cli" / "weights.safetensors").is_file()
    assert main(["train", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "patch store not found" in capsys.readouterr().err


def test_cli_train_on_a_raster_says_to_ingest_it_first(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg train survey.tif --out model/` (ingest skipped) said "not a readable zarr patch
    store: ... (No group found in store ... at path '')": one line saying what to run. A
    failed train leaves no empty ``model.work`` behind."""
    tile = shared_data / "neon" / "OSBS_029.tif"
    assert main(["train", str(tile), "--out", str(tmp_path / "m"), "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"geoseg train: error: {tile} is a raster, not a patch store: make one first with "
        f"`geoseg ingest {tile} --out OSBS_029.zarr`, then train on that"
    ), err
    # nothing left behind, not even an empty m.work (every failed train left one)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert main(["train", str(tmp_path / "no.zarr"), "--out", str(tmp_path / "m"), "--quiet"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_bundle_of_another_training_run_is_refused_naming_overwrite_which_starts_over(
    dubai_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train --out` a bundle whose `.work` holds another run (other settings): one line with
    absolute paths that names --overwrite; with it the checkpoint is discarded and the
    run starts over (step 1, the new settings), replacing the bundle."""
    from geoseg.cli import main
    from geoseg.models.bundle import load_meta

    config = TrainConfig(steps=2, checkpoint_every=2, **FAST)
    out = train(dubai_store, tmp_path / "model", config, progress=False)
    monkeypatch.chdir(tmp_path)
    argv = ["train", str(dubai_store), "--out", "model", "--steps", "2", "--k", "5", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{work_dir(out)} holds a checkpoint of a different training run" in err
    assert f"pass --overwrite to start over and replace {out}" in err
    assert load_meta(out).arch.k_b == 4  # untouched
    other = TrainConfig(steps=2, checkpoint_every=2, **{**FAST, "k": 5})
    again = train(dubai_store, tmp_path / "model", other, progress=False, overwrite=True)
    assert load_meta(again).arch.k_b == 5
    assert [r["step"] for r in read_metrics(again / "metrics.jsonl")] == [1, 2]
