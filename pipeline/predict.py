"""``python -m pipeline.predict vol.zarr``: blockwise affinity inference over a zarr (or precomputed) volume.

Every output block is exactly one write granule (chunk, or shard) of the affinity store: the block
is read with a context halo (reflect-padded at the volume border), the network runs on it, the
correlation head turns the embedding into affinities in memory (the embedding is never stored),
and the centre is cropped and written once. No two blocks touch one granule.

Stored affinities: (C, z, y, x), channel k links p and p + offsets[k] (offsets non-positive,
1 = same object); ``uint8`` holds ``round(255 a)``, ``float16`` holds ``a``. Attributes record
``offsets``, the model's ``model_sha256``, the prediction ``config`` and ``code_version``.

Resume: per-block done records in ``vol.zarr/.corrseg3d/predict/<output>/done`` are written after
a block's data is written; reruns skip done blocks, and a rerun with another model, offsets or
settings is refused unless ``--overwrite``.

Reproducibility: for a fixed torch thread count the output is deterministic, so a resumed run is
bitwise equal to an uninterrupted one. torch's CPU convolutions round differently with different
thread counts (about 0.02 % of uint8 values move by one level between 1 and 2 threads), so runs
compared bit for bit must pin the same count (``OMP_NUM_THREADS``; the SLURM scripts do).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Sequence

import numpy as np

from .blocks import BlockGrid, BlockRunError, DoneRecords, run_blocks, task_blocks
from .data import parse_numbers
from .mws import affinities_as_uint8
from .runstate import RunStateError, claim_outputs, workdir_for
from .store import PRECOMPUTED_PREFIX, StoreError, Volume, check_write_alignment, create_volume, open_volume, split_location

__all__ = ["PredictError", "PredictOptions", "predict", "main", "DEFAULT_BLOCK", "DEFAULT_HALO"]

#: Default output block (= storage chunk) and context halo, (z, y, x).
DEFAULT_BLOCK = (32, 256, 256)
DEFAULT_HALO = (8, 48, 48)
OUTPUT_DTYPES = ("uint8", "float16")


class PredictError(ValueError):
    """Bad input or options for prediction; the message says what and how to fix it."""


@dataclass(frozen=True)
class PredictOptions:
    """Settings that define the predicted affinities (stored in the run's ``config.json``).

    Parameters
    ----------
    checkpoint
        Path of a corrseg3d checkpoint; None = the shipped default weights.
    block_shape, halo
        Output block (= storage chunk) and context on each side, (z, y, x). The halo must be at
        least the largest offset along each axis so every stored affinity sees its partner voxel.
    dtype
        ``uint8`` (``round(255 a)``, default) or ``float16``.
    precision
        ``auto`` (bf16 autocast on CPUs with native bf16 and on GPUs), ``fp32``, ``bf16``, ``fp16``.
    tta
        Average over the 8 flips of z, y, x (test-time augmentation; 8x slower).
    batch_size
        Blocks per network call (useful on a GPU; interior blocks share one padded shape).
    device
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    threads
        torch CPU threads per worker (0 = torch's default). Set in each worker thread before the
        network runs; pin it when outputs are compared bit for bit (see module docstring).
    """

    checkpoint: str | None = None
    block_shape: tuple[int, int, int] = DEFAULT_BLOCK
    halo: tuple[int, int, int] = DEFAULT_HALO
    dtype: str = "uint8"
    precision: str = "auto"
    tta: bool = False
    batch_size: int = 1
    device: str = "auto"
    threads: int = 0


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs to predict blocks of one run (picklable for process schedulers)."""

    raw_location: str
    out_location: str
    workdir: str
    options: PredictOptions


class _Predictor:
    """Holds the model and runs one group of blocks: read with halo, infer, crop, write, mark done."""

    def __init__(self, job: _Job) -> None:
        import torch

        from corrseg3d.inference import resolve_device, resolve_precision

        self.options = job.options
        self.raw = open_volume(job.raw_location)
        self.out = open_volume(job.out_location, mode="r+")
        self.grid = BlockGrid(self.raw.spatial_shape, job.options.block_shape)
        self.records = DoneRecords(os.path.join(job.workdir, "done"))
        self.model, self.offsets, _, _ = _load_model(job.options.checkpoint)
        self.device = resolve_device(job.options.device)
        self.autocast_dtype = resolve_precision(job.options.precision, self.device)
        self.channels_last = self.device.type == "cpu"
        self.model.to(self.device).eval()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last_3d)
        self.lock = threading.Lock()

    def read(self, index: int) -> np.ndarray:
        from corrseg3d.inference import pad_context

        block = self.grid.block(index)
        context = pad_context(self.raw.array, block.begin, block.end, self.options.halo,
                              read=lambda box: self.raw[box])
        return context.astype(np.float32) / np.float32(255)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """(N, C, z, y, x) affinities of a batch (N, z, y, x) of equal-shape context patches."""
        from corrseg3d.inference import predict_patch

        run = partial(predict_patch, self.model, offsets=self.offsets, device=self.device,
                      autocast_dtype=self.autocast_dtype, channels_last=self.channels_last)
        if not self.options.tta:
            return run(images)
        total = np.zeros((len(images), len(self.offsets)) + images.shape[1:], np.float32)
        for axes in _flip_sets():
            flipped = np.ascontiguousarray(np.flip(images, tuple(a + 1 for a in axes))) if axes else images
            for n, affinities in enumerate(run(flipped)):
                total[n] += _unflip_affinities(affinities, axes, self.offsets)
        return total / 8

    def write(self, index: int, affinities: np.ndarray) -> None:
        block = self.grid.block(index)
        inner = tuple(slice(h, h + s) for h, s in zip(self.options.halo, block.shape))
        crop = affinities[(slice(None),) + inner]
        if self.options.dtype == "uint8":
            data = affinities_as_uint8(crop)
        else:
            data = crop.astype(np.float16)
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
                self.records.mark_done(index)
        return group


_PREDICTORS: dict[_Job, _Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def _predict_group(job: _Job, group: Sequence[int]) -> Sequence[int]:
    """Predict, write and mark done the blocks of ``group`` (one model per process, cached)."""
    with _PREDICTORS_LOCK:
        if job not in _PREDICTORS:
            _PREDICTORS[job] = _Predictor(job)
        predictor = _PREDICTORS[job]
    return predictor(group)


def _flip_sets() -> list[tuple[int, ...]]:
    return [tuple(a for a, bit in zip(range(3), bits) if bit) for bits in np.ndindex(2, 2, 2)]


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
    if not os.path.exists(path):
        raise PredictError(f"checkpoint {path} does not exist: pass --checkpoint PATH of a corrseg3d checkpoint")
    model, offsets, metadata = load_model(path)
    return model, offsets, metadata, os.path.abspath(path)


def _check_input(raw: Volume) -> None:
    if raw.ndim != 3:
        raise PredictError(f"{raw.location} has shape {raw.shape}: predict needs a 3D (z, y, x) volume; "
                           "stack 2D images into a volume with `python -m pipeline.data convert`")
    if raw.dtype != np.uint8:
        raise PredictError(f"{raw.location} is {raw.dtype}: predict reads uint8 grey values; convert with "
                           "`python -m pipeline.data convert` (rescales to uint8)")


def _check_options(options: PredictOptions, offsets: Sequence[Sequence[int]]) -> None:
    from corrseg3d.offsets import max_offset

    if options.dtype not in OUTPUT_DTYPES:
        raise PredictError(f"--dtype {options.dtype} is not supported: use uint8 or float16")
    if options.batch_size < 1:
        raise PredictError(f"--batch-size must be >= 1, got {options.batch_size}")
    reach = max_offset(offsets)
    if any(h < r for h, r in zip(options.halo, reach)):
        raise PredictError(f"--halo {','.join(map(str, options.halo))} is smaller than the largest offset "
                           f"{','.join(map(str, reach))}: use at least that")


def predict(raw_location: str, *, out_location: str | None = None, options: PredictOptions = PredictOptions(),
            task_index: int | None = None, num_tasks: int | None = None, scheduler: str = "threads",
            num_workers: int | None = None, overwrite: bool = False, progress: bool = True,
            dataset: str = "raw") -> dict[str, Any]:
    """Predict affinities for ``raw_location`` blockwise; returns the run summary.

    ``out_location`` defaults to ``affinities`` next to a zarr input (``vol.zarr/affinities``); a
    precomputed input needs an explicit zarr ``out_location``.
    With ``task_index``/``num_tasks`` only that task's blocks run (SLURM array style).
    """
    from corrseg3d.checkpoint import code_version

    raw = open_volume(raw_location, dataset)
    _check_input(raw)
    model, offsets, metadata, checkpoint = _load_model(options.checkpoint)
    options = PredictOptions(**{**asdict(options), "checkpoint": checkpoint})
    _check_options(options, offsets)
    if (out_location or raw.location).startswith(PRECOMPUTED_PREFIX):
        raise PredictError(f"affinities and their resume records are written to zarr: pass --out vol.zarr/affinities "
                           f"(input {raw.location}, output {out_location or 'next to the input'})")
    if out_location is None:
        root, _ = split_location(raw.location)
        out_location = f"{root}/affinities"
    grid = BlockGrid(raw.spatial_shape, options.block_shape)
    config = {
        "input": {"location": os.path.abspath(raw.location) if "://" not in raw.location else raw.location,
                  "shape": list(raw.shape)},
        "model": {"sha256": metadata["model_sha256"], "offsets": [list(o) for o in offsets]},
        "options": {k: v for k, v in asdict(options).items() if k not in ("checkpoint", "batch_size", "device", "threads")},
    }
    workdir = workdir_for(out_location, "predict")
    claim_outputs(workdir, config, {"affinities": out_location}, overwrite=overwrite)
    out = _open_or_create_output(out_location, raw, options, offsets, metadata, config, code_version())
    check_write_alignment(out, options.block_shape)
    records = DoneRecords(os.path.join(workdir, "done"))
    mine = task_blocks(grid.n_blocks, task_index, num_tasks)
    todo = [i for i in mine if not records.is_done(i)]
    groups = [tuple(todo[i:i + options.batch_size]) for i in range(0, len(todo), options.batch_size)]
    job = _Job(raw.location, out.location, workdir, options)
    summary = run_blocks(partial(_predict_group, job), groups, scheduler=scheduler, num_workers=num_workers or 2,
                         voxels=lambda group: sum(grid.block(i).size for i in group), desc="predict",
                         progress=progress)
    summary["skipped"] = len(mine) - len(todo)
    summary["output"] = out_location
    return summary


def _open_or_create_output(location: str, raw: Volume, options: PredictOptions, offsets, metadata: dict,
                           config: dict, version: str) -> Volume:
    shape = (len(offsets),) + raw.spatial_shape
    chunks = (len(offsets),) + tuple(min(b, s) for b, s in zip(options.block_shape, raw.spatial_shape))
    attrs = {"offsets": [list(o) for o in offsets], "model_sha256": metadata["model_sha256"],
             "config": config, "code_version": version, "dtype_scale": 255 if options.dtype == "uint8" else 1}
    try:
        return create_volume(location, shape, options.dtype, chunks=chunks, voxel_size=raw.voxel_size,
                             offset=raw.offset, units=raw.units, attrs=attrs)
    except StoreError:  # resuming, or another array task created it first
        return open_volume(location, mode="r+")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.predict",
        description="Blockwise affinity prediction: vol.zarr/raw (uint8) -> vol.zarr/affinities (12 channels).")
    parser.add_argument("input", help="vol.zarr (with --dataset), vol.zarr/NAME or precomputed://URL")
    parser.add_argument("--dataset", default="raw", help="dataset inside the store (default raw)")
    parser.add_argument("--out", help="output location (default: affinities next to a zarr input; required for precomputed)")
    parser.add_argument("--checkpoint", help="corrseg3d checkpoint (default: the shipped weights)")
    parser.add_argument("--block", type=parse_numbers(int, 3, "32,256,256"), default=DEFAULT_BLOCK,
                        help="output block = storage chunk, z,y,x (default %(default)s)")
    parser.add_argument("--halo", type=parse_numbers(int, 3, "8,48,48"), default=DEFAULT_HALO,
                        help="context per side, z,y,x (default %(default)s)")
    parser.add_argument("--dtype", default="uint8", choices=OUTPUT_DTYPES)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=1, help="blocks per network call (GPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker (0 = torch default)")
    parser.add_argument("--tta", action="store_true", help="average the 8 z/y/x flips (8x slower)")
    parser.add_argument("--scheduler", default="threads",
                        help="threads (default), processes, synchronous or a dask.distributed tcp:// address")
    parser.add_argument("--workers", type=int, help="concurrent block groups (default 2: reading overlaps compute)")
    parser.add_argument("--task-index", type=int, help="this SLURM array task's index (with --num-tasks)")
    parser.add_argument("--num-tasks", type=int, help="number of array tasks sharing the blocks")
    parser.add_argument("--overwrite", action="store_true", help="discard an existing output and its records")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line stays)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        options = PredictOptions(
            checkpoint=args.checkpoint, block_shape=tuple(args.block), halo=tuple(args.halo), dtype=args.dtype, precision=args.precision,
            tta=args.tta, batch_size=args.batch_size, device=args.device, threads=args.threads)
        summary = predict(args.input, out_location=args.out, options=options, task_index=args.task_index,
                          num_tasks=args.num_tasks, scheduler=args.scheduler, num_workers=args.workers,
                          overwrite=args.overwrite, progress=not args.no_progress, dataset=args.dataset)
    except (PredictError, StoreError, RunStateError, BlockRunError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"predict: wrote {summary['output']} ({summary['blocks']} block groups run, {summary['skipped']} blocks "
          f"already done, {summary['voxels_per_second'] / 1e6:.2f} Mvoxel/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
