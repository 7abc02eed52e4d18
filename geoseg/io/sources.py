"""Input rasters: finding them, opening them safely, and reading windows of them.

Sources are GeoTIFFs of any band count and dtype, plain PNG/JPEG images (no CRS: one
warning of ours naming the file, and its world-file or identity transform is recorded),
folders of those, or STAC item / collection / catalog JSON whose data assets point at
rasters. rasterio's own ``NotGeoreferencedWarning`` (GDAL's pixel-grid remarks, repeated
at every open and write) never reaches the user: :func:`open_dataset` and
:func:`geoseg.io.cog.create_raster` silence it, :func:`report_georeferencing` says it once.

Reads work on the *scaled grid*: the source resampled by ``scale`` (0.5 halves the
resolution). A window of the scaled grid maps to a fractional window of the source, read
with ``out_shape`` so GDAL resamples on read: bilinear for images, nearest for labels.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
import rasterio.errors
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import DatasetReader
from rasterio.windows import Window

from geoseg.errors import InputError
from geoseg.io.outputs import CLUSTERS, CONFIDENCE, PREDICTION, PREVIEW
from geoseg.messages import plural

__all__ = [
    "PIXEL_GRID",
    "RASTER_SUFFIXES",
    "RasterInfo",
    "all_valid",
    "band_names",
    "discover_sources",
    "finite_mask",
    "grid_size",
    "is_pixel_grid",
    "open_dataset",
    "open_raster",
    "patch_offsets",
    "read_scaled",
    "read_valid",
    "reading",
    "report_georeferencing",
    "usable_bands",
    "without_georeferencing_warning",
]

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".vrt")

# Where QGIS (GDAL's convention for a raster without geotransform) places pixel (col, row):
# x = col, y = -row, so the image is upright at extent (0, -H) : (W, 0). Rasters of such a
# source are written without a geotransform too (rasterio reads them as the identity), and
# their polygons get these coordinates, so all of them overlay the source in QGIS.
PIXEL_GRID = Affine(1, 0, 0, 0, -1, 0)


def is_pixel_grid(crs: CRS | None, transform: Affine) -> bool:
    """A raster without any georeferencing: no CRS and rasterio's identity transform."""
    return crs is None and transform.is_identity


@dataclass(frozen=True)
class RasterInfo:
    """What geoseg needs to know about one source raster (at its native resolution)."""

    path: Path
    width: int
    height: int
    bands: tuple[int, ...]  # 1-based indexes used (alpha excluded unless asked for)
    band_names: tuple[str, ...]
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None

    def scaled_shape(self, scale: float) -> tuple[int, int]:
        """(height, width) of the grid resampled by ``scale``."""
        return max(1, round(self.height * scale)), max(1, round(self.width * scale))

    def scaled_transform(self, scale: float) -> Affine:
        """The affine transform of the scaled grid (same corner, pixels 1/scale as large)."""
        height, width = self.scaled_shape(scale)
        return self.transform @ Affine.scale(self.width / width, self.height / height)


