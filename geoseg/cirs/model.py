"""CIRS's network (Bishop 2020, section 6, figure 5): a segmenter S and a representation
network g.

- S: a U-Net (two 2x poolings, skip connections, two 3x3 conv + BatchNorm + ReLU per level)
  with K output channels and a softmax over them, at the input's resolution. Inputs whose
  side is not a multiple of 4 are padded by edge values and the output cropped back.
- g: maps one masked segment to a vector. Its input is the normalised image times the
  segment's mask, the mask itself (so that a pixel outside the segment differs from a pixel
  of mean colour), and, after pooling, the segment number k as a one-hot when
  ``segment_number`` (as in the source). Without it g cannot tell clusters apart by their
  number alone and has to by their content: TrainConfig's default (bench/RESULTS.md).
  The source uses a fully connected g on 64x64 images; geoseg's patches vary in size, so g
  is three stride-2 convolutions, a global average pool and two linear layers, which the
  source names as the alternative. Its output is L2-normalised: the loss's between-cluster
  term would otherwise be maximised by growing g's scale without bound.

At inference ``forward(x, heads="b")["b"][0]`` is S's softmax (N, K, H, W); g is training-only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.config import Padding
from geoseg.errors import ConfigError
from geoseg.iic.model import PRESET_WIDTH, NormalisedNet, check_padding, init_weights
from geoseg.messages import plural

__all__ = ["CIRSArchitecture", "CIRSNet", "UNet"]


@dataclass(frozen=True)
class CIRSArchitecture:
    """Everything needed to rebuild a CIRS network (model.json's ``architecture``)."""

    in_channels: int
    k_b: int
    g_dim: int = 32
    preset: str = "small"
    padding: str = "zeros"  # S's convolutions: geoseg.config.PADDINGS
    segment_number: bool = True  # g sees k as a one-hot (the source); bundles before it: True

    @property
    def k_a(self) -> int:  # one clustering: the interface's head A is head B
        return self.k_b

    @property
    def subheads(self) -> int:
        return 1

    @property
    def width(self) -> float:
        return PRESET_WIDTH[self.preset]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CIRSArchitecture:
        return cls(**data)  # type: ignore[arg-type]


def _block(cin: int, cout: int, padding: Padding) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False, padding_mode=padding),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False, padding_mode=padding),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """(N, C, H, W) -> (N, K, H, W) logits; H and W multiples of 4."""

    def __init__(self, in_channels: int, k: int, width: float, padding: str = "zeros") -> None:
        super().__init__()
        mode = check_padding(padding)
        w0, w1, w2 = (max(8, int(c * width)) for c in (64, 128, 256))
        # registration order is data-flow order, pools as modules: geoseg.segment reads the
        # pooling factor and the receptive radius off the trunk's modules
        self.enc0, self.pool0 = _block(in_channels, w0, mode), nn.MaxPool2d(2)
        self.enc1, self.pool1 = _block(w0, w1, mode), nn.MaxPool2d(2)
        self.mid = _block(w1, w2, mode)
        self.up1, self.dec1 = nn.ConvTranspose2d(w2, w1, 2, stride=2), _block(2 * w1, w1, mode)
        self.up0, self.dec0 = nn.ConvTranspose2d(w1, w0, 2, stride=2), _block(2 * w0, w0, mode)
        self.out = nn.Conv2d(w0, k, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(self.pool0(e0))
        m = self.mid(self.pool1(e1))
        d1 = self.dec1(torch.cat([self.up1(m), e1], 1))
        d0 = self.dec0(torch.cat([self.up0(d1), e0], 1))
        return self.out(d0)


class SegmentEncoder(nn.Module):
    """g: (M, C, H, W) masked segments, (M, 1, H, W) masks, (M,) segment numbers -> (M, D) unit vectors."""

    def __init__(self, in_channels: int, k: int, dim: int, width: float, segment_number: bool) -> None:
        super().__init__()
        w = [max(8, int(c * width)) for c in (64, 128, 256)]
        layers: list[nn.Module] = []
        cin = in_channels + 1
        for cout in w:
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            cin = cout
        self.conv = nn.Sequential(*layers)
        self.k, self.segment_number = k, segment_number
        numbers = k if segment_number else 0
        self.fc = nn.Sequential(
            nn.Linear(w[-1] + numbers, w[-1]), nn.ReLU(inplace=True), nn.Linear(w[-1], dim)
        )

    def forward(self, masked: torch.Tensor, mask: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(torch.cat([masked, mask], 1)).mean(dim=(2, 3))
        if self.segment_number:
            pooled = torch.cat([pooled, F.one_hot(segment, self.k).to(pooled.dtype)], 1)
        return F.normalize(self.fc(pooled), dim=1)


class CIRSNet(NormalisedNet):
    """``heads="b"``/``"a"``: S's softmax; :meth:`represent` applies g to every segment.
    S is the ``trunk`` (the name the shared inference code reads)."""

    trunk: UNet

    def __init__(self, arch: CIRSArchitecture) -> None:
        super().__init__(arch.in_channels)
        if arch.preset not in PRESET_WIDTH:
            raise ConfigError(f"unknown preset {arch.preset!r}; known: {sorted(PRESET_WIDTH)}")
        self.arch = arch
        self.trunk = UNet(arch.in_channels, arch.k_b, arch.width, arch.padding)
        self.g = SegmentEncoder(arch.in_channels, arch.k_b, arch.g_dim, arch.width, arch.segment_number)
        init_weights(self)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """S's logits (N, K, H, W) of raw input (normalisation and padding included)."""
        if x.shape[1] != self.arch.in_channels:
            raise ConfigError(f"model expects {plural(self.arch.in_channels, 'band')}, got {x.shape[1]}")
        h, w = x.shape[-2:]
        z = self.normalise(x)
        pad_h, pad_w = -h % 4, -w % 4
        if pad_h or pad_w:
            z = F.pad(z, (0, pad_w, 0, pad_h), mode="replicate")
        return self.trunk(z)[..., :h, :w]

    def represent(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """g of every segment: raw x (N, C, H, W), masks (N, K, H, W) -> (N, K, D)."""
        n, k = masks.shape[:2]
        z = self.normalise(x)
        masked = (z[:, None] * masks[:, :, None]).flatten(0, 1)  # (N*K, C, H, W)
        segment = torch.arange(k, device=x.device).repeat(n)
        return self.g(masked, masks.flatten(0, 1)[:, None], segment).view(n, k, -1)

    def forward(self, x: torch.Tensor, heads: str = "ab") -> dict[str, list[torch.Tensor]]:
        probs = self.logits(x).softmax(1)
        return {head: [probs] for head in ("a", "b") if head in heads}

    def permute_clusters(self, perm: list[int]) -> None:
        """Trained cluster i becomes id perm[i]: S's output channels and g's one-hot inputs."""
        inverse = torch.empty(len(perm), dtype=torch.long)
        inverse[torch.as_tensor(list(perm))] = torch.arange(len(perm))
        with torch.no_grad():
            out = self.trunk.out
            out.weight.copy_(out.weight[inverse.to(out.weight.device)])
            assert out.bias is not None
            out.bias.copy_(out.bias[inverse.to(out.bias.device)])
            if not self.arch.segment_number:  # g has no one-hot columns to reorder
                return
            first = self.g.fc[0]
            assert isinstance(first, nn.Linear)
            cols = first.weight.shape[1] - self.arch.k_b
            first.weight[:, cols:] = first.weight[:, cols:][:, inverse.to(first.weight.device)]
