"""``python -m pipeline.segment vol.zarr``: affinities -> fragments -> region graph -> segmentation.

Phases (each resumable, each splittable over SLURM array tasks with ``--task-index/--num-tasks``):

1. ``fragments`` (per block, :mod:`pipeline.fragments`): segment block + halo, write the inner
   block of ``vol.zarr/fragments`` (uint64, ids ``block << 32 | local``) and a small table.
2. ``stitch``: per block, mutual-majority face joins and cross-face adjacency from the tables
   (:func:`pipeline.stitch.stitch_faces`); then, once all blocks are in, the global union-find,
   agglomeration (waterz, or ``--agglomerate``) or multicut (``--method multicut``) of the region
   graph, and size merging on small tables -> lookup table (:func:`pipeline.stitch.build_lookup`).
3. ``relabel`` (per block, :mod:`pipeline.relabel`): fragments -> ``vol.zarr/segmentation``.

Work files live in ``vol.zarr/.corrseg3d/segment/<output>/``: ``config.json`` (parameters and input
identity; a rerun with a different config is refused unless ``--overwrite``), ``tables/<b>.npz``,
``faces/<b>.npz``, ``lookup.npz`` and per-phase done records ``done/<phase>/<b>.done``, written
after the block's data is durable; reruns skip done blocks. ``complete.json`` is written when the
last relabel block is done; until then ``pipeline.evaluate`` refuses the segmentation.

Every option and the input (dtype, shape, offsets, a sample of the float values, and that the
prediction that wrote it finished) is checked before any output or run state is created.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Any, ClassVar, Literal, Sequence

import numpy as np

from corrseg3d.cli import ArgumentParser, entry_point
from emcore.blocks import BlockGrid, DoneRecords, check_scheduler, run_blocks, task_blocks, write_json_atomic
from emcore.conventions import DEFAULT_STRIDES, halo_shortfall, max_offset, validate_offsets
from emcore.mws import check_affinity_values
from emcore.regiongraph import DEFAULT_BETA, DEFAULT_MIN_SIZE
from emcore.store import VOLUME_ID, StoreError, Volume, check_write_alignment, create_volume, open_volume
from emcore.supervoxels import REFERENCE_SETTINGS, SupervoxelSettings

from .data import parse_numbers
from .fragments import METHODS, FragmentParams, compute_fragments
from .options import add_options, deprecated_flag, option, options_from_args
from .relabel import RelabelParams, relabel_block
from .runstate import (check_claim, check_distinct, claimed, dataset_path, mark_complete, require_finished,
                       unfinished_stage, workdir_for)
from .stage import PhaseProgress
from .stitch import StitchParams, build_lookup, stitch_faces

__all__ = ["DEFAULT_METHOD", "EARLIER_MULTICUT", "SegmentError", "SegmentOptions", "PHASES", "check_options", "segment",
           "supervoxel_options", "main"]

PHASES = ("fragments", "stitch", "relabel")
# Default block (every method): the smallest multiple of the affinity chunk covering this shape.
# With the default halo 4x32x32 a block then segments 1.56x its voxels instead of 1.95x at
# 32x256x256 (measured with mutex watershed: faster at ~0.2 GiB more per worker; README,
# Segmentation benchmark).
MIN_DEFAULT_BLOCK = (32, 512, 512)
OUTPUT_DTYPES = ("uint64", "uint32")
#: Default method, chosen on the validation volumes with the shipped weights (its boundary bias and
#: size merging, and the measurements: :data:`emcore.regiongraph.DEFAULT_MIN_SIZE`).
DEFAULT_METHOD = "multicut"
#: Storage chunks of float affinities whose values are checked before anything is written.
SAMPLE_CHUNKS = 16


class SegmentError(ValueError):
    """Bad input or options for segmentation; the message says what and how to fix it."""


@dataclass(frozen=True)
class SegmentOptions:
    """Parameters that define a segmentation result (all of them are in ``config.json``).

    One declaration for the Python API, the ``segment`` section of a run YAML (same keys) and the
    command line (``--NAME``; :mod:`pipeline.options`).
    """

    method: Literal["mws", "waterz", "multicut"] = option(DEFAULT_METHOD, "segmentation method")
    block: tuple[int, int, int] | None = option(
        None, "z,y,x block (default: the smallest multiple of the affinity chunk covering 32,512,512)",
        example="32,512,512")
    halo: tuple[int, int, int] | None = option(
        None, "z,y,x halo (default: max offset rounded up to a power of two, e.g. 4,32,32)", example="4,32,32")
    strides: tuple[int, int, int] = option(DEFAULT_STRIDES, "mutex edge strides (mws)", example="1,4,4")
    randomize_strides: int | None = option(
        None, "sample mutex edges at random (probability 1/prod(strides)), deterministic for SEED", metavar="SEED")
    threshold: float = option(0.5, "waterz merge threshold: merge while 1 - mean boundary affinity is below it")
    beta: float = option(DEFAULT_BETA, "multicut boundary bias: above 0.5 cuts more, below joins more")
    sv_threshold: float = option(SupervoxelSettings.threshold,
                                 "multicut supervoxels: pixels with 1 - in-plane affinity above it are boundary")
    sv_seed_sigma: float = option(SupervoxelSettings.seed_sigma, "multicut supervoxels: Gaussian sigma (pixels) of "
                                  "the distance map whose maxima seed them (larger: fewer supervoxels)")
    sv_weight_sigma: float = option(SupervoxelSettings.weight_sigma, "multicut supervoxels: Gaussian sigma (pixels) "
                                    "of the boundary map the watershed floods (0: none)")
    sv_min_size: int = option(SupervoxelSettings.min_size, "multicut supervoxels: regions smaller than this many "
                              "pixels join a neighbour in their slice")
    majority: float = option(0.5, "face join rule: overlap > MAJORITY of both labels' halo voxels")
    agglomerate: float | None = option(
        None, "after stitching, merge adjacent segments in order of mean NN affinity on their boundary while it "
        "exceeds MEAN (hierarchical, on the region graph of all blocks; default: none for mws, "
        "1 - --threshold for waterz, which so continues every block's agglomeration over the whole volume)",
        metavar="MEAN")
    min_size: int = option(DEFAULT_MIN_SIZE, "merge segments smaller than this many voxels into the neighbour "
                                       "with the highest mean NN affinity above --merge-floor (0: off)")
    merge_floor: float = option(0.0, "a small segment merges only if its best neighbour's mean NN affinity "
                                "exceeds this")
    consecutive: bool = option(False, "relabel segments 1..K")
    dtype: Literal["uint64", "uint32"] = option("uint64", "output dtype (uint32 needs --consecutive)")

    @property
    def supervoxels(self) -> SupervoxelSettings:
        """The per-slice watershed settings of ``method: multicut`` (the ``sv_*`` options)."""
        return SupervoxelSettings(**{f.name: getattr(self, f"sv_{f.name}") for f in fields(SupervoxelSettings)})


def supervoxel_options(settings: SupervoxelSettings) -> dict[str, float]:
    """The ``sv_*`` keyword arguments of :class:`SegmentOptions` for ``settings``."""
    return {f"sv_{name}": value for name, value in asdict(settings).items()}


#: The multicut's settings in runs started before the defaults were chosen on data (beta 0.5 and the
#: reference's supervoxels, which runs before the ``sv_*`` options did not record): such a run
#: resumes on these values, and a run of another method, which they do not affect, records them.
EARLIER_MULTICUT = {"beta": 0.5, **supervoxel_options(REFERENCE_SETTINGS)}


def check_options(options: SegmentOptions) -> None:
    """Refuse options that are wrong for any input (so ``pipeline.run`` can check them before predicting).

    Messages name the command-line option and the run config key (``--min-size``, ``segment.min_size``).

    Raises
    ------
    SegmentError
        Naming the option, its allowed range and the fix.
    """
    if options.method not in METHODS:
        raise SegmentError(f"unknown method {options.method!r} (--method, segment.method): "
                           f"use one of {', '.join(METHODS)}")
    if options.dtype not in OUTPUT_DTYPES:
        raise SegmentError(f"output dtype {options.dtype!r} (--dtype, segment.dtype) is not allowed: segmentations "
                           f"are integer ids, use one of {', '.join(OUTPUT_DTYPES)}")
    if options.dtype == "uint32" and not options.consecutive:
        raise SegmentError("--dtype uint32 needs --consecutive (fragment-derived ids need 64 bits)")
    if not 0.5 <= options.majority < 1.0:
        raise SegmentError(f"--majority (segment.majority) {options.majority} must be in [0.5, 1): "
                           "below 0.5 one label may join several")
    if options.method == "multicut" and options.agglomerate is not None:
        raise SegmentError("--agglomerate (segment.agglomerate) does not apply to --method multicut, which partitions "
                           "the region graph by a multicut: drop one of them")
    if not 0.0 < options.beta < 1.0:
        raise SegmentError(f"--beta (segment.beta) {options.beta} must be in (0, 1): the multicut cost bias is "
                           "log((1 - beta) / beta)")
    for flag, key, value in (("--threshold", "threshold", options.threshold),
                             ("--agglomerate", "agglomerate", options.agglomerate),
                             ("--merge-floor", "merge_floor", options.merge_floor)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise SegmentError(f"{flag} (segment.{key}) {value} must be in [0, 1]: it is compared with "
                               "affinities (1 = same object)")
    for flag, key, value, meaning in (("--min-size", "min_size", options.min_size, "a voxel count; 0 = no size merging"),
                                      ("--randomize-strides", "randomize_strides", options.randomize_strides, "a seed")):
        if value is not None and not value >= 0:
            raise SegmentError(f"{flag} (segment.{key}) {value} must be >= 0 ({meaning})")
    for name, requirement in options.supervoxels.problems():
        raise SegmentError(f"--sv-{name.replace('_', '-')} (segment.sv_{name}) {getattr(options, 'sv_' + name)} "
                           f"{requirement}")
    for flag, key, values, least in (("--strides", "strides", options.strides, 1),
                                     ("--block", "block", options.block, 1),
                                     ("--halo", "halo", options.halo, 0)):
        if values is not None and (len(values) != 3 or any(int(v) < least for v in values)):
            raise SegmentError(f"{flag} (segment.{key}) {tuple(values)} must be three (z, y, x) sizes >= {least}")


def segment(store: str, options: SegmentOptions = SegmentOptions(), *, input_name: str = "affinities",
            output_name: str = "segmentation", fragments_name: str = "fragments", phase: str | None = None,
            task_index: int | None = None, num_tasks: int | None = None, scheduler: str = "threads",
            num_workers: int | None = None, overwrite: bool = False, progress: bool = True,
            allow_incomplete: bool = False) -> dict[str, Any]:
    """Run the requested phase(s) of blockwise segmentation of ``store/input_name``.

    Returns a summary dict (per-phase block counts and seconds, segment counts when stitched).
    Raises :class:`SegmentError` (or another ``ValueError`` subclass) before writing anything
    when the input or the options are invalid, when the prediction that wrote the input has
    not finished (unless ``allow_incomplete``) or when ``phase`` needs an unfinished earlier phase.
    """
    if phase is not None and phase not in PHASES:
        raise SegmentError(f"unknown phase {phase!r}: use one of {', '.join(PHASES)}")
    if task_index is not None and phase is None:
        raise SegmentError("--task-index/--num-tasks need --phase: run the phases one after the other as separate jobs")
    task_blocks(0, task_index, num_tasks)
    check_scheduler(scheduler, num_workers)
    plan = _plan(store, options, input_name=input_name, output_name=output_name, fragments_name=fragments_name,
                 allow_incomplete=allow_incomplete)
    affinities, offsets, options, workdir, grid = plan.affinities, plan.offsets, plan.options, plan.workdir, plan.grid
    locations, folders, lookup_done = plan.locations, plan.folders, plan.lookup_done
    mine = task_blocks(grid.n_blocks, task_index, num_tasks)
    if phase == "stitch":
        _require_done(folders["fragments"], grid.n_blocks, "fragments")
    if phase == "relabel" and not os.path.exists(lookup_done):
        raise SegmentError(f"no lookup table in {workdir}: finish --phase stitch first")
    _claim(plan, overwrite=overwrite, unfinished_input=bool(mine) and unfinished_stage(affinities.location) is not None,
           alone=task_index is None)
    run = partial(run_blocks, scheduler=scheduler, num_workers=num_workers, progress=progress,
                  voxels=lambda i: grid.block(i).size)
    records = {name: DoneRecords(folder) for name, folder in folders.items()}
    summary: dict[str, Any] = {"blocks": grid.n_blocks}
    common = dict(workdir=workdir, shape=grid.shape, block_shape=grid.block_shape)
    if phase in (None, "fragments"):
        params = FragmentParams(affinities=affinities.location, fragments=locations["fragments"], halo=options.halo,
                                offsets=offsets, method=options.method, strides=options.strides,
                                randomize_strides=options.randomize_strides, threshold=options.threshold,
                                supervoxels=options.supervoxels, **common)
        summary["fragments"] = run(partial(compute_fragments, params), mine, records=records["fragments"],
                                   desc="fragments")
    if phase in (None, "stitch"):  # a lone stitch phase checked its fragments above; in a full run they just ran
        params = StitchParams(majority=options.majority, agglomerate=options.agglomerate,
                              multicut=options.method == "multicut", beta=options.beta, min_size=options.min_size,
                              merge_floor=options.merge_floor, consecutive=options.consecutive, **common)
        summary["faces"] = run(partial(stitch_faces, params), mine, records=records["stitch"], desc="stitch faces")
        if os.path.exists(lookup_done):  # built by an earlier run (or task): its counts, for the summary line
            with open(lookup_done) as handle:
                summary["segments"] = json.load(handle)
        elif len(records["stitch"].done(range(grid.n_blocks))) == grid.n_blocks:
            summary["segments"] = build_lookup(params)
            write_json_atomic(lookup_done, summary["segments"])
    if phase in (None, "relabel"):  # the lookup exists: checked above for a lone relabel, built above otherwise
        params = RelabelParams(fragments=locations["fragments"], segmentation=locations["segmentation"], **common)
        summary["relabel"] = run(partial(relabel_block, params), mine, records=records["relabel"], desc="relabel")
        if len(records["relabel"].done(range(grid.n_blocks))) == grid.n_blocks:
            mark_complete(workdir, {"blocks": grid.n_blocks})
    return summary


@dataclass(frozen=True)
class _Plan:
    """A checked segmentation run before anything is written: resolved options, grid and locations."""

    affinities: Volume
    offsets: tuple[tuple[int, int, int], ...]
    options: SegmentOptions
    workdir: str
    grid: BlockGrid
    locations: dict[str, str]

    @property
    def folders(self) -> dict[str, str]:
        return _record_folders(self.workdir)

    @property
    def lookup_done(self) -> str:
        return _lookup_done(self.workdir)


def _record_folders(workdir: str) -> dict[str, str]:
    """Done-record folder of each phase inside the stage's work folder."""
    return {phase: os.path.join(workdir, "done", folder)
            for phase, folder in zip(PHASES, ("fragments", "faces", "relabel"))}


