"""The CIRS loss (Bishop 2020, section 6): for the representations f_nk = g(segment k of
image n) of every segment present in the batch,

    loss = a1 * mean_k var_k - a2 * var(m_1 .. m_K)

where var_k is the mean squared distance of the f_nk of cluster k to their mean m_k (the
within-cluster variance across images) and var(m) the mean squared distance of the cluster
means to their mean (the between-cluster variance). Squared distances sum over the
representation's dimensions. A cluster absent from every image of the batch takes part in
neither term; a segment is present when it holds at least one valid pixel.
"""

from __future__ import annotations

import torch

__all__ = ["cirs_loss"]


def cirs_loss(features: torch.Tensor, present: torch.Tensor, a1: float, a2: float) -> torch.Tensor:
    """Loss for representations ``features`` (N, K, D) and ``present`` (N, K) bool."""
    weight = present.to(features.dtype)  # (N, K)
    count = weight.sum(0)  # (K,)
    used = count > 0
    if not bool(used.any()):
        return features.sum() * 0.0
    means = (features * weight[..., None]).sum(0) / count.clamp_min(1)[:, None]  # (K, D)
    squared = ((features - means[None]) ** 2).sum(-1)  # (N, K)
    within = (squared * weight).sum(0) / count.clamp_min(1)  # var_k, (K,)
    means = means[used]
    between = ((means - means.mean(0, keepdim=True)) ** 2).sum(-1).mean()
    return a1 * within[used].mean() - a2 * between
