"""bench/quality.py's Dubai splits: the validation folds that choose settings never read
the scored tiles, and leave each fitting tile out exactly once."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def quality_module():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def tiles(pairs: list[tuple[Path, Path]]) -> set[str]:
    return {image.parent.parent.name for image, _ in pairs}


def test_the_dubai_folds_hold_out_each_fitting_tile_once_and_never_read_the_scored_tiles() -> None:
    quality = quality_module()
    honest = quality.dubai_split(DATA)
    folds = [quality.dubai_validation_split(DATA, held_out=t) for t in (1, 2, 3, 4)]
    assert [f.name for f in folds] == ["dubai-cv1", "dubai-cv2", "dubai-cv3", "dubai-val"]
    scored_tiles = tiles(honest.score)
    assert scored_tiles == {"tile5", "tile6"}
    held_out = Counter()
    for fold in folds:
        fit, val = tiles(fold.fit), tiles(fold.score)
        assert not (fit | val) & scored_tiles  # the honest protocol's scored images: never read
        assert not fit & val and len(val) == 1 and len(fit) == 3
        assert {p for p, _ in fold.fit} | {p for p, _ in fold.score} == {p for p, _ in honest.fit}
        held_out.update(val)
    assert held_out == Counter({"tile1": 1, "tile2": 1, "tile3": 1, "tile4": 1})


def test_a_seed_whose_run_stopped_is_counted_and_named_not_hidden_in_the_row() -> None:
    """A collapsed seed is not scored: its row says over how many seeds the figures are, and
    the per-seed line names the stopped seed in its place (a 3-seed run where 2 collapsed
    once read "| IIC | 3 | ... 0.192 |" with no spread, as if all three gave 0.192)."""
    quality = quality_module()
    split = quality.dubai_split(DATA)
    report = {"accuracy": 0.7, "miou": 0.2}
    results = {
        (split.name, "IIC", "honest", 0): report,
        **{(split.name, "k-means", "honest", s): {"accuracy": 0.5, "miou": 0.1 + s / 100} for s in (0, 1, 2)},
    }
    lines = quality.table([split], results, [0, 1, 2], ["k-means", "IIC"])
    rows = {line.split(" | ")[1]: line for line in lines if line.startswith(f"| {split.name} |")}
    assert rows["IIC"].split(" | ")[2] == "1 of 3"
    assert rows["k-means"].split(" | ")[2] == "3"
    per_seed = quality.per_seed_lines([split], results, [0, 1, 2], ["k-means", "IIC"])
    assert "IIC 0.200 / stopped / stopped" in per_seed[0]
    assert "k-means 0.100 / 0.110 / 0.120" in per_seed[0]