def _lookup_done(workdir: str) -> str:
    """Written when the stitch phase has built the global lookup table."""
    return os.path.join(workdir, "lookup.done")


def _plan(store: str, options: SegmentOptions, *, input_name: str, output_name: str, fragments_name: str,
          allow_incomplete: bool, planned_input: Volume | None = None) -> _Plan:
    """Check the options and the input and resolve the defaults; nothing is written.

    ``planned_input`` (a dry run) stands for affinities that do not exist yet: their layout and
    offsets are checked, their values cannot be.
    """
    check_options(options)
    if planned_input is not None and not os.path.exists(dataset_path(f"{store}/{input_name}")):
        affinities = planned_input
        offsets = validate_offsets(affinities.attrs["offsets"])
    else:
        affinities = open_volume(f"{store}/{input_name}")
        require_finished(affinities.location, allow_incomplete=allow_incomplete)
        offsets = _check_input(affinities)
    options = _resolve(options, affinities, offsets)
    shortfall = halo_shortfall(options.halo, offsets)
    if options.method == "mws" and shortfall:
        raise SegmentError(f"--halo (segment.halo) {shortfall}: mutex watershed would lose the long-range edges "
                           "that cross block borders; use at least that")
    locations = {"segmentation": f"{store}/{output_name}", "fragments": f"{store}/{fragments_name}"}
    check_distinct({"affinities": affinities.location}, locations)
    return _Plan(affinities, offsets, options, workdir_for(f"{store}/{output_name}", "segment"),
                 BlockGrid(affinities.spatial_shape, options.block), locations)


