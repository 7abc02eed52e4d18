"""PiCIE's clustering losses (Cho et al. 2021).

``L_clust(z, y, mu)`` is the cross-entropy, over the centroids mu, of minus the cosine
distance d(z, mu_l) = 1 - cos(z, mu_l), for the label y: -log(e^{-d(z, mu_y)} / sum_l e^{-d(z, mu_l)}).

For views Z1 = G(f(P1 x)) and Z2 = f(G(P2 x)), with k-means labels and centroids (y1, mu1)
of Z1 and (y2, mu2) of Z2:

- within = L_clust(Z1, y1, mu1) + L_clust(Z2, y2, mu2)
- cross  = L_clust(Z1, y2, mu2) + L_clust(Z2, y1, mu1)   (photometric invariance)

each averaged over the valid pixels. Over-clustering: the same with K2 clusters beside
K1, weighted log K2 / (log K1 + log K2) for the K1 term and log K1 / (log K1 + log K2) for
the K2 term (a cross-entropy's size grows with log K).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["clustering_loss", "over_clustering_weights", "picie_loss"]


def clustering_loss(
    z: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over (valid) pixels of L_clust: z (N, D, h, w) unit embeddings, labels (N, h, w),
    centroids (K, D), mask (N, h, w) bool."""
    weight = F.normalize(centroids.to(z.dtype), dim=1)[:, :, None, None]
    logits = F.conv2d(z, weight).float()  # cos = 1 - d; the softmax is the same as over -d
    per_pixel = F.cross_entropy(logits, labels, reduction="none")
    if mask is None:
        return per_pixel.mean()
    m = mask.float()
    return (per_pixel * m).sum() / m.sum().clamp_min(1)


def picie_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    y1: torch.Tensor,
    y2: torch.Tensor,
    mu1: torch.Tensor,
    mu2: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(within, cross) for one number of clusters."""
    within = clustering_loss(z1, y1, mu1, mask) + clustering_loss(z2, y2, mu2, mask)
    cross = clustering_loss(z1, y2, mu2, mask) + clustering_loss(z2, y1, mu1, mask)
    return within, cross


def over_clustering_weights(k1: int, k2: int) -> tuple[float, float]:
    """(weight of the K1 loss, weight of the K2 loss)."""
    total = math.log(k1) + math.log(k2)
    return math.log(k2) / total, math.log(k1) / total
