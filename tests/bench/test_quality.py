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
