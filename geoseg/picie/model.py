"""PiCIE's network: an FPN-style trunk giving L2-normalised per-pixel embeddings, and the
centroids of the last k-means round, which make it a clusterer at inference.

Trunks (Cho et al. 2021 use a ResNet-18 FPN, ImageNet-pretrained; geoseg trains from
scratch, since aerial bands and statistics are not ImageNet's):

- ``"iic"`` (the cheap choice): IIC's VGG-style trunk (stride 2) and a 1x1 projection to
  the embedding dimension.
- ``"resnet18-fpn"``: a ResNet-18 (basic blocks 2-2-2-2, stride 32) and PiCIE's FPN decoder:
  a 1x1 lateral to the fusion dimension at every stage, added top-down with bilinear
  upsampling, read at stride 4. Shortcuts that downsample average-pool then project
  (the "ResNet-D" shortcut) so that each stride is taken once, on the main path.

Embeddings have ``embed_dim`` channels (PiCIE's fusion dimension 128) and unit length.

Centroids are buffers, so they live in weights.safetensors beside the weights:
``centroids_b`` (K1 x D, the k clusters of the bundle) and ``centroids_a`` (K2 x D, the
over-clustering) are the view-1 centroids of the last round; ``centroids_b2`` and
``centroids_a2`` the view-2 ones (training state: a resumed run continues exactly).

At inference the probabilities of a pixel are the softmax of minus its cosine distance
to each centroid: the nearest centroid has the highest probability (PiCIE's label).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geoseg.errors import ConfigError
from geoseg.iic.model import PRESET_WIDTH, NormalisedNet, init_weights, vgg_trunk
from geoseg.messages import plural

__all__ = ["CENTROIDS", "TRUNKS", "PiCIEArchitecture", "PiCIENet", "ResNet18FPN"]

TRUNKS = ("iic", "resnet18-fpn")
# buffer names: (head, view) -> name; head "b" is the K1 clustering, "a" the K2 one
CENTROIDS = {
    ("b", 1): "centroids_b",
    ("b", 2): "centroids_b2",
    ("a", 1): "centroids_a",
    ("a", 2): "centroids_a2",
}


@dataclass(frozen=True)
class PiCIEArchitecture:
    """Everything needed to rebuild a PiCIE network (model.json's ``architecture``).

    ``k_b`` is K1 (the bundle's clusters) and ``k_a`` K2 (over-clustering): the names of
    IIC's heads, so stages that read ``arch.k_b`` need not know the method.
    """

    in_channels: int
    k_b: int
    k_a: int = 100
    trunk: str = "iic"
    preset: str = "small"
    embed_dim: int = 128
    subheads: int = 1  # one clustering per head (the interface shared with IIC)
    padding: str = "zeros"  # geoseg.config.PADDINGS (the IIC trunk only)

    @property
    def width(self) -> float:
        return PRESET_WIDTH[self.preset]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PiCIEArchitecture:
        return cls(**data)  # type: ignore[arg-type]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            pool: nn.Module = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)


class ResNet18FPN(nn.Module):
    """ResNet-18 + PiCIE's FPN decoder: (N, C, H, W) -> (N, out_dim, ceil(H/4), ceil(W/4))."""

    downsampling = 32  # the deepest stage's stride
    output_stride = 4  # the FPN is read at stride 4

    def __init__(self, in_channels: int, width: float, out_dim: int) -> None:
        super().__init__()
        widths = [max(8, int(c * width)) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, cin = [], widths[0]
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.laterals = nn.ModuleList(nn.Conv2d(c, out_dim, 1) for c in widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A side that is not a multiple of the total stride would give the main path and a
        # shortcut maps of different sizes: pad by edge values, crop back to ceil(side / 4).
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.downsampling, -w % self.downsampling
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        levels = []
        y = self.stem(x)
        for stage in self.stages:
            y = stage(y)
            levels.append(y)
        out = self.laterals[-1](levels[-1])
        for level, lateral in zip(levels[-2::-1], list(self.laterals)[-2::-1], strict=True):
            lat = lateral(level)
            out = F.interpolate(out, size=lat.shape[-2:], mode="bilinear", align_corners=False) + lat
        return out[..., : -(-h // self.output_stride), : -(-w // self.output_stride)]


class PiCIENet(NormalisedNet):
    """Embeddings (``heads="z"``) or softmax maps over the centroids (``"a"``, ``"b"``)."""

    def __init__(self, arch: PiCIEArchitecture) -> None:
        super().__init__(arch.in_channels)
        if arch.preset not in PRESET_WIDTH:
            raise ConfigError(f"unknown preset {arch.preset!r}; known: {sorted(PRESET_WIDTH)}")
        if arch.trunk not in TRUNKS:
            raise ConfigError(f"unknown PiCIE trunk {arch.trunk!r}; known: {', '.join(TRUNKS)}")
        if arch.trunk != "iic" and arch.padding != "zeros":
            raise ConfigError(
                f"padding {arch.padding!r} is for PiCIE's iic trunk; {arch.trunk} pads with zeros"
            )
        self.arch = arch
        self.trunk: nn.Module
        if arch.trunk == "iic":
            self.trunk, channels = vgg_trunk(arch.in_channels, arch.width, arch.padding)
            self.project: nn.Module = nn.Conv2d(channels, arch.embed_dim, 1)
        else:
            self.trunk = ResNet18FPN(arch.in_channels, arch.width, arch.embed_dim)
            self.project = nn.Identity()
        for (head, _view), name in CENTROIDS.items():
            k = arch.k_b if head == "b" else arch.k_a
            self.register_buffer(name, torch.zeros(k, arch.embed_dim))
        init_weights(self)

    def centroids(self, head: str, view: int = 1) -> torch.Tensor:
        return getattr(self, CENTROIDS[(head, view)])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings (N, D, h, w) at the trunk's resolution, of raw input."""
        if x.shape[1] != self.arch.in_channels:
            raise ConfigError(f"model expects {plural(self.arch.in_channels, 'band')}, got {x.shape[1]}")
        return F.normalize(self.project(self.trunk(self.normalise(x))), dim=1)

    def forward(self, x: torch.Tensor, heads: str = "ab") -> dict[str, list[torch.Tensor]]:
        """``"z"``: embeddings; ``"a"``/``"b"``: (N, k, H, W) softmax of minus the cosine
        distance to each centroid, upsampled (bilinearly, so still distributions) to the input."""
        size = x.shape[-2:]
        z = self.embed(x)
        out: dict[str, list[torch.Tensor]] = {}
        if "z" in heads:
            out["z"] = [z]
        for head in ("a", "b"):
            if head in heads:
                logits = cosine_similarity_map(z, self.centroids(head))
                probs = F.interpolate(logits.softmax(1), size=size, mode="bilinear", align_corners=False)
                out[head] = [probs]
        return out

    def permute_clusters(self, perm: list[int]) -> None:
        """Trained cluster i becomes id perm[i] (alignment to a previous model)."""
        inverse = torch.empty(len(perm), dtype=torch.long)
        inverse[torch.as_tensor(list(perm))] = torch.arange(len(perm))
        with torch.no_grad():
            for view in (1, 2):
                c = self.centroids("b", view)
                c.copy_(c[inverse.to(c.device)])


def cosine_similarity_map(z: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) cosine similarity = 1 - cosine distance of unit embeddings z (N, D, h, w)
    to each centroid (K, D). A softmax over it equals the softmax of minus the distance."""
    weight = F.normalize(centroids.to(z.dtype), dim=1)[:, :, None, None]
    return F.conv2d(z, weight)
