"""The interface every training method implements, and what a training step returns.

A method turns batches of raw patches into a loss (training) and a network whose
``forward(x, heads="b")["b"][0]`` is a (N, k, H, W) map of per-pixel probabilities over
the bundle's k clusters (inference). Everything else (data, views, the loop,
checkpoints, label-free selection, DDP, bundles) is shared by all methods in
geoseg.train, geoseg.iic.data, geoseg.iic.transforms and geoseg.iic.distributed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch

from geoseg.config import TrainConfig
from geoseg.iic.loss import Reduce
from geoseg.iic.model import NormalisedNet
from geoseg.iic.transforms import PairedTransform

__all__ = ["Method", "StepOutput", "seeded"]

NetT = TypeVar("NetT", bound=torch.nn.Module)


def seeded(seed: int, build: Callable[[], NetT]) -> NetT:
    """``build()`` with torch's RNG seeded by ``seed``; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@dataclass
class StepOutput:
    """One training step: the loss to minimise, the logged per-head losses ("b" drives the
    label-free checkpoint selection), and the step's head-B cluster of every valid pixel
    (for the collapse check)."""

    total: torch.Tensor
    losses: dict[str, torch.Tensor]
    labels: torch.Tensor | None = None  # (N, h, w) long
    mask: torch.Tensor | None = None  # (N, h, w) bool
    # head B's loss per sub-head (S,), detached, where a method trains S > 1 of them: the
    # label-free choice of the sub-head the bundle predicts with (geoseg.train)
    subhead_losses: torch.Tensor | None = None


class Method(Protocol):
    name: str

    def build_network(self, config: TrainConfig, num_bands: int) -> NormalisedNet:
        """A fresh network seeded by config.seed (the global RNG is left untouched)."""
        ...

    def network_from_architecture(self, architecture: dict[str, Any]) -> NormalisedNet:
        """The network model.json's ``architecture`` describes (weights not loaded)."""
        ...

    def training_step(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        valid: torch.Tensor,
        transform: PairedTransform,
        generator: torch.Generator,
        config: TrainConfig,
        step: int,
        reduce: Reduce,
    ) -> StepOutput: ...

    def loss_settings(self, config: TrainConfig) -> dict[str, Any]:
        """model.json's ``loss``: the objective and this method's settings."""
        ...

    def warm_start_settings(self, architecture: dict[str, Any]) -> dict[str, Any]:
        """TrainConfig fields that rebuild a bundle's architecture (retraining from it)."""
        ...
