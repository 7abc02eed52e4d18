"""The network of an ensemble bundle (geoseg.models.ensemble): members' mean probabilities.

Below geoseg.models.bundle, which builds it from model.json, and above nothing but the
methods' networks: cross-version alignment moves every member's ids
(geoseg.models.align.permute_head_b).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from geoseg.iic.model import NormalisedNet

__all__ = ["EnsembleNet"]


class EnsembleNet(NormalisedNet):
    """Members' mean head-B probabilities (sub-head 0, the one segmentation uses).

    ``arch`` and ``trunk`` are the first member's: every member has the same architecture
    (so the same receptive field, stride and bands), which :func:`combine` checks.
    """

    def __init__(self, members: Sequence[NormalisedNet]) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        super().__init__(members[0].arch.in_channels)
        self.members = nn.ModuleList(members)
        self.arch = members[0].arch
        self.input_mean.copy_(members[0].input_mean)
        self.input_std.copy_(members[0].input_std)

    @property
    def trunk(self) -> nn.Module:  # type: ignore[override]
        return cast(NormalisedNet, self.members[0]).trunk

    def forward(self, x: torch.Tensor, heads: str = "b") -> dict[str, list[torch.Tensor]]:
        if heads != "b":
            raise ValueError("an ensemble predicts head B only (its members' other heads are not aligned)")
        total = self.members[0](x, heads="b")["b"][0]
        for member in self.members[1:]:
            total = total + member(x, heads="b")["b"][0]
        return {"b": [total / len(self.members)]}
