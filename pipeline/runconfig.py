"""Typed configuration of a whole run (``python -m pipeline.run run.yaml``): one YAML file.

Sections: ``input``, ``output``, ``predict``, ``segment``, ``evaluate``, ``execution`` and
``slurm``; every key is optional and falls back to the defaults below (``python -m pipeline.run
--print-default-config`` prints them, commented). Validation reuses the training config's schema
checker (:mod:`corrseg3d.config`): an unknown key is an error naming its dotted path and the
closest valid key, a wrong type names the expected type.

Relative paths in the file are resolved against the folder of the YAML file, so a run behaves
the same whatever the working directory (SLURM tasks start in the submit directory).
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Sequence

import yaml

from corrseg3d.config import ConfigError, apply_overrides, build_dataclass, read_yaml_mapping, to_dict

from .predict import DEFAULT_BLOCK, DEFAULT_HALO, DEFAULT_VOXEL_SIZE_TOLERANCE, PredictOptions
from .segment import DEFAULT_MIN_SIZE, SegmentOptions

__all__ = ["ConfigError", "InputConfig", "OutputConfig", "PredictConfig", "SegmentConfig", "EvaluateConfig",
           "ExecutionConfig", "SlurmConfig", "RunConfig", "load_run_config", "default_config_yaml", "to_dict"]


@dataclass
class InputConfig:
    """The raw EM volume: ``raw`` is ``vol.zarr`` (with ``dataset``), ``vol.zarr/NAME`` or ``precomputed://URL``."""

    raw: str = ""
    dataset: str = "raw"


@dataclass
class OutputConfig:
    """Where results go: datasets inside ``store`` (default: the raw volume's store).

    ``run_dir`` holds the run's own files (scores, SLURM scripts and logs); default
    ``STORE/.corrseg3d/run``.
    """

    store: str | None = None
    affinities: str = "affinities"
    fragments: str = "fragments"
    segmentation: str = "segmentation"
    run_dir: str | None = None


@dataclass
class PredictConfig:
    """Options of :class:`pipeline.predict.PredictOptions` (``checkpoint: null`` = shipped weights,
    ``voxel_size: null`` = the voxel size the raw volume states, z, y, x in nm)."""

    checkpoint: str | None = None
    block: tuple[int, int, int] = DEFAULT_BLOCK
    halo: tuple[int, int, int] = DEFAULT_HALO
    dtype: Literal["uint8", "float16"] = "uint8"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    tta: bool = False
    batch_size: int = 1
    threads: int = 0
    voxel_size: tuple[float, float, float] | None = None
    voxel_size_tolerance: float = DEFAULT_VOXEL_SIZE_TOLERANCE
    resample: bool = True

    def options(self) -> PredictOptions:
        return PredictOptions(checkpoint=self.checkpoint, block_shape=self.block, halo=self.halo, dtype=self.dtype,
                              precision=self.precision, tta=self.tta, batch_size=self.batch_size, device=self.device,
                              threads=self.threads, voxel_size=self.voxel_size,
                              voxel_size_tolerance=self.voxel_size_tolerance, resample=self.resample)


@dataclass
class SegmentConfig:
    """Options of :class:`pipeline.segment.SegmentOptions` (``block``/``halo`` null = the stage's defaults)."""

    method: Literal["mws", "waterz", "multicut"] = "mws"
    block: tuple[int, int, int] | None = None
    halo: tuple[int, int, int] | None = None
    strides: tuple[int, int, int] = (1, 4, 4)
    randomize_seed: int | None = None
    threshold: float = 0.5
    majority: float = 0.5
    min_size: int = DEFAULT_MIN_SIZE
    merge_floor: float = 0.0
    consecutive: bool = False
    dtype: Literal["uint64", "uint32"] = "uint64"

    def options(self) -> SegmentOptions:
        return SegmentOptions(method=self.method, block_shape=self.block, halo=self.halo, strides=self.strides,
                              randomize_seed=self.randomize_seed, threshold=self.threshold, majority=self.majority,
                              min_size=self.min_size, merge_floor=self.merge_floor, consecutive=self.consecutive,
                              dtype=self.dtype)


