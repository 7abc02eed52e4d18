"""Data-parallel training over the GPUs of one machine (``torchrun``, DistributedDataParallel).

``torchrun --nproc_per_node=N -m geoseg.cli train ...`` starts N processes with
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` in the environment;
:func:`init_from_env` joins them into one process group (NCCL on GPUs, gloo on the CPU).

Why the loss needs more than DDP: the IIC loss is not a mean of per-sample losses. It is
the mutual information of a joint distribution summed over the whole batch, so averaging
N per-process losses (or their gradients) is *not* the loss of the global batch. Instead
each process computes its un-normalised joints, :func:`reduce_joint` sums them over all
processes before normalisation, and every process then holds the loss of the union of
the batches, exactly. Its gradient is arranged so that DDP's gradient averaging yields
the gradient of that global loss (see :class:`_SumJoints`).

Each step's global batch is the one a single process would draw (the step-seeded batch
sampler of geoseg.iic.data), split across ranks by :class:`RankShard`; so a run on N
GPUs sees the same samples per step as a run on one, only faster.

BatchNorm statistics are per process unless synchronised: on CUDA :func:`wrap_model`
converts BatchNorm to SyncBatchNorm (torch supports it only on GPUs), so the forward pass
matches the single-process one too. On the CPU (gloo, for tests) BatchNorm stays per
process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from geoseg.errors import ConfigError
from geoseg.messages import plural

__all__ = ["DistContext", "RankShard", "cleanup", "init_from_env", "reduce_joint", "unwrap", "wrap_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, metrics and the bundle."""
        return self.rank == 0


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def init_from_env(device: str = "auto", backend: str | None = None) -> DistContext:
    """Join the process group that torchrun describes in the environment.

    Without WORLD_SIZE > 1 this is a no-op returning a single-process context on
    ``device``. With it: one GPU per process (``cuda:LOCAL_RANK``) and NCCL when CUDA is
    available and allowed, else the CPU and gloo.
    """
    world = env_world_size()
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    if world <= 1:
        return DistContext(device=torch.device("cuda" if use_cuda else "cpu"))
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ConfigError(f"WORLD_SIZE={world} but {name} is not set: launch with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {plural(torch.cuda.device_count(), 'GPU')}")
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
    else:
        where = torch.device("cpu")
    backend = backend or ("nccl" if use_cuda else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    log.info("rank %d/%d on %s (%s)", rank, world, where, backend)
    return DistContext(rank, world, local_rank, where, backend)


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _SumJoints(torch.autograd.Function):
    """All-reduce sum of the joints; the backward pass scales by the world size.

    Every process computes the same loss L from the same summed joint J = sum_r J_r, so
    dL/dJ is identical everywhere and dL/dJ_r = dL/dJ. DDP then *averages* parameter
    gradients over the N processes; multiplying by N here makes that average the sum
    sum_r dL/dJ * dJ_r/dtheta = dL/dtheta, the single-process gradient. (Returning
    grad * N instead of all-reducing the identical gradients saves a collective.)
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, joints: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = joints.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * dist.get_world_size()


def reduce_joint(joints: torch.Tensor) -> torch.Tensor:
    """Sum un-normalised joints over all processes (identity outside a process group).

    Pass as ``reduce_joint`` to geoseg.iic.loss.iic_segmentation_loss.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return joints
    return _SumJoints.apply(joints)


def wrap_model(model: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    """DDP around ``model`` (already on ctx.device); SyncBatchNorm on CUDA. No-op for one process.

    ``find_unused_parameters`` must be True when a step may skip a head (alternating
    head schedule).
    """
    if not ctx.enabled:
        return model
    if ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(
            model,
            device_ids=[ctx.local_rank],
            output_device=ctx.local_rank,
            find_unused_parameters=find_unused_parameters,
        )
    return DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying network (what gets saved in a bundle)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class RankShard(Sampler[list[int]]):
    """This rank's share (every world_size-th index) of each global batch of ``batches``.

    The union over ranks of a step's shards is the step's single-process batch, so with
    :func:`reduce_joint` the distributed loss is the single-process loss of that batch.
    A global batch smaller than the world size would leave a rank empty: an error.
    """

    def __init__(self, batches: Sampler[list[int]], ctx: DistContext) -> None:
        self.batches, self.ctx = batches, ctx

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            if len(batch) < self.ctx.world_size:
                raise ConfigError(
                    f"batch of {len(batch)} cannot be split over {self.ctx.world_size} processes; "
                    "raise --batch-size"
                )
            yield list(batch)[self.ctx.rank :: self.ctx.world_size]


def distributed_sampler(
    dataset: Dataset, ctx: DistContext, shuffle: bool = True, seed: int = 0
) -> DistributedSampler | None:
    """A DistributedSampler for epoch-style loaders (None for one process); call set_epoch()."""
    if not ctx.enabled:
        return None
    return DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=shuffle, seed=seed, drop_last=True)
