"""The ``geoseg`` command: one sub-command per stage, plus ``demo``.

Thin by design: it parses arguments, builds the stage's typed config and calls the
library's entry point. Errors the user can fix print one clear line and exit with status
2: GeosegError, an OSError of the user's making (disk full, read-only or unwritable
folder, a path the OS refuses) and any failure while the output's file system is full
(GDAL then reports a misleading read error). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from geoseg import __version__
from geoseg.errors import ConfigError, InputError
from geoseg.io.fileio import user_error_message

__all__ = ["build_parser", "main", "parse_args"]

Command = Callable[[argparse.Namespace], int]


def _bands(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bands must be comma-separated integers, got {text!r}") from None


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text == "on"


def _add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} (never done otherwise)")


# --- ingest -------------------------------------------------------------------------------


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    from geoseg.config import IngestConfig

    d = IngestConfig()
    p = sub.add_parser("ingest", help="tile rasters into a zarr patch store")
    p.add_argument(
        "src", nargs="+", help="GeoTIFF/PNG/JPEG files, folders of them, or STAC item/collection JSON"
    )
    p.add_argument("--out", required=True, type=Path, help="output STORE.zarr")
    p.add_argument(
        "--patch-size",
        type=int,
        default=d.patch_size,
        help="patch side in pixels, after --scale (one default for both presets: docs/architecture.md)",
    )
    p.add_argument(
        "--stride", type=int, default=None, help="patch step in pixels (default: the patch size, no overlap)"
    )
    p.add_argument(
        "--scale", type=float, default=d.scale, help="resampling factor on read (0.5 halves resolution)"
    )
    p.add_argument("--bands", type=_bands, default=None, help="1-based band list, e.g. 1,2,3,4")
    p.add_argument("--labels", nargs="+", default=None, help="label rasters, one per source, same order")
    p.add_argument("--dataset", default=None, help="label dataset (geoseg.datasets), e.g. dubai, isprs")
    p.add_argument(
        "--min-valid", type=float, default=d.min_valid, help="drop patches whose valid fraction is lower"
    )
    p.add_argument("--workers", type=int, default=d.workers, help="threads of the local Dask scheduler")
    p.add_argument("--dask-address", default=None, help="join an existing Dask scheduler")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a patch store of other inputs or settings at --out: the new one is built "
        "beside it and swapped in when complete (a folder that is not a geoseg store is never replaced)",
    )
    p.set_defaults(run=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from geoseg.config import IngestConfig
    from geoseg.ingest import ingest

    config = IngestConfig(
        patch_size=args.patch_size,
        stride=args.stride,
        scale=args.scale,
        bands=args.bands,
        min_valid=args.min_valid,
        dataset=args.dataset,
        workers=args.workers,
    )
    store = ingest(
        args.src,
        args.out,
        config,
        labels=args.labels,
        dask_address=args.dask_address,
        overwrite=args.overwrite,
    )
    print(store)
    return 0


# --- model (versions, promotion, rollback, alignment) ---------------------------------------


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model versions: list, register, promote, rollback, align, check, name")
    msub = p.add_subparsers(dest="model_command", required=True)
    q = msub.add_parser(
        "list", help="the registered versions (* marks the promoted one); of a bundle, its clusters"
    )
    _registry_arguments(q)
    q = msub.add_parser("register", help="copy a bundle into the registry as the next version")
    q.add_argument("bundle", type=Path, help="model bundle folder")
    q.add_argument("--registry", required=True, type=Path, help="model registry directory")
    q = msub.add_parser("promote", help="make a version the current model (no check: a human decision)")
    q.add_argument("version", help="a registered version, e.g. v0003")
    q.add_argument("--registry", required=True, type=Path, help="model registry directory")
    q = msub.add_parser("rollback", help="make the previously promoted model current again")
    _registry_arguments(q)
    q.add_argument("--to", default=None, help="an earlier promoted version (default: the one before)")
    q = msub.add_parser("align", help="carry the previous model's cluster ids, colours, names over")
    q.add_argument("bundle", type=Path, help="the new model bundle")
    q.add_argument("--to", required=True, type=Path, help="the previous model bundle")
    q.add_argument("--reference", nargs="+", required=True, help="rasters, folders or a STORE.zarr")
    q.add_argument("--out", type=Path, default=None, help="aligned bundle (default: in place)")
    q.add_argument(
        "--share-threshold",
        type=float,
        default=0.05,
        help="report clusters whose share of the reference pixels moved by more than this fraction",
    )
    q.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to predict")
    q = msub.add_parser("check", help="the label-free promotion check of an aligned bundle")
    q.add_argument("bundle", type=Path, help="the aligned model bundle")
    q.add_argument("--previous", type=Path, default=None, help="the model it was aligned to")
    q.add_argument("--reference", nargs="+", default=None, help="imagery for a first model's balance check")
    _add_model_name(msub)
    for q in msub.choices.values():
        q.set_defaults(run=_run_model)


def _registry_arguments(q: argparse.ArgumentParser) -> None:
    """A registry as the command's one word or as --registry (either; :func:`_registry_given`)."""
    q.add_argument("registry_word", nargs="?", type=Path, default=None, metavar="REGISTRY",
                   help="model registry directory (or give it with --registry)")  # fmt: skip
    q.add_argument("--registry", type=Path, default=None, help="model registry directory")


