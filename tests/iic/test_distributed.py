"""DDP: two gloo processes under torchrun give the single-process IIC loss and gradients.

The test launches this very file with ``python -m torch.distributed.run`` (torchrun): each
rank takes every second sample of one batch of real NEON patches, computes the IIC loss
with ``reduce_joint`` under DistributedDataParallel, back-propagates and saves its loss
and (DDP-averaged) gradients. The parent computes the loss of the whole batch in one
process and compares. BatchNorm runs in eval mode: per-process batch statistics on the
CPU are not synchronised (SyncBatchNorm is GPU-only in torch), and this test is about the
joint, not about BatchNorm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
from safetensors.torch import load_file, save_file

from geoseg.iic.distributed import (
    DistContext,
    RankShard,
    cleanup,
    init_from_env,
    reduce_joint,
    unwrap,
    wrap_model,
)
from geoseg.iic.loss import iic_segmentation_loss
from geoseg.iic.model import Architecture, IICNet
from geoseg.models.bundle import load_bundle

NEON = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "neon" / "OSBS_029.tif"
HALF_T = 2
WORLD = 2


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four 40x40 patches of the NEON tile (the first one holds nodata pixels)."""
    with rasterio.open(NEON) as src:
        image, valid = src.read(), src.dataset_mask() > 0
    corners = [(0, 0), (100, 200), (250, 60), (330, 330)]
    x = np.stack([image[:, r : r + 40, c : c + 40] for r, c in corners]).astype(np.float32)
    m = np.stack([valid[r : r + 40, c : c + 40] for r, c in corners])
    assert not m[0].all() and m.any()
    return torch.from_numpy(x), torch.from_numpy(m)


def network() -> IICNet:
    torch.manual_seed(0)
    model = IICNet(Architecture(in_channels=3, k_a=5, k_b=3, preset="small"))
    model.set_normalisation([120.0, 120.0, 110.0], [50.0, 50.0, 50.0])
    with torch.no_grad():  # confident, varied predictions: a loss well away from zero
        for conv in (*model.head_a, *model.head_b):
            conv.weight.normal_(0.0, 2.0)
    return model.eval()


def loss_of(model: torch.nn.Module, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """IIC loss of both heads, second view = horizontal flip, warped back."""
    p1 = model(x)
    p2 = model(torch.flip(x, dims=[-1]))
    total = torch.zeros(())
    for head in ("a", "b"):
        back = torch.flip(p2[head][0], dims=[-1])
        total = total + iic_segmentation_loss(
            p1[head][0], back, HALF_T, 1.0, valid, reduce_joint=reduce_joint
        )
    return total


def _worker(out: Path) -> None:
    ctx = init_from_env(device="cpu")
    assert ctx.enabled and ctx.backend == "gloo"
    x, valid = batch()
    shard = next(iter(RankShard([list(range(len(x)))], ctx)))  # type: ignore[arg-type]
    model = wrap_model(network(), ctx)
    loss = loss_of(model, x[shard], valid[shard])
    loss.backward()
    grads = {f"grad.{n}": p.grad.detach() for n, p in unwrap(model).named_parameters() if p.grad is not None}
    save_file({"loss": loss.detach().reshape(1), **grads}, str(out / f"rank{ctx.rank}.safetensors"))
    cleanup()


def test_two_gloo_processes_match_the_single_process_loss_and_gradients(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
         __file__, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    x, valid = batch()
    model = network()
    expected = loss_of(model, x, valid)  # no process group here: reduce_joint is the identity
    expected.backward()
    for rank in range(WORLD):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        torch.testing.assert_close(got["loss"][0], expected.detach(), rtol=1e-5, atol=1e-6)
        names = [n for n, p in model.named_parameters() if p.grad is not None]
        assert names and all(f"grad.{n}" in got for n in names)
        for name, param in model.named_parameters():
            if param.grad is not None:
                torch.testing.assert_close(got[f"grad.{name}"], param.grad, rtol=1e-4, atol=1e-6)
    # Half a batch alone gives another loss: the test would notice a missing reduction.
    half = float(loss_of(network(), x[0::2], valid[0::2]).detach())
    full = float(expected.detach())
    assert abs(half - full) > 100 * (1e-6 + 1e-5 * abs(full)), (half, full)


def test_torchrun_geoseg_train_writes_one_bundle(shared_data: Path, tmp_path: Path) -> None:
    """`torchrun -m geoseg.cli train` on 2 gloo processes: rank 0 alone writes metrics and bundle."""
    from tests.iic.conftest import make_store  # not at the top: torchrun runs this file as a script

    store = make_store(tmp_path / "s.zarr", shared_data, count=8)
    out = tmp_path / "model"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
         "-m", "geoseg.cli", "train", str(store), "--out", str(out), "--steps", "2", "--batch-size", "4",
         "--k", "3", "--k-a", "6", "--half-t", "1", "--device", "cpu", "--checkpoint-every", "1", "--quiet"],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    model, meta = load_bundle(out)
    assert meta.arch.k_b == 3 and not any(k.startswith("module.") for k in model.state_dict())
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_single_process_context_and_shards() -> None:
    assert init_from_env(device="cpu") == DistContext() or os.environ.get("WORLD_SIZE", "1") != "1"
    joints = torch.rand(25, 3, 3)
    assert reduce_joint(joints) is joints
    shards = [list(RankShard([[7, 3, 9, 1, 4]], DistContext(rank=r, world_size=2))) for r in range(2)]  # type: ignore[arg-type]
    assert shards == [[[7, 9, 4]], [[3, 1]]]


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
