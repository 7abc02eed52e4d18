"""Typed configurations of every stage, kept apart from the code that runs them.

Each stage's public entry point takes one of these. They validate themselves
(`validate()` raises ConfigError), so parameters that arrive from a deployment or
the command line are checked before any work starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, get_args

from geoseg.errors import ConfigError

__all__ = [
    "METHODS",
    "METHOD_SETTINGS",
    "MIN_PATCH_SIZE",
    "PADDINGS",
    "PRECISIONS",
    "WEIGHT_EMA_DEFAULTS",
    "AlignConfig",
    "BaselineConfig",
    "EvaluateConfig",
    "IngestConfig",
    "Padding",
    "Precision",
    "PromotionConfig",
    "RunConfig",
    "SegmentConfig",
    "SuperpixelConfig",
    "TrainConfig",
    "VectorizeConfig",
    "path_fields",
]

# The network's arithmetic at inference (SegmentConfig.precision, geoseg.inference).
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# How 3x3 convolutions fill their border (TrainConfig.padding): "zeros" (the papers'), or
# "replicate", under which a convolution cannot tell the border from the inside, so a
# network cannot learn a pattern of absolute position from it (Dimitrov 2021, sources/000,
# section 4.4.1, Figure 4: deep networks satisfy IIC's loss with padding artefacts).
Padding = Literal["zeros", "replicate"]
PADDINGS: tuple[str, ...] = get_args(Padding)

# Field metadata of settings that name a file or folder: callers that must keep every path
# inside allowed roots (the flows) find them with path_fields().
PATH = {"path": True}

# The smallest patch ingest cuts (IngestConfig.patch_size).
MIN_PATCH_SIZE = 8


def path_fields(config: Any) -> list[str]:
    """Names of the settings of a config (instance or class) that are paths."""
    from dataclasses import fields

    return [f.name for f in fields(config) if f.metadata.get("path")]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class IngestConfig:
    """How rasters are cut into a patch store."""

    patch_size: int = 128
    stride: int | None = None  # None: equal to patch_size (no overlap)
    scale: float = 1.0  # resampling factor applied on read (0.5 halves the resolution)
    bands: tuple[int, ...] | None = None  # 1-based band indexes, None: all
    min_valid: float = 0.5  # patches with a smaller valid fraction are dropped
    dataset: str | None = None  # label dataset name (geoseg.datasets) for --labels
    patches_per_shard: int = 64
    workers: int = 2

    @property
    def effective_stride(self) -> int:
        return self.stride or self.patch_size

    def validate(self) -> IngestConfig:
        _require(
            MIN_PATCH_SIZE <= self.patch_size <= 4096,
            f"patch_size must be in [{MIN_PATCH_SIZE}, 4096], got {self.patch_size}",
        )
        _require(1 <= self.effective_stride <= self.patch_size * 4, f"stride out of range: {self.stride}")
        _require(0.01 <= self.scale <= 8.0, f"scale must be in [0.01, 8], got {self.scale}")
        _require(0.0 <= self.min_valid <= 1.0, f"min_valid must be in [0, 1], got {self.min_valid}")
        _require(self.patches_per_shard >= 1, "patches_per_shard must be >= 1")
        _require(self.workers >= 1, "workers must be >= 1")
        if self.bands is not None:
            listed = ",".join(map(str, self.bands))
            _require(len(self.bands) > 0, "bands: give at least one band")
            _require(
                all(b >= 1 for b in self.bands),
                f"bands are numbered from 1 (the first band is 1, as in GDAL), got --bands {listed}",
            )
        return self


# The training methods (geoseg.methods) and the TrainConfig fields each one alone reads.
# A field of another method that is set away from its default is refused by name.
METHODS = ("iic", "picie", "lgmi", "cirs")
METHOD_SETTINGS: dict[str, tuple[str, ...]] = {
    "iic": ("k_a", "subheads", "lamb_a", "lamb_b", "half_t", "head_schedule"),
    "picie": ("trunk", "k2", "kmeans_iters", "kmeans_batch", "embed_dim"),
    "lgmi": ("local_dim", "tau"),
    "cirs": ("a1", "a2", "g_steps", "s_steps", "g_dim", "g_segment_number"),
}


# The moving average of the weights per method where one was measured to help (IIC on the
# Dubai folds: bench/RESULTS.md, "A moving average of the weights"); 0 elsewhere.
WEIGHT_EMA_DEFAULTS: dict[str, float] = {"iic": 0.98}


@dataclass
class TrainConfig:
    """Training settings (defaults: a small CPU-friendly run); see METHOD_SETTINGS for
    which fields belong to one method only."""

    method: str = "iic"
    k: int = 6  # clusters of the main head B (PiCIE: K1)
    k_a: int = 24  # clusters of the over-clustering head A
    subheads: int = 1
    lamb_a: float = 1.0
    lamb_b: float = 1.0
    half_t: int = 5  # displacement half-width T: a (2T+1)^2 window
    lr: float = 1e-4
    batch_size: int = 16
    steps: int = 500
    epochs: int | None = None  # if given, overrides steps
    preset: Literal["iic", "small"] = "small"
    padding: Padding = "zeros"  # every method's convolutions (PiCIE: its iic trunk)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    workers: int = 0
    checkpoint_every: int = 100
    jitter: float = 0.4  # colour jitter strength on RGB bands
    flip: bool = True
    affine: bool = False
    init_from: str | None = field(default=None, metadata=PATH)  # a model bundle to start from (retraining)
    rgb_bands: tuple[int, ...] | None = None  # 1-based R, G, B bands; None: from band names
    head_schedule: Literal["sum", "alternate"] = "sum"  # both heads every step, or A/B in turn
    # networks trained from seeds seed*members .. seed*members+members-1 whose aligned
    # probabilities are averaged (geoseg.models.ensemble); any method
    members: int = 1
    # decay of the moving average of the weights that the bundle keeps (0: the label-free
    # checkpoint selection's weights); None: the method's default (WEIGHT_EMA_DEFAULTS)
    weight_ema: float | None = None
    # PiCIE
    trunk: Literal["iic", "resnet18-fpn"] = "iic"  # embedding trunk
    k2: int = 100  # over-clustering K2
    kmeans_iters: int = 5  # mini-batch k-means iterations per round (warm-started)
    kmeans_batch: int = 8192  # pixel embeddings per k-means mini-batch
    embed_dim: int = 128  # FPN fusion dimension
    # LGMI
    local_dim: int = 64  # P, dimension of the local and global features
    tau: float | None = None  # assignment sharpness; None: 1/sqrt(local_dim) (Harb 2019, 5.4)
    # CIRS
    a1: float = 1.0  # weight of the within-cluster variance of g
    a2: float = 1.0  # weight of the variance of the K cluster means of g
    g_steps: int = 100  # the imbalanced schedule: g trained g_steps mini-batches ...
    s_steps: int = 5  # ... for every s_steps of the segmenter S (Bishop 2020, 7.4)
    g_dim: int = 32  # dimension of g's segment representation
    # g also sees the segment number k as a one-hot (the source does; off won the Dubai folds:
    # with it g meets the loss by the number alone, bench/RESULTS.md)
    g_segment_number: bool = False

    @property
    def effective_weight_ema(self) -> float:
        """The decay of the weights' moving average this run uses (0: none)."""
        return WEIGHT_EMA_DEFAULTS.get(self.method, 0.0) if self.weight_ema is None else self.weight_ema

    def validate(self) -> TrainConfig:
        _require(
            self.method in METHODS, f"unknown method {self.method!r}; known methods: {', '.join(METHODS)}"
        )
        defaults = TrainConfig()
        for other, names in METHOD_SETTINGS.items():
            for name in names if other != self.method else ():
                _require(
                    getattr(self, name) == getattr(defaults, name),
                    f"{name} is a setting of method {other!r}; method {self.method!r} does not use it",
                )
        _require(self.trunk in ("iic", "resnet18-fpn"), f"unknown trunk {self.trunk!r}")
        _require(2 <= self.k2 <= 1024, f"k2 must be in [2, 1024], got {self.k2}")
        _require(self.kmeans_iters >= 1, "kmeans_iters must be >= 1")
        _require(self.kmeans_batch >= 16, "kmeans_batch must be >= 16")
        _require(8 <= self.embed_dim <= 1024, f"embed_dim must be in [8, 1024], got {self.embed_dim}")
        _require(8 <= self.local_dim <= 4096, f"local_dim must be in [8, 4096], got {self.local_dim}")
        _require(self.tau is None or self.tau > 0, f"tau must be > 0, got {self.tau}")
        _require(self.a1 >= 0 and self.a2 > 0, f"need a1 >= 0 and a2 > 0, got {self.a1}, {self.a2}")
        _require(self.g_steps >= 0 and self.s_steps >= 1, "need g_steps >= 0 and s_steps >= 1")
        _require(4 <= self.g_dim <= 1024, f"g_dim must be in [4, 1024], got {self.g_dim}")
        if self.method == "lgmi":
            _require(self.batch_size >= 2, "method 'lgmi' needs batch_size >= 2 (pairs across images)")
        _require(2 <= self.k <= 254, f"k must be in [2, 254], got {self.k}")
        _require(2 <= self.k_a <= 254, f"k_a must be in [2, 254], got {self.k_a}")
        _require(self.subheads >= 1, "subheads must be >= 1")
        _require(1 <= self.members <= 16, f"members must be in [1, 16], got {self.members}")
        _require(
            self.weight_ema is None or 0 <= self.weight_ema < 1,
            f"weight_ema must be in [0, 1), got {self.weight_ema}",
        )
        _require(self.lamb_a > 0 and self.lamb_b > 0, "lambda must be > 0")
        _require(0 <= self.half_t <= 32, f"half_t must be in [0, 32], got {self.half_t}")
        _require(0 < self.lr < 1, f"lr must be in (0, 1), got {self.lr}")
        _require(self.batch_size >= 1, "batch_size must be >= 1")
        _require(self.steps >= 1 or (self.epochs or 0) >= 1, "steps or epochs must be >= 1")
        _require(self.preset in ("iic", "small"), f"unknown preset {self.preset!r}")
        _require(self.padding in PADDINGS, f"unknown padding {self.padding!r}; known: {', '.join(PADDINGS)}")
        _require(
            self.padding == "zeros" or self.method != "picie" or self.trunk == "iic",
            f"padding {self.padding!r} is for PiCIE's iic trunk; {self.trunk} pads with zeros",
        )
        _require(self.device in ("auto", "cpu", "cuda"), f"unknown device {self.device!r}")
        _require(0 <= self.jitter <= 1, "jitter must be in [0, 1]")
        _require(self.checkpoint_every >= 1, "checkpoint_every must be >= 1")
        _require(self.workers >= 0, "workers must be >= 0")
        _require(self.head_schedule in ("sum", "alternate"), f"unknown head_schedule {self.head_schedule!r}")
        if self.rgb_bands is not None:
            _require(len(self.rgb_bands) == 3, f"rgb_bands needs three 1-based bands, got {self.rgb_bands}")
        return self