def _registry_given(args: argparse.Namespace) -> Path:
    """The registry of `model list` / `rollback`, given once, that is a registry."""
    word, option = args.registry_word, args.registry
    if word is not None and option is not None and word != option:
        raise ConfigError(
            f"the registry is given twice, as {word} and as --registry {option}: give one of them"
        )
    registry = word or option
    if registry is None:
        raise ConfigError(f"which registry? `geoseg model {args.model_command} REGISTRY`")
    if _is_bundle(registry):
        raise InputError(
            f"{registry} is a model bundle, not a registry: "
            f"`geoseg model register {registry} --registry REGISTRY` adds it to one"
        )
    _require_registry(registry)
    return registry


def _add_model_name(msub: argparse._SubParsersAction) -> None:
    q = msub.add_parser(
        "name",
        help="name clusters and set their colours in model.json (e.g. 3=roofs --color 3=#c0392b)",
        description=(
            "Store cluster names and colours in a model bundle's model.json, or in a registry "
            "version's (default: the promoted one; retraining carries them to the next version). "
            "Outputs made from the model use them. ID= clears a name (back to 'cluster ID'). "
            "A registry may also be given with --registry, as in the other model commands."
        ),
    )
    q.add_argument(
        "target", nargs="?", default=None, metavar="REGISTRY_OR_BUNDLE",
        help="model registry or bundle folder (or the registry with --registry, not both)",
    )  # fmt: skip
    q.add_argument("names", nargs="*", metavar="ID=NAME", help="cluster names, e.g. 3=roofs 0=roads")
    q.add_argument(
        "--color", "--colour", dest="colours", action="append", default=[], metavar="ID=#RRGGBB",
        help="cluster colour (repeatable), e.g. --color 3=#c0392b",
    )  # fmt: skip
    q.add_argument(
        "--legend", type=Path, default=None, metavar="FILE",
        help="names/colours from a CSV (id,name[,colour]) or JSON file; ID=NAME arguments win",
    )  # fmt: skip
    q.add_argument("--version", default=None, help="registry version to name (default: the promoted one)")
    q.add_argument(
        "--registry", type=Path, default=None,
        help="model registry directory, as in model list/promote/rollback (instead of REGISTRY_OR_BUNDLE)",
    )  # fmt: skip


