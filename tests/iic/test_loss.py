"""The IIC losses against an independent float64 implementation and the paper's identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geoseg.iic.loss import (
    displaced_joints,
    iic_clustering_loss,
    iic_segmentation_loss,
    mutual_information_loss,
    reference_loss_original_style,
)


def _softmax_maps(n: int, k: int, h: int, w: int, seed: int, sharpness: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, h, w, generator=g) * sharpness).softmax(1)


def _loop_loss(p1: np.ndarray, p2: np.ndarray, half_t: int, lamb: float, mask: np.ndarray | None) -> float:
    """Explicit loops over displacements and pixels, float64, no shared code with geoseg."""
    p1 = p1.astype(np.float64)
    p2 = p2.astype(np.float64)
    _, k, h, w = p1.shape
    if mask is not None:
        p1 = p1 * mask[:, None]
        p2 = p2 * mask[:, None]
    losses = []
    for dy in range(-half_t, half_t + 1):
        for dx in range(-half_t, half_t + 1):
            joint = np.zeros((k, k))
            for y in range(h):
                for x in range(w):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w:
                        joint += np.einsum("nc,nd->cd", p1[:, :, y, x], p2[:, :, yy, xx])
            joint /= joint.sum()
            joint = (joint + joint.T) / 2
            pi = joint.sum(1, keepdims=True)
            pj = joint.sum(0, keepdims=True)
            nz = joint > 0
            ratio = np.where(nz, joint, 1.0) / (pi**lamb * pj**lamb)
            losses.append(-(joint * np.log(np.where(nz, ratio, 1.0))).sum())
    return float(np.mean(losses))


@pytest.mark.parametrize("method", ["conv", "fft"])
@pytest.mark.parametrize(
    ("k", "half_t", "lamb", "masked"),
    [(2, 0, 1.0, False), (3, 1, 1.0, True), (5, 2, 1.5, False), (4, 3, 2.0, True), (6, 5, 1.0, True)],
)
def test_segmentation_loss_matches_float64_loops(
    k: int, half_t: int, lamb: float, masked: bool, method: str
) -> None:
    p1 = _softmax_maps(3, k, 9, 11, seed=k)
    p2 = _softmax_maps(3, k, 9, 11, seed=k + 100)
    mask = None
    if masked:
        mask = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(7)) > 0.3
    got = iic_segmentation_loss(p1, p2, half_t, lamb, mask=mask, method=method).item()
    want = _loop_loss(p1.numpy(), p2.numpy(), half_t, lamb, None if mask is None else mask.numpy())
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("method", ["conv", "fft"])
def test_joint_displacement_convention(method: str) -> None:
    """joints[d, c, c'] pairs p1 at u with p2 at u + t_d (the order of displacements())."""
    p1 = torch.zeros(1, 2, 5, 5)
    p2 = torch.zeros(1, 2, 5, 5)
    p1[0, 0, 2, 2] = 1.0  # cluster 0 at (2, 2) in view 1
    p2[0, 1, 3, 2] = 1.0  # cluster 1 at (3, 2) in view 2: displacement (dy, dx) = (1, 0)
    joints = displaced_joints(p1, p2, half_t=1, method=method)
    d = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)].index((1, 0))
    assert joints[d, 0, 1] == pytest.approx(1.0, abs=1e-6)
    assert joints.sum() == pytest.approx(1.0, abs=1e-5)
    assert (joints >= 0).all()


@pytest.mark.parametrize("half_t", [0, 3])
@pytest.mark.parametrize("k", [2, 3, 6])
def test_identical_balanced_one_hot_maps_reach_minus_ln_k(k: int, half_t: int) -> None:
    ids = torch.arange(4 * 9 * 8).reshape(4, 9, 8) % k  # 288 pixels: balanced for k = 2, 3, 6
    p = torch.nn.functional.one_hot(ids, k).permute(0, 3, 1, 2).float()
    loss = iic_segmentation_loss(p, p.clone(), half_t=0, lamb=1.0)
    assert loss.item() == pytest.approx(-math.log(k), rel=1e-5)
    # one constant cluster per image: every displacement pairs equal ids, still -ln k
    blocks = torch.nn.functional.one_hot(torch.arange(2 * k) % k, k).float()
    q = blocks[:, :, None, None].expand(2 * k, k, 8, 8)
    assert iic_segmentation_loss(q, q, half_t).item() == pytest.approx(-math.log(k), rel=1e-5)
    # and this is the minimum: any other pair of maps scores higher
    other = _softmax_maps(2 * k, k, 8, 8, seed=k, sharpness=5.0)
    assert iic_segmentation_loss(other, other, half_t).item() > -math.log(k)