def discover_sources(paths: Iterable[str | Path], check_stac_hrefs: bool = True) -> list[Path]:
    """Expand files, folders and STAC JSON into a sorted-per-argument list of raster paths.

    ``check_stac_hrefs``: a STAC asset naming a file that does not exist is an InputError
    naming the STAC file; the flows pass False and check the paths against their allowed
    roots first (an error saying whether a file outside them exists would tell too much)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            hint = " (a shell pattern that matched nothing?)" if any(c in str(path) for c in "*?[") else ""
            raise InputError(f"source not found: {path}{hint}")
        if path.is_dir():
            rasters = sorted(p for p in path.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
            if not rasters:
                raise InputError(f"no rasters ({', '.join(RASTER_SUFFIXES)}) in folder {path}")
            outputs = geoseg_outputs(rasters)
            if outputs:
                log.info(
                    "%s: skipping %s that geoseg wrote there (%s%s): not sources",
                    path,
                    plural(len(outputs), "output raster"),
                    outputs[0].name,
                    f" and {len(outputs) - 1} more" if len(outputs) > 1 else "",
                )
            found += [p for p in rasters if p not in outputs]
        elif path.suffix.lower() == ".json":
            found += stac_rasters(path, check_hrefs=check_stac_hrefs)
        else:
            found.append(path)
    if not found:
        raise InputError("no sources given")
    return found


_OUTPUT_SUFFIXES = (CLUSTERS, CONFIDENCE, PREVIEW)


def geoseg_outputs(rasters: Sequence[Path]) -> list[Path]:
    """The rasters of a folder's listing that are geoseg's outputs of another raster there:
    ``X_clusters.tif``, ``X_confidence.tif`` and ``X_preview.png`` beside their source
    ``X.*`` or their STAC item ``X_prediction.json`` (segment or a baseline run with
    ``--out`` the input folder). A folder given as a source stands for the rasters to
    process, so these are left out: a second run over it segmented its own outputs (a
    confusing band or dtype mismatch with the model) and ingest mixed them into a store."""
    stems = {p.stem for p in rasters if not p.stem.endswith(_OUTPUT_SUFFIXES)}
    outputs = []
    for p in rasters:
        for suffix in _OUTPUT_SUFFIXES:
            if p.stem.endswith(suffix):
                source = p.stem[: -len(suffix)]
                if source in stems or (p.parent / f"{source}{PREDICTION}.json").is_file():
                    outputs.append(p)
                break
    return outputs


def stac_rasters(path: Path, check_hrefs: bool = True) -> list[Path]:
    """Raster files referenced by the data assets of a STAC item, collection or catalog."""
    try:
        obj = pystac.read_file(str(path))
    except Exception as exc:  # pystac raises several types for bad JSON / non-STAC files
        raise InputError(f"not a readable STAC file: {path} ({exc})") from exc
    items = [obj] if isinstance(obj, pystac.Item) else list(obj.get_items(recursive=True))  # type: ignore[attr-defined]
    rasters: list[Path] = []
    for item in items:
        for asset in item.assets.values():
            raw = asset.get_absolute_href() or asset.href
            href = Path(raw)
            roles = asset.roles or ["data"]
            if "data" in roles and href.suffix.lower() in RASTER_SUFFIXES:
                if (
                    check_hrefs and "://" not in raw and not href.exists()
                ):  # named with the STAC file that points there
                    raise InputError(
                        f"STAC file {path}: item {item.id} points at {href}, which does not exist: "
                        "fix the asset's href or restore the file"
                    )
                rasters.append(href)
    if not rasters:
        raise InputError(f"STAC file {path} has no raster data assets")
    return rasters


# warnings.catch_warnings swaps the process-wide filter list: two threads (Dask's, in
# ingest) inside it at once restore each other's lists out of order and the warning
# escapes, so geoseg's opens take turns (an open is milliseconds; reads stay parallel).
_WARNING_FILTERS = threading.Lock()


@contextlib.contextmanager
def without_georeferencing_warning() -> Iterator[None]:
    """rasterio's NotGeoreferencedWarning silenced for the block (thread-safe among
    geoseg's opens): geoseg reports a CRS-less source once itself (report_georeferencing)."""
    with _WARNING_FILTERS, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def open_dataset(path: str | Path) -> DatasetReader:
    """rasterio.open with a clear InputError for missing or corrupt files, without rasterio's
    NotGeoreferencedWarning (a stage reports a CRS-less source once: report_georeferencing)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"raster not found: {path}")
    try:
        with without_georeferencing_warning():
            src = rasterio.open(path)
    except rasterio.errors.RasterioError as exc:
        raise InputError(f"unreadable or corrupt raster {path}: {exc}") from exc
    if src.driver == "PNG":
        _check_png_decodes(src, path)
    elif src.driver == "VRT":
        _check_vrt_members(src, path)
    return src


def _check_vrt_members(src: DatasetReader, path: Path) -> None:
    """InputError naming a file that a VRT reads but that does not exist: GDAL opens such a
    VRT and fails only when a window touches the missing file (ingest had then written part
    of the store, segment part of the mosaic). Checked at every open (a file of the mosaic
    can go while the VRT stays as it was): one stat per file."""
    missing = [name for name in src.files[1:] if not name.startswith("/vsi") and not Path(name).exists()]
    if missing:
        src.close()
        more = f" (and {plural(len(missing) - 1, 'more missing file')})" if len(missing) > 1 else ""
        raise InputError(
            f"VRT {path} reads {missing[0]}, which does not exist{more}: "
            "restore the file or build the VRT again (gdalbuildvrt) from the files that exist"
        )


_DECODED_PNGS: set[tuple[str, int, int]] = set()  # (path, size, mtime): PNGs read to the end


def _check_png_decodes(src: DatasetReader, path: Path) -> None:
    """InputError for a truncated or damaged PNG, which GDAL reads whole without an error:
    a read of the full raster returns the rows decoded before the damage and zeros after it
    (segment and the baselines then wrote a map of that). A read of the last row decodes
    the file to its end and fails as it should; done once per file version and process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _DECODED_PNGS:
        return
    try:
        src.read(1, window=Window(0, src.height - 1, src.width, 1))
    except rasterio.errors.RasterioError as exc:
        src.close()
        raise InputError(f"unreadable or corrupt raster {path}: {_gdal_reason(exc)}") from exc
    _DECODED_PNGS.add(key)