@dataclass
class VectorizeConfig:
    """Polygonising settings and their bounds: one contract for ``geoseg vectorize``, the
    polygons ``segment`` writes and the flows' vectorize task."""

    min_area: float = 0.0  # sieve: minimum mapping unit in CRS units^2 (0 = off)
    simplify: float = 0.0  # polygon simplification tolerance in CRS units (0 = off)
    block_size: int = 4096  # block side in pixels (one Dask task per block)

    def validate(self) -> VectorizeConfig:
        _require(self.min_area >= 0 and self.simplify >= 0, "min_area and simplify must be >= 0")
        _require(self.block_size >= 64, f"vectorize block size must be >= 64 px, got {self.block_size}")
        return self


@dataclass
class SegmentConfig:
    """Sliding-window inference settings."""

    overlap: float | None = None  # fraction of a window shared with its neighbour (None: what blending needs)
    batch_size: int = 8
    device: Literal["auto", "cpu", "cuda"] = "auto"
    window: int | None = None  # window side in px at the model's scale (None: chosen, geoseg.window_size)
    head: Literal["a", "b"] = "b"
    vectorize: bool = True
    min_area: float = 0.0  # sieve: minimum mapping unit in CRS units^2 (0 = off)
    simplify: float = 0.0  # polygon simplification tolerance in CRS units (0 = off)
    vectorize_block: int = 4096  # vectorize: block side in pixels (one Dask task per block)
    preview_size: int = 2048  # long side of the PNG preview
    refine: Literal["superpixels"] | None = None  # post-process blended probabilities per superpixel
    refine_size: int = 12  # superpixel side in pixels for --refine (SuperpixelConfig.size)
    band_rows: int = 4096  # rows per Dask task when one raster is segmented on a cluster (whole window rows)
    precision: Precision = "fp32"  # bf16: bfloat16 autocast (AMX CPUs, GPUs: several x faster)

    # Read by polygonising only: the cluster and confidence COGs do not depend on them (the
    # segment flow keeps them out of its segment task's cache key).
    POLYGON_FIELDS: ClassVar[tuple[str, ...]] = ("vectorize", "min_area", "simplify", "vectorize_block")

    def vectorize_config(self) -> VectorizeConfig:
        """The polygonising settings of this run (``vectorize_block`` is the block size)."""
        return VectorizeConfig(self.min_area, self.simplify, self.vectorize_block)

    def validate(self) -> SegmentConfig:
        _require(
            self.overlap is None or 0.0 <= self.overlap < 0.9,
            f"overlap must be in [0, 0.9), got {self.overlap}",
        )
        _require(
            self.window is None or 16 <= self.window <= 8192,
            f"window must be in [16, 8192], got {self.window}",
        )
        _require(self.preview_size >= 16, "preview_size must be >= 16")
        _require(self.batch_size >= 1, "batch_size must be >= 1")
        _require(self.device in ("auto", "cpu", "cuda"), f"unknown device {self.device!r}")
        _require(self.head in ("a", "b"), f"head must be 'a' or 'b', got {self.head!r}")
        self.vectorize_config().validate()
        _require(self.refine in (None, "superpixels"), f"unknown refine {self.refine!r}")
        _require(self.refine_size >= 4, f"superpixel size must be >= 4 px, got {self.refine_size}")
        _require(self.band_rows >= 1, f"band_rows must be >= 1, got {self.band_rows}")
        _require(
            self.precision in PRECISIONS,
            f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}",
        )
        return self


