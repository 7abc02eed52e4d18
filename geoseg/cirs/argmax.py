"""The argmax-in-place with a straight-through gradient (Bishop 2020, section 6.1, figure 6).

Forward: the one-hot of the argmax over the class dimension (1 at the largest value, 0
elsewhere). Backward: the incoming gradient is copied unchanged, so that, applied to a
softmax, the whole is differentiated as if it were the softmax alone.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["argmax_in_place"]


class _ArgmaxInPlace(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, probs: torch.Tensor, dim: int) -> torch.Tensor:
        index = probs.argmax(dim, keepdim=True)
        return torch.zeros_like(probs).scatter_(dim, index, 1.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def argmax_in_place(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """One-hot of ``probs.argmax(dim)`` (same shape and dtype), with the identity as gradient."""
    return _ArgmaxInPlace.apply(probs, dim)
