"""LGMI as a geoseg method: the network of geoseg.lgmi.model, the loss of geoseg.lgmi.loss,
and the training step below.

One step: one augmented view of the batch (the shared colour jitter and flip / affine of
geoseg.iic.transforms, as the source trains with jitter, flips and crops), local and
global features from one forward pass, and -I_JS over the positions whose source pixel is
valid (at the trunk's resolution, stride 2).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F

from geoseg.config import TrainConfig
from geoseg.iic.loss import Reduce
from geoseg.iic.transforms import PairedTransform
from geoseg.lgmi.loss import lgmi_loss
from geoseg.lgmi.model import LGMIArchitecture, LGMINet
from geoseg.methods.base import StepOutput, seeded

__all__ = ["LGMI"]


class LGMIMethod:
    name = "lgmi"

    def build_network(self, config: TrainConfig, num_bands: int) -> LGMINet:
        arch = LGMIArchitecture(
            in_channels=num_bands,
            k_b=config.k,
            local_dim=config.local_dim,
            tau=config.tau,
            preset=config.preset,
            padding=config.padding,
        )
        return seeded(config.seed, lambda: LGMINet(arch))

    def network_from_architecture(self, architecture: dict[str, Any]) -> LGMINet:
        return LGMINet(LGMIArchitecture.from_dict(architecture))

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
        net = cast(LGMINet, getattr(model, "module", model))
        view, warp = transform(x.float(), generator)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out = model(view, heads="lh")
        local, glob = out["l"][0].float(), out["h"][0].float()
        covered = warp.apply(valid.unsqueeze(1).float())
        mask = F.interpolate(covered, size=local.shape[-2:], mode="area")[:, 0] > 0.999
        loss, probs = lgmi_loss(local, glob, net.arch.temperature, mask)
        return StepOutput(loss, {"b": loss}, probs.detach().argmax(1), mask)

    def loss_settings(self, config: TrainConfig) -> dict[str, Any]:
        return {
            "objective": "lgmi (Jensen-Shannon bound on I(L_ij; S_ij), dot-product critic, S' from another image)",
            "local_dim": config.local_dim,
            "tau": config.tau,
            "inference": "p' = softmax_k(tau <L_ij, H_k>) upsampled bilinearly",
        }

    def warm_start_settings(self, architecture: dict[str, Any]) -> dict[str, Any]:
        arch = LGMIArchitecture.from_dict(architecture)
        return {
            "method": self.name,
            "local_dim": arch.local_dim,
            "tau": arch.tau,
            "preset": arch.preset,
            "padding": arch.padding,
        }


LGMI = LGMIMethod()