def _recorded_options(options: SegmentOptions) -> dict[str, Any]:
    """The options as a run's ``config.json`` records them: the multicut's settings at
    :data:`EARLIER_MULTICUT` for another method (they change nothing then, so they never block a resume)."""
    recorded = asdict(options)
    if options.method != "multicut":
        recorded.update(EARLIER_MULTICUT)
    return recorded


#: What a run started before an option existed used for it (:func:`pipeline.runstate.claim_outputs`).
_CLAIM_DEFAULTS = {"options": {**asdict(SegmentOptions()), **EARLIER_MULTICUT}}


def _claimed_config(plan: _Plan, unfinished_input: bool) -> dict[str, Any]:
    """The configuration the outputs are claimed for: options, input identity, output locations."""
    config = {"options": _recorded_options(plan.options), "input": _identity(plan.affinities, plan.offsets),
              "outputs": plan.locations}
    if unfinished_input:
        config["input"]["unfinished"] = True
    return config


def _claim(plan: _Plan, *, overwrite: bool, unfinished_input: bool, alone: bool = True) -> tuple[Volume, Volume]:
    """Claim the outputs for this configuration, then open or create them (fragments, segmentation).

    ``unfinished_input`` (``--allow-incomplete`` on affinities whose prediction has not finished)
    is part of the claimed configuration, so such blocks are never resumed on finished affinities.
    ``alone``: no other task works on these outputs (see :func:`pipeline.runstate.claimed`).
    """
    with claimed(plan.workdir, _claimed_config(plan, unfinished_input), dict(plan.locations), overwrite=overwrite,
                 defaults=_CLAIM_DEFAULTS, alone=alone):
        volumes = _outputs(plan.affinities, plan.options, plan.locations)
        for volume in volumes:
            check_write_alignment(volume, plan.options.block)
    return volumes


