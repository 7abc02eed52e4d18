"""Quality benchmark: accuracy and mIoU of the baselines (and IIC) on real ground truth.

Every number goes through the same `geoseg.evaluate` a user runs, under both protocols:

- **honest**: the model (k-means centroids, the random network's input statistics, IIC's
  training) and the cluster-to-class mapping are fitted on one set, metrics come from
  another: dubai tiles 1-4 -> tiles 5-6; for the single ISPRS and LoveDA images, the top
  half -> the bottom half.
- **transductive**: model and mapping fitted on the scored set itself (IIC's published
  protocol).

Writes the "## Quality" section of bench/RESULTS.md (replacing only that section) and
the reports of every run under --work.

    python bench/quality.py                    # k-means, random network, superpixels, 3 seeds each
    python bench/quality.py --with-iic         # plus IIC rows (train + segment, 3 seeds)
    python bench/quality.py --methods k-means,iic,picie --datasets dubai --protocols honest
    python bench/quality.py --methods picie --datasets dubai-val   # choose settings: tiles 1-3 -> 4
    python bench/quality.py --methods iic --datasets dubai-val dubai-cv   # 4 folds: each of tiles 1-4 held out
    python bench/quality.py --methods lgmi --datasets isprs-val loveda-val colour-object-val
    python bench/quality.py --datasets isprs --seeds 0
    python bench/quality.py --methods k-means,iic,picie,lgmi,cirs --datasets colour-object --iic-patch 64
    python bench/quality.py --methods lgmi,lgmi+sp --datasets loveda-val   # +sp: the same bundle, --refine superpixels
    python bench/quality.py --methods iic --datasets loveda-val --iic-lamb 0.7 --iic-subheads 5

Learned methods (``iic``, ``picie``: geoseg.methods) run the user's pipeline per seed:
ingest the fit images (``--iic-patch``, ``--iic-scale``, shared by every learned method),
``geoseg.train`` with ``--method``, ``geoseg.segment``. The validation splits choose
settings without touching the scored images: ``dubai-val`` (fit tiles 1-3, score tile 4;
tiles 5-6 never read), ``isprs-val`` (``isprs-val`` and ``isprs-3-val``) and ``loveda-val``
(fit the top quarter of the image, score its second quarter; the bottom half never read),
``colour-object-val`` (a split of the scene's fitting images).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import rasterio
import torch
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from geoseg.baseline import fit_kmeans, predict_kmeans, random_net_baseline
from geoseg.config import PADDINGS, BaselineConfig, EvaluateConfig, TrainConfig
from geoseg.datasets import ISPRS_IDS, get_dataset, read_label
from geoseg.errors import TrainingError
from geoseg.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Quality (`bench/quality.py`)"
IIC_SECTION = "## Quality of IIC (`bench/quality.py --with-iic`)"
LEARNED_SECTION = "## Quality of the learned methods (`bench/quality.py --methods ...,iic,picie`)"
COLOUR_OBJECT_SECTION = "## Colour versus object (`bench/quality.py --datasets colour-object`)"
NOTE = (
    "Reading the table: 1-to-1 matching with k = number of classes punishes a model that splits a "
    "dominant class: every extra cluster inside it counts as an error. LoveDA tile 0 is 79% one class "
    "(forest) and holds only 4 of the 7 classes, so both baselines fall below the majority floor there; "
    "use `geoseg evaluate --many-to-one` to look at over-clustering. Timings come from a 2-core "
    "development machine: indicative only.",
)


@dataclass
class Split:
    """A benchmark case: fit and score sets of (image, label) pairs, and how to read labels."""

    name: str
    dataset: str  # geoseg.datasets name used by evaluate
    k: int
    fit: list[tuple[Path, Path]]
    score: list[tuple[Path, Path]]
    note: str


# --- data --------------------------------------------------------------------------------


def dubai_split(data: Path) -> Split:
    def pairs(tiles: Sequence[int]) -> list[tuple[Path, Path]]:
        out = []
        for t in tiles:
            for image in sorted((data / "dubai" / f"tile{t}" / "images").glob("*.jpg")):
                out.append((image, image.parent.parent / "masks" / f"{image.stem}.png"))
        return out

    return Split(
        "dubai",
        "dubai",
        5,
        pairs([1, 2, 3, 4]),
        pairs([5, 6]),
        "fit tiles 1-4 (36 images), score tiles 5-6 (18)",
    )


def dubai_validation_split(data: Path, held_out: int = 4) -> Split:
    """Tiles 1-4 but one -> that one: a split of the honest protocol's fitting set, for
    choosing settings (``dubai-val``: tile 4 held out; ``dubai-cv``: tiles 1, 2 and 3 held
    out in turn, ``dubai-cv1`` ... ``dubai-cv3``, the other three folds of a leave-one-tile-out
    validation with ``dubai-val``; tiles 5-6 never read)."""
    full = dubai_split(data)
    fit = [p for p in full.fit if p[0].parent.parent.name != f"tile{held_out}"]
    val = [p for p in full.fit if p[0].parent.parent.name == f"tile{held_out}"]
    kept = ",".join(str(t) for t in range(1, 5) if t != held_out)
    return Split(
        "dubai-val" if held_out == 4 else f"dubai-cv{held_out}",
        "dubai",
        5,
        fit,
        val,
        f"validation: fit tiles {kept} ({len(fit)} images), score tile {held_out} ({len(val)})",
    )


def _halves(
    image: Path,
    label: Path,
    work: Path,
    name: str,
    relabel: Callable[[np.ndarray], np.ndarray] | None = None,
    validation: bool = False,
) -> tuple[list, list]:
    """Top half (fit) and bottom half (score) of one image and its label, as lossless PNGs.

    ``validation``: the same cut applied again inside the top half (its top quarter fits,
    the second quarter is scored), a split of the fitting set for choosing settings that
    never reads the bottom half."""
    work.mkdir(parents=True, exist_ok=True)
    with Image.open(image) as img:
        pixels = np.asarray(img.convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(label) as src:
            raw = src.read(1)
    if relabel is not None:
        raw = relabel(raw)
    mid = pixels.shape[0] // 2
    if validation:
        pixels, raw, mid, name = pixels[:mid], raw[:mid], mid // 2, f"{name}_val"
    out: list[list[tuple[Path, Path]]] = []
    for part, rows in (("top", slice(0, mid)), ("bottom", slice(mid, None))):
        folder = work / f"{name}_{part}"
        folder.mkdir(exist_ok=True)
        img_path, lab_path = folder / f"{name}_{part}.png", folder / f"{name}_{part}_label.png"
        Image.fromarray(np.ascontiguousarray(pixels[rows])).save(img_path)
        Image.fromarray(np.ascontiguousarray(raw[rows])).save(lab_path)
        out.append([(img_path, lab_path)])
    return out[0], out[1]


VALIDATION_NOTE = "validation: fit the top quarter, score the second quarter (the bottom half never read)"


COLOUR_OBJECT_COUNT = 300  # images of the generated colour-versus-object scene (--colour-object-count)


def colour_object_splits(work: Path, count: int = COLOUR_OBJECT_COUNT) -> list[Split]:
    """The colour-versus-object scene (geoseg.synthetic.generate_colour_object, seed 0):
    the first two thirds fit, the last third is scored; ``colour-object-val`` splits the
    fitting images again (first three quarters fit, last quarter scored) to choose settings."""
    from geoseg.synthetic import generate_colour_object

    files = generate_colour_object(work / "colour-object", count=count, seed=0)
    pairs = list(zip(files.images, files.labels, strict=True))
    cut = 2 * count // 3
    fit, score = pairs[:cut], pairs[cut:]
    val_cut = 3 * cut // 4
    return [
        Split(
            "colour-object",
            "colour-object",
            4,
            fit,
            score,
            f"{count} 64x64 images: fit {cut}, score {count - cut}",
        ),
        Split(
            "colour-object-val",
            "colour-object",
            4,
            fit[:val_cut],
            fit[val_cut:],
            f"validation: fit {val_cut} of the fitting images, score the other {cut - val_cut}",
        ),
    ]


def isprs_splits(data: Path, work: Path, validation: bool = False) -> list[Split]:
    """``isprs`` and ``isprs-3`` (or, with ``validation``, ``isprs-val`` and ``isprs-3-val``)."""
    image = data / "isprs" / "vaihingen_area1_0_0_512_512_irrg.png"
    label = data / "isprs" / "vaihingen_area1_0_0_512_512_label.png"
    suffix = "-val" if validation else ""
    fit, score = _halves(image, label, work, "isprs", validation=validation)
    splits = [
        Split(
            f"isprs{suffix}",
            "isprs-ids",
            6,
            fit,
            score,
            VALIDATION_NOTE
            if validation
            else "Vaihingen 512x512 crop (IRRG), 6 classes; fit top half, score bottom half",
        )
    ]

    # Potsdam-3 style merge: re-encode the ids as ISPRS colours and decode them with the
    # potsdam3 dataset, whose palette merges {impervious, car}, {building, clutter}, {low veg, tree}.
    def to_colours(raw: np.ndarray) -> np.ndarray:
        ids = ISPRS_IDS.decode(raw)
        lut = np.zeros((256, 3), np.uint8)  # ignore -> black, not in the palette
        lut[: ISPRS_IDS.num_classes] = ISPRS_IDS.colours
        return lut[ids]

    fit3, score3 = _halves(image, label, work, "isprs3", relabel=to_colours, validation=validation)
    note3 = VALIDATION_NOTE if validation else "the same crop, IIC's Potsdam-3 merge, 3 classes"
    splits.append(Split(f"isprs-3{suffix}", "potsdam3", 3, fit3, score3, note3))
    return splits


def loveda_split(data: Path, work: Path, validation: bool = False) -> Split:
    """``loveda`` (or, with ``validation``, ``loveda-val``)."""
    image, label = data / "loveda" / "0_rgb.png", data / "loveda" / "0_label.png"
    fit, score = _halves(image, label, work, "loveda", validation=validation)
    return Split(
        "loveda-val" if validation else "loveda",
        "loveda",
        7,
        fit,
        score,
        VALIDATION_NOTE
        if validation
        else "LoveDA tile 0, 1024x1024, 7 classes; fit top half, score bottom half",
    )


# --- methods: each returns cluster rasters for `sources`, fitted on `fit_images` -----------


def _by_folder(sources: Sequence[Path], out: Path) -> list[tuple[list[Path], Path]]:
    """Group sources by folder, one output folder each: stems repeat across dubai tiles."""
    groups: dict[Path, list[Path]] = {}
    for s in sources:
        groups.setdefault(s.parent, []).append(s)
    return [(files, out / f"g{i:02d}") for i, files in enumerate(groups.values())]


def _ordered(sources: Sequence[Path], written: dict[Path, Path]) -> list[Path]:
    return [written[s] for s in sources]


def run_kmeans(split: Split, fit_images: list[Path], sources: list[Path], seed: int, out: Path) -> list[Path]:
    config = BaselineConfig(k=split.k, seed=seed)
    model = fit_kmeans(fit_images, config)
    written = {}
    for files, folder in _by_folder(sources, out):
        written.update(zip(files, predict_kmeans(model, files, folder, config), strict=True))
    return _ordered(sources, written)


def run_random_net(
    split: Split, fit_images: list[Path], sources: list[Path], seed: int, out: Path
) -> list[Path]:
    config = BaselineConfig(k=split.k, seed=seed)
    written = {}
    for files, folder in _by_folder(sources, out):
        written.update(zip(files, random_net_baseline(files, folder, config, fit_on=fit_images), strict=True))
    return _ordered(sources, written)


SUPERPIXELS: dict = {}  # SuperpixelConfig overrides (bench/superpixels.py's size sweep); default: none


def run_superpixels(
    split: Split, fit_images: list[Path], sources: list[Path], seed: int, out: Path
) -> list[Path]:
    """SLIC superpixels + k-means on segment statistics: fitted on fit_images, applied to sources."""
    from geoseg.config import SuperpixelConfig
    from geoseg.superpixels import MODEL_NAME, apply_superpixels, fit_superpixel_model

    model = fit_superpixel_model(fit_images, SuperpixelConfig(k=split.k, seed=seed, **SUPERPIXELS))
    model_path = model.save(out / MODEL_NAME)
    written = {}
    for files, folder in _by_folder(sources, out):
        written.update(zip(files, apply_superpixels(model_path, files, folder), strict=True))
    return _ordered(sources, written)


IIC_TRAINING: dict = {"steps": 500, "preset": "small"}  # set from the command line
IIC_INGEST: dict = {"patch_size": 128, "scale": 1.0}  # shared by every learned method
PICIE_TRAINING: dict = {"steps": 500, "preset": "small"}  # set from the command line
LGMI_TRAINING: dict = {"steps": 500, "preset": "small"}  # set from the command line
CIRS_TRAINING: dict = {"steps": 500, "preset": "small"}  # set from the command line
_TRAINING = {"lgmi": LGMI_TRAINING, "cirs": CIRS_TRAINING}
ENSEMBLE: dict = {"members": 1}  # every learned method: networks averaged (geoseg.models.ensemble)


REFINED = "+sp"  # a learned method's variant segmented with --refine superpixels


def _learned(
    method: str, refine: str | None = None
) -> Callable[[Split, list[Path], list[Path], int, Path], list[Path]]:
    """Ingest the fit images, train ``method`` (seeded), segment the sources (lazy imports).

    With ``refine``, the bundle the plain method trained for the same split, protocol and
    seed (in its folder under --work) is reused when it exists: the two rows then differ
    only by the segment stage's refinement.
    """

    def run(split: Split, fit_images: list[Path], sources: list[Path], seed: int, out: Path) -> list[Path]:
        from geoseg.config import IngestConfig, SegmentConfig
        from geoseg.ingest import ingest
        from geoseg.segment import segment
        from geoseg.train import train

        plain = out.parents[1].name.removesuffix(REFINED) if refine else out.parents[1].name
        bundle = out.parents[2] / plain / out.parent.name / out.name / "model"
        if not (refine and (bundle / "model.json").is_file()):
            store = ingest(
                [str(p) for p in fit_images],
                bundle.parent / "patches.zarr",
                IngestConfig(**IIC_INGEST),
                progress=False,
            )
            if method == "iic":
                config = TrainConfig(k=split.k, k_a=split.k * 4, seed=seed, **IIC_TRAINING, **ENSEMBLE)
            else:
                config = TrainConfig(
                    method=method, k=split.k, seed=seed, **_TRAINING.get(method, PICIE_TRAINING), **ENSEMBLE
                )
            train(store, bundle, config, progress=False)
        written = {}
        for files, folder in _by_folder(sources, out / "pred"):
            segment(bundle, files, folder, SegmentConfig(vectorize=False, refine=refine), progress=False)
            written.update({f: folder / f"{f.stem}_clusters.tif" for f in files})
        return _ordered(sources, written)

    return run


run_iic = _learned("iic")

METHODS: dict[str, Callable[[Split, list[Path], list[Path], int, Path], list[Path]]] = {
    "k-means": run_kmeans,
    "random net": run_random_net,
    "superpixels": run_superpixels,
    "IIC": run_iic,
    "PiCIE": _learned("picie"),
    "LGMI": _learned("lgmi"),
    "CIRS": _learned("cirs"),
    **{
        f"{name}{REFINED}": _learned(name.lower(), "superpixels") for name in ("IIC", "PiCIE", "LGMI", "CIRS")
    },
}
LEARNED = ("IIC", "PiCIE", "LGMI", "CIRS")  # the methods that train a network (geoseg.methods)
# command-line spellings: --methods iic,picie,k-means,random-net
_ALIASES = {name.lower().replace(" ", "-"): name for name in METHODS} | {"kmeans": "k-means"}


def parse_methods(values: Sequence[str]) -> list[str]:
    """``--methods`` values, comma- or space-separated, in any case; unknown names refused."""
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n.lower().replace(" ", "-") not in _ALIASES]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(_ALIASES)}")
    return list(dict.fromkeys(_ALIASES[n.lower().replace(" ", "-")] for n in names))


def run_case(split: Split, method: str, protocol: str, seed: int, work: Path) -> dict:
    """One model fit + predictions + geoseg.evaluate; returns the report."""
    out = work / split.name / method.replace(" ", "-") / protocol / f"seed{seed}"
    fit = split.fit if protocol == "honest" else split.score
    fit_images = [i for i, _ in fit]
    score_images = [i for i, _ in split.score]
    sources = fit_images + score_images if protocol == "honest" else score_images
    preds = METHODS[method](split, fit_images, sources, seed, out)
    pred_of = dict(zip(sources, preds, strict=True))
    config = EvaluateConfig(dataset=split.dataset, n_examples=2, seed=seed)
    kwargs = {}
    if protocol == "honest":
        kwargs = {
            "fit_predictions": [pred_of[i] for i in fit_images],
            "fit_labels": [lab for _, lab in split.fit],
        }
    return evaluate(
        [pred_of[i] for i in score_images],
        [lab for _, lab in split.score],
        out / "report",
        config,
        images=score_images,
        **kwargs,
    )


def majority_floor(split: Split) -> tuple[float, float]:
    """Accuracy and mIoU of predicting the scored set's majority class everywhere."""
    dataset = get_dataset(split.dataset)
    counts = np.zeros(dataset.num_classes, np.int64)
    for _, label in split.score:
        counts += np.bincount(read_label(label, dataset).ravel(), minlength=256)[: dataset.num_classes]
    share = counts.max() / counts.sum()
    return float(share), float(share / np.count_nonzero(counts))


