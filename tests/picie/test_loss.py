"""PiCIE's loss against a slow, obviously-correct float64 reference (loops over pixels)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from geoseg.picie.loss import clustering_loss, over_clustering_weights, picie_loss


def _reference_clust(z: np.ndarray, y: np.ndarray, mu: np.ndarray, mask: np.ndarray) -> float:
    """Mean over valid pixels of -log(e^{-d(z, mu_y)} / sum_l e^{-d(z, mu_l)}), d = cosine distance."""
    n, _d, h, w = z.shape
    total, count = 0.0, 0
    for i in range(n):
        for r in range(h):
            for c in range(w):
                if not mask[i, r, c]:
                    continue
                v = z[i, :, r, c]
                dist = []
                for m in mu:
                    dist.append(1.0 - float(v @ m) / (math.sqrt(float(v @ v)) * math.sqrt(float(m @ m))))
                denom = sum(math.exp(-x) for x in dist)
                total += -math.log(math.exp(-dist[int(y[i, r, c])]) / denom)
                count += 1
    return total / count


def _case(seed: int, k: int, n: int = 2, d: int = 8, h: int = 5, w: int = 6):
    g = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(n, d, h, w, generator=g), dim=1)
    z2 = F.normalize(torch.randn(n, d, h, w, generator=g), dim=1)
    mu1 = torch.randn(k, d, generator=g) * 3  # not unit length: the distance is cosine anyway
    mu2 = torch.randn(k, d, generator=g)
    y1 = torch.randint(k, (n, h, w), generator=g)
    y2 = torch.randint(k, (n, h, w), generator=g)
    mask = torch.rand(n, h, w, generator=g) > 0.3
    return z1, z2, y1, y2, mu1, mu2, mask


def test_clustering_loss_matches_the_float64_loop() -> None:
    z, _, y, _, mu, _, mask = _case(0, k=4)
    got = float(clustering_loss(z, y, mu, mask))
    ref = _reference_clust(z.double().numpy(), y.numpy(), mu.double().numpy(), mask.numpy())
    assert abs(got - ref) < 1e-5 * max(1.0, abs(ref))


def test_within_and_cross_match_the_reference_with_over_clustering_weights() -> None:
    k1, k2 = 3, 7
    a = _case(1, k=k1)
    b = _case(2, k=k2)
    total = 0.0
    weights = over_clustering_weights(k1, k2)
    assert math.isclose(weights[0], math.log(k2) / (math.log(k1) + math.log(k2)))
    assert math.isclose(weights[1], math.log(k1) / (math.log(k1) + math.log(k2)))
    for (z1, z2, y1, y2, mu1, mu2, mask), weight in zip((a, b), weights, strict=True):
        within, cross = picie_loss(z1, z2, y1, y2, mu1, mu2, mask)
        arrays = [
            t.double().numpy() if t.is_floating_point() else t.numpy() for t in (z1, z2, y1, y2, mu1, mu2)
        ]
        z1n, z2n, y1n, y2n, mu1n, mu2n = arrays
        m = mask.numpy()
        ref_within = _reference_clust(z1n, y1n, mu1n, m) + _reference_clust(z2n, y2n, mu2n, m)
        ref_cross = _reference_clust(z1n, y2n, mu2n, m) + _reference_clust(z2n, y1n, mu1n, m)
        assert abs(float(within) - ref_within) < 1e-5 * ref_within
        assert abs(float(cross) - ref_cross) < 1e-5 * ref_cross
        total += weight * (ref_within + ref_cross)
    assert total > 0


def test_gradient_pulls_embeddings_towards_their_centroid() -> None:
    z, _, y, _, mu, _, _ = _case(3, k=4)
    z = z.clone().requires_grad_(True)
    clustering_loss(z, y, mu).backward()
    stepped = F.normalize(z.detach() - 0.5 * z.grad, dim=1)
    before = float(clustering_loss(z.detach(), y, mu))
    assert float(clustering_loss(stepped, y, mu)) < before