@dataclass(frozen=True)
class SegmentStage:
    """Segmentation as a :class:`pipeline.stage.Stage` (phases fragments, stitch, relabel) for
    ``pipeline.run`` and ``pipeline.slurm``; the arguments are those of :func:`segment`."""

    store: str
    options: SegmentOptions = SegmentOptions()
    input_name: str = "affinities"
    output_name: str = "segmentation"
    fragments_name: str = "fragments"
    phases: ClassVar[tuple[str, ...]] = PHASES

    def _names(self) -> dict[str, str]:
        return {"input_name": self.input_name, "output_name": self.output_name, "fragments_name": self.fragments_name}

    def prepare(self, *, overwrite: bool = False) -> dict[str, int]:
        """Check, claim and create the outputs without running a block (the affinities may still be
        being predicted; ``overwrite``: discard earlier outputs first); the number of blocks of each phase."""
        plan = _plan(self.store, self.options, allow_incomplete=True, **self._names())
        _claim(plan, overwrite=overwrite, unfinished_input=False)
        return dict.fromkeys(PHASES, plan.grid.n_blocks)

    def preview(self, upstream: Volume | None) -> tuple[dict[str, int], Volume | None]:
        """The checks of :meth:`prepare` writing nothing; the number of blocks of each phase (and no
        planned output: no stage reads the segmentation). ``upstream``: the affinities as prediction
        will create them, used when they do not exist yet."""
        plan = _plan(self.store, self.options, allow_incomplete=True, planned_input=upstream, **self._names())
        check_claim(plan.workdir, _claimed_config(plan, False), plan.locations,
                    defaults=_CLAIM_DEFAULTS)
        for location in plan.locations.values():
            if os.path.exists(dataset_path(location)):
                check_write_alignment(open_volume(location), plan.options.block)
        return dict.fromkeys(PHASES, plan.grid.n_blocks), None

    def run_phase(self, phase: str, **kwargs: Any) -> dict[str, Any]:
        """:func:`segment` of one phase (``kwargs``: task split, scheduler, workers, progress, overwrite...)."""
        return segment(self.store, self.options, phase=phase, **self._names(), **kwargs)

    def progress(self) -> dict[str, PhaseProgress] | None:
        """Done blocks of each phase; None before the outputs were first claimed."""
        workdir = workdir_for(f"{self.store}/{self.output_name}", "segment")
        config = os.path.join(workdir, "config.json")
        if not os.path.exists(config):
            return None
        with open(config) as handle:
            stored = json.load(handle)
        total = BlockGrid(tuple(stored["input"]["shape"][1:]), tuple(stored["options"]["block"])).n_blocks
        result = {}
        for phase, folder in _record_folders(workdir).items():
            done = _done_blocks(folder, total)
            closed = os.path.exists(_lookup_done(workdir)) if phase == "stitch" else True
            result[phase] = PhaseProgress(done, total, len(done) == total and closed)
        return result


