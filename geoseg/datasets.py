"""Label datasets: class tables, palettes and decoders to geoseg class ids.

geoseg class ids are contiguous from 0, stored as uint8, with 255 meaning "ignore".
Each dataset documents its source and how its label files encode classes.

Class order note: torchgeo's ``Potsdam2D``/``Vaihingen2D`` list "Clutter/background"
first (ids 0..5 = clutter, impervious, building, low vegetation, tree, car); geoseg
follows the ISPRS benchmark order used by IIC (impervious, building, low vegetation,
tree, car, clutter). Colours are the same; only the id order differs:
``TORCHGEO_ISPRS_ORDER[geoseg_id] == torchgeo_id``.

ISPRS Potsdam / Vaihingen as distributed (ingest them as they are, nothing to convert):

- Potsdam: ``2_Ortho_RGB/top_potsdam_2_10_RGB.tif`` (RGB), ``4_Ortho_RGBIR/
  top_potsdam_2_10_RGBIR.tif`` (R, G, B, IR: ``--bands 4,1,2`` gives IIC's IRRG),
  ``5_Labels_all/top_potsdam_2_10_label.tif`` (RGB colour-coded: ``--dataset isprs``, or
  ``potsdam3`` for IIC's 3-class merge). 5 cm; IIC works at 10 cm: ``--scale 0.5``
  (labels are resampled nearest, never blended into unknown colours).
- Vaihingen: ``top/top_mosaic_09cm_area1.tif`` (IRRG), colour-coded ground truth with the
  same palette.
- Georeferencing comes from the world files beside the tiles (``.tfw``; ``.jgw``/``.pgw``
  for JPEG/PNG): GDAL reads them, so the store records the world-file transform. Where the
  tiles carry no CRS, the store records none (``crs_wkt`` null) and ingest warns.
- Labels are matched to images by the order given (``--labels`` one per source); a label
  raster of another size than its image is refused (InputError naming the file).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import rasterio.io
from rasterio.windows import Window

from geoseg.errors import ConfigError, InputError
from geoseg.io.sources import open_dataset

__all__ = [
    "COLOUR_OBJECT",
    "DATASETS",
    "DUBAI",
    "IGNORE",
    "ISPRS_IDS",
    "ISPRS_RGB",
    "LOVEDA",
    "POTSDAM3",
    "SYNTHETIC",
    "TORCHGEO_ISPRS_ORDER",
    "LabelDataset",
    "check_class_id_labels",
    "decode_palette",
    "expand_colormap",
    "get_dataset",
    "load_palette",
    "read_label",
]

IGNORE = 255


@dataclass(frozen=True)
class LabelDataset:
    """How one dataset's label files map to geoseg class ids.

    Attributes:
        name: registry key (``--dataset NAME``).
        classes: class names in geoseg id order (id = position).
        colours: RGB colour per class, used for previews and QGIS styles.
        source: where the data comes from.
        palette: RGB colour -> class id, for colour-coded label images (None if id-coded).
        id_map: raw label value -> class id, for id-coded label images (None if colour-coded).
            Raw values not in the map become IGNORE.
    """

    name: str
    classes: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    source: str
    palette: Mapping[tuple[int, int, int], int] | None = None
    id_map: Mapping[int, int] | None = None
    merges: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def colour_coded(self) -> bool:
        return self.palette is not None

    def decode(self, label: np.ndarray) -> np.ndarray:
        """Decode a label array to uint8 class ids (255 = ignore).

        Colour-coded datasets take (H, W, 3) or (3, H, W) RGB; id-coded take (H, W).
        Pixels matching no colour / no raw id become IGNORE.
        """
        if self.palette is not None:
            return decode_palette(label, self.palette)
        assert self.id_map is not None
        if label.ndim != 2:
            raise InputError(f"{self.name}: expected a single-band class-id label, got shape {label.shape}")
        lut = np.full(256 if label.dtype == np.uint8 else int(label.max()) + 1, IGNORE, np.uint8)
        for raw, cid in self.id_map.items():
            if raw < lut.size:
                lut[raw] = cid
        return lut[label.astype(np.int64, copy=False)]


def decode_palette(label: np.ndarray, palette: Mapping[tuple[int, int, int], int]) -> np.ndarray:
    """Map an RGB label image to class ids through a palette; unknown colours -> IGNORE."""
    if label.ndim == 3 and label.shape[0] in (3, 4) and label.shape[-1] not in (3, 4):
        label = np.moveaxis(label, 0, -1)
    if label.ndim != 3 or label.shape[-1] < 3:
        raise InputError(f"expected an RGB colour-coded label, got shape {label.shape}")
    rgb = label[..., :3].astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.full(packed.shape, IGNORE, np.uint8)
    for (r, g, b), cid in palette.items():
        out[packed == ((r << 16) | (g << 8) | b)] = cid
    return out


def hex_rgb(code: str) -> tuple[int, int, int]:
    code = code.lstrip("#")
    return int(code[0:2], 16), int(code[2:4], 16), int(code[4:6], 16)


_ISPRS_CLASSES = ("impervious surfaces", "building", "low vegetation", "tree", "car", "clutter")
_ISPRS_COLOURS = ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))
_POTSDAM3 = {"impervious+car": (0, 4), "building+clutter": (1, 5), "vegetation": (2, 3)}
# geoseg ISPRS id -> torchgeo Potsdam2D/Vaihingen2D id (torchgeo puts clutter first).
TORCHGEO_ISPRS_ORDER = (1, 2, 3, 4, 5, 0)

ISPRS_RGB = LabelDataset(
    name="isprs",
    classes=_ISPRS_CLASSES,
    colours=_ISPRS_COLOURS,
    source=(
        "ISPRS 2D Semantic Labeling (Potsdam, Vaihingen) as distributed: 5_Labels_all, "
        "RGB colour-coded (impervious white, building blue, low vegetation cyan, tree green, "
        "car yellow, clutter red)"
    ),
    palette={c: i for i, c in enumerate(_ISPRS_COLOURS)},
    merges=_POTSDAM3,
)

ISPRS_IDS = LabelDataset(
    name="isprs-ids",
    classes=_ISPRS_CLASSES,
    colours=_ISPRS_COLOURS,
    source=(
        "ISPRS Vaihingen crop from open-mmlab/mmsegmentation test data: class-id PNG, "
        "0 = ignore (eroded boundaries), 1..6 = impervious..clutter"
    ),
    id_map={raw: raw - 1 for raw in range(1, 7)},
    merges=_POTSDAM3,
)

POTSDAM3 = LabelDataset(
    name="potsdam3",
    classes=("impervious+car", "building+clutter", "vegetation"),
    colours=((200, 200, 200), (40, 60, 200), (40, 170, 60)),
    source="IIC's Potsdam-3 merge of the ISPRS colour-coded labels: {impervious, car}, {building, clutter}, {low vegetation, tree}",
    palette={
        c: next(j for j, m in enumerate(_POTSDAM3.values()) if i in m) for i, c in enumerate(_ISPRS_COLOURS)
    },
)

DUBAI = LabelDataset(
    name="dubai",
    classes=("building", "land", "road", "vegetation", "water"),
    colours=(
        hex_rgb("#3C1098"),
        hex_rgb("#8429F6"),
        hex_rgb("#6EC1E4"),
        hex_rgb("#FEDD3A"),
        hex_rgb("#E2A929"),
    ),
    source=(
        "Humans in the Loop 'Semantic segmentation of aerial imagery' (Dubai), RGB colour-coded "
        "masks; the colours of the source's classes.json are wrong, these are the ones the masks use. "
        "Unlabeled #9B9B9B and unmatched colours are ignored."
    ),
    palette={
        hex_rgb("#3C1098"): 0,
        hex_rgb("#8429F6"): 1,
        hex_rgb("#6EC1E4"): 2,
        hex_rgb("#FEDD3A"): 3,
        hex_rgb("#E2A929"): 4,
    },
)

LOVEDA = LabelDataset(
    name="loveda",
    classes=("background", "building", "road", "water", "barren", "forest", "agriculture"),
    colours=(
        (255, 255, 255),
        (255, 0, 0),
        (255, 255, 0),
        (0, 0, 255),
        (159, 129, 183),
        (0, 255, 0),
        (255, 195, 128),
    ),
    source="LoveDA (Wang et al. 2021): class-id PNG, 0 = no-data (ignore), 1..7 = background..agriculture",
    id_map={raw: raw - 1 for raw in range(1, 8)},
)

SYNTHETIC = LabelDataset(
    name="synthetic",
    classes=("road", "building", "tree", "grass", "car", "water"),
    colours=((128, 128, 128), (200, 60, 40), (20, 110, 30), (140, 210, 90), (250, 220, 0), (40, 90, 220)),
    source="geoseg.synthetic.generate_scene: class-id GeoTIFF, 0..5 = road..water, 255 = nodata",
    id_map={raw: raw for raw in range(6)},
)

COLOUR_OBJECT = LabelDataset(
    name="colour-object",
    classes=("sky", "lemon", "apple", "blueberry"),
    colours=((135, 190, 240), (245, 215, 40), (200, 30, 40), (50, 40, 120)),
    source="geoseg.synthetic.generate_colour_object: class-id GeoTIFFs, 0..3 = sky..blueberry, 255 = nodata",
    id_map={raw: raw for raw in range(4)},
)

DATASETS: dict[str, LabelDataset] = {
    d.name: d for d in (ISPRS_RGB, ISPRS_IDS, POTSDAM3, DUBAI, LOVEDA, SYNTHETIC, COLOUR_OBJECT)
}


def get_dataset(name: str) -> LabelDataset:
    """Look a dataset up by name; a clear error lists the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def read_label(
    path: str | Path,
    dataset: LabelDataset | None = None,
    window: Window | None = None,
) -> np.ndarray:
    """Read a label raster (GeoTIFF/PNG, class ids or colours) as uint8 class ids (255 = ignore).

    With no dataset, a single-band raster's values are taken as class ids as they are.
    Palette PNGs are expanded through their colour table before colour decoding.
    """
    path = Path(path)
    with open_dataset(path) as src:
        try:
            data = src.read(window=window)
        except rasterio.errors.RasterioError as exc:
            raise InputError(f"unreadable label file {path}: {exc}") from exc
        if dataset is not None and dataset.colour_coded and src.count == 1:
            data = expand_colormap(src, data[0])
    if dataset is None:
        if data.shape[0] != 1:
            raise InputError(f"{path}: {data.shape[0]}-band label needs a colour-coded --dataset")
        return data[0].astype(np.uint8)
    if dataset.colour_coded:
        if data.shape[0] < 3:
            raise InputError(f"{path}: dataset {dataset.name!r} expects RGB colour-coded labels")
        return dataset.decode(data)
    if data.shape[0] != 1:
        raise InputError(f"{path}: dataset {dataset.name!r} expects single-band class-id labels")
    return dataset.decode(data[0])


