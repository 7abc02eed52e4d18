"""The IIC objectives: mutual information between the cluster assignments of paired views.

Segmentation (Ji, Henriques, Vedaldi 2019, eq. 5): for every displacement t in a
(2T+1)^2 window, the joint P_t(c, c') sums Phi_u(x)_c * [g^-1 Phi(gx)]_{u+t, c'} over
images and pixels (zero beyond the border), is normalised per displacement and made
symmetric; the loss is -mean_t sum P_t ln(P_t / (P_c^lambda P_c'^lambda)). With
lambda = 1 its minimum is -ln k. lambda > 1 rewards balanced clusters: the loss then
equals -(I + (lambda - 1)(H(z) + H(z'))).

The computation is split in two so that distributed training can sum the joints of all
processes before normalising (``reduce_joint``): :func:`displaced_joints` gives the
un-normalised float32 sums, :func:`mutual_information_loss` turns them into the loss.

Differences from the original code, on purpose:

- The joint is formed per displacement and the mutual information averaged over
  displacements, as the paper writes it (the released code summed the displacements into
  one joint before taking the information).
- No in-place masked EPS assignment and no normaliser read back to the host
  (``float(p.sum())``): values are clamped out of place, and the whole loss stays on the
  device, so it never forces a synchronisation.
- The joint is computed in float32 even under bf16/fp16 autocast: sums over millions of
  pixel pairs and their logarithms lose too much in 8 mantissa bits.
- For T >= 2 the joints of all displacements come from one FFT cross-correlation
  (one k x k product per frequency rather than per displacement): (2T+1)^2/4 times
  fewer FLOPs than the original's ``conv2d``, which remains available (``method="conv"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len

__all__ = [
    "Reduce",
    "displaced_joints",
    "displacements",
    "iic_clustering_loss",
    "iic_segmentation_loss",
    "mutual_information_loss",
    "reference_loss_original_style",
]

# Floor for probabilities before the logarithm. Entries this small contribute at most
# EPS * |ln EPS| ~ 3e-11 each to the loss, so clamping (rather than masking) is exact
# enough, and the gradient of P ln P stays finite at P = 0.
EPS = 1e-12

Reduce = Callable[[torch.Tensor], torch.Tensor]
Method = Literal["auto", "conv", "fft"]


def displacements(half_t: int) -> list[tuple[int, int]]:
    """The (dy, dx) of the (2T+1)^2 window, in the order of :func:`displaced_joints`."""
    return [(dy, dx) for dy in range(-half_t, half_t + 1) for dx in range(-half_t, half_t + 1)]


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float32 else x.float()


def displaced_joints(
    p1: torch.Tensor,
    p2: torch.Tensor,
    half_t: int,
    mask: torch.Tensor | None = None,
    method: Method = "auto",
) -> torch.Tensor:
    """Un-normalised joints (D, k, k), D = (2T+1)^2, in float32.

    ``joints[d, c, c'] = sum_{n,u} p1[n, c, u] * p2[n, c', u + t_d]`` with
    t_d = ``displacements(half_t)[d]``; pairs that fall beyond the border count zero, and
    pixels where ``mask`` (N, H, W) is False are left out on both sides.

    ``method``: "conv" computes all displacements with one ``conv2d`` (the batch becomes
    the channel dimension and p1's whole map the kernel, as in the original code): about
    2 k^2 N H W (2T+1)^2 FLOPs. "fft" computes the same cross-correlation in the Fourier
    domain (zero-padded by T, so nothing wraps around): one k x k product per frequency
    instead of per displacement, about (2T+1)^2 / 4 times fewer FLOPs, with float32
    round-off of ~1e-6 relative to the largest entry (negative round-off is clamped to 0).
    "auto" uses the convolution for T <= 1 and the FFT beyond.
    """
    if p1.shape != p2.shape or p1.dim() != 4:
        raise ValueError(f"p1 and p2 must both be (N, k, H, W), got {tuple(p1.shape)} and {tuple(p2.shape)}")
    if method == "auto":
        method = "conv" if half_t <= 1 else "fft"
    with torch.autocast(device_type=p1.device.type, enabled=False):
        p1, p2 = _fp32(p1), _fp32(p2)
        if mask is not None:
            m = _fp32(mask.to(p1.dtype)).unsqueeze(1)
            p1, p2 = p1 * m, p2 * m
        if method == "conv":
            return _joints_conv(p1, p2, half_t)
        if method == "fft":
            return _joints_fft(p1, p2, half_t)
        raise ValueError(f"unknown method {method!r}: 'auto', 'conv' or 'fft'")


def _joints_conv(p1: torch.Tensor, p2: torch.Tensor, half_t: int) -> torch.Tensor:
    # input (k, N, H+2T, W+2T) from p2, weight (k, N, H, W) from p1 ->
    # out[c', c, T+dy, T+dx] = sum_{n,u} p2[n, c', u + t] * p1[n, c, u]
    k = p1.shape[1]
    out = F.conv2d(p2.transpose(0, 1), p1.transpose(0, 1), padding=half_t)  # (k, k, 2T+1, 2T+1)
    return out.permute(2, 3, 1, 0).reshape(-1, k, k)


def _joints_fft(p1: torch.Tensor, p2: torch.Tensor, half_t: int) -> torch.Tensor:
    n, k, h, w = p1.shape
    # Any size >= H + T gives linear (not circular) correlation for |t| <= T; a 2/3/5-smooth
    # size keeps the FFT fast (133 = 7 x 19 for 128 px and T = 5 is several times slower).
    size = (next_fast_len(h + half_t, real=True), next_fast_len(w + half_t, real=True))
    f1 = torch.fft.rfft2(p1, s=size)
    f2 = torch.fft.rfft2(p2, s=size)
    bins = f1.shape[-2] * f1.shape[-1]
    # per frequency: sum_n conj(F1[n, c]) F2[n, c'] -- a (k, N) @ (N, k) product
    a = f1.permute(2, 3, 1, 0).reshape(bins, k, n).conj()
    b = f2.permute(2, 3, 0, 1).reshape(bins, n, k)
    prod = torch.bmm(a, b).reshape(f1.shape[-2], f1.shape[-1], k, k).permute(2, 3, 0, 1)
    corr = torch.fft.irfft2(prod, s=size)  # (k, k, H', W'): lag t at index t mod H'
    lags_y = torch.arange(-half_t, half_t + 1, device=p1.device) % size[0]
    lags_x = torch.arange(-half_t, half_t + 1, device=p1.device) % size[1]
    window = corr.index_select(2, lags_y).index_select(3, lags_x)  # (k, k, 2T+1, 2T+1)
    return window.permute(2, 3, 0, 1).reshape(-1, k, k).clamp_min(0)


def mutual_information_loss(joints: torch.Tensor, lamb: float = 1.0) -> torch.Tensor:
    """-mean_d sum P_d ln(P_d / (P_c^lambda P_c'^lambda)) from un-normalised joints (D, k, k)."""
    with torch.autocast(device_type=joints.device.type, enabled=False):
        joints = _fp32(joints)
        total = joints.sum(dim=(1, 2), keepdim=True).clamp_min(EPS)
        p = joints / total
        p = (p + p.transpose(1, 2)) / 2
        p_i = p.sum(dim=2, keepdim=True)  # (D, k, 1)
        p_j = p.sum(dim=1, keepdim=True)  # (D, 1, k)
        log_ratio = p.clamp_min(EPS).log() - lamb * p_i.clamp_min(EPS).log() - lamb * p_j.clamp_min(EPS).log()
        return -(p * log_ratio).sum(dim=(1, 2)).mean()


def iic_segmentation_loss(
    p1: torch.Tensor,
    p2: torch.Tensor,
    half_t: int,
    lamb: float = 1.0,
    mask: torch.Tensor | None = None,
    reduce_joint: Reduce | None = None,
    method: Method = "auto",
) -> torch.Tensor:
    """The dense IIC loss of softmax maps p1, p2 (N, k, H, W); p2 already warped back into p1's frame.

    ``reduce_joint`` is applied to the un-normalised joints before normalisation (an
    all-reduce sum under DDP, so every process minimises the loss of the global batch).
    """
    joints = displaced_joints(p1, p2, half_t, mask, method)
    if reduce_joint is not None:
        joints = reduce_joint(joints)
    return mutual_information_loss(joints, lamb)


def iic_clustering_loss(
    z1: torch.Tensor, z2: torch.Tensor, lamb: float = 1.0, reduce_joint: Reduce | None = None
) -> torch.Tensor:
    """The whole-image IIC loss (paper eq. 1-3) of softmax outputs z1, z2 (N, k)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (N, k), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        joints = (_fp32(z1).t() @ _fp32(z2)).unsqueeze(0)
    if reduce_joint is not None:
        joints = reduce_joint(joints)
    return mutual_information_loss(joints, lamb)


def reference_loss_original_style(
    p1: torch.Tensor, p2: torch.Tensor, half_t: int, lamb: float = 1.0
) -> torch.Tensor:
    """The per-displacement loss written the way the original IIC code writes its loss.

    Masked in-place EPS assignment and a normaliser read through a host float (a device
    synchronisation per displacement). Kept only as the baseline of ``bench/train.py``;
    training never uses it.
    """
    eps = 2.220446049250313e-16  # sys.float_info.epsilon, as in the original
    k = p1.shape[1]
    out = F.conv2d(p2.transpose(0, 1).contiguous(), p1.transpose(0, 1).contiguous(), padding=half_t)
    joints = out.permute(2, 3, 1, 0).reshape(-1, k, k)
    losses = []
    for d in range(joints.shape[0]):
        p_i_j = joints[d]
        current_norm = float(p_i_j.detach().sum())
        p_i_j = p_i_j / current_norm
        p_i_j = (p_i_j + p_i_j.t()) / 2.0
        p_i_mat = p_i_j.sum(dim=1).unsqueeze(1)
        p_j_mat = p_i_j.sum(dim=0).unsqueeze(0)
        p_i_j[(p_i_j < eps).data] = eps
        p_i_mat[(p_i_mat < eps).data] = eps
        p_j_mat[(p_j_mat < eps).data] = eps
        losses.append(
            (-p_i_j * (torch.log(p_i_j) - lamb * torch.log(p_i_mat) - lamb * torch.log(p_j_mat))).sum()
        )
    return torch.stack(losses).mean()