def _check_input(affinities: Volume) -> tuple[tuple[int, int, int], ...]:
    where = affinities.location
    if "offsets" not in affinities.attrs:
        raise SegmentError(f"{where} has no 'offsets' attribute: store the list of 12 [dz, dy, dx] offsets "
                           "with the affinities (pipeline.predict and pipeline.noisy_affinities write it)")
    offsets = validate_offsets(affinities.attrs["offsets"])
    if affinities.ndim != 4 or affinities.shape[0] != len(offsets):
        raise SegmentError(f"{where} has shape {affinities.shape} but {len(offsets)} offsets: affinities must be "
                           f"(C, z, y, x) with one channel per offset")
    if affinities.dtype != np.uint8 and not np.issubdtype(affinities.dtype, np.floating):
        raise SegmentError(f"{where} has dtype {affinities.dtype}: store affinities as uint8 (round(255 a)) or float")
    _check_sample(affinities)
    return offsets


def _check_sample(affinities: Volume) -> None:
    """Check the values of up to :data:`SAMPLE_CHUNKS` storage chunks spread over a float volume.

    A cheap look before anything is written (the volume is not read twice); every block is
    checked again when its fragments are computed.
    """
    if affinities.dtype == np.uint8:
        return
    grid = BlockGrid(affinities.spatial_shape, affinities.chunks[1:])
    picks = np.unique(np.linspace(0, grid.n_blocks - 1, min(grid.n_blocks, SAMPLE_CHUNKS)).round().astype(int))
    for index in picks:
        block = grid.block(int(index))
        check_affinity_values(affinities[(slice(None),) + block.slices], f"{affinities.location} (chunk {block.begin})")


