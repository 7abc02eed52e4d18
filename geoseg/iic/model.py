"""The IIC segmentation network: a VGG-style trunk with two clustering heads.

Trunk (the paper's "SegmentationNet10a"): 3x3 convolutions 64, 128, max-pool, 256, 256,
512 (dilation 2), 512 (dilation 2), each followed by BatchNorm and ReLU. Head A
over-clusters (k_A outputs), head B has k outputs; each head has ``subheads`` independent
1x1 convolutions, softmax over clusters, and bilinear upsampling to the input size (in
that order, as in the paper: the upsampled maps are convex mixtures of softmax outputs,
so they stay probability distributions). Weights start as in the original code
(Kaiming-normal convolutions, BatchNorm at identity).

Unlike the original code the 1x1 heads use no padding, which in the original added a
constant one-pixel ring to every prediction.

The model carries the per-band normalisation of its training data as buffers, so it is
fed raw pixel values (any dtype cast to float) and a bundle cannot be paired with the
wrong statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from geoseg.config import PADDINGS, Padding
from geoseg.errors import ConfigError
from geoseg.messages import plural

__all__ = [
    "PRESET_WIDTH",
    "Architecture",
    "IICNet",
    "NormalisedNet",
    "build_model",
    "for_inference",
    "init_weights",
    "vgg_trunk",
]

# (out_channels, dilation) per conv; "M" is a 2x2 max-pool.
_TRUNK_IIC: tuple[tuple[int, int] | str, ...] = (
    (64, 1),
    (128, 1),
    "M",
    (256, 1),
    (256, 1),
    (512, 2),
    (512, 2),
)
PRESET_WIDTH = {"iic": 1.0, "small": 0.25}


def check_padding(padding: str) -> Padding:
    """``padding`` of an architecture record, one of :data:`geoseg.config.PADDINGS`."""
    if padding not in PADDINGS:
        raise ConfigError(f"unknown padding {padding!r}; known: {', '.join(PADDINGS)}")
    return cast(Padding, padding)


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild the network (stored in model.json)."""

    in_channels: int
    k_a: int
    k_b: int
    subheads: int = 1
    preset: str = "small"
    padding: str = "zeros"  # bundles written before the setting have zeros

    @property
    def width(self) -> float:
        return PRESET_WIDTH[self.preset]

    def to_dict(self) -> dict[str, object]:
        return {"trunk": "segmentation-vgg10a", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Architecture:
        return cls(**{k: v for k, v in data.items() if k != "trunk"})  # type: ignore[arg-type]


def vgg_trunk(in_channels: int, width: float, padding: str = "zeros") -> tuple[nn.Sequential, int]:
    """The paper's trunk at a width factor: (layers, output channels). Shared by the
    methods that use it (IIC, LGMI, and PiCIE's cheap trunk); ``padding``: :func:`check_padding`."""
    mode = check_padding(padding)
    layers: list[nn.Module] = []
    channels = in_channels
    for spec in _TRUNK_IIC:
        if spec == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out, dilation = cast(tuple[int, int], spec)
        out = max(8, int(out * width))
        layers += [
            nn.Conv2d(channels, out, 3, padding=dilation, dilation=dilation, bias=False, padding_mode=mode),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    return nn.Sequential(*layers), channels


def init_weights(net: nn.Module) -> None:
    """Kaiming-normal convolutions, BatchNorm at identity (as in the original code)."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class NormalisedNet(nn.Module):
    """What every method's network shares: the training data's per-band statistics as
    buffers (``input_mean``, ``input_std``), so it is fed raw pixels; and ``arch``, the
    method's architecture record (in_channels, k_b, k_a, subheads, preset, to_dict()); and
    ``trunk``, the feature network whose receptive field segmentation's window overlap covers."""

    arch: Any
    trunk: nn.Module
    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(in_channels))
        self.register_buffer("input_std", torch.ones(in_channels))

    def set_normalisation(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Store per-band statistics; inputs are normalised as (x - mean) / std."""
        self.input_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.input_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.input_mean.view(1, -1, 1, 1)
        std = self.input_std.view(1, -1, 1, 1)
        return (x.float() - mean) / std


class IICNet(NormalisedNet):
    """Trunk + head A (over-clustering) + head B (main); returns softmax maps per sub-head."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__(arch.in_channels)
        if arch.preset not in PRESET_WIDTH:
            raise ConfigError(f"unknown preset {arch.preset!r}; known: {sorted(PRESET_WIDTH)}")
        self.arch = arch
        self.trunk, channels = vgg_trunk(arch.in_channels, arch.width, arch.padding)
        self.head_a = nn.ModuleList(nn.Conv2d(channels, arch.k_a, 1) for _ in range(arch.subheads))
        self.head_b = nn.ModuleList(nn.Conv2d(channels, arch.k_b, 1) for _ in range(arch.subheads))
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk features of raw input (normalisation included)."""
        if x.shape[1] != self.arch.in_channels:
            raise ConfigError(f"model expects {plural(self.arch.in_channels, 'band')}, got {x.shape[1]}")
        return self.trunk(self.normalise(x))

    def lead_with_subhead(self, index: int) -> None:
        """Make sub-head ``index`` the first of both heads: the one inference predicts with."""
        if not 0 <= index < self.arch.subheads:
            raise ConfigError(f"sub-head {index} not in [0, {self.arch.subheads})")
        for head in (self.head_a, self.head_b):
            order = [index, *(i for i in range(len(head)) if i != index)]
            modules = [head[i] for i in order]
            for i, module in enumerate(modules):
                head[i] = module

    def forward(self, x: torch.Tensor, heads: str = "ab") -> dict[str, list[torch.Tensor]]:
        """Softmax maps (N, k, H, W) at input resolution, per head ("a", "b") and sub-head."""
        size = x.shape[-2:]
        feats = self.features(x)
        out: dict[str, list[torch.Tensor]] = {}
        for name, head in (("a", self.head_a), ("b", self.head_b)):
            if name in heads:
                out[name] = [
                    F.interpolate(conv(feats).softmax(1), size=size, mode="bilinear", align_corners=False)
                    for conv in head
                ]
        return out


def build_model(arch: Architecture) -> IICNet:
    """A freshly initialised network."""
    return IICNet(arch)


def for_inference(model: NormalisedNet) -> NormalisedNet:
    """An eval-mode copy for prediction: each BatchNorm folded into its convolution (one
    pass over the activations less per layer) and channels-last weights (oneDNN's and
    cuDNN's fast convolution layout); the same outputs up to float rounding. Feed it
    channels-last inputs. The original (trainable) model is left untouched.
    """
    fused = copy.deepcopy(model).eval()
    members = getattr(fused, "members", None)  # an ensemble (geoseg.models.ensemble): each member
    for net in members if isinstance(members, nn.ModuleList) else [fused]:
        _fold_batch_norms(net)
    return fused.to(memory_format=torch.channels_last)


def _fold_batch_norms(net: nn.Module) -> None:
    """Each BatchNorm of a sequential trunk folded into the convolution before it, in place."""
    if not isinstance(net.trunk, nn.Sequential):  # e.g. PiCIE's ResNet-FPN: no folding
        return
    layers: list[nn.Module] = []
    for module in net.trunk:
        if isinstance(module, nn.BatchNorm2d) and layers and isinstance(layers[-1], nn.Conv2d):
            layers[-1] = fuse_conv_bn_eval(layers[-1], module)
        else:
            layers.append(module)
    net.trunk = nn.Sequential(*layers)