@dataclass
class EvaluateConfig:
    """Scoring against ground truth; skipped when ``gt`` is null. Voxels with a label in
    ``ignore_gt`` (GT) or ``ignore_seg`` (segmentation), or 0 in ``mask``, are not evaluated."""

    gt: str | None = None
    gt_dataset: str = "labels"
    ignore_gt: list[int] = field(default_factory=lambda: [0])
    ignore_seg: list[int] = field(default_factory=list)
    mask: str | None = None
    roi: str | None = None


@dataclass
class ExecutionConfig:
    """How blocks run: ``scheduler`` threads, processes, synchronous or ``tcp://HOST:PORT``; ``cluster: slurm``
    starts a dask-jobqueue SLURMCluster of ``workers`` jobs (options from the ``slurm`` section) instead."""

    scheduler: str = "threads"
    workers: int | None = None
    cluster: Literal["none", "slurm"] = "none"


@dataclass
class SlurmConfig:
    """sbatch options for ``python -m pipeline.slurm submit`` and ``execution.cluster: slurm``.

    ``max_array`` null = the cluster's MaxArraySize (``scontrol show config``); ``setup`` lines
    run in every batch script before the pipeline (e.g. ``module load cuda``); ``extra`` are
    further ``#SBATCH`` options (``--qos=long``).
    """

    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"
    mem: str = "16G"
    cpus: int = 4
    gpus: int = 0
    max_array: int | None = None
    setup: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """The whole run configuration."""

    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    @property
    def store(self) -> str:
        """The output store (``vol.zarr``)."""
        from .store import split_location

        return self.output.store or split_location(self.input.raw)[0]

    @property
    def run_dir(self) -> str:
        return self.output.run_dir or os.path.join(self.store, ".corrseg3d", "run")

    def location(self, name: str) -> str:
        """``STORE/<dataset>`` of output ``name`` (affinities, fragments or segmentation)."""
        return f"{self.store}/{getattr(self.output, name)}"


def _absolute(path: str | None, base: Path) -> str | None:
    if path is None or "://" in path or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def _resolve_paths(config: RunConfig, base: Path) -> RunConfig:
    return replace(
        config,
        input=replace(config.input, raw=_absolute(config.input.raw, base)),
        output=replace(config.output, store=_absolute(config.output.store, base),
                       run_dir=_absolute(config.output.run_dir, base)),
        predict=replace(config.predict, checkpoint=_absolute(config.predict.checkpoint, base)),
        evaluate=replace(config.evaluate, gt=_absolute(config.evaluate.gt, base),
                         mask=_absolute(config.evaluate.mask, base)),
    )


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read and validate a run YAML, apply ``key.sub=value`` overrides, make paths absolute.

    Raises
    ------
    ConfigError
        Missing file, unknown key (with the closest valid one), wrong type, or no ``input.raw``.
    """
    path = Path(path)
    values = read_yaml_mapping(path, "write one with `python -m pipeline.run --print-default-config > run.yaml`")
    config = build_dataclass(RunConfig, apply_overrides(values, overrides))
    if not config.input.raw:
        raise ConfigError(f"{path}: input.raw is required (e.g. input: {{raw: vol.zarr/raw}})")
    return _resolve_paths(config, path.resolve().parent)


def _comment(cls: type) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(" ".join((cls.__doc__ or "").split()), 98)]


def default_config_yaml(*, slurm: SlurmConfig | None = None) -> str:
    """The default configuration as commented YAML (each section preceded by its description).

    ``slurm`` replaces the default ``slurm`` section (``pipeline.run --print-default-config`` passes
    one fitted to the reachable cluster, :func:`pipeline.slurmlimits.fitted_slurm_defaults`).
    """
    lines = ["# corrseg3d run configuration: python -m pipeline.run run.yaml",
             "# Relative paths are relative to this file's folder. Unknown keys are errors."]
    defaults = RunConfig() if slurm is None else RunConfig(slurm=slurm)
    if defaults.slurm != SlurmConfig():
        lines.append("# slurm: cpus, mem and time shrunk to fit the SLURM cluster this file was generated on.")
    values = to_dict(defaults)
    values["input"]["raw"] = "vol.zarr"
    for name, section in values.items():
        lines += [""] + _comment(type(getattr(defaults, name)))
        lines += yaml.safe_dump({name: section}, sort_keys=False, default_flow_style=None).rstrip().splitlines()
    return "\n".join(lines) + "\n"
