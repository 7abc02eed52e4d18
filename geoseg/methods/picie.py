"""PiCIE as a geoseg method: the network of geoseg.picie.model, the loss of
geoseg.picie.loss, the k-means of geoseg.picie.kmeans, and the training step below.

One step is one PiCIE round on a batch x: two photometric views P1 x, P2 x (colour jitter
on the RGB bands, drawn independently) and one geometric transform G (the shared flip /
affine of geoseg.iic.transforms); Z1 = G(f(P1 x)) and Z2 = f(G(P2 x)) from one forward
pass (one BatchNorm batch); mini-batch k-means on the device, separately on the valid
pixels of Z1 and Z2, re-estimates the centroids (warm-started from the last round's) and
gives the labels y1, y2; the loss is within + cross for K1 = k and for K2, weighted by
log K2 / (log K1 + log K2) and log K1 / (log K1 + log K2).

Everything is compared in G's frame at the trunk's resolution (stride 2 for the IIC
trunk, 4 for the ResNet-18 FPN): clustering there costs 4 or 16 times less than at the
input's, and the embeddings are not sharper than that anyway.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F

from geoseg.config import TrainConfig
from geoseg.iic.loss import Reduce
from geoseg.iic.transforms import PairedTransform, colour_jitter
from geoseg.methods.base import StepOutput, seeded
from geoseg.picie.kmeans import minibatch_kmeans
from geoseg.picie.loss import over_clustering_weights, picie_loss
from geoseg.picie.model import PiCIEArchitecture, PiCIENet, cosine_similarity_map

__all__ = ["PICIE", "picie_views"]


def picie_views(
    model: torch.nn.Module,
    x: torch.Tensor,
    valid: torch.Tensor,
    transform: PairedTransform,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Z1, Z2, mask): unit embeddings (N, D, h, w) of G(f(P1 x)) and f(G(P2 x)), and the
    pixels (N, h, w) of G's frame whose source is valid in the image."""
    n = x.shape[0]
    x = x.float()
    x1 = colour_jitter(x, transform.rgb, transform.jitter, generator) if transform.rgb else x
    x2, warp = transform(x, generator)  # G(P2 x): jitter then the geometric transform
    both = torch.cat([x1, x2])
    if x.device.type == "cuda":
        both = both.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        z = model(both, heads="z")["z"][0]
    z = z.float()
    z1 = F.normalize(warp.apply(z[:n]), dim=1)  # resampling (affine) shortens vectors: renormalise
    z2 = z[n:]
    covered = warp.apply(valid.unsqueeze(1).float())
    mask = F.interpolate(covered, size=z.shape[-2:], mode="area")[:, 0] > 0.999
    return z1, z2, mask


class PiCIEMethod:
    name = "picie"

    def build_network(self, config: TrainConfig, num_bands: int) -> PiCIENet:
        arch = PiCIEArchitecture(
            in_channels=num_bands,
            k_b=config.k,
            k_a=config.k2,
            trunk=config.trunk,
            preset=config.preset,
            embed_dim=config.embed_dim,
            padding=config.padding,
        )
        return seeded(config.seed, lambda: PiCIENet(arch))

    def network_from_architecture(self, architecture: dict[str, Any]) -> PiCIENet:
        return PiCIENet(PiCIEArchitecture.from_dict(architecture))

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
        net = cast(PiCIENet, getattr(model, "module", model))  # under DDP: the wrapped network
        z1, z2, mask = picie_views(model, x, valid, transform, generator)
        losses: dict[str, torch.Tensor] = {}
        labels_b = None
        for head, k in (("b", config.k), ("a", config.k2)):
            fitted = []
            for view, z in ((1, z1), (2, z2)):
                points = z.detach().permute(0, 2, 3, 1)[mask]
                mu, _ = minibatch_kmeans(
                    points,
                    net.centroids(head, view),
                    k,
                    config.kmeans_iters,
                    config.kmeans_batch,
                    generator,
                    reduce=reduce,
                )
                with torch.no_grad():
                    net.centroids(head, view).copy_(mu)
                labels = cosine_similarity_map(z.detach(), mu).argmax(1)  # spherical: nearest centroid
                fitted.append((labels, mu))
            (y1, mu1), (y2, mu2) = fitted
            within, cross = picie_loss(z1, z2, y1, y2, mu1, mu2, mask)
            losses[head] = within + cross
            if head == "b":
                labels_b = y1
        w1, w2 = over_clustering_weights(config.k, config.k2)
        return StepOutput(w1 * losses["b"] + w2 * losses["a"], losses, labels_b, mask)

    def loss_settings(self, config: TrainConfig) -> dict[str, Any]:
        w1, w2 = over_clustering_weights(config.k, config.k2)
        return {
            "objective": "picie (within + cross cross-entropy over minus cosine distances to k-means centroids)",
            "k1": config.k,
            "k2": config.k2,
            "weight_k1": w1,
            "weight_k2": w2,
            "kmeans": "spherical mini-batch k-means on the device, warm-started, re-estimated every step",
            "kmeans_iters": config.kmeans_iters,
            "kmeans_batch": config.kmeans_batch,
            "inference": "softmax of minus the cosine distance to the K1 centroids (view 1 of the last round)",
        }

    def warm_start_settings(self, architecture: dict[str, Any]) -> dict[str, Any]:
        arch = PiCIEArchitecture.from_dict(architecture)
        return {
            "method": self.name,
            "k2": arch.k_a,
            "trunk": arch.trunk,
            "preset": arch.preset,
            "embed_dim": arch.embed_dim,
            "padding": arch.padding,
        }


PICIE = PiCIEMethod()
