"""CIRS as a geoseg method: the network of geoseg.cirs.model, the straight-through argmax
of geoseg.cirs.argmax, the loss of geoseg.cirs.loss, and the training step below.

One step: one augmented view of the batch (the shared jitter and flip / affine), S's
softmax, the hard masks (one-hot of the argmax, times the valid pixels), g of every
segment, the CIRS loss. Turns follow the imbalanced schedule of the source's section 7.4:
in each cycle of g_steps + s_steps mini-batches, g is trained alone for the first g_steps
(S runs without gradient) and S alone for the next s_steps (g's weights get no gradient;
the masks carry S's gradient through the straight-through argmax). g_steps = 0 trains both
on every mini-batch (the source's original, balanced model).
"""

from __future__ import annotations

from typing import Any, cast

import torch

from geoseg.cirs.argmax import argmax_in_place
from geoseg.cirs.loss import cirs_loss
from geoseg.cirs.model import CIRSArchitecture, CIRSNet
from geoseg.config import TrainConfig
from geoseg.iic.loss import Reduce
from geoseg.iic.transforms import PairedTransform
from geoseg.methods.base import StepOutput, seeded

__all__ = ["CIRS", "turn"]


def turn(step: int, g_steps: int, s_steps: int) -> str:
    """Which subnetwork step ``step`` trains: ``"g"``, ``"s"`` or ``"both"`` (g_steps = 0)."""
    if g_steps == 0:
        return "both"
    return "g" if step % (g_steps + s_steps) < g_steps else "s"


class CIRSMethod:
    name = "cirs"

    def build_network(self, config: TrainConfig, num_bands: int) -> CIRSNet:
        arch = CIRSArchitecture(
            in_channels=num_bands,
            k_b=config.k,
            g_dim=config.g_dim,
            preset=config.preset,
            padding=config.padding,
            segment_number=config.g_segment_number,
        )
        return seeded(config.seed, lambda: CIRSNet(arch))

    def network_from_architecture(self, architecture: dict[str, Any]) -> CIRSNet:
        return CIRSNet(CIRSArchitecture.from_dict(architecture))

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
        net = cast(CIRSNet, getattr(model, "module", model))
        which = turn(step, config.g_steps, config.s_steps)
        view, warp = transform(x.float(), generator)
        mask = warp.apply(valid.unsqueeze(1).float())[:, 0] > 0.999
        with torch.set_grad_enabled(which != "g"):
            probs = net.logits(view).softmax(1)
        hard = argmax_in_place(probs) * mask[:, None].to(probs.dtype)
        net.g.requires_grad_(which != "s")  # the graph is built now: restoring it later is safe
        try:
            features = net.represent(view, hard)
        finally:
            net.g.requires_grad_(True)
        present = hard.detach().sum(dim=(2, 3)) > 0
        loss = cirs_loss(features, present, config.a1, config.a2)
        return StepOutput(loss, {"b": loss}, probs.detach().argmax(1), mask)

    def loss_settings(self, config: TrainConfig) -> dict[str, Any]:
        return {
            "objective": "cirs (a1 * mean within-cluster variance of g - a2 * variance of the cluster means)",
            "a1": config.a1,
            "a2": config.a2,
            "schedule": f"g {config.g_steps} mini-batches, then S {config.s_steps}, in turn"
            if config.g_steps
            else "S and g every mini-batch",
            "g_dim": config.g_dim,
            "g_segment_number": config.g_segment_number,
            "inference": "softmax of the U-Net segmenter S",
        }

    def warm_start_settings(self, architecture: dict[str, Any]) -> dict[str, Any]:
        arch = CIRSArchitecture.from_dict(architecture)
        return {
            "method": self.name,
            "g_dim": arch.g_dim,
            "preset": arch.preset,
            "padding": arch.padding,
            "g_segment_number": arch.segment_number,
        }


CIRS = CIRSMethod()