@dataclass
class EvaluateConfig:
    """How predictions are scored against ground truth."""

    dataset: str | None = None  # label dataset name (geoseg.datasets)
    palette: str | None = field(default=None, metadata=PATH)  # or a palette JSON (datasets.load_palette)
    ignore: int = 255  # class id (after decoding) never counted; 255 is always ignored
    many_to_one: bool = False  # majority mapping (over-clustering) instead of 1-to-1 Hungarian
    seed: int = 0  # picks the side-by-side sample
    n_examples: int = 4  # side-by-side PNGs written
    block_pixels: int = 1 << 22  # pixels read per block: memory stays bounded on large rasters
    preview_size: int = 768  # long side of each side-by-side panel
    # NMI/ARI are exact from the contingency table: no pixel subsample is needed.

    def validate(self) -> EvaluateConfig:
        _require(0 <= self.ignore <= 255, "ignore must be a uint8 value")
        _require(not (self.dataset and self.palette), "give a dataset or a palette, not both")
        _require(self.n_examples >= 0, "n_examples must be >= 0")
        _require(self.block_pixels >= 1024, "block_pixels must be >= 1024")
        _require(self.preview_size >= 16, "preview_size must be >= 16")
        return self


@dataclass
class BaselineConfig:
    """Label-free baselines (k-means on pixels, a random network): the floor under IIC."""

    k: int = 6
    seed: int = 0
    bands: int | None = None  # use the first N bands (alpha excluded); None: all
    fit_pixels: int = 200_000  # k-means is fitted on a seeded subsample of valid pixels
    block_pixels: int = 1 << 21  # pixels predicted per block
    preset: Literal["iic", "small"] = "small"  # random network width
    tile: int = 512  # random network: window side, predicted with a margin of context
    margin: int = 32

    def validate(self) -> BaselineConfig:
        _require(2 <= self.k <= 254, f"k must be in [2, 254], got {self.k}")
        _require(self.bands is None or self.bands >= 1, f"bands must be >= 1, got {self.bands}")
        _require(self.fit_pixels >= 1000, "fit_pixels must be >= 1000")
        _require(self.block_pixels >= 1024, "block_pixels must be >= 1024")
        _require(self.preset in ("iic", "small"), f"unknown preset {self.preset!r}")
        _require(self.tile >= 32 and 0 <= self.margin < self.tile, "need tile >= 32 and 0 <= margin < tile")
        return self