@pytest.mark.parametrize("lamb", [1.0, 1.3, 2.0])
def test_lambda_identity(lamb: float) -> None:
    """loss_lambda = -(I + (lambda - 1)(H(z) + H(z'))) for every displacement, averaged."""
    p1 = _softmax_maps(2, 4, 6, 6, seed=1, sharpness=2.0)
    p2 = _softmax_maps(2, 4, 6, 6, seed=2, sharpness=2.0)
    half_t = 1
    joints = displaced_joints(p1, p2, half_t).double()
    want = []
    for joint in joints:
        pj = joint / joint.sum()
        pj = (pj + pj.T) / 2
        zi, zj = pj.sum(1), pj.sum(0)
        mi = (pj * (pj / torch.outer(zi, zj)).log()).sum()
        h_i = -(zi * zi.log()).sum()
        h_j = -(zj * zj.log()).sum()
        want.append(-(mi + (lamb - 1) * (h_i + h_j)))
    got = iic_segmentation_loss(p1, p2, half_t, lamb)
    assert got.item() == pytest.approx(torch.stack(want).mean().item(), rel=1e-5)


def test_permuting_clusters_changes_nothing() -> None:
    p1 = _softmax_maps(2, 5, 7, 7, seed=3)
    p2 = _softmax_maps(2, 5, 7, 7, seed=4)
    perm = torch.tensor([3, 0, 4, 1, 2])
    base = iic_segmentation_loss(p1, p2, 2, 1.5)
    both = iic_segmentation_loss(p1[:, perm], p2[:, perm], 2, 1.5)
    assert both.item() == pytest.approx(base.item(), rel=1e-6)
    # and the network's ids are arbitrary: a different order is a different loss value only
    # if the permutation is applied to one view (the symmetrised joint ties the views' ids)
    assert iic_segmentation_loss(p1[:, perm], p2, 2, 1.5).item() != pytest.approx(base.item(), rel=1e-6)


def test_gradients_finite_near_one_hot() -> None:
    logits1 = torch.randn(2, 4, 8, 8) * 60  # softmax saturates: many exact 0/1 entries
    logits2 = logits1.clone()
    logits1.requires_grad_(True)
    logits2.requires_grad_(True)
    loss = iic_segmentation_loss(logits1.softmax(1), logits2.softmax(1), 2, lamb=1.5)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits1.grad).all() and torch.isfinite(logits2.grad).all()
    # a cluster that is never used (P = 0 everywhere) must not produce NaN either
    p = torch.zeros(1, 3, 4, 4, requires_grad=True)
    q = p + torch.nn.functional.one_hot(torch.zeros(1, 4, 4, dtype=torch.long), 3).permute(0, 3, 1, 2)
    iic_segmentation_loss(q, q, 1).backward()
    assert torch.isfinite(p.grad).all()


def test_float32_under_bf16_autocast() -> None:
    p1 = _softmax_maps(2, 4, 8, 8, seed=5)
    p2 = _softmax_maps(2, 4, 8, 8, seed=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        joints = displaced_joints(p1.bfloat16(), p2.bfloat16(), 1)
        loss = iic_segmentation_loss(p1, p2, 1)
    assert joints.dtype == torch.float32
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(iic_segmentation_loss(p1, p2, 1).item(), rel=1e-6)


def test_reduce_joint_sees_unnormalised_sums() -> None:
    """Summing two half-batches' joints equals the loss of the whole batch (what DDP relies on)."""
    p1 = _softmax_maps(4, 3, 6, 6, seed=8)
    p2 = _softmax_maps(4, 3, 6, 6, seed=9)
    other = displaced_joints(p1[2:], p2[2:], 1)
    half = iic_segmentation_loss(p1[:2], p2[:2], 1, reduce_joint=lambda j: j + other)
    assert half.item() == pytest.approx(iic_segmentation_loss(p1, p2, 1).item(), rel=1e-5, abs=1e-7)


def test_original_style_baseline_agrees() -> None:
    p1 = _softmax_maps(2, 3, 8, 8, seed=10)
    p2 = _softmax_maps(2, 3, 8, 8, seed=11)
    base = reference_loss_original_style(p1, p2, 2, 1.2).item()
    assert base == pytest.approx(iic_segmentation_loss(p1, p2, 2, 1.2).item(), rel=1e-5)


def test_clustering_loss() -> None:
    k = 4
    ids = torch.arange(40) % k
    z = torch.nn.functional.one_hot(ids, k).float()
    assert iic_clustering_loss(z, z.clone(), 1.0).item() == pytest.approx(-math.log(k), rel=1e-5)
    # independent assignments carry no information
    z2 = torch.full((40, k), 1.0 / k)
    assert iic_clustering_loss(z, z2, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    # against float64 by hand
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 3, generator=g).softmax(1)
    b = torch.randn(16, 3, generator=g).softmax(1)
    p = (a.double().T @ b.double()) / 16
    p = (p + p.T) / 2
    want = -(p * (p / torch.outer(p.sum(1), p.sum(0))).log()).sum()
    assert iic_clustering_loss(a, b).item() == pytest.approx(want.item(), rel=1e-4, abs=1e-6)
    assert mutual_information_loss(p.unsqueeze(0).float() * 7).item() == pytest.approx(
        want.item(), rel=1e-4, abs=1e-6
    )
