"""The ``geoseg`` command: one sub-command per stage, plus ``demo``.

Thin by design: it parses arguments, builds the stage's typed config and calls the
library's entry point. Errors the user can fix (GeosegError) print one clear line and
exit with status 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from geoseg import __version__
from geoseg.errors import GeosegError

Command = Callable[[argparse.Namespace], int]


def _bands(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bands must be comma-separated integers, got {text!r}") from None


# --- ingest -------------------------------------------------------------------------------


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="tile rasters into a zarr patch store")
    p.add_argument(
        "src", nargs="+", help="GeoTIFF/PNG/JPEG files, folders of them, or STAC item/collection JSON"
    )
    p.add_argument("--out", required=True, type=Path, help="output STORE.zarr")
    p.add_argument("--patch-size", type=int, required=True)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument(
        "--scale", type=float, default=1.0, help="resampling factor on read (0.5 halves resolution)"
    )
    p.add_argument("--bands", type=_bands, default=None, help="1-based band list, e.g. 1,2,3,4")
    p.add_argument("--labels", nargs="+", default=None, help="label rasters, one per source, same order")
    p.add_argument("--dataset", default=None, help="label dataset (geoseg.datasets), e.g. dubai, isprs")
    p.add_argument("--min-valid", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dask-address", default=None, help="join an existing Dask scheduler")
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
    store = ingest(args.src, args.out, config, labels=args.labels, dask_address=args.dask_address)
    print(store)
    return 0


# --- main ---------------------------------------------------------------------------------

_PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [_add_ingest]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geoseg", description="Label-free segmentation of aerial orthophotos (IIC)"
    )
    parser.add_argument("--version", action="version", version=f"geoseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.run(args))
    except GeosegError as exc:
        print(f"geoseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
