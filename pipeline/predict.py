"""``python -m pipeline.predict vol.zarr``: blockwise affinity inference over a zarr (or precomputed) volume.

Every output block is exactly one write granule (chunk, or shard) of the affinity store: the block
is read with a context halo (reflect-padded at the volume border), the network runs on it, the
correlation head turns the embedding into affinities in memory (the embedding is never stored),
and the centre is cropped and written once. No two blocks touch one granule.

Stored affinities: (C, z, y, x), channel k links p and p + offsets[k] (offsets non-positive,
1 = same object); ``uint8`` holds ``round(255 a)``, ``float16`` holds ``a``. Attributes record
``offsets``, the model's ``model_sha256``, the prediction ``config`` and ``code_version``.

Voxel size: the network runs at the voxel size it was trained at (the checkpoint's
``voxel_size``). The input's voxel size is ``--voxel-size`` or the one its store states (OME-Zarr
scale, ``voxel_size``/``resolution`` attribute, precomputed ``resolution``); a volume that states
none is refused (``--voxel-size`` fixes it). An input within ``--voxel-size-tolerance`` (relative,
per axis) of any voxel size the model was trained on (``trained_voxel_sizes``) runs on its own
grid; otherwise every block is resampled to the model's ``voxel_size`` grid, the
network runs there and the affinities are resampled back (:mod:`corrseg3d.resample`: linear
interpolation, one global model grid, so blockwise still equals a whole-volume pass); the output
stays on the input's grid, ``--halo`` counts model voxels, and ``offsets`` are the model's offsets
rescaled to the input grid (nearest neighbours kept), which is what ``pipeline.segment`` reads.
The attributes ``resampled``, ``input_voxel_size``, ``model_voxel_size`` (z, y, x, nm; None where
unknown) and ``model_offsets`` record what was done. A checkpoint without a voxel size (written
before it was recorded) predicts on the input grid with a warning; ``--no-resample`` does so on
purpose.

Resume: per-block done records in ``vol.zarr/.corrseg3d/predict/<output>/done`` are written by
:func:`emcore.blocks.run_blocks` after a block's (or a ``--batch-size`` group's) data is written; reruns skip done blocks, and a rerun with another model, offsets or
settings is refused unless ``--overwrite``.

Reproducibility: for a fixed torch thread count the output is deterministic, so a resumed run is
bitwise equal to an uninterrupted one. torch's CPU convolutions round differently with different
thread counts (about 0.02 % of uint8 values move by one level between 1 and 2 threads), so runs
compared bit for bit must pin the same count (``OMP_NUM_THREADS``; the SLURM scripts do).
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Sequence

import numpy as np

from corrseg3d.cli import ArgumentParser, entry_point
from corrseg3d.config import PREDICT_BLOCK, PREDICT_HALO
from emcore.blocks import BlockGrid, DoneRecords, check_scheduler, format_rate, run_blocks, task_blocks
from emcore.conventions import affinities_as_uint8, check_raw, finite_positive, raw_to_float
from emcore.store import (PRECOMPUTED_PREFIX, VOLUME_ID, StoreError, Volume, check_write_alignment, create_volume,
                          open_volume, parent_group, split_location)
from emcore.writing import check_whole

from .options import add_options, option, options_from_args
from .runstate import check_claim, check_distinct, claimed, dataset_path, mark_complete, workdir_for
from .stage import PhaseProgress, PlannedArray

if TYPE_CHECKING:
    from corrseg3d.resample import Resampling

__all__ = ["PredictError", "PredictOptions", "PredictPlan", "plan_predict", "predict", "main",
           "DEFAULT_VOXEL_SIZE_TOLERANCE"]

#: Largest factor between input and model voxel size along an axis that predict accepts.
MAX_VOXEL_RATIO = 8.0
#: Largest relative voxel-size difference per axis, ``|input / model - 1|``, predicted without resampling.
DEFAULT_VOXEL_SIZE_TOLERANCE = 0.15
OUTPUT_DTYPES = ("uint8", "float16")


class PredictError(ValueError):
    """Bad input or options for prediction; the message says what and how to fix it."""


@dataclass(frozen=True)
class PredictOptions:
    """Settings that define the predicted affinities (stored in the run's ``config.json``).

    One declaration for the Python API, the ``predict`` section of a run YAML (same keys) and the
    command line (``--NAME``; :mod:`pipeline.options`).

    Parameters
    ----------
    checkpoint
        Path of a corrseg3d checkpoint; None = the shipped default weights.
    block, halo
        Output block (= storage chunk) and context on each side, (z, y, x). The halo must be at
        least the largest offset along each axis so every stored affinity sees its partner voxel.
    dtype
        ``uint8`` (``round(255 a)``, default) or ``float16``.
    precision
        ``auto`` (bf16 autocast on CPUs with native bf16 and on GPUs), ``fp32``, ``bf16``, ``fp16``.
    tta
        Average over the flips of ``tta_axes`` (test-time augmentation; one network pass per flip).
    tta_axes
        ``zyx``: all 8 combinations of z, y and x flips (8x slower); ``yx``: the 4 in-plane flips
        (4x slower; on the held-out 30x10x10 nm medulla volume it keeps the whole 27-px AUC gain
        of ``zyx``, on the same tissue at 10x10x10 nm it loses to ``zyx``: README "Shipped weights").
    batch_size
        Blocks per network call (useful on a GPU; interior blocks share one padded shape).
    device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    threads
        torch CPU threads per worker (0 = torch's default). Set in each worker thread before the
        network runs; pin it when outputs are compared bit for bit (see module docstring).
    voxel_size
        The input's (z, y, x) voxel size in nm; None = the one its store states.
    voxel_size_tolerance
        Resample when ``|input / model - 1|`` exceeds this along any axis.
    resample
        False = run on the input grid whatever the voxel sizes (``--no-resample``).
    """

    checkpoint: str | None = option(None, "corrseg3d checkpoint (default: the shipped weights)", metavar="PATH")
    block: tuple[int, int, int] = option(PREDICT_BLOCK, "output block = storage chunk, z,y,x; peak RSS about 5.1 GiB "
                                         "per process at the default, 13.4 GiB at 32,512,512 (fp32; 3.0 / 7.0 GiB "
                                         "under bf16)", example="32,256,256")
    halo: tuple[int, int, int] = option(PREDICT_HALO, "context per side, z,y,x, in model voxels (= input voxels "
                                        "unless resampled)", example="8,48,48")
    dtype: Literal["uint8", "float16"] = option("uint8", "stored affinities: uint8 round(255 a) or float16")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = option(
        "auto", "autocast precision (auto: bf16 on CPUs with native bf16 and on GPUs)")
    tta: bool = option(False, "average the flips of --tta-axes (8x slower for zyx)")
    tta_axes: Literal["zyx", "yx"] = option("zyx", "axes flipped by --tta: zyx = 8 flips, yx = the 4 in-plane "
                                           "flips (half the time)")
    batch_size: int = option(1, "blocks per network call (GPU)")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    threads: int = option(0, "torch CPU threads per worker (0 = torch default)")
    voxel_size: tuple[float, float, float] | None = option(
        None, "the input's voxel size z,y,x in nm (default: the one its store states)", example="30,6,6")
    voxel_size_tolerance: float = option(
        DEFAULT_VOXEL_SIZE_TOLERANCE, "resample when the input's voxel size differs by more than this, relative, "
        "along some axis from every voxel size the model was trained at")
    resample: bool = option(
        True, "resample an input of another voxel size to the model's grid; --no-resample runs the network on "
        "the input grid whatever the voxel sizes")


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to predict blocks of one run (picklable for process schedulers)."""

    raw_location: str
    out_location: str
    options: PredictOptions
    resampling: Resampling | None


class _Predictor:
    """Holds the model and runs one group of blocks: read with halo, infer, crop, write, mark done."""

    def __init__(self, job: _Job) -> None:
        import torch

        from corrseg3d.inference import inference_model, resolve_device, resolve_precision

        self.options = job.options
        self.resampling = job.resampling
        self.raw = open_volume(job.raw_location)
        self.out = open_volume(job.out_location, mode="r+")
        self.grid = BlockGrid(self.raw.spatial_shape, job.options.block)
        model, self.offsets, _, _ = _load_model(job.options.checkpoint)
        self.model = inference_model(model)
        self.device = resolve_device(job.options.device)
        self.autocast_dtype = resolve_precision(job.options.precision, self.device)
        self.channels_last = self.device.type == "cpu"
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last_3d)
        self.lock = threading.Lock()

    def read(self, index: int) -> np.ndarray:
        from corrseg3d.inference import pad_context

        block = self.grid.block(index)

        def read(box: tuple[slice, ...]) -> np.ndarray:
            return raw_to_float(self.raw[box])

        if self.resampling is not None:
            return self.resampling.model_patch(self.raw.array, block.begin, block.end, read=read)
        return pad_context(self.raw.array, block.begin, block.end, self.options.halo, read=read)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """(N, C, z, y, x) affinities of a batch (N, z, y, x) of equal-shape context patches.

        With resampling: of the whole patches (float32, on the model grid). Otherwise of the
        blocks alone (the halo cropped off); without TTA the crop and, for uint8 output, the
        quantisation happen on the device, so only the stored bytes reach the host.
        """
        from corrseg3d.inference import predict_patch

        run = partial(predict_patch, self.model, offsets=self.offsets, device=self.device,
                      autocast_dtype=self.autocast_dtype, channels_last=self.channels_last)
        inner = None if self.resampling is not None else tuple(  # a context patch is its block plus the halo
            slice(h, n - h) for h, n in zip(self.options.halo, images.shape[1:]))
        if not self.options.tta:
            return run(images, crop=inner, quantize=inner is not None and self.options.dtype == "uint8")
        total = np.zeros((len(images), len(self.offsets)) + images.shape[1:], np.float32)
        flip_sets = _flip_sets(self.options.tta_axes)
        for axes in flip_sets:
            flipped = np.ascontiguousarray(np.flip(images, tuple(a + 1 for a in axes))) if axes else images
            for n, affinities in enumerate(run(flipped)):
                total[n] += _unflip_affinities(affinities, axes, self.offsets)
        total /= len(flip_sets)
        return total if inner is None else total[(slice(None), slice(None)) + inner]

    def write(self, index: int, affinities: np.ndarray) -> None:
        """Store block ``index`` from its :meth:`infer` result."""
        block = self.grid.block(index)
        if self.resampling is not None:
            affinities = self.resampling.to_input(affinities, block.begin, block.end)
        if self.options.dtype == "uint8":
            data = affinities_as_uint8(affinities)
        else:
            data = affinities.astype(np.float16)
        self.out[(slice(None),) + block.slices] = data

    def __call__(self, group: Sequence[int]) -> Sequence[int]:
        """Predict the blocks of ``group``, stacking equal-shape context patches into one batch."""
        import torch

        if self.options.threads:
            torch.set_num_threads(self.options.threads)  # per worker thread for OpenMP
        images = {index: self.read(index) for index in group}
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for index, image in images.items():
            by_shape.setdefault(image.shape, []).append(index)
        for indices in by_shape.values():
            with self.lock:  # one network call at a time; reading overlaps it in other threads
                affinities = self.infer(np.stack([images[i] for i in indices]))
            for index, prediction in zip(indices, affinities):
                self.write(index, prediction)
        return group


_PREDICTORS: dict[_Job, _Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def _predict_group(job: _Job, group: Sequence[int]) -> Sequence[int]:
    """Predict and write the blocks of ``group`` (one model per process, cached); :func:`run_blocks` marks them done."""
    with _PREDICTORS_LOCK:
        if job not in _PREDICTORS:
            _PREDICTORS[job] = _Predictor(job)
        predictor = _PREDICTORS[job]
    return predictor(group)


def _flip_sets(axes: str) -> list[tuple[int, ...]]:
    """Every subset of the named axes (``"zyx"`` or ``"yx"``) as array axes, the empty one first."""
    flippable = ["zyx".index(name) for name in axes]
    return [tuple(a for a, bit in zip(flippable, bits) if bit) for bits in np.ndindex(*(2,) * len(flippable))]


def _unflip_affinities(affinities: np.ndarray, axes: tuple[int, ...], offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """Map affinities predicted on an image flipped along ``axes`` back to the original frame.

    Flipping axis a maps voxel p to p' = n - 1 - p; the pair (p, p + o) becomes (p', p' - o), which
    the flipped prediction stores at p' - o. So un-flip the channel, then shift it by |o_a| along a
    (the first |o_a| positions have no partner and are 0, like the unflipped prediction's border).
    """
    out = np.zeros_like(affinities)
    for channel, offset in enumerate(offsets):
        data = np.flip(affinities[channel], axes) if axes else affinities[channel]
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        for axis in axes:
            shift = -offset[axis]
            if shift:
                dst[axis] = slice(shift, None)
                src[axis] = slice(0, data.shape[axis] - shift)
        out[channel][tuple(dst)] = data[tuple(src)]
    return out


def _load_model(checkpoint: str | None):
    from corrseg3d.checkpoint import load_model
    from corrseg3d.weights import default_checkpoint

    path = checkpoint or default_checkpoint()
    model, offsets, metadata = load_model(path)
    return model, offsets, metadata, os.path.abspath(path)


def _check_options(options: PredictOptions, offsets: Sequence[Sequence[int]]) -> None:
    from corrseg3d.inference import resolve_device, resolve_precision
    from emcore.conventions import halo_shortfall

    if options.dtype not in OUTPUT_DTYPES:
        raise PredictError(f"--dtype {options.dtype} is not supported: use uint8 or float16")
    if options.batch_size < 1:
        raise PredictError(f"--batch-size must be >= 1, got {options.batch_size}")
    if options.threads < 0:
        raise PredictError(f"--threads must be >= 0 (0 = torch's default), got {options.threads}")
    if options.voxel_size is not None and not finite_positive(options.voxel_size, 3):
        raise PredictError(f"--voxel-size {','.join(f'{v:g}' for v in options.voxel_size)} must be finite and positive "
                           "(z,y,x in nm)")
    if options.voxel_size_tolerance < 0:
        raise PredictError(f"--voxel-size-tolerance must be >= 0, got {options.voxel_size_tolerance}")
    shortfall = halo_shortfall(options.halo, offsets)
    if shortfall:
        raise PredictError(f"--halo {shortfall}: use at least that")
    resolve_precision(options.precision, resolve_device(options.device))


def _plan_voxel_size(raw: Volume, options: PredictOptions, model_voxel_size: tuple[float, ...] | None,
                     trained_voxel_sizes: Sequence[Sequence[float]],
                     offsets: tuple[tuple[int, int, int], ...]) -> tuple[Resampling | None, dict[str, Any]]:
    """Whether to resample ``raw`` to the model's voxel size, and the output attributes saying so.

    No resampling where the input's voxel size is within the tolerance of any voxel size the model
    was trained on (``trained_voxel_sizes``: a model trained on several resolutions is used at
    each of them); otherwise every block is resampled to ``model_voxel_size``.

    Raises :class:`PredictError` when the input's voxel size matters (the model's is known and
    resampling is allowed) but neither its store nor ``--voxel-size`` gives it, or when it differs
    from the model's by more than :data:`MAX_VOXEL_RATIO` along an axis (almost always wrong
    metadata, e.g. a 1 nm placeholder).
    """
    from corrseg3d.resample import Resampling, needs_resampling, voxel_ratio

    input_voxel_size = options.voxel_size or (raw.voxel_size if raw.voxel_size_stated else None)
    resampling = None
    if model_voxel_size is not None and options.resample:  # else the input grid (old checkpoint: predict() warns)
        shown = "x".join(f"{v:g}" for v in model_voxel_size)
        if input_voxel_size is None:
            raise PredictError(f"{raw.location} has no voxel size (no OME-Zarr scale, no voxel_size or resolution "
                               f"attribute) and the model was trained at {shown} "
                               "nm; pass --voxel-size Z,Y,X (nm; predict.voxel_size in a pipeline.run config)")
        ratio = voxel_ratio(model_voxel_size, input_voxel_size)
        if max(max(r, 1 / r) for r in ratio) > MAX_VOXEL_RATIO:
            stated = ("--voxel-size (predict.voxel_size) is" if options.voxel_size
                      else f"{raw.location} states a voxel size of")
            raise PredictError(f"{stated} {'x'.join(f'{v:g}' for v in input_voxel_size)} nm, "
                               f"more than {MAX_VOXEL_RATIO:g}x off the model's {shown} nm along an axis: pass the "
                               "true --voxel-size Z,Y,X (nm), or --no-resample to predict on the input grid")
        if all(needs_resampling(input_voxel_size, trained, options.voxel_size_tolerance)
               for trained in trained_voxel_sizes or (model_voxel_size,)):
            resampling = Resampling(ratio, offsets, options.halo)
    attributes = {
        "offsets": [list(o) for o in (resampling.offsets if resampling else offsets)],
        "model_offsets": [list(o) for o in offsets],
        "resampled": resampling is not None,
        "input_voxel_size": list(input_voxel_size) if input_voxel_size is not None else None,
        "model_voxel_size": list(model_voxel_size) if model_voxel_size is not None else None,
    }
    return resampling, attributes


@dataclass(frozen=True)
class PredictPlan:
    """A validated prediction run: everything :func:`predict` needs before it writes anything.

    ``offsets`` are the model's; ``resampling`` maps blocks to the model's grid (None = the
    network runs on the input grid); ``attributes`` are the voxel-size attributes of the output
    (its ``offsets`` among them, on the output grid).
    """

    raw: Volume
    out_location: str
    options: PredictOptions
    offsets: tuple[tuple[int, int, int], ...]
    metadata: dict
    grid: BlockGrid
    blocks: list[int]
    config: dict
    resampling: Resampling | None
    attributes: dict

    @property
    def workdir(self) -> str:
        return workdir_for(self.out_location, "predict")


def plan_predict(raw_location: str, *, out_location: str | None = None, options: PredictOptions = PredictOptions(),
                 task_index: int | None = None, num_tasks: int | None = None, scheduler: str = "threads",
                 num_workers: int | None = None, dataset: str = "raw") -> PredictPlan:
    """Check every input and option of a prediction run without writing anything.

    Raises :class:`PredictError` (or another ``ValueError`` subclass: store, checkpoint, block
    layout, device) naming the problem and the fix.
    """
    check_scheduler(scheduler, num_workers)
    raw = open_volume(raw_location, dataset)
    check_whole(raw.location)
    check_raw(raw.location, raw.shape, raw.dtype, "predict")
    _, offsets, metadata, checkpoint = _load_model(options.checkpoint)
    options = PredictOptions(**{**asdict(options), "checkpoint": checkpoint})
    _check_options(options, offsets)
    resampling, attributes = _plan_voxel_size(raw, options, metadata["voxel_size"], metadata["trained_voxel_sizes"],
                                              offsets)
    if (out_location or raw.location).startswith(PRECOMPUTED_PREFIX):
        raise PredictError(f"affinities and their resume records are written to zarr: pass --out vol.zarr/affinities "
                           f"(input {raw.location}, output {out_location or 'next to the input'})")
    if out_location is None:
        out_location = f"{parent_group(raw.location)}/affinities"
    if not split_location(out_location)[1]:
        raise PredictError(f"--out {out_location} names no dataset: write to OUT.zarr/NAME, e.g. OUT.zarr/affinities")
    check_distinct({"raw": raw.location}, {"affinities": out_location})
    grid = BlockGrid(raw.spatial_shape, options.block)
    blocks = task_blocks(grid.n_blocks, task_index, num_tasks)
    config = {
        "input": {"location": os.path.abspath(raw.location) if "://" not in raw.location else raw.location,
                  "shape": list(raw.shape), VOLUME_ID: raw.attrs.get(VOLUME_ID)},
        "model": {"sha256": metadata["model_sha256"], "offsets": [list(o) for o in offsets]},
        "options": _recorded_options(options),
        "voxel_size": attributes,
    }
    return PredictPlan(raw, out_location, options, offsets, metadata, grid, blocks, config, resampling, attributes)


def _recorded_options(options: PredictOptions) -> dict[str, Any]:
    """The options that define the stored affinities, as a run's ``config.json`` records them.

    Settings that change only speed or placement (checkpoint path: the model is recorded by its
    hash; batch size, device, threads) are left out, and without ``tta`` the flip axes are recorded
    at their default: they change nothing then, so setting them never blocks a resume.
    """
    recorded = {k: v for k, v in asdict(options).items() if k not in ("checkpoint", "batch_size", "device", "threads")}
    if not options.tta:
        recorded["tta_axes"] = PredictOptions().tta_axes
    return recorded


#: What a run started before an option existed used for it (:func:`pipeline.runstate.claim_outputs`).
_CLAIM_DEFAULTS = {"options": asdict(PredictOptions())}


def predict(raw_location: str, *, out_location: str | None = None, options: PredictOptions = PredictOptions(),
            task_index: int | None = None, num_tasks: int | None = None, scheduler: str = "threads",
            num_workers: int | None = None, overwrite: bool = False, progress: bool = True,
            dataset: str = "raw") -> dict[str, Any]:
    """Predict affinities for ``raw_location`` blockwise; returns the run summary (its ``voxel_size``:
    the voxel-size attributes written to the output).

    ``out_location`` defaults to ``affinities`` next to a zarr input (``vol.zarr/raw`` ->
    ``vol.zarr/affinities``, ``vol.zarr/NAME/raw`` -> ``vol.zarr/NAME/affinities``); a
    precomputed input needs an explicit zarr ``out_location``.
    With ``task_index``/``num_tasks`` only that task's blocks run (SLURM array style).
    Every check (:func:`plan_predict`) runs before the output or its run state is created; the
    run state is marked complete once every block of the volume is done.
    """
    plan = plan_predict(raw_location, out_location=out_location, options=options, task_index=task_index,
                        num_tasks=num_tasks, scheduler=scheduler, num_workers=num_workers, dataset=dataset)
    options, grid, workdir = plan.options, plan.grid, plan.workdir
    out = _claim_output(plan, overwrite=overwrite)
    if plan.attributes["model_voxel_size"] is None:
        warnings.warn(f"checkpoint {options.checkpoint} records no training voxel size: predicting on the input grid "
                      "without resampling; record it with `python -m corrseg3d.checkpoint set-voxel-size PATH Z Y X`",
                      stacklevel=2)
    records = DoneRecords(os.path.join(workdir, "done"))
    job = _Job(plan.raw.location, out.location, options, plan.resampling)
    summary = run_blocks(partial(_predict_group, job), plan.blocks, records=records, batch_size=options.batch_size,
                         scheduler=scheduler, num_workers=num_workers or 2, voxels=lambda i: grid.block(i).size,
                         desc="predict", progress=progress)
    summary["output"] = plan.out_location
    summary["voxel_size"] = plan.attributes
    if len(records.done(range(grid.n_blocks))) == grid.n_blocks:
        mark_complete(workdir, {"blocks": grid.n_blocks})
    return summary


def _claim_output(plan: PredictPlan, *, overwrite: bool) -> Volume:
    """Claim the output for this run's configuration (:func:`pipeline.runstate.claimed`), then
    open or create it; returns it open for writing."""
    with claimed(plan.workdir, plan.config, {"affinities": plan.out_location}, overwrite=overwrite,
                 defaults=_CLAIM_DEFAULTS, alone=len(plan.blocks) == plan.grid.n_blocks):
        out = _open_or_create_output(plan)
        check_write_alignment(out, plan.options.block)
    return out


@dataclass(frozen=True)
class PredictStage:
    """Prediction as a :class:`pipeline.stage.Stage` (one phase, ``predict``), for ``pipeline.run``
    and ``pipeline.slurm``; the arguments are those of :func:`predict`."""

    raw_location: str
    out_location: str
    options: PredictOptions = PredictOptions()
    dataset: str = "raw"
    phases: ClassVar[tuple[str, ...]] = ("predict",)

    def prepare(self, *, overwrite: bool = False) -> dict[str, int]:
        """Check, claim and create the output without predicting a block (``overwrite``: discard an
        earlier one first); the number of blocks."""
        plan = plan_predict(self.raw_location, out_location=self.out_location, options=self.options,
                            scheduler="synchronous", dataset=self.dataset)
        _claim_output(plan, overwrite=overwrite)
        return {"predict": plan.grid.n_blocks}

    def preview(self, upstream: Volume | None = None) -> tuple[dict[str, int], Volume]:
        """The checks of :meth:`prepare` writing nothing; the number of blocks and the affinities as
        they will be created (an existing output: as it is). ``upstream`` is unused: raw data is the input."""
        plan = plan_predict(self.raw_location, out_location=self.out_location, options=self.options,
                            scheduler="synchronous", dataset=self.dataset)
        check_claim(plan.workdir, plan.config, {"affinities": plan.out_location},
                    defaults=_CLAIM_DEFAULTS)
        if os.path.exists(dataset_path(plan.out_location)):
            out = open_volume(plan.out_location)
            check_write_alignment(out, plan.options.block)
        else:
            out = Volume(_output_layout(plan), plan.out_location, plan.attributes["input_voxel_size"]
                         or plan.raw.voxel_size, plan.raw.offset, ("c", "z", "y", "x"), plan.raw.units)
        return {"predict": plan.grid.n_blocks}, out

    def run_phase(self, phase: str, **kwargs: Any) -> dict[str, Any]:
        """:func:`predict` (``kwargs``: its task split, scheduler, workers, progress, overwrite)."""
        kwargs.pop("allow_incomplete", None)  # prediction reads raw data, which has no unfinished state
        return predict(self.raw_location, out_location=self.out_location, options=self.options,
                       dataset=self.dataset, **kwargs)

    def progress(self) -> dict[str, PhaseProgress] | None:
        """Done blocks of the ``predict`` phase; None before the output was first claimed."""
        workdir = workdir_for(self.out_location, "predict")
        if not os.path.exists(os.path.join(workdir, "config.json")):
            return None
        total = BlockGrid(open_volume(self.raw_location, self.dataset).spatial_shape, self.options.block).n_blocks
        folder = os.path.join(workdir, "done")  # no folder before the first block: progress writes nothing
        done = tuple(DoneRecords(folder).done(range(total))) if os.path.isdir(folder) else ()
        return {"predict": PhaseProgress(done, total, len(done) == total)}


def _output_layout(plan: PredictPlan) -> PlannedArray:
    """The affinity array ``plan`` creates: one channel per offset on the input grid, chunked by block."""
    from corrseg3d.checkpoint import code_version

    raw, options = plan.raw, plan.options
    shape = (len(plan.offsets),) + raw.spatial_shape
    chunks = (len(plan.offsets),) + tuple(min(b, s) for b, s in zip(options.block, raw.spatial_shape))
    attrs = {**plan.attributes, "model_sha256": plan.metadata["model_sha256"], "config": plan.config,
             "code_version": code_version(), "dtype_scale": 255 if options.dtype == "uint8" else 1}
    return PlannedArray(shape, options.dtype, chunks, attrs)


def _open_or_create_output(plan: PredictPlan) -> Volume:
    layout = _output_layout(plan)
    voxel_size = plan.attributes["input_voxel_size"] or plan.raw.voxel_size
    try:
        return create_volume(plan.out_location, layout.shape, layout.dtype, chunks=layout.chunks,
                             voxel_size=voxel_size, offset=plan.raw.offset, units=plan.raw.units, attrs=layout.attrs)
    except StoreError:  # resuming, or another array task created it first
        return open_volume(plan.out_location, mode="r+")


def _parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m pipeline.predict",
        description="Blockwise affinity prediction: vol.zarr/raw (uint8) -> vol.zarr/affinities (12 channels).")
    parser.add_argument("input", help="vol.zarr (with --dataset), vol.zarr/NAME or precomputed://URL")
    parser.add_argument("--dataset", default="raw", help="dataset inside the store (default raw)")
    parser.add_argument("--out", help="output location (default: affinities next to a zarr input; required for precomputed)")
    add_options(parser, PredictOptions)
    parser.add_argument("--scheduler", default="threads",
                        help="threads (default), processes, synchronous or a dask.distributed tcp:// address")
    parser.add_argument("--workers", type=int, help="concurrent blocks or --batch-size groups (default 2: reading overlaps compute)")
    parser.add_argument("--task-index", type=int, help="this SLURM array task's index (with --num-tasks)")
    parser.add_argument("--num-tasks", type=int, help="number of array tasks sharing the blocks")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing output and its records")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line stays)")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    options = options_from_args(PredictOptions, args)
    summary = predict(args.input, out_location=args.out, options=options, task_index=args.task_index,
                      num_tasks=args.num_tasks, scheduler=args.scheduler, num_workers=args.workers,
                      overwrite=args.overwrite, progress=not args.no_progress, dataset=args.dataset)
    voxel = summary["voxel_size"]
    if voxel["resampled"]:
        sizes = [" x ".join(f"{v:g}" for v in voxel[k]) for k in ("input_voxel_size", "model_voxel_size")]
        print(f"predict: resampled {sizes[0]} nm input to the model's {sizes[1]} nm and back")
    print(f"predict: wrote {summary['output']} ({summary['blocks']} blocks run, {summary['skipped']} blocks "
          f"already done, {format_rate(summary['voxels_per_second'])})")
    return 0


if __name__ == "__main__":
    from pipeline.predict import main as importable_main  # tasks must pickle by reference for --scheduler processes

    sys.exit(importable_main())