def usable_bands(src: DatasetReader, selection: Sequence[int] | None, path: Path) -> tuple[int, ...]:
    """1-based band indexes to read: the selection as given, else every band but alpha."""
    if selection is not None:
        bad = [b for b in selection if not 1 <= b <= src.count]
        if bad:
            raise InputError(
                f"{path} has {plural(src.count, 'band')}; cannot select {'band' if len(bad) == 1 else 'bands'} {', '.join(map(str, bad))}"
            )
        return tuple(selection)
    bands = tuple(i + 1 for i, ci in enumerate(src.colorinterp) if ci != ColorInterp.alpha)
    return bands or (1,)


def band_names(src: DatasetReader, bands: Sequence[int]) -> tuple[str, ...]:
    """Band descriptions where the file has them, else colour interpretations (red, nir...)."""
    names = []
    for b in bands:
        description = src.descriptions[b - 1]
        names.append(str(description).lower() if description else src.colorinterp[b - 1].name.lower())
    return tuple(names)


def report_georeferencing(path: Path, crs: CRS | None, transform: Affine) -> None:
    """A warning naming a source without a CRS and saying what its outputs will be: each
    stage calls it once per source, in its checks before the work starts.

    GDAL still reads a world file (.tfw/.jgw/.pgw: ISPRS as distributed), so such a source
    keeps its transform; a plain image without one is on the identity transform: pixel
    coordinates. Either way the outputs carry no CRS, and QGIS opens them with an unknown
    CRS until one is set (checked with QGIS 3.22).
    """
    if crs is not None:
        return
    what = (
        "no georeferencing: its outputs are in pixel coordinates"
        if is_pixel_grid(crs, transform)
        else "no CRS: its outputs keep its world-file transform"
    )
    log.warning("%s has %s without a CRS (QGIS shows them with an unknown CRS until one is set)", path, what)


def open_raster(path: str | Path, bands: Sequence[int] | None = None) -> RasterInfo:
    """Describe a source (images without a CRS or world file get the identity transform;
    the stage says so once: report_georeferencing). Missing or corrupt files raise InputError naming the file."""
    path = Path(path)
    with open_dataset(path) as src:
        use = usable_bands(src, bands, path)
        dtypes = {src.dtypes[b - 1] for b in use}
        if len(dtypes) > 1:
            raise InputError(f"{path} mixes band dtypes {sorted(dtypes)}")
        transform = src.transform
        return RasterInfo(
            path=path,
            width=src.width,
            height=src.height,
            bands=use,
            band_names=band_names(src, use),
            dtype=dtypes.pop(),
            crs=src.crs,
            transform=transform,
            nodata=src.nodata,
        )


def source_window(info: RasterInfo, scale: float, row: int, col: int, height: int, width: int) -> Window:
    """The fractional source window under a window of the scaled grid (clipped to the raster).

    At scale 1 it is the integer window itself, so reads are exact (no resampling).
    """
    if scale == 1.0:
        return Window(col, row, width, height)
    scaled_h, scaled_w = info.scaled_shape(scale)
    fy, fx = info.height / scaled_h, info.width / scaled_w
    return Window(col * fx, row * fy, width * fx, height * fy)