def _model_name_words(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """The folder `geoseg model name` edits and its ID=NAME words.

    Without --registry the first word is the folder. With it, every word is an ID=NAME
    (argparse puts the first one in ``target``); a first word that is a folder (or no
    assignment at all) means the model was given twice: refused.
    """
    words = list(args.names) if args.target is None else [args.target, *args.names]
    if args.registry is None:
        if not words:
            raise ConfigError("name which model? give REGISTRY_OR_BUNDLE or --registry REGISTRY")
        return Path(words[0]), words[1:]
    if words and ("=" not in words[0] or Path(words[0]).is_dir()):
        raise ConfigError(
            f"the model is given twice, as {words[0]} and as --registry {args.registry}: give one of them"
        )
    if _is_bundle(args.registry):
        raise InputError(
            f"{args.registry} is a model bundle, not a registry: `geoseg model name {args.registry} ID=NAME ...`"
        )
    _require_registry(args.registry)
    return args.registry, words


def _run_model_name(args: argparse.Namespace) -> int:
    from geoseg.io.style import hex_colour
    from geoseg.models.names import ClusterEdits, name_clusters, parse_colours, parse_names, read_legend

    target, names = _model_name_words(args)
    edits = read_legend(args.legend) if args.legend else ClusterEdits()
    edits = edits.update(ClusterEdits(parse_names(names), parse_colours(args.colours)))
    result = name_clusters(target, edits, version=args.version)
    print(f"{result.bundle / 'model.json'}")
    for c in result.clusters:
        print(f"  {c.id:>3}  {hex_colour(c.colour)}  {c.label}")
    return 0


def _require_registry(path: Path) -> None:
    """A mistyped --registry: say so (list printed nothing, rollback left an empty folder)."""
    from geoseg.models import registry

    if path.name == registry.STATE and path.is_file():
        raise InputError(f"{path} is the registry's state file: give its folder, {path.parent}")
    if not (path / registry.STATE).is_file():
        what = "not found" if not path.exists() else f"has no {registry.STATE}"
        raise InputError(
            f"model registry {what}: {path} (`geoseg model register BUNDLE --registry ...` creates one)"
        )


def _is_bundle(folder: Path | None) -> bool:
    from geoseg.models.bundle import META

    return folder is not None and (folder / META).is_file()


def _list_bundle(bundle: Path) -> int:
    """`geoseg model list BUNDLE`: the one model's method, k, weights and every cluster's
    name and colour, as a registry's listing shows its versions."""
    from geoseg.io.fileio import sha256_file
    from geoseg.models.bundle import WEIGHTS, load_meta

    meta = load_meta(bundle)
    weights = bundle / WEIGHTS
    sha = sha256_file(weights)[:12] if weights.is_file() else "no weights"
    print(f"  {bundle}  {meta.method}  k={len(meta.clusters)}  {sha}")
    for cluster in meta.clusters:
        print(f"      {cluster.id}: {cluster.label}  {cluster.hex}")
    return 0


def _run_model(args: argparse.Namespace) -> int:
    from geoseg.models import registry

    command = args.model_command
    if command == "list" and _is_bundle(args.registry_word or args.registry):
        return _list_bundle(args.registry_word or args.registry)
    if command in ("list", "rollback"):
        args.registry = _registry_given(args)
    if command == "promote":
        _require_registry(args.registry)
    if command == "list":
        state = registry.load_state(args.registry)
        for v in state.versions:
            mark = "*" if v.version == state.current else " "
            print(f"{mark} {v.version}  {v.status:<11} {v.registered}  k={v.k}  {v.weights_sha256[:12]}")
            names = registry.cluster_names(args.registry, v.version)
            if names:
                print("      clusters: " + ", ".join(f"{cid}={name}" for cid, name in sorted(names.items())))
        return 0
    if command == "name":
        return _run_model_name(args)
    if command == "register":
        print(registry.register(args.bundle, args.registry).version)
        return 0
    if command == "promote":
        print(registry.promote(args.registry, args.version).version)
        return 0
    if command == "rollback":
        entry = registry.rollback(args.registry, args.to)
        print(f"current model: {entry.version} ({args.registry / entry.version})")
        return 0
    if command == "align":
        from geoseg.config import AlignConfig
        from geoseg.models.align import align_clusters

        config = AlignConfig(share_threshold=args.share_threshold, device=args.device)
        result = align_clusters(args.bundle, args.to, args.reference, args.out, config)
        print(f"agreement {result.agreement:.4f}; report {result.report_md}")
        return 0
    if args.previous is not None and args.reference:
        # with a previous model the check compares the alignment's figures: a reference
        # would be read by nothing, a mistyped one never noticed
        raise ConfigError(
            "--reference is for a first model's balance check; with --previous the check uses "
            "the alignment's figures: give one of the two"
        )
    decision = registry.check_bundle(args.bundle, args.previous, reference=args.reference)
    print("promote" if decision.promote else "do not promote: " + "; ".join(decision.reasons))
    return 0 if decision.promote else 1


# --- train --------------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
    from geoseg.config import METHODS, PADDINGS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a label-free method on patch stores and write a model bundle")
    p.add_argument("store", nargs="+", type=Path, help="STORE.zarr patch store(s) with the same bands")
    p.add_argument("--out", required=True, type=Path, help="model bundle directory to write")
    p.add_argument("--method", choices=METHODS, default=d.method, help="training method")
    p.add_argument("--k", type=int, default=d.k, help="clusters of the model (IIC head B, PiCIE K1)")
    # Method settings default to None: one given with another --method is refused by name.
    iic = p.add_argument_group("IIC settings")
    iic.add_argument(
        "--k-a", type=int, default=None, help=f"clusters of the over-clustering head A (IIC default {d.k_a})"
    )
    iic.add_argument(
        "--subheads",
        type=int,
        default=None,
        help=f"independent sub-heads per head (IIC default {d.subheads})",
    )
    iic.add_argument(
        "--lamb-a",
        type=float,
        default=None,
        help=f"marginal exponent lambda, head A (IIC default {d.lamb_a})",
    )
    iic.add_argument(
        "--lamb-b",
        type=float,
        default=None,
        help=f"marginal exponent lambda, head B (IIC default {d.lamb_b})",
    )
    iic.add_argument(
        "--half-t", type=int, default=None, help=f"displacement half-width T, pixels (IIC default {d.half_t})"
    )
    iic.add_argument(
        "--head-schedule",
        choices=("sum", "alternate"),
        default=None,
        help=f"both heads' losses summed each step, or one head per step (IIC default {d.head_schedule})",
    )
    picie = p.add_argument_group("PiCIE settings")
    picie.add_argument(
        "--trunk",
        choices=("iic", "resnet18-fpn"),
        default=None,
        help=f"embedding trunk (PiCIE default {d.trunk})",
    )
    picie.add_argument("--k2", type=int, default=None, help=f"over-clustering K2 (PiCIE default {d.k2})")
    picie.add_argument(
        "--kmeans-iters",
        type=int,
        default=None,
        help=f"mini-batch k-means iterations per step (PiCIE default {d.kmeans_iters})",
    )
    lgmi = p.add_argument_group("LGMI settings")
    lgmi.add_argument(
        "--local-dim",
        type=int,
        default=None,
        help=f"local/global feature dimension P (LGMI default {d.local_dim})",
    )
    lgmi.add_argument("--tau", type=float, default=None, help="assignment sharpness (LGMI default 1/sqrt(P))")
    cirs = p.add_argument_group("CIRS settings")
    cirs.add_argument(
        "--a1", type=float, default=None, help=f"within-cluster variance weight (CIRS default {d.a1})"
    )
    cirs.add_argument(
        "--a2", type=float, default=None, help=f"between-cluster variance weight (CIRS default {d.a2})"
    )
    cirs.add_argument(
        "--g-steps", type=int, default=None, help=f"g mini-batches per turn (CIRS default {d.g_steps})"
    )
    cirs.add_argument(
        "--s-steps",
        type=int,
        default=None,
        help=f"segmenter mini-batches per turn (CIRS default {d.s_steps})",
    )
    cirs.add_argument(
        "--g-dim", type=int, default=None, help=f"g's representation size (CIRS default {d.g_dim})"
    )
    cirs.add_argument(
        "--g-segment-number",
        type=_on_off,
        default=None,
        metavar="{on,off}",
        help="g also sees the segment number as a one-hot (CIRS default off; its source: on)",
    )
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="patch pairs per step")
    p.add_argument("--steps", type=int, default=d.steps, help="optimiser steps")
    p.add_argument("--epochs", type=int, default=None, help="passes over the patches; overrides --steps")
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=d.device, help="auto: GPU when present"
    )
    p.add_argument(
        "--preset", choices=("iic", "small"), default=d.preset, help="network width: the paper's, or 1/4"
    )
    p.add_argument(
        "--padding", choices=PADDINGS, default=d.padding,
        help="how convolutions fill their border (replicate: no cue of position; docs/usage-train.md)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed, help="seed of batches and views")
    p.add_argument(
        "--members",
        type=int,
        default=d.members,
        help="train this many networks (seeds differ) and average their aligned probabilities",
    )
    p.add_argument(
        "--weight-ema", type=float, default=None,
        help="decay of the weights' moving average the bundle keeps (0: the selected checkpoint; "
        "default: the method's, iic 0.98, others 0)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument(
        "--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints"
    )
    p.add_argument("--jitter", type=float, default=d.jitter, help="colour jitter strength (RGB bands only)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips in the second view")
    p.add_argument("--affine", action="store_true", help="random rotation and scale in the second view")
    p.add_argument("--rgb-bands", type=_bands, default=None, help="1-based R,G,B bands (default: by name)")
    p.add_argument("--init-from", default=None, help="start from this model bundle's weights (retraining)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_overwrite(p, "a foreign folder, another model bundle or another run's checkpoint at --out")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from geoseg.config import METHOD_SETTINGS, TrainConfig
    from geoseg.errors import ConfigError
    from geoseg.train import train

    given = {}
    for method, names in METHOD_SETTINGS.items():
        for name in names:
            if getattr(args, name, None) is None:
                continue
            if method != args.method:
                raise ConfigError(
                    f"--{name.replace('_', '-')} is a setting of --method {method}, not of --method {args.method}"
                )
            given[name] = getattr(args, name)
    config = TrainConfig(
        method=args.method,
        k=args.k,
        **given,
        lr=args.lr,
        batch_size=args.batch_size,
        steps=args.steps,
        epochs=args.epochs,
        preset=args.preset,
        padding=args.padding,
        device=args.device,
        seed=args.seed,
        members=args.members,
        weight_ema=args.weight_ema,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        jitter=args.jitter,
        flip=not args.no_flip,
        affine=args.affine,
        init_from=args.init_from,
        rgb_bands=args.rgb_bands,
    )
    print(train(args.store, args.out, config, progress=not args.quiet, overwrite=args.overwrite))
    return 0


# --- evaluate -----------------------------------------------------------------------------


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score cluster rasters against ground truth (accuracy, mIoU, NMI, ARI)"
    )
    p.add_argument(
        "predictions", nargs="+", type=Path, metavar="PRED", help="cluster rasters (uint8, 255 nodata)"
    )
    p.add_argument(
        "--labels", nargs="+", type=Path, required=True, help="label rasters, one per PRED, same order"
    )
    p.add_argument("--out", required=True, type=Path, help="report folder")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset", default=None, help="label dataset (geoseg.datasets), e.g. dubai, isprs-ids"
    )
    source.add_argument("--palette", default=None, help="palette JSON for colour-coded labels")
    p.add_argument("--ignore", type=int, default=255, help="class id never counted (255 always is)")
    p.add_argument(
        "--fit-on", nargs="+", type=Path, default=None, metavar="PRED", help="fit the mapping here (honest)"
    )
    p.add_argument(
        "--fit-labels", nargs="+", type=Path, default=None, metavar="LABEL", help="labels of --fit-on"
    )
    p.add_argument("--many-to-one", action="store_true", help="each cluster to its majority class")
    p.add_argument(
        "--images", nargs="+", type=Path, default=None, help="source images, for side-by-side PNGs"
    )
    p.add_argument("--examples", type=int, default=4, help="side-by-side PNGs to write")
    p.add_argument("--seed", type=int, default=0, help="picks the side-by-side sample")
    _add_overwrite(p, "a non-empty --out folder that is not an earlier report")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from geoseg.config import EvaluateConfig
    from geoseg.evaluate import evaluate

    config = EvaluateConfig(
        dataset=args.dataset,
        palette=args.palette,
        ignore=args.ignore,
        many_to_one=args.many_to_one,
        seed=args.seed,
        n_examples=args.examples,
    )
    report = evaluate(
        args.predictions,
        args.labels,
        args.out,
        config,
        fit_predictions=args.fit_on,
        fit_labels=args.fit_labels,
        images=args.images,
        overwrite=args.overwrite,
    )
    print(
        f"{report['protocol']} ({report['matching']}): accuracy {report['accuracy']}, "
        f"mIoU {report['miou']}, NMI {report['nmi']}, ARI {report['ari']} -> {args.out / 'report.json'}"
    )
    return 0