@dataclass
class SuperpixelConfig:
    """Object-based baseline: SLIC superpixels, then k-means on each segment's statistics."""

    k: int = 6
    seed: int = 0
    bands: int | None = None  # use the first N bands (alpha excluded); None: all
    size: int = 12  # superpixel side in pixels (SLIC grid step); chosen on a validation split
    compactness: float = 10.0  # SLIC colour/space trade-off, on CIELAB rescaled per block
    iterations: int = 5  # SLIC k-means iterations (the SLIC paper: 4-10 suffice)
    block: int = 2048  # superpixels are computed block by block: memory bounded by the block
    halo: int | None = None  # context read around each block (None: 2 x size)
    fit_segments: int = 200_000  # k-means is fitted on a seeded subsample of the segments
    fit_pixels: int = 200_000  # pixels sampled for band statistics (z-scores, RGB white point)

    @property
    def context(self) -> int:
        """The halo in pixels, a multiple of ``size`` so SLIC's seed grid lines up across blocks."""
        halo = 2 * self.size if self.halo is None else self.halo
        return -(-halo // self.size) * self.size

    def validate(self) -> SuperpixelConfig:
        _require(2 <= self.k <= 254, f"k must be in [2, 254], got {self.k}")
        _require(self.bands is None or self.bands >= 1, f"bands must be >= 1, got {self.bands}")
        _require(self.size >= 4, f"superpixel size must be >= 4 px, got {self.size}")
        _require(self.compactness > 0, f"compactness must be > 0, got {self.compactness}")
        _require(1 <= self.iterations <= 100, f"iterations must be in [1, 100], got {self.iterations}")
        _require(
            self.block >= 4 * self.size, f"block must be >= 4 x size ({4 * self.size}), got {self.block}"
        )
        _require(self.halo is None or self.halo >= 0, f"halo must be >= 0, got {self.halo}")
        _require(self.fit_segments >= 100, "fit_segments must be >= 100")
        _require(self.fit_pixels >= 1000, "fit_pixels must be >= 1000")
        return self


@dataclass
class AlignConfig:
    """How a retrained model's cluster ids are matched to the previous model's."""

    share_threshold: float = 0.05  # report clusters whose reference share moved more than this
    window: int = 512  # reference raster window (pixels at the model's scale)
    batch_size: int = 8  # patches per forward pass when the reference is a patch store
    max_patches: int | None = 512  # evenly spaced subsample of a large patch store
    reference_loss: bool = True  # also measure both models' label-free IIC loss on the reference
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def validate(self) -> AlignConfig:
        _require(
            0 < self.share_threshold < 1, f"share_threshold must be in (0, 1), got {self.share_threshold}"
        )
        _require(16 <= self.window <= 8192, f"window must be in [16, 8192], got {self.window}")
        _require(self.batch_size >= 1, "batch_size must be >= 1")
        _require(self.max_patches is None or self.max_patches >= 1, "max_patches must be >= 1")
        _require(self.device in ("auto", "cpu", "cuda"), f"unknown device {self.device!r}")
        return self


@dataclass
class PromotionConfig:
    """The label-free rule a retrained model must pass to replace the promoted one."""

    loss_tolerance: float = 0.05  # new reference loss may exceed the old one by this (nats)
    min_effective_clusters: float = 0.3  # exp(share entropy) must reach this fraction of k
    min_balance_ratio: float = 0.7  # ... and this fraction of the previous model's figure
    min_agreement: float = 0.5  # fraction of reference pixels with the same id after alignment

    def validate(self) -> PromotionConfig:
        _require(self.loss_tolerance >= 0, "loss_tolerance must be >= 0")
        _require(0 < self.min_effective_clusters <= 1, "min_effective_clusters must be in (0, 1]")
        _require(0 <= self.min_agreement <= 1, "min_agreement must be in [0, 1]")
        _require(0 <= self.min_balance_ratio <= 1, "min_balance_ratio must be in [0, 1]")
        return self


@dataclass
class RunConfig:
    """The configs of a whole pipeline run, as a flow or the demo receives them."""

    ingest: IngestConfig = field(default_factory=IngestConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
