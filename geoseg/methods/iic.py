"""IIC as a geoseg method: the network of geoseg.iic.model, the loss of geoseg.iic.loss,
and the training step below (one forward pass over x and its second view gx, the second
view's maps warped back with g^-1, the segmentation loss per head and sub-head)."""

from __future__ import annotations

from typing import Any

import torch

from geoseg.config import TrainConfig
from geoseg.iic.loss import Reduce, iic_segmentation_loss
from geoseg.iic.model import Architecture, IICNet
from geoseg.iic.transforms import PairedTransform, Warp
from geoseg.methods.base import StepOutput, seeded

__all__ = ["IIC", "pair_losses"]


def _pair_maps(
    model: torch.nn.Module,
    x: torch.Tensor,
    valid: torch.Tensor,
    transform: PairedTransform,
    generator: torch.Generator,
    heads: str,
) -> tuple[dict[str, list[torch.Tensor]], Warp, torch.Tensor]:
    """Softmax maps of [x, gx] in one forward pass (one BatchNorm batch), g, and the mask."""
    x = x.float()
    x2, warp = transform(x, generator)
    mask = warp.covered(valid)
    both = torch.cat([x, x2])
    if x.device.type == "cuda":
        both = both.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        maps = model(both, heads=heads)
    return maps, warp, mask


def _subhead_losses(
    maps: dict[str, list[torch.Tensor]],
    warp: Warp,
    mask: torch.Tensor,
    n: int,
    config: TrainConfig,
    reduce: Reduce | None,
) -> dict[str, torch.Tensor]:
    """IIC loss of every sub-head, (S,) per head."""
    losses = {}
    for head, outs in maps.items():
        lamb = config.lamb_a if head == "a" else config.lamb_b
        per_sub = [
            iic_segmentation_loss(p[:n], warp.invert(p[n:].float()), config.half_t, lamb, mask, reduce)
            for p in outs
        ]
        losses[head] = torch.stack(per_sub)
    return losses


def pair_losses(
    model: torch.nn.Module,
    x: torch.Tensor,
    valid: torch.Tensor,
    transform: PairedTransform,
    generator: torch.Generator,
    config: TrainConfig,
    heads: str = "ab",
    reduce: Reduce | None = None,
) -> dict[str, torch.Tensor]:
    """IIC loss per head (mean over sub-heads) for one batch of raw patches x (N, C, H, W)."""
    maps, warp, mask = _pair_maps(model, x, valid, transform, generator, heads)
    per_sub = _subhead_losses(maps, warp, mask, x.shape[0], config, reduce)
    return {head: values.mean() for head, values in per_sub.items()}


class IICMethod:
    name = "iic"

    def build_network(self, config: TrainConfig, num_bands: int) -> IICNet:
        arch = Architecture(
            in_channels=num_bands,
            k_a=config.k_a,
            k_b=config.k,
            subheads=config.subheads,
            preset=config.preset,
            padding=config.padding,
        )
        return seeded(config.seed, lambda: IICNet(arch))

    def network_from_architecture(self, architecture: dict[str, Any]) -> IICNet:
        return IICNet(Architecture.from_dict(architecture))

    def training_step(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        valid: torch.Tensor,
        transform: PairedTransform,
        generator: torch.Generator,
        config: TrainConfig,
        step: int,
        reduce: Reduce,
    ) -> StepOutput:
        # The paper alternates heads; "sum" trains both every step on one trunk pass.
        heads = ("a" if step % 2 == 0 else "b") if config.head_schedule == "alternate" else "ab"
        maps, warp, mask = _pair_maps(model, x, valid, transform, generator, heads)
        per_sub = _subhead_losses(maps, warp, mask, x.shape[0], config, reduce)
        losses = {head: values.mean() for head, values in per_sub.items()}
        labels = maps["b"][0][: x.shape[0]].detach().argmax(1) if "b" in maps else None
        subheads = per_sub["b"].detach() if "b" in per_sub and len(per_sub["b"]) > 1 else None
        return StepOutput(sum(losses.values()), losses, labels, mask, subheads)  # type: ignore[arg-type]

    def loss_settings(self, config: TrainConfig) -> dict[str, Any]:
        return {
            "objective": "iic-segmentation (per-displacement mutual information, averaged)",
            "lamb_a": config.lamb_a,
            "lamb_b": config.lamb_b,
            "half_t": config.half_t,
            "head_schedule": config.head_schedule,
        }

    def warm_start_settings(self, architecture: dict[str, Any]) -> dict[str, Any]:
        arch = Architecture.from_dict(architecture)
        return {
            "method": self.name,
            "k_a": arch.k_a,
            "subheads": arch.subheads,
            "preset": arch.preset,
            "padding": arch.padding,
        }


IIC = IICMethod()