# --- baseline -----------------------------------------------------------------------------


def _add_baseline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baseline", help="label-free baselines written as cluster rasters (k-means, random net, superpixels)"
    )
    methods = p.add_subparsers(dest="method", required=True)
    for name, text in (
        ("kmeans", "MiniBatchKMeans on per-band standardised pixels"),
        ("random-net", "a randomly initialised IIC network (argmax of head B)"),
    ):
        m = methods.add_parser(name, help=text)
        m.add_argument("src", nargs="+", type=Path, help="GeoTIFF/PNG/JPEG files or folders of them")
        m.add_argument("--k", type=int, required=True, help="number of clusters")
        m.add_argument("--out", required=True, type=Path, help="folder for <stem>_clusters.tif")
        m.add_argument("--bands", type=int, default=None, help="use the first N bands (alpha excluded)")
        m.add_argument("--seed", type=int, default=0, help="random seed")
        fit_help = (
            "fit on these (default: SRC)" if name == "kmeans" else "normalise with these (default: SRC)"
        )
        m.add_argument("--fit-on", nargs="+", type=Path, default=None, help=fit_help)
        if name == "random-net":
            m.add_argument("--preset", choices=("small", "iic"), default="small", help="network width")
        _add_overwrite(m, "existing files in --out that an earlier baseline run did not write")
        m.set_defaults(run=_run_baseline)
    _add_superpixels(methods)