def _resolve(options: SegmentOptions, affinities: Volume, offsets: Sequence[Sequence[int]]) -> SegmentOptions:
    """Fill defaults: block = smallest chunk multiple covering MIN_DEFAULT_BLOCK, halo = the largest
    offset rounded up to a power of two, agglomerate = 1 - threshold for waterz."""
    shape = affinities.spatial_shape
    block = options.block or tuple(c * -(-m // c) for c, m in zip(affinities.chunks[1:], MIN_DEFAULT_BLOCK))
    block = tuple(min(int(b), s) for b, s in zip(block, shape))
    halo = options.halo or tuple(1 << (m - 1).bit_length() for m in max_offset(offsets))
    agglomerate = options.agglomerate
    if agglomerate is None and options.method == "waterz":
        agglomerate = 1.0 - options.threshold
    return replace(options, block=block, halo=tuple(int(h) for h in halo), agglomerate=agglomerate)


def _identity(affinities: Volume, offsets: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The input as ``config.json`` records it. Affinities with a :data:`VOLUME_ID` are recorded by their
    absolute path (not compared on resume: the id is), so a later stage can find them from any folder
    (:func:`pipeline.runstate.rewritten_input`); others by the path as given, which resume compares."""
    attrs = json.dumps(affinities.attrs, sort_keys=True, default=str)
    identified = affinities.attrs.get(VOLUME_ID) and "://" not in affinities.location
    location = os.path.abspath(affinities.location) if identified else affinities.location
    return {"location": location, "shape": list(affinities.shape), "dtype": str(affinities.dtype),
            "chunks": list(affinities.chunks), "offsets": [list(o) for o in offsets], "attrs": attrs,
            VOLUME_ID: affinities.attrs.get(VOLUME_ID)}


def _outputs(affinities: Volume, options: SegmentOptions, locations: dict[str, str]) -> tuple[Volume, Volume]:
    shape = affinities.spatial_shape
    chunks = tuple(min(c, s) for c, s in zip(affinities.chunks[1:], shape))
    if any(b % c for b, c, s in zip(options.block, chunks, shape) if b < s):
        chunks = options.block
    volumes = []
    for name, dtype in (("fragments", "uint64"), ("segmentation", options.dtype)):
        if os.path.exists(dataset_path(locations[name])):
            volumes.append(open_volume(locations[name], mode="r+"))
        else:
            try:
                volumes.append(create_volume(locations[name], shape, dtype, chunks=chunks,
                                             voxel_size=affinities.voxel_size, offset=affinities.offset,
                                             attrs={"source": affinities.location}))
            except StoreError:  # another task created it meanwhile
                volumes.append(open_volume(locations[name], mode="r+"))
    return volumes[0], volumes[1]


def _done_blocks(folder: str, n_blocks: int) -> tuple[int, ...]:
    """Blocks of a phase with a done record in ``folder`` (none when the phase never started)."""
    return tuple(DoneRecords(folder).done(range(n_blocks))) if os.path.isdir(folder) else ()


def _require_done(folder: str, n_blocks: int, phase: str) -> None:
    done = len(_done_blocks(folder, n_blocks))
    if done != n_blocks:
        raise SegmentError(f"phase {phase} has {done} of {n_blocks} blocks done: finish --phase {phase} first")


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m pipeline.segment",
        description="Blockwise segmentation of vol.zarr/affinities (multicut by default, or mutex watershed or "
                    "waterz): per-block fragments with halo-overlap stitching, multicut or agglomeration on the "
                    "region graph of all blocks, and size merging -> vol.zarr/segmentation (uint64).")
    parser.add_argument("store", help="zarr store with the affinities, e.g. vol.zarr")
    parser.add_argument("--input", default="affinities", help="affinity dataset (default affinities)")
    parser.add_argument("--output", default="segmentation", help="segmentation dataset (default segmentation)")
    parser.add_argument("--fragments", default="fragments", help="pass-1 fragments dataset (default fragments)")
    add_options(parser, SegmentOptions)
    deprecated_flag(parser, "--block-shape", "--block", type=parse_numbers(int, 3, "32,512,512"))
    parser.add_argument("--phase", choices=PHASES, help="run one phase only (default: all)")
    parser.add_argument("--task-index", type=int, help="this task's index (SLURM_ARRAY_TASK_ID), with --num-tasks")
    parser.add_argument("--num-tasks", type=int, help="number of array tasks sharing the phase's blocks")
    parser.add_argument("--scheduler", default="threads",
                        help="threads (default), processes, synchronous, or a dask.distributed address tcp://HOST:PORT")
    parser.add_argument("--workers", type=int, help="workers of the local dask scheduler (default: CPU count)")
    deprecated_flag(parser, "--num-workers", "--workers", type=int)
    parser.add_argument("--overwrite", action="store_true", help="discard an existing output and its records")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="experts: segment affinities whose prediction has not finished every block")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary is still printed)")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = options_from_args(SegmentOptions, args)
    summary = segment(args.store, options, input_name=args.input, output_name=args.output,
                      fragments_name=args.fragments, phase=args.phase, task_index=args.task_index,
                      num_tasks=args.num_tasks, scheduler=args.scheduler, num_workers=args.workers,
                      overwrite=args.overwrite, progress=not args.no_progress, allow_incomplete=args.allow_incomplete)
    counts = summary.get("segments", {})
    if {"fragments", "stitched", "partitioned", "segments"} <= counts.keys():  # (a lookup of an old release lacks some)
        print(f"segment: {counts['fragments']} fragments -> {counts['stitched']} stitched -> "
              f"{counts['partitioned']} after {options.method} -> {counts['segments']} segments", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
