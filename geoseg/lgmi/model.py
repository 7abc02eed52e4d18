"""LGMI's network (Harb 2019, section 4.3.1, figure 4.3).

- Local features L (N, P, U, V): IIC's VGG-style trunk (stride 2, so U = H/2, V = W/2) and a
  1x1 projection to P channels; each L_ij describes an overlapping patch of the input.
- K global ("high-level") features H_k (N, K, P), one per cluster, from K extractors over L
  whose weights are shared except for their last layer: a shared 3x3 stride-2 convolution
  + BatchNorm + ReLU, global average pooling, then one linear map per cluster (held as one
  P -> K*P layer) and a shared LayerNorm. With every weight shared the K features would be
  equal; the figure marks the shared blocks, and the per-cluster map is the least that
  tells the K extractors apart.
- Soft assignments p'_ijk = softmax_k(tau <L_ij, H_k>) (the dot-product critic read as a
  similarity); tau is part of the architecture because inference needs it. The source's
  runs use tau = 1/sqrt(P) (its lambda = 1/sqrt(2048) with P = 2048): the default.

At inference ``forward(x, heads="b")["b"][0]`` is p' upsampled bilinearly to the input
(still a distribution over k at every pixel); its argmax is the source's prediction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.errors import ConfigError
from geoseg.iic.model import PRESET_WIDTH, NormalisedNet, init_weights, vgg_trunk
from geoseg.messages import plural

__all__ = ["LGMIArchitecture", "LGMINet", "assignments"]


@dataclass(frozen=True)
class LGMIArchitecture:
    """Everything needed to rebuild an LGMI network (model.json's ``architecture``)."""

    in_channels: int
    k_b: int
    local_dim: int = 64  # P
    tau: float | None = None  # None: 1/sqrt(P)
    preset: str = "small"
    padding: str = "zeros"  # geoseg.config.PADDINGS

    @property
    def k_a(self) -> int:  # one clustering: the interface's head A is head B
        return self.k_b

    @property
    def subheads(self) -> int:
        return 1

    @property
    def width(self) -> float:
        return PRESET_WIDTH[self.preset]

    @property
    def temperature(self) -> float:
        return 1.0 / math.sqrt(self.local_dim) if self.tau is None else self.tau

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LGMIArchitecture:
        return cls(**data)  # type: ignore[arg-type]


def assignments(local: torch.Tensor, glob: torch.Tensor, tau: float) -> torch.Tensor:
    """p' (N, K, U, V): softmax over k of tau <L_ij, H_k> for L (N, P, U, V), H (N, K, P)."""
    scores = torch.einsum("npuv,nkp->nkuv", local, glob)
    return (tau * scores).softmax(1)


class LGMINet(NormalisedNet):
    """``heads="l"``: local features; ``"h"``: global features; ``"a"``/``"b"``: p' upsampled."""

    def __init__(self, arch: LGMIArchitecture) -> None:
        super().__init__(arch.in_channels)
        if arch.preset not in PRESET_WIDTH:
            raise ConfigError(f"unknown preset {arch.preset!r}; known: {sorted(PRESET_WIDTH)}")
        self.arch = arch
        p = arch.local_dim
        self.trunk, channels = vgg_trunk(arch.in_channels, arch.width, arch.padding)
        self.local = nn.Conv2d(channels, p, 1)
        self.global_block = nn.Sequential(
            nn.Conv2d(p, p, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(p), nn.ReLU(inplace=True)
        )
        self.per_cluster = nn.Linear(p, arch.k_b * p)
        self.global_norm = nn.LayerNorm(p)
        init_weights(self)

    def local_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.arch.in_channels:
            raise ConfigError(f"model expects {plural(self.arch.in_channels, 'band')}, got {x.shape[1]}")
        return self.local(self.trunk(self.normalise(x)))

    def global_features(self, local: torch.Tensor) -> torch.Tensor:
        pooled = self.global_block(local).mean(dim=(2, 3))
        h = self.per_cluster(pooled).view(local.shape[0], self.arch.k_b, self.arch.local_dim)
        return self.global_norm(h)

    def forward(self, x: torch.Tensor, heads: str = "ab") -> dict[str, list[torch.Tensor]]:
        size = x.shape[-2:]
        local = self.local_features(x)
        glob = self.global_features(local)
        out: dict[str, list[torch.Tensor]] = {}
        if "l" in heads:
            out["l"] = [local]
        if "h" in heads:
            out["h"] = [glob]
        if "a" in heads or "b" in heads:
            probs = assignments(local.float(), glob.float(), self.arch.temperature)
            up = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
            for head in ("a", "b"):
                if head in heads:
                    out[head] = [up]
        return out

    def permute_clusters(self, perm: list[int]) -> None:
        """Trained cluster i becomes id perm[i]: the per-cluster output blocks are reordered."""
        p = self.arch.local_dim
        inverse = torch.empty(len(perm), dtype=torch.long)
        inverse[torch.as_tensor(list(perm))] = torch.arange(len(perm))
        rows = (inverse[:, None] * p + torch.arange(p)[None, :]).reshape(-1)
        with torch.no_grad():
            self.per_cluster.weight.copy_(self.per_cluster.weight[rows.to(self.per_cluster.weight.device)])
            self.per_cluster.bias.copy_(self.per_cluster.bias[rows.to(self.per_cluster.bias.device)])