def check_class_id_labels(paths: Sequence[str | Path], options: str = "--dataset") -> None:
    """Before any work, labels read without a dataset: their values must be class ids.

    A single-band raster's values are taken as class ids as they are. A multi-band label
    (RGB colour-coded) is refused, and so are paletted labels (a PNG with a colour table)
    whose colour tables differ between files: an index is then not a class (one Dubai mask
    has index 0 = building, the next index 0 = land), so scoring or training on indices
    would silently mix classes. Paletted labels that share one table stay usable as ids.
    InputError naming the file(s); ``options`` is what the message tells to pass.
    """
    known = ", ".join(sorted(DATASETS))
    first: tuple[Path, dict[int, tuple[int, int, int]]] | None = None
    for path in map(Path, paths):
        with open_dataset(path) as src:
            if src.count != 1:
                raise InputError(
                    f"{path} has {src.count} bands: colour-coded labels need {options} (known datasets: {known})"
                )
            try:
                table = {i: tuple(rgba[:3]) for i, rgba in src.colormap(1).items()}
            except ValueError:  # no colour table: class ids
                continue
        if first is None:
            first = (path, table)  # type: ignore[assignment]
            continue
        differs = sorted(i for i in set(first[1]) & set(table) if first[1][i] != table[i])
        if differs:
            i = differs[0]
            raise InputError(
                f"labels {first[0]} and {path} are paletted with different colour tables (index {i} is "
                f"{_hex(first[1][i])} in one, {_hex(table[i])} in the other): their indices are not class "
                f"ids; pass {options} to decode the colours (known datasets: {known})"
            )