def read_scaled(
    src: DatasetReader,
    info: RasterInfo,
    scale: float,
    row: int,
    col: int,
    height: int,
    width: int,
    resampling: Resampling = Resampling.bilinear,
    bands: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window of the scaled grid: (C, h, w) data and (h, w) validity from nodata/alpha.

    The window must lie inside the scaled grid; callers pad beyond the edge themselves.
    At scale 1 the read is exact (integer windows, no resampling).
    """
    use = list(bands or info.bands)
    window = source_window(info, scale, row, col, height, width)
    try:
        data = src.read(use, window=window, out_shape=(len(use), height, width), resampling=resampling)
    except rasterio.errors.RasterioError as exc:  # a truncated or damaged file opens, then fails here
        raise InputError(f"unreadable or corrupt raster {src.name}: {_gdal_reason(exc)}") from exc
    valid = read_valid(src, info, scale, row, col, height, width, bands=use, data=data)
    if data.dtype.kind == "f":  # NaN and +-inf are nodata: never fed to a model or a statistic
        data = np.where(np.isfinite(data), data, 0).astype(data.dtype, copy=False)
    return data, valid


@contextlib.contextmanager
def reading(src: DatasetReader) -> Iterator[None]:
    """GDAL's failure to read ``src`` (a file damaged past its header opens, then fails on a
    window) as the one InputError naming it, for readers outside :func:`read_scaled`."""
    try:
        yield
    except rasterio.errors.RasterioError as exc:
        raise InputError(f"unreadable or corrupt raster {src.name}: {_gdal_reason(exc)}") from exc


def _gdal_reason(exc: BaseException) -> str:
    """rasterio's message, or GDAL's own where rasterio only says "See previous exception"."""
    cause = exc.__cause__ or exc.__context__
    return str(cause) if cause is not None and "previous exception" in str(exc) else str(exc)


def finite_mask(data: np.ndarray) -> np.ndarray:
    """(h, w) True where every band of a (C, h, w) float block is finite (NaN and +-inf are nodata)."""
    return np.isfinite(data).all(axis=0) if data.dtype.kind == "f" else np.ones(data.shape[-2:], bool)


def read_valid(
    src: DatasetReader,
    info: RasterInfo,
    scale: float,
    row: int,
    col: int,
    height: int,
    width: int,
    bands: Sequence[int] | None = None,
    data: np.ndarray | None = None,
) -> np.ndarray:
    """(h, w) validity of a window of the scaled grid.

    A pixel is valid where every used band is valid in GDAL's per-band masks (nodata,
    alpha, internal masks; resampled nearest so masks never blend) and, for float rasters,
    finite (NaN and +-inf are nodata whatever the nodata tag says). Integer rasters are
    checked without reading the pixels; float ones read them unless ``data`` (this
    window's pixels) is given.
    """
    use = list(bands or info.bands)
    window = source_window(info, scale, row, col, height, width)
    finite = np.ones((height, width), bool)
    if any(np.dtype(src.dtypes[b - 1]).kind == "f" for b in use):
        if data is None:
            try:
                data = src.read(
                    use, window=window, out_shape=(len(use), height, width), resampling=Resampling.nearest
                )
            except rasterio.errors.RasterioError as exc:
                raise InputError(f"unreadable or corrupt raster {src.name}: {_gdal_reason(exc)}") from exc
        finite = finite_mask(data)
    if all(src.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in use):
        return finite
    try:
        masks = src.read_masks(
            use, window=window, out_shape=(len(use), height, width), resampling=Resampling.nearest
        )
    except rasterio.errors.RasterioError as exc:
        raise InputError(f"unreadable or corrupt raster {src.name}: {_gdal_reason(exc)}") from exc
    return np.all(masks > 0, axis=0) & finite


def all_valid(src: DatasetReader, bands: Sequence[int]) -> bool:
    """True when GDAL reports no nodata, alpha or mask for any of ``bands`` and they are
    integers (a float band may hold NaN or inf, which are nodata): every pixel is valid, and
    reading masks (a full pass over the pixels) can be skipped."""
    return all(
        src.mask_flag_enums[b - 1] == [MaskFlags.all_valid] and np.dtype(src.dtypes[b - 1]).kind != "f"
        for b in bands
    )


def patch_offsets(length: int, patch: int, stride: int) -> list[int]:
    """Patch starts along one axis covering [0, length): the last patch may run past the edge."""
    if length < patch:
        return []
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] + patch < length:
        starts.append(starts[-1] + stride)
    return starts


def grid_size(length: int, patch: int, stride: int) -> int:
    """Number of patch starts of :func:`patch_offsets` without building the list."""
    if length < patch:
        return 0
    n = (length - patch) // stride + 1
    return n + (1 if (n - 1) * stride + patch < length else 0)
