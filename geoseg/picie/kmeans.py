"""Mini-batch k-means on the training device, in torch (no host round trip).

PiCIE clusters the embeddings of each view with mini-batch k-means (Sculley 2010): for
each mini-batch of points, assign every point to its nearest centroid, then move each
centroid towards the mean of its points with a per-centroid rate 1 / (points it has seen
this round). The embeddings are unit vectors and PiCIE's loss measures cosine distance,
so centroids are renormalised after every update (spherical k-means): the nearest
centroid in Euclidean distance is then the one of smallest cosine distance, and the
labels are the ones the loss scores.

Rounds start from the previous round's centroids (a warm start: few iterations suffice
and cluster ids stay stable from round to round); the first round seeds them by k-means++
on the round's points. A centroid that receives no point in a round is re-seeded on the
point farthest from its centroid, so no cluster stays dead.

``reduce`` sums the per-centroid statistics over processes (an all-reduce under DDP), so
every process holds the same centroids.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["assign", "kmeans_plus_plus", "minibatch_kmeans", "objective"]

Reduce = Callable[[torch.Tensor], torch.Tensor]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def squared_distances(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(M, K) squared Euclidean distances, clamped at 0 (the expansion may round below)."""
    d = (points * points).sum(1, keepdim=True) - 2 * points @ centroids.t() + (centroids * centroids).sum(1)
    return d.clamp_min(0)


def assign(points: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid of every point (M,), in chunks to bound memory."""
    return torch.cat(
        [squared_distances(points[i : i + chunk], centroids).argmin(1) for i in range(0, len(points), chunk)]
    )


def objective(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Sum over points of the squared distance to the nearest centroid."""
    return squared_distances(points, centroids).min(1).values.sum()


def kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next seed drawn with probability
    proportional to the squared distance to the nearest seed so far."""
    first = torch.randint(len(points), (1,), generator=generator, device=points.device)
    seeds = [points[first]]
    nearest = squared_distances(points, seeds[0])[:, 0]
    for _ in range(1, k):
        weights = nearest if float(nearest.sum()) > 0 else torch.ones_like(nearest)
        idx = torch.multinomial(weights, 1, generator=generator)
        seeds.append(points[idx])
        nearest = torch.minimum(nearest, squared_distances(points, seeds[-1])[:, 0])
    return torch.cat(seeds)


def minibatch_kmeans(
    points: torch.Tensor,
    centroids: torch.Tensor | None,
    k: int,
    iterations: int,
    batch: int,
    generator: torch.Generator,
    spherical: bool = True,
    reduce: Reduce | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One round of mini-batch k-means on ``points`` (M, D): (centroids (k, D), labels (M,)).

    ``centroids``: the previous round's, or None to seed by k-means++ on a subsample.
    Each of ``iterations`` steps draws ``batch`` points (all of them when M <= batch).
    """
    reduce = reduce or _identity
    points = points.detach().float()
    m = len(points)
    if centroids is None or not bool(centroids.abs().sum() > 0):
        sample = points[torch.randperm(m, generator=generator, device=points.device)[: max(batch, k)]]
        centroids = kmeans_plus_plus(sample, k, generator)
    centroids = centroids.detach().float().clone()
    if spherical:
        centroids = F.normalize(centroids, dim=1)
    seen = torch.zeros(k, device=points.device)
    for _ in range(iterations):
        chosen = (
            points
            if m <= batch
            else points[torch.randint(m, (batch,), generator=generator, device=points.device)]
        )
        labels = assign(chosen, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, chosen)
        counts = torch.bincount(labels, minlength=k).float()
        sums, counts = reduce(sums), reduce(counts)
        seen += counts
        rate = (counts / seen.clamp_min(1)).unsqueeze(1)  # = n_c / (all points centroid c has seen)
        means = sums / counts.clamp_min(1).unsqueeze(1)
        centroids = torch.where(counts.unsqueeze(1) > 0, centroids + rate * (means - centroids), centroids)
        if spherical:
            centroids = F.normalize(centroids, dim=1)
    centroids = _reseed_dead(points, centroids, seen, spherical)
    return centroids, assign(points, centroids)


def _reseed_dead(
    points: torch.Tensor, centroids: torch.Tensor, seen: torch.Tensor, spherical: bool
) -> torch.Tensor:
    dead = (seen == 0).nonzero().flatten()
    if len(dead) == 0:
        return centroids
    far = squared_distances(points, centroids).min(1).values.topk(min(len(dead), len(points))).indices
    centroids = centroids.clone()
    centroids[dead[: len(far)]] = points[far]
    return F.normalize(centroids, dim=1) if spherical else centroids