def _add_superpixels(methods: argparse._SubParsersAction) -> None:
    from geoseg.config import SuperpixelConfig

    d = SuperpixelConfig()
    m = methods.add_parser(
        "superpixels", help="SLIC superpixels, then k-means on each segment's band statistics (OBIA)"
    )
    m.add_argument("src", nargs="+", type=Path, help="GeoTIFF/PNG/JPEG files or folders of them")
    m.add_argument("--k", type=int, required=True, help="number of clusters")
    m.add_argument("--out", required=True, type=Path, help="folder for <stem>_clusters.tif + the model")
    m.add_argument("--size", type=int, default=d.size, help="superpixel side in pixels")
    m.add_argument("--compactness", type=float, default=d.compactness, help="SLIC colour/space trade-off")
    m.add_argument("--bands", type=int, default=None, help="use the first N bands (alpha excluded)")
    m.add_argument("--block", type=int, default=d.block, help="block side in pixels (memory bound)")
    m.add_argument("--seed", type=int, default=0, help="random seed")
    m.add_argument("--fit-on", nargs="+", type=Path, default=None, help="fit on these (default: SRC)")
    _add_overwrite(m, "existing files in --out that an earlier baseline run did not write")
    m.set_defaults(run=_run_superpixels)
    a = methods.add_parser(
        "superpixels-apply", help="apply a fitted superpixel model (superpixel_model.json) to rasters"
    )
    a.add_argument("model", type=Path, help="superpixel_model.json (or the folder holding it)")
    a.add_argument("src", nargs="+", type=Path, help="rasters with the model's band count")
    a.add_argument("--out", required=True, type=Path, help="folder for <stem>_clusters.tif")
    _add_overwrite(a, "existing files in --out that an earlier baseline run did not write")
    a.set_defaults(run=_run_superpixels_apply)


