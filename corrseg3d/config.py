"""Typed training configuration: YAML files validated against a dataclass schema.

A configuration file is a YAML mapping with the sections of :class:`Config` (``model``,
``data``, ``augment``, ``loss``, ``optim``, ``train``, ``validation``); every section and key is
optional and falls back to the defaults below, which are the paper's AC3/AC4 settings
(docs/method.md §8-9). Validation is strict:

* an unknown key raises :class:`ConfigError` naming the key, its dotted path and the closest
  valid key (``difflib.get_close_matches``);
* a value of the wrong type raises :class:`ConfigError` naming the path, the expected type and
  the value (``int`` is accepted where ``float`` is expected, ``bool`` never counts as a number).

Command-line overrides ``key.sub=value`` are parsed as YAML scalars (``train.iterations=10``,
``loss.ccm=false``, ``model.filters=[8,8,16,16,32]``); an integer path component indexes a list
(``data.sources.0.weight=2``).

Numbers follow YAML 1.2 in files and overrides (:class:`ConfigLoader`): ``1e-4`` is a float,
``010`` is ten, and ``1:00`` or ``1_000`` are not numbers (YAML 1.1, PyYAML's default, reads them
as 60, 8 and 1000).

Slice ranges are ``[start, stop)`` in z, Python-style (``stop`` may be null = end of volume).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, Union

import yaml

from emcore.conventions import DEFAULT_STRIDES, PEA_OFFSETS, finite_positive, validate_offsets
from emcore.regiongraph import DEFAULT_BETA, DEFAULT_MIN_SIZE
from emcore.supervoxels import SupervoxelSettings

INT_TAG, FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"

__all__ = [
    "ConfigError",
    "ConfigLoader",
    "build_dataclass",
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
    "to_dict",
    "load_config",
    "read_yaml_mapping",
    "apply_overrides",
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


class ConfigError(ValueError):
    """The configuration does not match the schema; the message names the offending path."""


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 (core schema) numbers instead of YAML 1.1's.

    Integers are ``[-+]?[0-9]+`` (decimal, leading zeros allowed), ``0o[0-7]+`` or
    ``0x[0-9a-fA-F]+``; floats are ``[-+]?(.[0-9]+|[0-9]+(.[0-9]*)?)([eE][-+]?[0-9]+)?``,
    ``.inf`` and ``.nan``. So ``1e-4`` is a float and ``010``, ``1:00`` and ``1_000`` are not
    YAML 1.1's octal, base-60 and underscored numbers. Booleans and null are unchanged.
    """

    yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag not in (INT_TAG, FLOAT_TAG)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0) if text.lstrip("+-")[:2].lower() in ("0o", "0x") else int(text, 10)


ConfigLoader.add_implicit_resolver(INT_TAG, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                   list("-+0123456789"))
ConfigLoader.add_implicit_resolver(
    FLOAT_TAG, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                          r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))
ConfigLoader.add_constructor(INT_TAG, _construct_int)


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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _numbers(text: str, path: str) -> list[int | float]:
    """``"16,128,128"`` -> [16, 128, 128] (ints where they parse as such, else floats)."""
    values: list[int | float] = []
    for part in text.split(","):
        try:
            values.append(int(part))
        except ValueError:
            try:
                values.append(float(part))
            except ValueError:
                raise ConfigError(f"{path}: expected comma-separated numbers or a list, got {text!r}") from None
    return values


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the type annotation ``tp`` and convert it (lists to tuples...); a
    tuple of numbers or of names may also be given as comma-separated text (``"16,128,128"``)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple and isinstance(value, str) and all(a in (int, float, Ellipsis) for a in args):
        value = _numbers(value, path)  # "16,128,128", as the command-line option is written
    if origin is tuple and isinstance(value, str) and args == (str, Ellipsis):
        value = [name.strip() for name in value.split(",") if name.strip()]  # "decoder.3,out"
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list ({_type_name(tp)}), got {value!r}")
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            items = [_convert(v, args[0], f"{path}.{i}") for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values ({_type_name(tp)}), got {value!r}")
            items = [_convert(v, a, f"{path}.{i}") for i, (v, a) in enumerate(zip(value, args))]
        return items if origin is list else tuple(items)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
            raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def build_dataclass(cls: type, values: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, converting and checking every value by its type hint.

    Unknown keys raise :class:`ConfigError` naming the dotted key (prefixed by ``path``) and the
    closest valid one; nested dataclasses, tuples, lists and literals are converted recursively. A
    string given for a field with a ``parse`` function in its metadata (a stage option read from text
    on the command line, e.g. ``ignore_gt: 0,5`` or ``none``) is parsed by it first.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in values.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {(path + '.' if path else '') + close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown key {where!r}{hint}")
        parse = fields[key].metadata.get("parse")
        if parse is not None and isinstance(value, str):  # a field read from text as on its command line
            try:
                value = parse(value)
            except ValueError as error:
                raise ConfigError(f"{where}: {error}") from None
        kwargs[key] = _convert(value, hints[key], where)
    return cls(**kwargs)


def from_dict(values: dict[str, Any]) -> Config:
    """Validate a plain mapping (as loaded from YAML) and build a :class:`Config`."""
    return build_dataclass(Config, values, "")


def to_dict(config: Any) -> dict[str, Any]:
    """The configuration as plain YAML/JSON-serialisable data (tuples become lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping.

    Intermediate mappings are created as needed; integer components index lists. The result is
    validated later by :func:`from_dict`, so a misspelt key is reported there.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        *parents, last = key.split(".")
        node: Any = values
        for part in parents:
            if isinstance(node, list):
                node = node[_list_index(node, part, key)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise ConfigError(f"override {item!r}: {part!r} is inside a value that is not a mapping")
        value = yaml.load(text, Loader=ConfigLoader)
        if isinstance(node, list):
            node[_list_index(node, last, key)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {item!r}: {'.'.join(parents)} is not a mapping")
    return values


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {key!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def read_yaml_mapping(path: str | Path, example: str, *,
                      prepare: Callable[[yaml.Node], None] | None = None) -> dict[str, Any]:
    """The top-level mapping of a YAML file.

    Parameters
    ----------
    path
        The YAML file.
    example
        How to get such a file, ending the message when it is missing.
    prepare
        Called with the composed node tree before the values are built (to retag nodes).

    Raises
    ------
    ConfigError
        The file is missing, is not valid YAML (naming the line and column), or its top level is
        not a mapping of sections.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist: {example}")
    loader = None
    try:
        loader = ConfigLoader(path.read_text())
        node = loader.get_single_node()
        if node is not None and prepare is not None:
            prepare(node)
        values: Any = (loader.construct_document(node) if node is not None else None) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        hint = ("; put a value that contains ': ' or ends in ':' in quotes, e.g. roi: \"0:8,:,:\""
                if "mapping values are not allowed" in problem else "")
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}{hint}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return values


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply overrides."""
    values = read_yaml_mapping(path, "give one of configs/*.yaml") if path is not None else {}
    return from_dict(apply_overrides(values, overrides))
