"""Typed training configuration: YAML files validated against a dataclass schema.

A configuration file is a YAML mapping with the sections of :class:`Config` (``model``,
``data``, ``augment``, ``loss``, ``optim``, ``train``, ``validation``); every section and key is
optional and falls back to the defaults below, which are the paper's AC3/AC4 settings
(docs/method.md §8-9). Validation is strict (:mod:`corrseg3d.typed_yaml`: unknown keys and values
of the wrong type are refused naming their dotted path; YAML 1.2 numbers; command-line overrides
``key.sub=value``, e.g. ``train.iterations=10`` or ``data.sources.0.weight=2``), and the checks
across keys below (:class:`Config`) name the setting to change.

Slice ranges are ``[start, stop)`` in z, Python-style (``stop`` may be null = end of volume).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from emcore.conventions import DEFAULT_STRIDES, PEA_OFFSETS, finite_positive, validate_offsets
from emcore.regiongraph import DEFAULT_BETA, DEFAULT_MIN_SIZE
from emcore.supervoxels import SupervoxelSettings

from .typed_yaml import ConfigError, apply_overrides, build_dataclass, read_yaml_mapping

__all__ = [
    "ConfigError",
    "ModelConfig",
    "SourceConfig",
    "DataConfig",
    "AugmentConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "ValidVolumeConfig",
    "ValidationConfig",
    "Config",
    "from_dict",
    "load_config",
    "check_unet_filters",
    "source_probabilities",
    "PREDICT_BLOCK",
    "PREDICT_HALO",
]

#: Default tiling of blockwise prediction, (z, y, x): output block (= storage chunk) and context
#: halo per side, used by ``pipeline.predict`` and by validation during training. The block bounds
#: peak memory (about 0.8-0.9 KiB per evaluated voxel in fp32: 5.1 GiB per process, 13.4 GiB at
#: 32x512x512, which is 16 % faster on one CPU thread; about half under bf16;
#: ``benchmarks/predict.py``), so two processes fit a 16 GB node.
PREDICT_BLOCK: tuple[int, int, int] = (32, 256, 256)
PREDICT_HALO: tuple[int, int, int] = (8, 48, 48)


def check_unet_filters(filters: Sequence[int]) -> tuple[int, ...]:
    """The U-Net's channel widths as integers, one per level (``f0`` at full resolution ... ``f4``).

    Raises
    ------
    ValueError
        Not five widths, or a width below 1.
    """
    widths = tuple(int(f) for f in filters)
    if len(widths) != 5 or min(widths) < 1:
        raise ValueError(f"must be five positive widths (one per U-Net level), got {list(widths)}")
    return widths


def source_probabilities(weights: Sequence[float]) -> list[float]:
    """Sampling probability of each training source, ``p_i = w_i / sum_j w_j``.

    Raises
    ------
    ValueError
        A weight is negative, or the weights sum to 0 (no source would ever be drawn).
    """
    weights = [float(w) for w in weights]
    if min(weights, default=0.0) < 0 or sum(weights) <= 0:
        raise ValueError(f"the weights must be non-negative with a positive sum, got {weights}; "
                         f"give at least one source a positive weight")
    return [w / sum(weights) for w in weights]


@dataclass
class ModelConfig:
    """Keyword arguments of :class:`corrseg3d.model.ResidualUNet3D` (see its docstring)."""

    in_channels: int = 1
    filters: tuple[int, ...] = (28, 36, 48, 64, 80)
    embedding_dim: int = 16
    pyramid_heads: bool = True
    norm: str = "batch"
    bn_momentum: float = 0.001
    head: Literal["embedding", "affinity"] = "embedding"
    n_affinities: int = 12
    upsample_align_corners: bool = True


@dataclass
class SourceConfig:
    """One training volume pair, sampled with probability proportional to ``weight``.

    ``raw``/``labels`` are :func:`emcore.store.open_volume` locations (``vol.zarr/raw``).
    ``labels_2d`` marks labels that are only consistent within a slice (label attribute
    ``labels_2d``; null = read it from the labels' attributes): only in-plane affinity channels
    are supervised for such a source (``channel_mask``).
    ``voxel_size`` is the source's (z, y, x) voxel size in nm; null = the raw volume's (OME-Zarr
    scale, ``voxel_size`` attribute or precomputed ``resolution``). It is recorded, not
    resampled: patches are sampled on the source's own grid.
    ``predict_natively`` false keeps the source's voxel size out of the checkpoint's
    ``trained_voxel_sizes``: the source still trains the model, but ``pipeline.predict``
    resamples an input of that voxel size to the model's ``voxel_size`` instead of running the
    network on its grid (for a resolution that helps training more than it predicts well). It has
    no effect when that voxel size is the model's own or another (native) source's: those stay
    in the list.
    """

    raw: str = ""
    labels: str = ""
    slices: tuple[int, int | None] = (0, None)
    weight: float = 1.0
    labels_2d: bool | None = None
    voxel_size: tuple[float, float, float] | None = None
    predict_natively: bool = True


@dataclass
class DataConfig:
    """Training data: sources, patch size and the context cropped around each patch.

    ``context`` (z, y, x) is read on each side of the patch before augmentation and cropped off
    after it, so rotations and elastic warps never pull empty corners into the patch
    (the paper uses 50 px in xy: an 18x260x260 crop for an 18x160x160 patch).

    ``voxel_size`` (z, y, x, nm) is the voxel size the model is trained at, recorded in its
    checkpoints (``pipeline.predict`` resamples inputs of other voxel sizes to it); null = the
    voxel size of the source with the highest ``weight`` (the first of equals).
    """

    sources: list[SourceConfig] = field(default_factory=list)
    voxel_size: tuple[float, float, float] | None = None
    patch: tuple[int, int, int] = (18, 160, 160)
    context: tuple[int, int, int] = (0, 50, 50)
    #: Let training slices overlap the validation slices of the same volume (refused by default).
    allow_validation_overlap: bool = False


@dataclass
class AugmentConfig:
    """Augmentation probabilities and strengths (see :mod:`corrseg3d.augment`).

    ``chain`` is the probability that the primary augmentation chain runs at all; each op then
    runs independently with its own probability. The paper's effective per-op probability is
    ``0.5 * 0.5 = 0.25`` (docs/method.md §8): ``chain: 0.5`` and each op ``0.5``.
    ``ccm_*`` switch the transforms of the cross-correlation view (docs/method.md §4).
    """

    chain: float = 0.5
    flip: float = 0.5
    rotate: float = 0.5
    elastic: float = 0.5
    elastic_alpha: float = 16.0
    elastic_sigma: float = 4.0
    intensity: float = 0.5
    intensity_contrast: float = 0.3
    intensity_brightness: float = 0.3
    intensity_per_slice: float = 0.5
    missing_section: float = 0.0
    missing_section_max: int = 2
    misalignment: float = 0.0
    misalignment_max_shift: int = 10
    ccm_intensity: bool = True
    ccm_cutout: bool = True
    ccm_flip: bool = True


@dataclass
class LossConfig:
    """Loss terms (ablation switches), recipe levers and the affinity offsets.

    ``scm``, ``ccm`` and ``epm`` switch the self-correlation, cross-correlation and
    embedding-pyramid terms. The levers default to the paper's behaviour:

    * ``class_weight_cap`` -- upper bound of the class-balancing weights
      (:func:`corrseg3d.targets.balance_weights`); null = the paper's (up to 19 for rare
      positives, 99 for rare negatives), 1 = unweighted MSE;
    * ``mean_embedding`` -- weight of the anti-collapse term
      (:func:`corrseg3d.losses.mean_embedding_penalty`); 0 = off;
    * ``flip_distill`` -- weight of the flip-distillation term (:mod:`corrseg3d.losses`): the
      frozen teacher is ``train.init_from``'s network, which must be set; 0 = off.
    """

    scm: bool = True
    ccm: bool = True
    epm: bool = True
    class_weight_cap: float | None = None
    mean_embedding: float = 0.0
    flip_distill: float = 0.0
    offsets: list[tuple[int, int, int]] = field(default_factory=lambda: [tuple(o) for o in PEA_OFFSETS])


@dataclass
class OptimConfig:
    """Adam settings; the paper's are unusual on purpose (eps 0.01, amsgrad; docs/method.md §9).

    ``lr_schedule: constant`` (the paper) keeps ``lr``; ``cosine`` anneals it from ``lr`` at the
    first iteration of the run to ``lr_min`` at ``train.iterations``
    (:func:`corrseg3d.train.learning_rate`).
    """

    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine"] = "constant"
    lr_min: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 0.01
    weight_decay: float = 1e-6
    amsgrad: bool = True


@dataclass
class TrainConfig:
    """Loop settings. ``precision: auto`` = bf16 autocast on a CPU with native bf16
    (AVX512-BF16/AMX) or a bf16-capable GPU, fp16 on other GPUs, fp32 otherwise."""

    iterations: int = 200_000
    batch_size: int = 2
    num_workers: int = 2
    seed: int = 555
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    threads: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000
    #: Checkpoint whose weights initialise the model (fine-tuning; "" = kaiming init). Its
    #: architecture tensors and offsets must match this config; optimizer and iteration start fresh.
    init_from: str = ""
    #: BatchNorm layers normalise with their running statistics and keep them (eval mode) while
    #: every weight, the BatchNorm scales and shifts included, trains: for fine-tuning at a batch too
    #: small for reliable batch statistics (the CPU recipe's batch 1 from GPU-trained weights).
    freeze_batchnorm: bool = False
    #: Prefixes of the parameter names that train (e.g. ``[decoder.3, embed_out, out]``, or the text
    #: ``decoder.3,embed_out,out``); empty: all. The other parameters keep their values, and the
    #: BatchNorm layers among them their running statistics: fine-tuning of the last layers only.
    trainable: tuple[str, ...] = ()


@dataclass
class ValidVolumeConfig:
    """A validation volume: ``raw``/``labels`` locations and a z slice range ``[start, stop)``."""

    raw: str = ""
    labels: str = ""
    slices: tuple[int, int | None] = (0, None)
    labels_2d: bool | None = None


@dataclass
class ValidationConfig:
    """Validation by the real post-processing: affinities -> segmentation -> VOI/ARAND.

    Volumes are predicted with :func:`corrseg3d.inference.predict_volume`: blocks of ``block``
    voxels, each with ``halo`` voxels of context (reflect-padded at the volume border), the same
    tiling as ``pipeline.predict``. ``method: multicut`` segments them as ``pipeline.segment``'s
    default does (:func:`emcore.regiongraph.multicut_segmentation`: per-slice supervoxels with
    ``supervoxels``' settings, multicut with boundary bias ``beta``, size merging below ``min_size``
    voxels; the defaults are ``pipeline.segment``'s); ``mws`` runs
    mutex watershed with ``mws_strides``. Volumes with 2D labels are segmented slice by slice by
    mutex watershed (in-plane channels) either way. The best checkpoint by mean VOI is kept.
    """

    every: int = 1000
    volumes: list[ValidVolumeConfig] = field(default_factory=list)
    block: tuple[int, int, int] = PREDICT_BLOCK
    halo: tuple[int, int, int] = PREDICT_HALO
    method: Literal["multicut", "mws"] = "multicut"
    beta: float = DEFAULT_BETA
    min_size: int = DEFAULT_MIN_SIZE
    supervoxels: SupervoxelSettings = field(default_factory=SupervoxelSettings)
    mws_strides: tuple[int, int, int] = DEFAULT_STRIDES


@dataclass
class Config:
    """The whole training configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        try:
            validate_offsets(self.loss.offsets)
        except ValueError as error:
            raise ConfigError(f"loss.offsets: {error}") from None
        if self.model.head == "affinity" and self.model.n_affinities != len(self.loss.offsets):
            raise ConfigError(
                f"model.n_affinities ({self.model.n_affinities}) must equal the number of loss.offsets "
                f"({len(self.loss.offsets)}) for the affinity head"
            )
        if self.loss.flip_distill > 0 and (not self.train.init_from or self.model.head != "embedding"):
            raise ConfigError("loss.flip_distill distils a teacher's flips into an embedding network: it needs "
                              "model.head: embedding and train.init_from (the teacher's checkpoint), or set it to 0")
        if self.loss.epm and not self.model.pyramid_heads:
            raise ConfigError("loss.epm needs model.pyramid_heads: true (or set loss.epm: false)")
        if any(p % 16 for p in self.data.patch[1:]):
            raise ConfigError("data.patch must be a multiple of 16 in y and x")
        if not 0.0 < self.validation.beta < 1.0:
            raise ConfigError(f"validation.beta must be in (0, 1) (the multicut cost bias is log((1 - beta) / beta)), "
                              f"got {self.validation.beta}")
        for name, requirement in self.validation.supervoxels.problems():
            raise ConfigError(f"validation.supervoxels.{name} {requirement}, got "
                              f"{getattr(self.validation.supervoxels, name)}")
        for path, value, least in _lower_bounds(self):
            if not value >= least:  # also refuses NaN
                raise ConfigError(f"{path} must be >= {least}, got {value}")
        for path, value in _probabilities(self.augment):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{path} is a probability: it must be in [0, 1], got {value}")
        try:
            check_unet_filters(self.model.filters)
        except ValueError as error:
            raise ConfigError(f"model.filters {error}") from None
        if self.data.sources:
            try:
                source_probabilities([source.weight for source in self.data.sources])
            except ValueError as error:
                raise ConfigError(f"data.sources: {error}") from None
        sizes = [("data.voxel_size", self.data.voxel_size)]
        sizes += [(f"data.sources.{i}.voxel_size", s.voxel_size) for i, s in enumerate(self.data.sources)]
        for path, size in sizes:
            if size is not None and not finite_positive(size, 3):
                raise ConfigError(f"{path} must be three finite positive numbers (z, y, x in nm), got {list(size)}")


def _lower_bounds(config: Config) -> list[tuple[str, float, float]]:
    """(path, value, smallest allowed value) of the settings that are counts, sizes or rates."""
    train, data = config.train, config.data
    bounds = [("model.embedding_dim", config.model.embedding_dim, 1),
              ("train.iterations", train.iterations, 1), ("train.batch_size", train.batch_size, 1),
              ("train.num_workers", train.num_workers, 0), ("train.threads", train.threads, 0),
              ("train.log_every", train.log_every, 1), ("train.checkpoint_every", train.checkpoint_every, 1),
              ("validation.every", config.validation.every, 1), ("validation.min_size", config.validation.min_size, 0),
              ("optim.lr", config.optim.lr, 0), ("loss.mean_embedding", config.loss.mean_embedding, 0),
              ("loss.flip_distill", config.loss.flip_distill, 0)]
    bounds += [(f"data.patch.{i}", v, 1) for i, v in enumerate(data.patch)]
    bounds += [(f"data.context.{i}", v, 0) for i, v in enumerate(data.context)]
    bounds += [(f"data.sources.{i}.weight", s.weight, 0) for i, s in enumerate(data.sources)]
    validation = config.validation
    for name, least in (("block", 1), ("halo", 0), ("mws_strides", 1)):
        bounds += [(f"validation.{name}.{i}", v, least) for i, v in enumerate(getattr(validation, name))]
    return bounds


def _probabilities(augment: AugmentConfig) -> list[tuple[str, float]]:
    """(path, value) of the augmentation settings that are probabilities."""
    names = ("chain", "flip", "rotate", "elastic", "intensity", "intensity_per_slice", "missing_section",
             "misalignment")
    return [(f"augment.{name}", getattr(augment, name)) for name in names]


def from_dict(values: dict[str, Any]) -> Config:
    """Validate a plain mapping (as loaded from YAML) and build a :class:`Config`."""
    return build_dataclass(Config, values, "")


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply overrides."""
    values = read_yaml_mapping(path, "give one of configs/*.yaml") if path is not None else {}
    return from_dict(apply_overrides(values, overrides))