def _run_superpixels(args: argparse.Namespace) -> int:
    from geoseg.config import SuperpixelConfig
    from geoseg.superpixels import MODEL_NAME, superpixel_baseline

    config = SuperpixelConfig(
        k=args.k,
        seed=args.seed,
        bands=args.bands,
        size=args.size,
        compactness=args.compactness,
        block=args.block,
    )
    for path in superpixel_baseline(args.src, args.out, config, fit_on=args.fit_on, overwrite=args.overwrite):
        print(path)
    print(args.out / MODEL_NAME)
    return 0


def _run_superpixels_apply(args: argparse.Namespace) -> int:
    from geoseg.superpixels import apply_superpixels

    for path in apply_superpixels(args.model, args.src, args.out, overwrite=args.overwrite):
        print(path)
    return 0


def _run_baseline(args: argparse.Namespace) -> int:
    from geoseg.baseline import kmeans_baseline, random_net_baseline
    from geoseg.config import BaselineConfig

    config = BaselineConfig(k=args.k, seed=args.seed, bands=args.bands)
    if args.method == "kmeans":
        written = kmeans_baseline(args.src, args.out, config, fit_on=args.fit_on, overwrite=args.overwrite)
    else:
        config.preset = args.preset
        written = random_net_baseline(
            args.src, args.out, config, fit_on=args.fit_on, overwrite=args.overwrite
        )
    for path in written:
        print(path)
    return 0


# --- segment / vectorize ------------------------------------------------------------------


