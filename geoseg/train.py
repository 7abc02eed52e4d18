"""``geoseg train``: a label-free method (``config.method``: IIC or PiCIE, see
geoseg.methods) on patch stores, producing a model bundle.

Everything here is shared by the methods: data, the loop, checkpoints and resumption,
label-free selection, DDP, the collapse check and the bundle. Each method supplies the
network and one training step. The IIC step: a batch x of raw patches streams from the store(s); the second view gx is drawn
on the device (colour jitter on RGB bands, flip, optional affine); x and gx go through
the network in one forward pass (one BatchNorm batch); the second view's maps are warped
back with g^-1 and the IIC segmentation loss is taken per head and sub-head, masked by
the patches' valid pixels. Adam, as in the paper.

Heads: the paper alternates epochs of head A (over-clustering) and head B. By default
geoseg sums both heads' losses every step instead (``head_schedule="sum"``): the trunk
forward/backward, which is nearly all of the cost, then serves both heads at once and
both see every batch. ``head_schedule="alternate"`` reproduces the paper's alternation
step by step (A, B, A, B, ...).

Unattended runs: the checkpoint (weights, Adam state, step, history, all safetensors or
JSON, never pickle) is written atomically every ``checkpoint_every`` steps to
``<out>.work/``; re-running the same command resumes from it, and the batches and views
of every step are a pure function of (seed, step), so a resumed CPU run continues exactly
as an uninterrupted one. A NaN/inf loss stops training with TrainingError before the
optimiser touches the weights, so the last checkpoint stays good.

Collapse: every step, the share of the step's valid pixels held by its largest head-B
cluster is taken; when its mean over the steps between two checkpoints exceeds
``COLLAPSE_SHARE``, training stops
with TrainingError naming the method and the step before that checkpoint is written, so
the last good one stays.

Checkpoint selection without labels: at every checkpoint the exponential moving average
of the head-B training loss is compared with the best so far; the bundle keeps the
weights with the lowest one, and model.json records the rule, the step and the value.
A method that trains several sub-heads (IIC's ``subheads``) also keeps each sub-head's
average; the bundle predicts with the sub-head whose average was lowest at the kept step
(IIC's own rule for its sub-heads), moved to the front.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from geoseg import __version__
from geoseg.config import TrainConfig
from geoseg.errors import ConfigError, InputError, OutputError, TrainingError
from geoseg.iic.data import PatchDataset, StepBatchSampler
from geoseg.iic.distributed import DistContext, RankShard, cleanup, init_from_env, reduce_joint, wrap_model
from geoseg.iic.model import NormalisedNet
from geoseg.iic.transforms import PairedTransform, rgb_band_indices
from geoseg.inference import resolve_device
from geoseg.io.fileio import (
    atomic_path,
    check_free_space,
    check_writable,
    claim_folder,
    foreign_folder,
    locked,
    made_for_the_run,
    write_text_atomic,
)
from geoseg.messages import plural
from geoseg.methods import get_method
from geoseg.methods.iic import pair_losses
from geoseg.models.bundle import (
    META,
    Cluster,
    ModelMeta,
    default_clusters,
    load_bundle,
    load_meta,
    save_bundle,
)
from geoseg.progress import Progress, progress_bar

__all__ = [
    "build_network",
    "chosen_subhead",
    "pair_losses",
    "read_metrics",
    "resolve_device",
    "train",
    "work_dir",
]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
BEST_WEIGHTS = "best.safetensors"
METRICS = "metrics.jsonl"
CURVE = "training_curve.png"
COLLAPSE_SHARE = 0.95  # one cluster holding more of the pixels between checkpoints: collapse
EMA_DECAY = 0.95  # smoothing of the head-B loss for checkpoint selection (~20 steps)
SELECTION_RULE = (
    f"lowest exponential moving average (decay {EMA_DECAY}) of the head-B training loss, "
    "compared at every checkpoint; no labels used"
)
AVERAGE_RULE = (
    "moving average (decay {decay}) of the weights, after every step, kept at the last step; no labels used"
)
AVERAGE = "average.safetensors"  # the weights' moving average, in the checkpoint folder
# Settings that may change between a run and its resumption without invalidating it.
_RESUMABLE = {"steps", "epochs", "workers", "device", "checkpoint_every"}


@dataclass
class TrainState:
    """What a checkpoint remembers besides weights and optimiser moments."""

    step: int = 0
    ema_b: float | None = None
    best_step: int | None = None
    best_ema_b: float | None = None
    ema_subheads: list[float] | None = None  # head B's smoothed loss per sub-head
    best_subheads: list[float] | None = None  # ... at the kept step
    history: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)


def work_dir(out: str | Path) -> Path:
    """Where checkpoints and metrics live while training: ``<out>.work`` beside the bundle."""
    out = Path(out)
    return out.with_name(out.name + ".work")


def total_steps(config: TrainConfig, num_patches: int) -> int:
    if config.epochs:
        per_epoch = max(1, num_patches // min(config.batch_size, num_patches))
        return config.epochs * per_epoch
    return config.steps


def build_network(config: TrainConfig, num_bands: int) -> NormalisedNet:
    """A seeded fresh network of ``config.method`` (the global RNG is left untouched)."""
    return get_method(config.method).build_network(config, num_bands)


def train(
    store: str | Path | Sequence[str | Path],
    out: str | Path,
    config: TrainConfig,
    progress: Progress = True,
    overwrite: bool = False,
) -> Path:
    """Train ``config.method`` on one or more patch stores; write the bundle to ``out`` and return it.

    ``out`` is checked before anything is loaded: it must be absent, empty, or this run's
    own bundle (its ``<out>.work`` resumes it); another bundle or a foreign folder is
    replaced only with ``overwrite``. One training run at a time holds ``<out>.work``.
    """
    config.validate()
    out = Path(out)
    check_output(out, overwrite)
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 holds the lock for all
    # A run that fails before its first checkpoint (no store, no CUDA, a full disk) leaves no
    # empty <out>.work behind; one with a checkpoint in it keeps it, to resume.
    lock = locked(work_dir(out), "training folder") if rank0 else contextlib.nullcontext()
    with made_for_the_run(work_dir(out)), lock:
        if config.members > 1:
            return _train_ensemble(store, out, config, progress, overwrite)
        return _train(store, out, config, progress, overwrite)


def _store_paths(store: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(store)] if isinstance(store, str | Path) else [Path(s) for s in store]


def member_seed(config: TrainConfig, member: int) -> int:
    """Member ``member``'s seed: seeds of different ensemble seeds never overlap."""
    return config.seed * config.members + member


