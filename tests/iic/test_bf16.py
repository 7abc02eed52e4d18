"""The CUDA training path's bf16 autocast, checked on the CPU: a trained IIC model gives the
same clusters under bf16 autocast as in float32 on >= 99 % of the pixels of real imagery.

On CUDA ``geoseg.methods.iic`` runs the network's forward under bf16 autocast (the joints
stay float32, see ``geoseg.iic.loss``); the CPU supports the same autocast, so the
numerics of that forward are testable without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoseg.config import TrainConfig
from geoseg.models.bundle import load_bundle
from geoseg.train import train


@pytest.fixture(scope="module")
def trained_model(dubai_store: Path, tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    config = TrainConfig(steps=12, batch_size=8, half_t=2, lr=1e-3, k=4, k_a=12, seed=0, device="cpu")
    out = train(dubai_store, tmp_path_factory.mktemp("bf16") / "model", config, progress=False)
    model, _ = load_bundle(out)
    return model.eval()


def dubai_crops(shared_data: Path, n: int = 2, size: int = 192) -> torch.Tensor:
    images = sorted((shared_data / "dubai" / "tile5" / "images").glob("*.jpg"))[:n]  # not in the store
    crops = [np.asarray(Image.open(p).convert("RGB"))[:size, :size].transpose(2, 0, 1) for p in images]
    return torch.from_numpy(np.stack(crops)).float()


def test_bf16_autocast_gives_the_float32_clusters_on_99_percent_of_pixels(
    trained_model: torch.nn.Module, shared_data: Path
) -> None:
    x = dubai_crops(shared_data)
    dtypes: list[torch.dtype] = []
    first_conv = next(m for m in trained_model.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first_conv.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    with torch.inference_mode():
        fp32 = trained_model(x, heads="b")["b"][0].argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = trained_model(x, heads="b")["b"][0].argmax(1)
    hook.remove()
    assert dtypes == [torch.float32, torch.bfloat16]  # the second pass really ran in bf16
    shares = torch.bincount(fp32.flatten(), minlength=4).float() / fp32.numel()
    assert (shares > 0.05).sum() >= 2, shares  # a model that separates clusters, not a collapsed one
    agreement = (fp32 == bf16).float().mean().item()
    assert agreement >= 0.99, agreement