def _add_segment(sub: argparse._SubParsersAction) -> None:
    from geoseg.config import PRECISIONS, SegmentConfig

    d = SegmentConfig()
    p = sub.add_parser(
        "segment", help="segment rasters with a model: cluster + confidence COGs, styles, polygons"
    )
    p.add_argument("model", type=Path, help="model bundle folder (model.json + weights.safetensors)")
    p.add_argument(
        "src", nargs="+", type=Path,
        help="GeoTIFFs (or a VRT mosaic) with the model's bands and dtype, folders of them, or STAC JSON",
    )  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--overlap",
        type=float,
        default=d.overlap,
        help="fraction of a window shared by neighbours (default: the seam blending needs)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="window side in pixels at the model's scale (default: chosen from model, memory and "
        "raster, up to 512, never below the patch size)",
    )
    p.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default=d.device, help="auto: GPU when present"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per forward pass")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="bf16: the network in bfloat16 (several x faster on AMX CPUs and GPUs; the same "
        "clusters on >= 99%% of pixels)",
    )
    p.add_argument("--head", choices=("a", "b"), default=d.head, help="b: the k clusters; a: over-clustering")
    p.add_argument("--no-vectorize", action="store_true", help="do not write the GeoPackage")
    p.add_argument("--min-area", type=float, default=d.min_area, help="polygon sieve, CRS units squared")
    p.add_argument("--simplify", type=float, default=d.simplify, help="polygon simplification, CRS units")
    p.add_argument(
        "--refine",
        choices=("superpixels",),
        default=None,
        help="give each SLIC superpixel its probability-weighted majority cluster",
    )
    p.add_argument(
        "--refine-size", type=int, default=d.refine_size, help="superpixel side in pixels for --refine"
    )
    p.add_argument(
        "--dask-address",
        default=None,
        help="segment each raster in row bands on this Dask scheduler (paths shared by all workers)",
    )
    p.add_argument(
        "--band-rows", type=int, default=d.band_rows, help="rows per Dask task with --dask-address"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_overwrite(p, "existing files in --out that an earlier segment run did not write")
    p.set_defaults(run=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from geoseg.config import SegmentConfig
    from geoseg.segment import segment

    config = SegmentConfig(
        overlap=args.overlap,
        window=args.window,
        device=args.device,
        batch_size=args.batch_size,
        head=args.head,
        vectorize=not args.no_vectorize,
        min_area=args.min_area,
        simplify=args.simplify,
        refine=args.refine,
        refine_size=args.refine_size,
        band_rows=args.band_rows,
        precision=args.precision,
    )
    results = segment(
        args.model,
        args.src,
        args.out,
        config,
        progress=not args.quiet,
        overwrite=args.overwrite,
        dask_address=args.dask_address,
    )
    for result in results:
        print(result.clusters)
        if result.gpkg is not None:
            print(result.gpkg)
    return 0


def _add_vectorize(sub: argparse._SubParsersAction) -> None:
    from geoseg.config import VectorizeConfig

    d = VectorizeConfig()
    p = sub.add_parser("vectorize", help="cluster raster -> GeoPackage polygons, styled for QGIS")
    p.add_argument("clusters", type=Path, metavar="CLUSTERS.tif", help="uint8 cluster raster, nodata 255")
    p.add_argument(
        "--out", type=Path, default=None,
        help="GeoPackage to write (default: <stem>_polygons.gpkg beside CLUSTERS.tif)",
    )  # fmt: skip
    p.add_argument(
        "--min-area", type=float, default=d.min_area, help="sieve regions smaller than this (CRS units^2)"
    )
    p.add_argument("--simplify", type=float, default=d.simplify, help="simplification tolerance (CRS units)")
    p.add_argument(
        "--block-size", type=int, default=d.block_size, help="block side in pixels (one task each)"
    )
    p.add_argument("--dask-address", default=None, help="run blocks on an existing Dask scheduler")
    _add_overwrite(p, "an existing file at --out that geoseg vectorize did not write")
    p.set_defaults(run=_run_vectorize)


def _run_vectorize(args: argparse.Namespace) -> int:
    from geoseg.vectorize import vectorize

    out = vectorize(
        args.clusters,
        args.out,
        min_area=args.min_area,
        simplify=args.simplify,
        dask_address=args.dask_address,
        block_size=args.block_size,
        overwrite=args.overwrite,
        report_georeferencing=True,  # segment says it of the source; a lone vectorize here
    )
    print(out)
    return 0


# --- demo ---------------------------------------------------------------------------------


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from geoseg.demo import DEMO_SEED, DEMO_SIZE, DEMO_STEPS

    p = sub.add_parser(
        "demo",
        help="run the pipeline flow end to end on a generated scene (or --src FILE)",
        description=(
            "Generates a synthetic georeferenced orthophoto with ground truth, runs the Prefect "
            "'pipeline' flow on it (ephemeral Prefect unless PREFECT_API_URL is set; CPU, small "
            "network) and prints where the outputs are. With --src, segments your raster instead "
            "(no evaluation)."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    p.add_argument("--src", type=Path, default=None, help="your own GeoTIFF instead of the generated scene")
    p.add_argument("--size", type=int, default=DEMO_SIZE, help="generated scene side in pixels")
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help="training steps")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help="scene seed")
    p.add_argument("--dask-address", default=None, help="join an existing Dask scheduler")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from geoseg.demo import summary

    try:  # Prefect lives in flows/, outside the library: imported only here
        from flows.pipeline import run_demo
    except ModuleNotFoundError as exc:
        if exc.name != "flows":
            raise
        print("geoseg demo: needs the flows/ package: run it from the repository checkout", file=sys.stderr)
        return 2
    overrides = {"size": args.size, "steps": args.steps, "seed": args.seed}
    result = run_demo(args.out, src=args.src, dask_address=args.dask_address, **overrides)
    print(summary(result))
    return 0


# --- main ---------------------------------------------------------------------------------

_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_ingest,
    _add_model,
    _add_train,
    _add_evaluate,
    _add_baseline,
    _add_segment,
    _add_vectorize,
    _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geoseg", description="Label-free segmentation of aerial orthophotos (IIC, PiCIE, LGMI, CIRS)"
    )
    parser.add_argument("--version", action="version", version=f"geoseg {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, Dask's INFO lines included"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _PARSERS:
        add(sub)
    _show_defaults(parser)
    return parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default, except where there is none (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """HelpFormatter for a parser and every sub-command below it (added here or later)."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child)


OWN_LOGGERS = ("geoseg", "flows")  # the library and the Prefect flows (geoseg demo runs them)


def configure_logging(verbose: bool) -> None:
    """geoseg's INFO lines on the console; other libraries' only from WARNING, unless --verbose.

    The root logger stays at WARNING, so third-party INFO lines (pyogrio's "Created N
    records", Dask's) stay out of the console while their warnings still show; Prefect
    logs through its own handlers in the flows. --verbose shows everything at DEBUG.
    Dask reads DASK_LOGGING__DISTRIBUTED when it is imported, in this process and in the
    worker processes it starts (which inherit the environment); a value the user set
    stays unless --verbose asks for everything.
    """
    if verbose:
        os.environ["DASK_LOGGING__DISTRIBUTED"] = "debug"
    else:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    logging.basicConfig(format="%(levelname)s %(message)s")  # a no-op where a handler exists
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.WARNING)
    for ours in OWN_LOGGERS:
        logging.getLogger(ours).setLevel(logging.DEBUG if verbose else logging.INFO)
    logging.getLogger("distributed").setLevel(os.environ["DASK_LOGGING__DISTRIBUTED"].upper())


def _after_interrupt(command: str, overwrite: bool = False) -> str:
    """What an interrupted stage left and what to do: ingest and train resume from their last
    checkpoint, except ingest --overwrite, whose new store is built beside the old one and
    dropped (the old store stays); the others write every file whole (atomic renames; segment
    and the baselines publish each source's set whole, geoseg.io.fileio.output_set), and a
    rerun replaces them."""
    if command == "ingest" and overwrite:
        return "; the old store is kept as it was: run the same command again to rebuild it"
    if command in ("ingest", "train"):
        return "; run the same command again to resume"
    if command in ("segment", "vectorize", "baseline", "evaluate"):
        return "; nothing half-written was kept: run the same command again to finish"
    return ""


_ASSIGNMENT = re.compile(r"^\d+=")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; `geoseg model name`'s ID=NAME words may also follow its options
    (`geoseg model name model/ --legend legend.csv 5=water`), which argparse alone refuses:
    an optional ends the run of positionals it collects."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    name = getattr(args, "command", None) == "model" and getattr(args, "model_command", None) == "name"
    if extra and name and all(_ASSIGNMENT.match(word) for word in extra):
        args.names = [*args.names, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        if args.debug:
            raise
        # Ctrl-C is the user's choice, not a failure to explain with a traceback: ingest and
        # train keep their last checkpoint and resume from it when the command is run again.
        after = _after_interrupt(args.command, bool(getattr(args, "overwrite", False)))
        print(f"geoseg {args.command}: interrupted{after}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `geoseg model name ... | head`: the reader of the output left; the work is done (the
        # paths are printed after it). Stop quietly, as `ls | head` does, with no traceback;
        # stdout goes to /dev/null so that Python's flush at exit does not fail on it again.
        if args.debug:
            raise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status of a command a closed pipe stopped
    except Exception as exc:
        message = None if args.debug else user_error_message(exc, getattr(args, "out", None))
        if message is None:
            raise
        print(f"geoseg {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