def _train_ensemble(
    store: str | Path | Sequence[str | Path],
    out: Path,
    config: TrainConfig,
    progress: Progress,
    overwrite: bool,
) -> Path:
    """``config.members`` networks, each trained (and resumable) as a bundle of its own under
    ``<out>.work/members``, then combined into one bundle (geoseg.models.ensemble)."""
    from geoseg.models.ensemble import combine

    stores = _store_paths(store)
    folder = work_dir(out) / "members"
    named = _bundle_clusters(out, config.k) if folder.is_dir() else None  # a resumed run's names
    bundles = []
    for i in range(config.members):
        log.info("member %d of %d (seed %d)", i + 1, config.members, member_seed(config, i))
        member = replace(config, members=1, seed=member_seed(config, i))
        bundles.append(_train(stores, folder / f"member{i}", member, progress, True, (i, config.members)))
    ensemble = combine(
        bundles,
        out,
        stores,
        progress=progress,
        overwrite=overwrite,
        clusters=named,
        provenance={"config": asdict(config)},
    )
    # The first member's curve and metrics stand for the run; every member's are in the work folder.
    first = bundles[0] / METRICS
    write_text_atomic(ensemble / METRICS, first.read_text() if first.is_file() else "")
    title = f"{curve_title(config, ensemble)} (member 1 of {len(bundles)})"
    plot_curve(first, ensemble / CURVE, load_meta(bundles[0]).selection.get("step"), title)
    return ensemble