# --- table --------------------------------------------------------------------------------


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(splits: list[Split], results: dict, seeds: Sequence[int], methods: Sequence[str]) -> list[str]:
    lines = [
        "| data | method | seeds | honest accuracy | honest mIoU | transductive accuracy | transductive mIoU |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in splits:
        acc, miou = majority_floor(split)
        lines.append(
            f"| {split.name} | majority class | – | {acc:.3f} | {miou:.3f} | {acc:.3f} | {miou:.3f} |"
        )
        for method in methods:
            cells, scored = [], 0
            for protocol in ("honest", "transductive"):  # a protocol not run shows "–"
                keys = [(split.name, method, protocol, s) for s in seeds]
                reports = [results[k] for k in keys if k in results]
                scored = max(scored, len(reports))
                cells += [_cell([r["accuracy"] for r in reports]), _cell([r["miou"] for r in reports])]
            lines.append(
                f"| {split.name} | {method} | {_seed_count(scored, seeds)} | " + " | ".join(cells) + " |"
            )
    return lines


def _seed_count(scored: int, seeds: Sequence[int]) -> str:
    """The seeds a row's figures are over: "1 of 3" when runs stopped (listed under the table)."""
    return str(scored) if scored in (0, len(seeds)) else f"{scored} of {len(seeds)}"


BASELINES = ("k-means", "random net", "superpixels")  # label-free floors; the rest are learned methods


def per_seed_lines(
    splits: list[Split], results: dict, seeds: Sequence[int], methods: Sequence[str]
) -> list[str]:
    """Per-seed honest mIoU of every method, and each learned method's ratio to the strongest baseline."""
    lines = []
    for split in splits:
        by_seed = {
            m: [results.get((split.name, m, "honest", s), {}).get("miou") for s in seeds] for m in methods
        }
        # a seed whose run stopped (collapse, NaN) is named so, not left out of the line
        cells = [
            f"{m} " + " / ".join("stopped" if v is None else f"{v:.3f}" for v in values)
            for m, values in by_seed.items()
            if any(v is not None for v in values)
        ]
        honest = {m: [v for v in values if v is not None] for m, values in by_seed.items()}
        honest = {m: v for m, v in honest.items() if v}
        if not honest:
            continue
        lines.append(
            f"- {split.name}, honest mIoU per seed {', '.join(map(str, seeds))}: " + "; ".join(cells)
        )
        floors = {m: statistics.mean(v) for m, v in honest.items() if m in BASELINES}
        if floors:
            best = max(floors, key=lambda m: floors[m])
            for m, values in honest.items():
                if m not in BASELINES:
                    ratio = statistics.mean(values) / floors[best]
                    lines.append(f"  - {m} / strongest baseline ({best}): **{ratio:.2f}x** in honest mIoU")
    return lines


def write_section(lines: list[str], path: Path = RESULTS, section: str = SECTION) -> None:
    """Replace the body of one section only (appended if missing); others are left as they are."""
    text = path.read_text()
    if section not in text:
        text = text.rstrip() + "\n\n" + section + "\n"
    start = text.index(section) + len(section)
    nxt = text.find("\n## ", start)
    end = len(text) if nxt < 0 else nxt + 1
    body = "\n\n" + "\n".join(lines).rstrip() + "\n" + ("\n" if nxt >= 0 else "")
    path.write_text(text[:start] + body + text[end:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--datasets", nargs="+", default=["dubai", "isprs", "loveda"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--with-iic", action="store_true", help="also train + segment IIC (needs geoseg.train/segment)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["k-means,random-net,superpixels"],
        help="e.g. k-means,random-net,superpixels,iic,picie",
    )
    parser.add_argument(
        "--protocols", nargs="+", choices=("honest", "transductive"), default=["honest", "transductive"]
    )
    parser.add_argument("--iic-steps", type=int, default=500, help="IIC training steps per run")
    parser.add_argument("--iic-preset", choices=("small", "iic"), default="small", help="IIC network width")
    parser.add_argument("--iic-patch", type=int, default=128, help="IIC patch size (px, after --iic-scale)")
    parser.add_argument("--iic-scale", type=float, default=1.0, help="IIC ingest scale (segment follows it)")
    parser.add_argument("--iic-batch-size", type=int, default=16)
    parser.add_argument("--iic-lr", type=float, default=1e-4)
    parser.add_argument(
        "--iic-subheads", type=int, default=1, help="IIC sub-heads (the lowest-loss one predicts)"
    )
    parser.add_argument(
        "--iic-lamb",
        type=float,
        default=1.0,
        help="IIC's lambda (head B, and head A unless --iic-lamb-a): < 1 allows uneven clusters",
    )
    parser.add_argument(
        "--iic-lamb-a",
        type=float,
        default=None,
        help="IIC's lambda on the over-clustering head A only (default: --iic-lamb)",
    )
    parser.add_argument(
        "--iic-jitter",
        type=float,
        default=0.4,
        help="IIC's colour jitter strength on RGB bands (TrainConfig.jitter)",
    )
    parser.add_argument(
        "--members",
        type=int,
        default=1,
        help="learned methods: train this many seeds (seed*N+i) and average them (geoseg train --members)",
    )
    parser.add_argument("--picie-steps", type=int, default=500, help="PiCIE training steps per run")
    parser.add_argument("--picie-lr", type=float, default=1e-3)
    parser.add_argument("--picie-batch-size", type=int, default=8)
    parser.add_argument("--picie-trunk", choices=("iic", "resnet18-fpn"), default="iic")
    parser.add_argument("--picie-k2", type=int, default=100, help="PiCIE over-clustering K2")
    parser.add_argument("--picie-preset", choices=("small", "iic"), default="small")
    parser.add_argument("--lgmi-steps", type=int, default=500, help="LGMI training steps per run")
    parser.add_argument("--lgmi-lr", type=float, default=1e-4)
    parser.add_argument("--lgmi-batch-size", type=int, default=16)
    parser.add_argument(
        "--lgmi-tau", type=float, default=None, help="LGMI's assignment sharpness (default 1/sqrt(P))"
    )
    parser.add_argument(
        "--lgmi-local-dim",
        type=int,
        default=TrainConfig().local_dim,
        help="LGMI's local/global feature dimension P (its source: 2048)",
    )
    parser.add_argument("--cirs-steps", type=int, default=500, help="CIRS training steps per run")
    parser.add_argument("--cirs-lr", type=float, default=1e-3, help="CIRS learning rate (its source: 1e-3)")
    parser.add_argument("--cirs-batch-size", type=int, default=16)
    parser.add_argument("--cirs-g-steps", type=int, default=100, help="CIRS g mini-batches per turn")
    parser.add_argument(
        "--cirs-segment-number",
        choices=("on", "off"),
        default="on" if TrainConfig().g_segment_number else "off",
        help="CIRS's g also sees the segment number as a one-hot (its source: on)",
    )
    parser.add_argument("--cirs-s-steps", type=int, default=5, help="CIRS S mini-batches per turn")
    parser.add_argument(
        "--padding", choices=PADDINGS, default="zeros",
        help="how every learned method's convolutions fill their border (TrainConfig.padding)",
    )  # fmt: skip
    parser.add_argument(
        "--weight-ema", type=float, default=None,
        help="every learned method's TrainConfig.weight_ema (default: each method's own)",
    )  # fmt: skip
    parser.add_argument("--colour-object-count", type=int, default=COLOUR_OBJECT_COUNT)
    parser.add_argument("--work", type=Path, default=None, help="keep predictions and reports here")
    parser.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="geoseg-quality-"))
    splits: list[Split] = []
    if "dubai" in args.datasets:
        splits.append(dubai_split(args.data))
    if "dubai-val" in args.datasets:
        splits.append(dubai_validation_split(args.data))
    if "dubai-cv" in args.datasets:  # leave one tile out: tiles 1-3 (4 is dubai-val)
        splits += [dubai_validation_split(args.data, held_out=t) for t in (1, 2, 3)]
    if "isprs" in args.datasets:
        splits += isprs_splits(args.data, work / "crops")
    if "isprs-val" in args.datasets:  # isprs-val and isprs-3-val
        splits += isprs_splits(args.data, work / "crops", validation=True)
    if "loveda" in args.datasets:
        splits.append(loveda_split(args.data, work / "crops"))
    if "loveda-val" in args.datasets:
        splits.append(loveda_split(args.data, work / "crops", validation=True))
    if "colour-object" in args.datasets or "colour-object-val" in args.datasets:
        cvo = colour_object_splits(work, args.colour_object_count)
        splits += [s for s in cvo if s.name in args.datasets]
    methods = list(dict.fromkeys([*parse_methods(args.methods), *(["IIC"] if args.with_iic else [])]))
    LGMI_TRAINING.update(
        padding=args.padding,
        weight_ema=args.weight_ema,
        steps=args.lgmi_steps,
        preset=args.iic_preset,
        batch_size=args.lgmi_batch_size,
        lr=args.lgmi_lr,
        tau=args.lgmi_tau,
        local_dim=args.lgmi_local_dim,
    )
    CIRS_TRAINING.update(
        padding=args.padding,
        weight_ema=args.weight_ema,
        steps=args.cirs_steps,
        preset=args.iic_preset,
        batch_size=args.cirs_batch_size,
        lr=args.cirs_lr,
        g_steps=args.cirs_g_steps,
        s_steps=args.cirs_s_steps,
        g_segment_number=args.cirs_segment_number == "on",
    )
    IIC_TRAINING.update(
        padding=args.padding,
        weight_ema=args.weight_ema,
        steps=args.iic_steps,
        preset=args.iic_preset,
        batch_size=args.iic_batch_size,
        lr=args.iic_lr,
        subheads=args.iic_subheads,
        lamb_a=args.iic_lamb if args.iic_lamb_a is None else args.iic_lamb_a,
        lamb_b=args.iic_lamb,
        jitter=args.iic_jitter,
    )
    IIC_INGEST.update(patch_size=args.iic_patch, scale=args.iic_scale)
    ENSEMBLE.update(members=args.members)
    PICIE_TRAINING.update(
        padding=args.padding,
        weight_ema=args.weight_ema,
        steps=args.picie_steps,
        preset=args.picie_preset,
        batch_size=args.picie_batch_size,
        lr=args.picie_lr,
        trunk=args.picie_trunk,
        k2=args.picie_k2,
    )

    results: dict = {}
    timings: dict[str, float] = {}
    failures: list[str] = []
    for split in splits:
        for method in methods:
            start = time.perf_counter()
            for protocol in args.protocols:
                for seed in args.seeds:
                    try:
                        report = run_case(split, method, protocol, seed, work)
                    except TrainingError as exc:  # a collapse is a result: recorded, the run goes on
                        failures.append(f"{split.name} {method} {protocol} seed {seed}: {exc}")
                        print(failures[-1], flush=True)
                        continue
                    results[(split.name, method, protocol, seed)] = report
                    print(
                        f"{split.name:8s} {method:10s} {protocol:12s} seed {seed}: acc {report['accuracy']:.4f} mIoU {report['miou']:.4f}",
                        flush=True,
                    )
            timings[f"{split.name}/{method}"] = time.perf_counter() - start

    summary = {
        f"{k[0]}|{k[1]}|{k[2]}|{k[3]}": {"accuracy": r["accuracy"], "miou": r["miou"]}
        for k, r in results.items()
    }
    if (work / "quality.json").is_file():  # a later run in the same --work adds its rows
        summary = json.loads((work / "quality.json").read_text()) | summary
    (work / "quality.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {platform.machine()}, Python {platform.python_version()}, "
        f"CPU only (torch threads {torch.get_num_threads()}): `python bench/quality.py {' '.join(argv)}`".rstrip()
        + ".",
        "",
        "Pixel accuracy and mIoU after 1-to-1 Hungarian matching (k = number of classes), all through "
        "`geoseg.evaluate`. **honest**: model and mapping fitted on one set, scored on another; "
        "**transductive**: fitted and scored on the same set (IIC's published protocol). "
        "Mean ± sample std over seeds. Majority class: predicting the most frequent class everywhere.",
        "",
        *[f"- {s.name}: {s.note} (dataset `{s.dataset}`, k = {s.k})" for s in splits],
        "",
        *table(splits, results, args.seeds, methods),
        "",
        *per_seed_lines(splits, results, args.seeds, methods),
        "",
        *NOTE,
        "",
        *(["Runs that stopped (not in the table):", *[f"- {f}" for f in failures], ""] if failures else []),
        f"Wall time per data set and method ({' and '.join(args.protocols)}, all seeds): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + ".",
    ]
    if "PiCIE" in methods:
        lines += ["", f"PiCIE: TrainConfig(method='picie', k = classes, {PICIE_TRAINING}), ingest as IIC's."]
    if "LGMI" in methods:
        lines += ["", f"LGMI: TrainConfig(method='lgmi', k = classes, {LGMI_TRAINING}), ingest as IIC's."]
    if "CIRS" in methods:
        lines += ["", f"CIRS: TrainConfig(method='cirs', k = classes, {CIRS_TRAINING}), ingest as IIC's."]
    if "IIC" in methods:
        lines += [
            "",
            f"IIC: IngestConfig(patch_size={args.iic_patch}, scale={args.iic_scale}); TrainConfig(k = classes, "
            f"k_a = 4k, steps={args.iic_steps}, preset={args.iic_preset!r}, batch_size={args.iic_batch_size}, "
            f"lr={args.iic_lr}, subheads={args.iic_subheads}, lambda={args.iic_lamb}"
            f"{'' if args.iic_lamb_a is None else f' (head A {args.iic_lamb_a})'}, jitter={args.iic_jitter}, other settings default); SegmentConfig defaults (inference at the training "
            "scale, output at the source resolution).",
        ]
    else:
        lines += [
            "",
            "IIC: the next section, from `python bench/quality.py --with-iic` (train + segment per seed).",
        ]
    print("\n".join(lines))
    if not args.no_write:
        # IIC runs (slow: train + segment per seed) get a section of their own, beside the
        # baseline table, so that neither run overwrites the other.
        learned = [m for m in methods if m in LEARNED]
        section = SECTION if not learned else IIC_SECTION if learned == ["IIC"] else LEARNED_SECTION
        if all(s.dataset == "colour-object" for s in splits):  # its own section: the others stay
            section = COLOUR_OBJECT_SECTION
        write_section(lines, section=section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
