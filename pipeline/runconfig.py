"""Typed configuration of a whole run (``python -m pipeline.run run.yaml``): one YAML file.

Sections: ``input``, ``output``, ``predict``, ``segment``, ``evaluate``, ``execution`` and
``slurm``; ``predict`` and ``segment`` are the stages' own options classes
(:class:`pipeline.predict.PredictOptions`, :class:`pipeline.segment.SegmentOptions`: the same
names as their command-line options). Every key is optional and falls back to the defaults below (``python -m pipeline.run
--print-default-config`` prints them, commented). Validation reuses the training config's schema
checker (:mod:`corrseg3d.config`): an unknown key is an error naming its dotted path and the
closest valid key, a wrong type names the expected type.

A string-typed key (``str``, ``str | None``, ``list[str]``) takes its value as written, in the file
(``time: 12:00:00``, ``time: 90``: not numbers) and with ``--set`` (``evaluate.roi=0:8,:,:``,
no YAML parsing; ``null`` still clears an optional one). A file that is not valid YAML is an error
naming the line and column; there a value with ``: `` or a trailing ``:`` needs quotes (``roi: "0:8,:,:"``).

Relative paths in the file are resolved against the folder of the YAML file, so a run behaves
the same whatever the working directory (SLURM tasks start in the submit directory).
"""

from __future__ import annotations

import dataclasses
import math
import os
import textwrap
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from corrseg3d.typed_yaml import ConfigError, apply_overrides, build_dataclass, read_yaml_mapping, to_dict
from emcore.store import PRECOMPUTED_PREFIX, parent_group, split_location

from .evaluate import EvaluateOptions
from .options import rename_deprecated_keys, value_type
from .predict import PredictOptions
from .segment import SegmentOptions

__all__ = ["ConfigError", "InputConfig", "OutputConfig", "EvaluateConfig",
           "ExecutionConfig", "SlurmConfig", "RunConfig", "load_run_config", "default_config_yaml", "to_dict"]


@dataclass
class InputConfig:
    """The raw EM volume: ``raw`` is ``vol.zarr`` (with ``dataset``), ``vol.zarr/NAME`` or ``precomputed://URL``."""

    raw: str = ""
    dataset: str = "raw"


@dataclass
class OutputConfig:
    """Where results go: datasets inside ``store`` (default: the group holding the raw dataset,
    ``vol.zarr`` for ``vol.zarr/raw`` and ``vol.zarr/NAME`` for ``vol.zarr/NAME/raw``).

    ``run_dir`` holds the run's own files (scores, SLURM scripts and logs); default
    ``STORE/.corrseg3d/run``.
    """

    store: str | None = None
    affinities: str = "affinities"
    fragments: str = "fragments"
    segmentation: str = "segmentation"
    run_dir: str | None = None


#: YAML tags of a string and of null.
STR_TAG, NULL_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:null"

#: Old spellings of run-config keys, accepted with a warning for one release: section -> {old: new}.
DEPRECATED_KEYS = {"segment": {"randomize_seed": "randomize_strides"}}