def check_output(out: Path, overwrite: bool = False) -> None:
    """Refuse, before any work, an ``out`` that training must not replace (see :func:`train`)."""
    if (out / META).is_file() and not work_dir(out).is_dir() and not overwrite:
        raise OutputError(
            f"{os.path.abspath(out)} holds a model bundle that this training run did not start: "
            "pass --overwrite to replace it or choose another --out"
        )
    # --overwrite replaces a model bundle (or a file), never a folder of something else: the
    # bundle is swapped in whole, and that folder's files would be gone (as for ingest's --out)
    if foreign_folder(out, "train", marker=META):
        raise OutputError(
            f"{os.path.abspath(out)} is a non-empty folder that is not a model bundle: choose another "
            "--out (--overwrite replaces only a model bundle geoseg wrote)"
        )
    claim_folder(out, "train", marker=META, overwrite=overwrite)
    check_writable(work_dir(out).parent)


def _train(
    store: str | Path | Sequence[str | Path],
    out: Path,
    config: TrainConfig,
    progress: Progress,
    overwrite: bool,
    member: tuple[int, int] | None = None,
) -> Path:
    stores = _store_paths(store)
    dataset = PatchDataset(stores)
    meta0 = dataset.metas[0]
    # Data-parallel under torchrun (WORLD_SIZE > 1): see geoseg.iic.distributed.
    ctx = init_from_env(config.device)
    device = ctx.device if ctx.enabled else resolve_device(config.device)
    model = build_network(config, dataset.num_bands)
    # Room for the bundle, the best weights and a checkpoint with Adam's two moments, checked
    # before training rather than discovered at the first checkpoint.
    check_free_space(out.parent, 6 * sum(p.numel() * p.element_size() for p in model.parameters()))
    if config.init_from:
        _load_initial_weights(
            model, Path(config.init_from), meta0.band_names, config.method, member, stores[0]
        )
    mean, std = dataset.band_statistics()
    model.set_normalisation(mean, std)
    rgb = rgb_band_indices(meta0.band_names, config.rgb_bands)
    if rgb is None and config.jitter > 0:
        log.warning("no RGB bands among %s: colour jitter is off (set rgb_bands to force)", meta0.band_names)
    transform = PairedTransform(rgb, config.jitter, config.flip, config.affine)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    work = work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(config, dataset)
    average: dict[str, torch.Tensor] = {}  # the weights' moving average (config.effective_weight_ema)
    state = _resume(work, model, optimizer, fingerprint, device, out, overwrite, average)
    steps = total_steps(config, len(dataset))
    _truncate_metrics(work / METRICS, state.step)
    # Resuming (same fingerprint): the bundle at out is this run's, perhaps named since with
    # `geoseg model name`; the rewritten bundle keeps those names and colours.
    named = _bundle_clusters(out, config.k) if state.step > 0 else None

    if state.step < steps:
        _run(model, optimizer, dataset, transform, config, device, state, steps, work, progress, ctx, average)
    else:  # only after a resume: steps >= 1
        log.info(
            "already trained to step %d (asked: %d): nothing to train, the bundle is rewritten",
            state.step,
            steps,
        )
        if state.step != steps:  # fewer asked: provenance records what the weights were trained for
            config = replace(config, steps=state.step, epochs=None)
    if not ctx.is_main:  # rank 0 alone writes the bundle
        cleanup()
        return out
    if config.effective_weight_ema and average:  # the average at the last step is kept
        model.load_state_dict(average)
        state.best_step, state.best_ema_b, state.best_subheads = state.step, state.ema_b, state.ema_subheads
    elif state.best_step is not None and (work / BEST_WEIGHTS).is_file():
        model.load_state_dict(load_file(str(work / BEST_WEIGHTS), device=str(device)))
    if (subhead := chosen_subhead(state)) is not None:
        model.lead_with_subhead(subhead)  # type: ignore[operator]
    meta = _model_meta(model, config, dataset, state, rgb, device)
    if named is not None:
        meta.clusters = named
    save_bundle(model, meta, out, overwrite=overwrite)
    write_text_atomic(out / METRICS, (work / METRICS).read_text() if (work / METRICS).is_file() else "")
    plot_curve(work / METRICS, out / CURVE, state.best_step, curve_title(config, out))
    if ctx.enabled:
        cleanup()
    return out


