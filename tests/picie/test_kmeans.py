"""Mini-batch k-means on the device against brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geoseg.picie.kmeans import assign, minibatch_kmeans, objective

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _brute_assign(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    out = []
    for p in points:
        best, best_d = -1, np.inf
        for j, c in enumerate(centroids):
            d = float(((p - c) ** 2).sum())
            if d < best_d:
                best, best_d = j, d
        out.append(best)
    return np.asarray(out)


def test_assign_is_the_nearest_centroid() -> None:
    g = torch.Generator().manual_seed(0)
    points, centroids = torch.randn(300, 6, generator=g), torch.randn(9, 6, generator=g)
    got = assign(points.to(DEVICE), centroids.to(DEVICE), chunk=64).cpu().numpy()
    np.testing.assert_array_equal(got, _brute_assign(points.double().numpy(), centroids.double().numpy()))


def _blobs(seed: int, per: int = 3, k: int = 3, d: int = 5, spread: float = 0.15) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, d, generator=g), dim=1)
    pts = centres.repeat_interleave(per, 0) + spread * torch.randn(k * per, d, generator=g)
    return F.normalize(pts, dim=1)


def _best_spherical_partition(points: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """The smallest spherical k-means objective over every partition into k non-empty
    groups, and that partition's labels."""
    best, best_labels = np.inf, np.zeros(len(points), int)
    for labels in itertools.product(range(k), repeat=len(points)):
        lab = np.asarray(labels)
        if len(set(labels)) < k or labels[0] != 0:
            continue
        cost = 0.0
        for j in range(k):
            group = points[lab == j]
            c = group.mean(0)
            c = c / np.linalg.norm(c)
            cost += float(((group - c) ** 2).sum())
        if cost < best:
            best, best_labels = cost, lab
    return best, best_labels


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minibatch_kmeans_reaches_the_exhaustive_optimum(seed: int) -> None:
    points = _blobs(seed)
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    centroids, labels = minibatch_kmeans(points.to(DEVICE), None, 3, iterations=20, batch=4, generator=g)
    assert torch.allclose(centroids.norm(dim=1), torch.ones(3, device=DEVICE), atol=1e-5)
    np.testing.assert_array_equal(labels.cpu().numpy(), assign(points.to(DEVICE), centroids).cpu().numpy())
    best, best_labels = _best_spherical_partition(points.double().numpy(), 3)
    assert _same_partition(labels.cpu().numpy(), best_labels)
    # mini-batch centroids are running means, not exact ones: the cost is close to the optimum
    assert float(objective(points.to(DEVICE), centroids)) <= 1.1 * best


def test_one_full_batch_iteration_is_a_lloyd_step_and_rates_fall_as_points_are_seen() -> None:
    points = _blobs(4, per=10)
    start = points[[0, 10, 20]] + 0.05
    g = torch.Generator(device=DEVICE).manual_seed(0)
    one, _ = minibatch_kmeans(
        points.to(DEVICE), start.to(DEVICE), 3, 1, batch=10_000, generator=g, spherical=False
    )
    lab = _brute_assign(points.double().numpy(), start.double().numpy())
    means = np.stack([points.double().numpy()[lab == j].mean(0) for j in range(3)])
    np.testing.assert_allclose(one.cpu().numpy(), means, atol=1e-5)
    # second pass over the same points: rate n / 2n = 1/2, half way from the mean to the new mean (= itself)
    two, _ = minibatch_kmeans(
        points.to(DEVICE), start.to(DEVICE), 3, 2, batch=10_000, generator=g, spherical=False
    )
    np.testing.assert_allclose(two.cpu().numpy(), means, atol=1e-5)


def test_a_centroid_without_points_is_reseeded_on_a_point() -> None:
    points = _blobs(5, per=8)
    start = torch.cat([points[[0, 8]], -points[:1] * 0 + torch.full((1, points.shape[1]), 100.0)])
    g = torch.Generator(device=DEVICE).manual_seed(0)
    centroids, labels = minibatch_kmeans(
        points.to(DEVICE), start.to(DEVICE), 3, 3, 10_000, g, spherical=False
    )
    far = centroids[2].cpu()
    assert float((points - far).norm(dim=1).min()) < 1e-6  # now sits on a data point
    assert len(torch.unique(labels)) == 3