@dataclass(frozen=True)
class EvaluateConfig(EvaluateOptions):
    """Scoring against ground truth ``gt`` (a volume location; scoring is skipped when null) with the
    options of :class:`pipeline.evaluate.EvaluateOptions`."""

    gt: str | None = None


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

    ``partition`` null = the cluster's default partition; ``gpu_partition`` is where the predict
    jobs go (null: ``partition``), so on a cluster with a GPU partition only the network runs
    there. ``max_array`` null = the cluster's MaxArraySize (``scontrol show config``); ``setup``
    lines run in every batch script before the pipeline (e.g. ``module load cuda``); ``extra``
    are further ``#SBATCH`` options (``--qos=long``).
    """

    partition: str | None = None
    gpu_partition: str | None = None
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
    predict: PredictOptions = field(default_factory=PredictOptions)
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    @property
    def store(self) -> str:
        """The output store: ``output.store``, else the group holding the raw dataset (``vol.zarr`` for
        ``vol.zarr/raw``, ``vol.zarr/NAME`` for ``vol.zarr/NAME/raw``), as ``pipeline.predict`` does."""
        if self.output.store:
            return self.output.store
        root, inner = split_location(self.input.raw)
        return parent_group(self.input.raw if inner else f"{root}/{self.input.dataset}")

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


def _child_hint(hint: Any, key: str) -> Any:
    """The type hint of ``key`` inside a value of type ``hint``: a dataclass field, or a list item (``key``
    an index); None when ``key`` names neither."""
    kind = value_type(hint)
    if dataclasses.is_dataclass(kind):
        return typing.get_type_hints(kind).get(key)
    if typing.get_origin(kind) is list and key.isdigit():
        return typing.get_args(kind)[0]
    return None


def _strings_as_written(node: yaml.Node, hint: Any) -> None:
    """Tag every plain scalar of a string-typed key below ``node`` (of type ``hint``) as a string, null aside.

    Otherwise ``time: 90`` would be read as an int and ``time: 1e3`` as a float.
    """
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _strings_as_written(value, _child_hint(hint, str(key.value)))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _strings_as_written(item, _child_hint(hint, str(index)))
    elif value_type(hint) is str and node.style is None and node.tag != NULL_TAG:
        node.tag = STR_TAG


def _string_override(item: str) -> str:
    """The ``key=value`` override ``item`` with a string-typed key's value quoted, so it stays the text
    given (``slurm.time=12:00:00``, ``evaluate.roi=0:99,:,:``); ``null`` stays null (it clears an optional
    string and is refused for a required one)."""
    key, sep, text = item.partition("=")
    hint: Any = RunConfig
    for part in key.split("."):
        hint = _child_hint(hint, part)
    null = yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False)) == NULL_TAG
    if not sep or value_type(hint) is not str or null:
        return item
    quoted = yaml.safe_dump(text, default_style='"', width=math.inf).rstrip()
    return f"{key}={quoted}"


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read and validate a run YAML, apply ``key.sub=value`` overrides, make paths absolute.

    String-typed keys take their values as written, in the file and in ``overrides``.

    Raises
    ------
    ConfigError
        Missing file, not valid YAML (with line and column), unknown key (with the closest valid
        one), wrong type, or no ``input.raw``.
    """
    path = Path(path)
    values = read_yaml_mapping(path, "write one with `python -m pipeline.run --print-default-config > run.yaml`",
                               prepare=lambda node: _strings_as_written(node, RunConfig))
    values = apply_overrides(values, [_string_override(item) for item in overrides])
    for section, renames in DEPRECATED_KEYS.items():
        if isinstance(values.get(section), dict):
            try:
                values[section] = rename_deprecated_keys(values[section], renames, section)
            except ValueError as error:
                raise ConfigError(f"{path}: {error}") from None
    config = build_dataclass(RunConfig, values)
    if not config.input.raw:
        raise ConfigError(f"{path}: input.raw is required (e.g. input: {{raw: vol.zarr/raw}})")
    if config.input.raw.startswith(PRECOMPUTED_PREFIX) and not config.output.store:
        raise ConfigError(f"{path}: input.raw is a precomputed layer, so the affinities, segmentation and run state "
                          "need a zarr store: set output.store (e.g. output: {store: out.zarr})")
    return _resolve_paths(config, path.resolve().parent)


def _comment(cls: type) -> list[str]:
    """A section's comment: the first paragraph of its class docstring, then each option's help text."""
    first = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
    lines = [f"# {line}" for line in textwrap.wrap(first, 98)]
    for item in dataclasses.fields(cls):
        if "help" in item.metadata:
            lines += [f"#{'   ' if i else ' - '}{line}" for i, line in
                      enumerate(textwrap.wrap(f"{item.name}: {item.metadata['help']}", 95))]
    return lines


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