def _run(
    model: NormalisedNet,
    optimizer: torch.optim.Optimizer,
    dataset: PatchDataset,
    transform: PairedTransform,
    config: TrainConfig,
    device: torch.device,
    state: TrainState,
    steps: int,
    work: Path,
    progress: Progress,
    ctx: DistContext | None = None,
    average: dict[str, torch.Tensor] | None = None,
) -> None:
    """Train from ``state.step`` to ``steps``; ``average`` (updated in place) holds the
    weights' moving average when ``config.effective_weight_ema`` is on."""
    ctx = ctx or DistContext()
    average = {} if average is None else average
    decay = config.effective_weight_ema
    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, state.step, steps)
    loader = DataLoader(
        dataset,
        batch_sampler=RankShard(sampler, ctx) if ctx.enabled else sampler,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    model.train()
    method = get_method(config.method)
    started = time.perf_counter()
    net = wrap_model(model, ctx, find_unused_parameters=config.head_schedule == "alternate")
    # sum over steps since the checkpoint of the largest head-B cluster's share of the step's
    # pixels, and the number of steps (per step: cluster ids may change between rounds)
    top_share = torch.zeros(2, device=device)
    bar = progress_bar(
        progress, total=steps, initial=state.step, desc="train", unit="step", disable=not ctx.is_main
    )
    with bar, open(work / METRICS, "a") as metrics:  # the bar closed before an error or Ctrl-C shows
        for batch in loader:
            step = state.step
            x = batch["image"].to(device, non_blocking=True)
            valid = batch["valid"].to(device, non_blocking=True)
            generator = torch.Generator(device=device).manual_seed(config.seed * 7919 + step)
            out = method.training_step(net, x, valid, transform, generator, config, step, reduce_joint)
            values = {h: float(v.item()) for h, v in out.losses.items()}  # one sync per step
            if not all(math.isfinite(v) for v in values.values()):
                bar.close()
                raise TrainingError(
                    f"method {config.method!r}: loss became {values} at step {step}; training stopped. The last "
                    f"good checkpoint is in {work / CHECKPOINT} (step {_checkpoint_step(work)}): lower --lr and "
                    "re-run to resume"
                )
            if out.labels is not None:
                labels = out.labels if out.mask is None else out.labels[out.mask]
                step_counts = torch.bincount(labels.flatten(), minlength=config.k).float()
                top_share[0] += step_counts.max() / step_counts.sum().clamp_min(1)
                top_share[1] += 1
            optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            optimizer.step()
            if decay:
                update_average(average, model, decay)
            state.step = step + 1
            if "b" in values:
                b = values["b"]
                state.ema_b = b if state.ema_b is None else EMA_DECAY * state.ema_b + (1 - EMA_DECAY) * b
            subheads = out.subhead_losses.tolist() if out.subhead_losses is not None else None
            if subheads is not None:
                state.ema_subheads = _smoothed(state.ema_subheads, subheads)
            record = {
                "step": state.step,
                **{f"loss_{h}": v for h, v in values.items()},
                "ema_b": state.ema_b,
                **({"loss_b_subheads": subheads} if subheads is not None else {}),
                "seconds": round(time.perf_counter() - started, 3),
            }
            if ctx.is_main:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()  # one line per step as it happens: users watch this file
            bar.set_postfix({f"loss_{h}": f"{v:.4f}" for h, v in values.items()}, refresh=False)
            bar.update(1)  # after the postfix: a line shows this step's losses
            if ctx.is_main and (state.step % config.checkpoint_every == 0 or state.step == steps):
                metrics.flush()
                _check_collapse(top_share, config, state.step, work, bar)
                top_share.zero_()
                _checkpoint(model, optimizer, state, record, work, average if decay else None)
    bar.close()


@torch.no_grad()
def update_average(average: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """One step of the weights' exponential moving average, in place: it starts at the first
    step's weights; float tensors (weights, batch-norm statistics) are averaged, counters
    copied."""
    for name, value in model.state_dict().items():
        if name not in average:
            average[name] = value.detach().clone()
        elif value.dtype.is_floating_point:
            average[name].mul_(decay).add_(value.detach(), alpha=1 - decay)
        else:
            average[name].copy_(value)


def _smoothed(ema: list[float] | None, values: list[float]) -> list[float]:
    if ema is None:
        return values
    return [EMA_DECAY * e + (1 - EMA_DECAY) * v for e, v in zip(ema, values, strict=True)]


def chosen_subhead(state: TrainState) -> int | None:
    """The sub-head with the lowest smoothed head-B loss at the kept step (None: one sub-head)."""
    emas = state.best_subheads
    return None if not emas else min(range(len(emas)), key=emas.__getitem__)


def _check_collapse(top_share: torch.Tensor, config: TrainConfig, step: int, work: Path, bar: Any) -> None:
    """TrainingError when, averaged over the steps since the last checkpoint, one head-B
    cluster held more than COLLAPSE_SHARE of a step's valid pixels (called before the
    next checkpoint is written, so the last good one stays)."""
    total, steps = (float(v) for v in top_share.cpu())
    if steps == 0:
        return
    share = total / steps
    if share > COLLAPSE_SHARE:
        bar.close()
        raise TrainingError(
            f"method {config.method!r} collapsed at step {step}: one cluster took {share:.1%} of the "
            f"pixels of each step since the last checkpoint (limit {COLLAPSE_SHARE:.0%}); training "
            f"stopped. The last good checkpoint is in {work / CHECKPOINT} (step {_checkpoint_step(work)}): "
            "try another --seed, a lower --lr or more varied patches"
        )


# --- checkpoints ---------------------------------------------------------------------------


def _checkpoint(
    model: NormalisedNet,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    record: dict[str, Any],
    work: Path,
    average: dict[str, torch.Tensor] | None = None,
) -> None:
    """Select (label-free), then write weights + Adam state + state.json atomically; with
    ``average`` (the weights' moving average, which the bundle keeps instead) no selection."""
    state.history.append(record)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if average is None and (
        state.ema_b is not None and (state.best_ema_b is None or state.ema_b < state.best_ema_b)
    ):
        state.best_ema_b, state.best_step = state.ema_b, state.step
        state.best_subheads = state.ema_subheads
        with atomic_path(work / BEST_WEIGHTS) as tmp:
            save_file(weights, str(tmp))
    tensors, groups = optimizer_to_tensors(optimizer)
    with atomic_path(work / CHECKPOINT, replace_folder=True) as tmp:  # the run's own work folder
        tmp.mkdir()
        save_file(weights, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        if average:
            save_file({k: v.detach().cpu().contiguous() for k, v in average.items()}, str(tmp / AVERAGE))
        (tmp / "state.json").write_text(json.dumps({**asdict(state), "param_groups": groups}, indent=1))


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """An optimiser's state as flat safetensors-ready tensors plus JSON param groups."""
    sd = optimizer.state_dict()
    tensors = {}
    for pid, entries in sd["state"].items():
        for name, value in entries.items():
            tensors[f"{pid}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[Any]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _checkpoint_step(work: Path) -> int | None:
    path = work / CHECKPOINT / "state.json"
    return json.loads(path.read_text())["step"] if path.is_file() else None


def _resume(
    work: Path,
    model: NormalisedNet,
    optimizer: torch.optim.Optimizer,
    fingerprint: dict[str, Any],
    device: torch.device,
    out: Path,
    overwrite: bool = False,
    average: dict[str, torch.Tensor] | None = None,
) -> TrainState:
    """The checkpoint's state to resume from, or a fresh one; a checkpoint of another run
    (other stores or settings) is refused, or with ``overwrite`` discarded (start over).
    ``average`` is filled with the checkpoint's moving average of the weights, if it has one."""
    ckpt = work / CHECKPOINT
    if not (ckpt / "state.json").is_file():
        return TrainState(fingerprint=fingerprint)
    try:
        saved = json.loads((ckpt / "state.json").read_text())
        groups = saved.pop("param_groups")
        state = TrainState(**saved)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise InputError(f"corrupt checkpoint {ckpt}: {exc}; delete {work} to start over") from exc
    saved_run, this_run = _without_paths(state.fingerprint), _without_paths(fingerprint)
    if saved_run != this_run:
        changed = sorted(k for k in set(saved_run) | set(this_run) if saved_run.get(k) != this_run.get(k))
        if overwrite:
            log.info(
                "--overwrite: %s held a different training run (%s): starting over", work, ", ".join(changed)
            )
            shutil.rmtree(ckpt, ignore_errors=True)  # the lock in `work` stays: this run holds it
            for stale in (work / BEST_WEIGHTS, work / METRICS):
                stale.unlink(missing_ok=True)
            return TrainState(fingerprint=fingerprint)
        raise ConfigError(
            f"{os.path.abspath(work)} holds a checkpoint of a different training run (differs in: "
            f"{', '.join(changed)}): pass --overwrite to start over and replace {os.path.abspath(out)}, "
            "or use another --out"
        )
    model.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(device)))
    optimizer_from_tensors(
        optimizer, load_file(str(ckpt / "optimizer.safetensors"), device=str(device)), groups
    )
    if average is not None and (ckpt / AVERAGE).is_file():
        average.update(load_file(str(ckpt / AVERAGE), device=str(device)))
    log.info("resuming from %s at step %d", ckpt, state.step)
    state.fingerprint = fingerprint  # where the stores are now
    return state


def _bundle_clusters(out: Path, k: int) -> list[Cluster] | None:
    """The clusters (names, colours) of the bundle already at ``out``, when it has ``k`` of them."""
    if not (out / META).is_file():
        return None
    try:
        clusters = load_meta(out).clusters
    except InputError:
        return None
    return list(clusters) if len(clusters) == k else None


def _without_paths(value: Any) -> Any:
    """A fingerprint without the stores' and sources' paths: a checkpoint belongs to a run by
    what it trains on (patch counts, the sources' SHA-256), so a copied or moved run folder
    resumes instead of being taken for another run."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k != "path"}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    return value


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be redone)."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


def _fingerprint(config: TrainConfig, dataset: PatchDataset) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(config).items() if k not in _RESUMABLE}
    settings["rgb_bands"] = list(config.rgb_bands) if config.rgb_bands else None
    settings["stores"] = _provenance_stores(dataset)
    return json.loads(json.dumps(settings))


def _provenance_stores(dataset: PatchDataset) -> list[dict[str, Any]]:
    return [
        {
            "path": str(path.resolve()),
            "num_patches": count,
            "sources": [{"path": s.path, "sha256": s.sha256} for s in meta.sources],
        }
        for path, meta, count in zip(dataset.paths, dataset.metas, dataset.counts, strict=True)
    ]


def _load_initial_weights(
    model: NormalisedNet,
    bundle_dir: Path,
    band_names: list[str],
    method: str,
    member: tuple[int, int] | None = None,
    store: Path | None = None,
) -> None:
    """Start from an existing bundle's weights; its method, bands, architecture and number of
    ensemble members must match (``member``: (index, count) of the ensemble member this run trains;
    ``store``: the patch store named when the bands differ)."""
    old, meta = load_bundle(bundle_dir)
    index, count = member or (0, 1)
    have = len(meta.member_architectures or ()) or 1
    if have != count:
        raise ConfigError(
            f"model bundle {bundle_dir} has {plural(have, 'member')} and this run trains {count}: "
            f"retrain it with --members {have}"
        )
    if have > 1:
        old = old.members[index]
    if meta.method != method:
        raise ConfigError(
            f"model bundle {bundle_dir} was trained with method {meta.method!r}; "
            f"it cannot start a {method!r} run (use --method {meta.method})"
        )
    if old.arch.in_channels != model.arch.in_channels:
        raise ConfigError(
            f"model bundle {bundle_dir} expects {plural(old.arch.in_channels, 'band')} "
            f"({', '.join(meta.band_names)}), the patch store{f' {store}' if store else ''} has "
            f"{model.arch.in_channels} ({', '.join(band_names)})"
        )
    if old.arch != model.arch:
        raise ConfigError(
            f"model bundle {bundle_dir} has architecture {old.arch.to_dict()}, the training settings ask for "
            f"{model.arch.to_dict()}; use the same method settings, --k and --preset to retrain it"
        )
    model.load_state_dict(old.state_dict())


def _model_meta(
    model: NormalisedNet,
    config: TrainConfig,
    dataset: PatchDataset,
    state: TrainState,
    rgb: tuple[int, ...] | None,
    device: torch.device,
) -> ModelMeta:
    meta0 = dataset.metas[0]
    return ModelMeta(
        architecture=model.arch.to_dict(),
        band_names=list(meta0.band_names),
        band_mean=[float(v) for v in model.input_mean.cpu()],
        band_std=[float(v) for v in model.input_std.cpu()],
        dtype=meta0.dtype,
        patch_size=dataset.patch_size,
        scale=meta0.scale,
        method=config.method,
        loss={
            **get_method(config.method).loss_settings(config),
            "rgb_bands": list(rgb) if rgb else None,
            "jitter": config.jitter,
            "flip": config.flip,
            "affine": config.affine,
        },
        clusters=default_clusters(config.k),
        provenance={
            "stores": _provenance_stores(dataset),
            "config": asdict(config),
            "init_from": str(config.init_from) if config.init_from else None,
            "device": str(device),
            "torch": torch.__version__,
            "geoseg": __version__,
            "steps": state.step,
        },
        history=state.history,
        selection={
            "rule": AVERAGE_RULE.format(decay=decay)
            if (decay := config.effective_weight_ema)
            else SELECTION_RULE,
            "weight_ema": decay,
            "labels_used": False,
            "step": state.best_step if state.best_step is not None else state.step,
            "ema_loss_b": state.best_ema_b,
            "subhead": chosen_subhead(state),
            "subhead_ema_loss_b": state.best_subheads,
            "final_step": state.step,
        },
    )


def curve_title(config: TrainConfig, out: Path) -> str:
    """What a training curve shows: the method, k, the steps and the bundle's name."""
    return f"{config.method} training of {out.name}: k = {config.k}, {plural(config.steps, 'step')}"


def plot_curve(
    metrics: Path, png: Path, selected: int | None = None, title: str | None = None
) -> Path | None:
    """Training-curve PNG (losses per step, the smoothed head-B loss, the selected step),
    titled (:func:`curve_title`) so a curve opened on its own says which run it is."""
    if not metrics.is_file():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label in (("loss_a", "head A"), ("loss_b", "head B"), ("ema_b", "head B (smoothed)")):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=label, lw=1.5 if key == "ema_b" else 0.8)
    if selected is not None:
        ax.axvline(selected, color="k", ls="--", lw=0.8, label=f"kept: step {selected}")
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", metadata={"Title": title} if title else None)
    plt.close(fig)
    return png


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]