def _hex(rgb: tuple[int, ...]) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb[:3])


def expand_colormap(src: rasterio.io.DatasetReader, band: np.ndarray) -> np.ndarray:
    """Expand a paletted band (H, W) through the file's colour table to (3, H, W) RGB.

    A single band without a colour table is returned as (1, H, W): not colour-coded.
    """
    try:
        table = src.colormap(1)
    except ValueError:
        return band[None]
    lut = np.zeros((256, 3), np.uint8)
    for index, rgba in table.items():
        if index < 256:
            lut[index] = rgba[:3]
    return np.moveaxis(lut[band], -1, 0)


def load_palette(path: str | Path) -> LabelDataset:
    """A colour-coded dataset from a palette JSON file (``--palette FILE``).

    Format: ``{"name": "survey-2024", "classes": [{"name": "building", "colour": "#3C1098"}, ...]}``;
    class ids follow the list order, colours not listed decode to IGNORE.
    """
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
        entries = data["classes"]
        classes = tuple(str(e["name"]) for e in entries)
        colours = tuple(hex_rgb(str(e["colour"])) for e in entries)
    except FileNotFoundError:
        raise InputError(f"palette file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise InputError(f"bad palette file {path}: {exc!r}; expected {load_palette.__doc__}") from exc
    if not classes or len(set(colours)) != len(colours) or len(classes) > 255:
        raise InputError(f"bad palette file {path}: needs 1..255 classes with distinct colours")
    return LabelDataset(
        name=str(data.get("name", path.stem)),
        classes=classes,
        colours=colours,
        source=f"palette file {path}",
        palette={c: i for i, c in enumerate(colours)},
    )
