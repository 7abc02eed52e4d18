"""LGMI's objective (Harb 2019, equations 4.9-4.14): the Jensen-Shannon lower bound on the
mutual information between each local feature L_ij and its soft global feature
S_ij = sum_k p'_ijk H_k, with the dot-product critic T(S, L) = <S, L>:

    I_JS = E_joint[-softplus(-T(L, S))] - E_marginal[softplus(T(L, S'))]

Joint pairs take L and S from the same image; marginal pairs take S' from another image of
the batch (image n is paired with image n+1, cyclically, at the same position). The loss
minimised is -I_JS, averaged over the valid positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geoseg.lgmi.model import assignments

__all__ = ["lgmi_loss", "soft_global"]


def soft_global(probs: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
    """S (N, P, U, V) = sum_k p'_ijk H_k for p' (N, K, U, V) and H (N, K, P)."""
    return torch.einsum("nkuv,nkp->npuv", probs, glob)


def lgmi_loss(
    local: torch.Tensor, glob: torch.Tensor, tau: float, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(-I_JS, p') for local features L (N, P, U, V), global features H (N, K, P) and the
    valid positions ``mask`` (N, U, V) bool (None: all). Needs N >= 2 (marginal pairs)."""
    if local.shape[0] < 2:
        raise ValueError(
            "LGMI needs at least two images per batch: the marginal pairs come from another image"
        )
    probs = assignments(local, glob, tau)
    s = soft_global(probs, glob)
    joint = (local * s).sum(1)  # T(L, S), (N, U, V)
    marginal = (local * s.roll(1, dims=0)).sum(1)  # image n against S' of image n-1
    per_position = F.softplus(-joint) + F.softplus(marginal)
    if mask is None:
        return per_position.mean(), probs
    weight = mask.to(per_position.dtype)
    return (per_position * weight).sum() / weight.sum().clamp_min(1.0), probs
