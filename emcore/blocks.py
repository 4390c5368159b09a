"""The one block runner: block grid, halos, task splitting, done records, schedulers, progress.

Every blockwise stage (segment passes, prediction, ...) describes its work as a function of one
block index and hands it to :func:`run_blocks`, which skips blocks already marked done, runs the
rest on the chosen scheduler, marks each block done *after* the function returned (so after its
data is durable), and shows a tqdm bar (blocks, Mvoxel/s, ETA) plus a summary line.
Work whose per-block results are summed instead of written (evaluation's contingency tables)
uses the map-reduce form :func:`map_reduce_blocks` on the same grid and schedulers; in-memory
tiling (the network over an image) walks :class:`BlockGrid` directly.

Conventions
-----------
* Axis order (z, y, x) (a grid may have any number of axes; the stages use three). A block is
  the half-open box ``[begin, end)`` of the regular grid with ``block_shape`` cells; blocks at the upper border may be shorter. Block indices are C-order
  over the grid (the last axis varies fastest).
* The *outer* box of a block is its box grown by ``halo`` on each side, clipped to the volume.
* Task ``i`` of ``n`` (SLURM array style, no central server) owns blocks ``i, i+n, i+2n, ...``.
* Schedulers: ``"threads"`` (dask threads, default), ``"processes"`` (dask processes),
  ``"synchronous"`` (in the calling thread) and a ``dask.distributed`` address
  (``"tcp://host:port"``). Functions given to process-based schedulers must be picklable
  (module-level functions or :func:`functools.partial` of them).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "format_rate",
    "Block",
    "BlockGrid",
    "DoneRecords",
    "BlockRunError",
    "SCHEDULERS",
    "task_blocks",
    "run_blocks",
    "map_reduce_blocks",
    "check_scheduler",
    "write_json_atomic",
    "save_npz_atomic",
    "load_npz",
]

SCHEDULERS = ("threads", "processes", "synchronous")


class BlockRunError(ValueError):
    """Bad block layout, task split or scheduler; the message names the fix."""


@dataclass(frozen=True)
class Block:
    """One block of a :class:`BlockGrid`: index, grid position and inner box ``[begin, end)``."""

    index: int
    position: tuple[int, int, int]
    begin: tuple[int, int, int]
    end: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(e - b for b, e in zip(self.begin, self.end))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slices(self) -> tuple[slice, ...]:
        """Inner box as slices into the volume."""
        return tuple(slice(b, e) for b, e in zip(self.begin, self.end))


@dataclass(frozen=True)
class BlockGrid:
    """Regular grid of blocks covering a (z, y, x) volume (or an array with any number of axes).

    Parameters
    ----------
    shape
        Volume shape (z, y, x).
    block_shape
        Block shape (z, y, x); blocks at the upper border are clipped to the volume.
    """

    shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if len(self.shape) != len(self.block_shape) or not self.shape:
            raise BlockRunError(f"block shape {tuple(self.block_shape)} must have one entry per axis of the volume "
                                f"{tuple(self.shape)}")
        if any(int(b) < 1 for b in self.block_shape):
            raise BlockRunError(f"block shape {self.block_shape} must be positive, e.g. 32,256,256")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "block_shape", tuple(int(b) for b in self.block_shape))

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block_shape))  # type: ignore[return-value]

    @property
    def n_blocks(self) -> int:
        return math.prod(self.grid_shape)

    def block(self, index: int) -> Block:
        """The block with C-order ``index``."""
        if not 0 <= index < self.n_blocks:
            raise BlockRunError(f"block index {index} outside 0..{self.n_blocks - 1}")
        position = tuple(int(p) for p in np.unravel_index(index, self.grid_shape))
        begin = tuple(p * b for p, b in zip(position, self.block_shape))
        end = tuple(min(bg + b, s) for bg, b, s in zip(begin, self.block_shape, self.shape))
        return Block(index, position, begin, end)  # type: ignore[arg-type]

    def index_of(self, position: Sequence[int]) -> int | None:
        """Index of the block at grid ``position``, or None outside the grid."""
        if any(not 0 <= p < g for p, g in zip(position, self.grid_shape)):
            return None
        return int(np.ravel_multi_index(tuple(position), self.grid_shape))

    def neighbour(self, block: Block, axis: int, side: int) -> int | None:
        """Index of the face neighbour of ``block`` along ``axis`` (side -1 lower, +1 upper)."""
        position = list(block.position)
        position[axis] += side
        return self.index_of(position)

    def regions(self, roi: Sequence[slice] | None = None) -> list[tuple[slice, ...]]:
        """Boxes of the blocks that meet ``roi`` (one ``slice(start, stop)`` per axis; None = the
        whole volume), each clipped to it, in C order. They tile ``roi`` exactly."""
        roi = tuple(roi) if roi is not None else tuple(slice(0, n) for n in self.shape)
        ranges = [[slice(max(low, r.start), min(low + b, r.stop)) for low in range((r.start // b) * b, r.stop, b)]
                  for r, b in zip(roi, self.block_shape)]
        return [tuple(box) for box in itertools.product(*ranges)]

    def outer(self, block: Block, halo: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(begin, end)`` of ``block`` grown by ``halo`` and clipped to the volume."""
        begin = tuple(max(b - h, 0) for b, h in zip(block.begin, halo))
        end = tuple(min(e + h, s) for e, h, s in zip(block.end, halo, self.shape))
        return begin, end


def task_blocks(n_blocks: int, task_index: int | None, num_tasks: int | None) -> list[int]:
    """Block indices owned by task ``task_index`` of ``num_tasks`` (all blocks without a task split).

    The split is deterministic and round-robin (``i, i + n, ...``), so neighbouring blocks, which
    cost about the same, land on different tasks.
    """
    if task_index is None and num_tasks is None:
        return list(range(n_blocks))
    if task_index is None or num_tasks is None:
        raise BlockRunError("--task-index and --num-tasks go together: pass both or neither")
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise BlockRunError(f"--task-index {task_index} must be in 0..{num_tasks - 1} (--num-tasks {num_tasks} >= 1)")
    return list(range(task_index, n_blocks, num_tasks))


def write_json_atomic(path: str, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    tmp = f"{path}.tmp{os.getpid()}.{time.monotonic_ns()}"
    try:
        with open(tmp, "w") as handle:
            json.dump(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_npz_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays to ``path`` (.npz) through a temporary file and ``os.replace``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.{time.monotonic_ns()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


#: Serialises :func:`load_npz`: numpy parses each .npy header with ``ast.literal_eval``, which
#: CPython 3.11 can fail with "SystemError: AST constructor recursion depth mismatch" when several
#: threads parse at once (python/cpython gh-106905), as blockwise tasks under the threads scheduler do.
_NPZ_LOCK = threading.Lock()


def load_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of the .npz file ``path`` (written by :func:`save_npz_atomic`), read at once."""
    with _NPZ_LOCK, np.load(path) as arrays:
        return {name: arrays[name] for name in arrays.files}


class DoneRecords:
    """Per-block done records: one small JSON file per finished block in ``folder``.

    A record is written atomically (temporary file + ``os.replace``) only after the block's
    function returned, i.e. after its data was written; a killed run leaves no record for blocks
    in flight, so re-running recomputes exactly those.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def path(self, index: int) -> str:
        return os.path.join(self.folder, f"{index}.done")

    def is_done(self, index: int) -> bool:
        return os.path.exists(self.path(index))

    def mark_done(self, index: int, info: dict[str, Any] | None = None) -> None:
        write_json_atomic(self.path(index), {"block": index, **(info or {})})

    def done(self, indices: Iterable[int]) -> list[int]:
        present = set(os.listdir(self.folder))
        return [i for i in indices if f"{i}.done" in present]


def _indices(item: int | tuple[int, ...]) -> tuple[int, ...]:
    return item if isinstance(item, tuple) else (item,)


def _run_and_mark(func: Callable[[Any], Any], records: DoneRecords | None,
                  item: int | tuple[int, ...]) -> int | tuple[int, ...]:
    func(item)
    if records is not None:
        for index in _indices(item):
            records.mark_done(index)
    return item


def run_blocks(
    func: Callable[[int], Any],
    indices: Sequence[int],
    *,
    records: DoneRecords | None = None,
    scheduler: str = "threads",
    num_workers: int | None = None,
    voxels: Callable[[int], int] | None = None,
    desc: str = "blocks",
    progress: bool = True,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Run ``func(index)`` for every block index not yet done; return a summary.

    Parameters
    ----------
    func
        Processes one block and returns once its outputs are durable; must be picklable for
        ``"processes"`` and distributed schedulers. With ``batch_size`` it receives a tuple of
        up to ``batch_size`` block indices instead (e.g. one network call for several blocks).
    indices
        Block indices to cover (e.g. from :func:`task_blocks`); processed in this order.
    records
        Done records: done blocks are skipped and finished ones marked. None disables resume.
    scheduler
        ``"threads"``, ``"processes"``, ``"synchronous"`` or a ``dask.distributed`` address.
    num_workers
        Worker count for the local dask schedulers (default: dask's, the CPU count).
    voxels
        Voxel count of a block, for the Mvoxel/s rate (default: rate in blocks only).
    desc, progress
        Progress bar label and switch (the summary line is always printed to stderr).
    batch_size
        Hand ``func`` the blocks still to do in consecutive groups of this size; each block of a
        group is marked done once the whole group returned.

    Returns
    -------
    dict with ``blocks`` (run now), ``skipped``, ``seconds`` and ``voxels_per_second``.
    """
    from tqdm import tqdm

    check_scheduler(scheduler)
    done = set(records.done(indices)) if records is not None else set()
    todo = [i for i in indices if i not in done]
    items: list[Any] = todo if batch_size is None else [tuple(todo[i:i + batch_size])
                                                        for i in range(0, len(todo), batch_size)]
    task = partial(_run_and_mark, func, records)
    n_voxels = sum(voxels(i) for i in todo) if voxels else 0
    bar = tqdm(total=len(todo), desc=desc, unit="block", disable=not progress or not todo,
               file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    processed = {"voxels": 0}

    def on_done(item: int | tuple[int, ...]) -> None:
        processed["voxels"] += sum(voxels(i) for i in _indices(item)) if voxels else 0
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.update(len(_indices(item)))
        if voxels:
            bar.set_postfix_str(f"{processed['voxels'] / elapsed / 1e6:.2f} Mvox/s", refresh=False)

    try:
        if items:
            _dispatch(task, items, scheduler, num_workers, on_done)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    rate = n_voxels / seconds if seconds > 0 and n_voxels else 0.0
    print(f"{desc}: {len(todo)} blocks run, {len(done)} already done, {seconds:.1f} s"
          + (f", {format_rate(rate)}" if n_voxels else ""), file=sys.stderr)
    return {"blocks": len(todo), "skipped": len(done), "seconds": seconds, "voxels_per_second": rate}


def format_rate(voxels_per_second: float) -> str:
    """A throughput as ``"N Mvoxel/s"``: three significant digits below 100 Mvoxel/s, whole numbers above."""
    mvoxels = voxels_per_second / 1e6
    return f"{mvoxels:.3g} Mvoxel/s" if mvoxels < 100 else f"{mvoxels:.0f} Mvoxel/s"


def check_scheduler(scheduler: str, num_workers: int | None = None) -> None:
    """Refuse an unknown scheduler name or a worker count below 1 (before anything is written)."""
    if scheduler not in SCHEDULERS and "://" not in scheduler:
        raise BlockRunError(f"unknown scheduler {scheduler!r}: use one of {', '.join(SCHEDULERS)} "
                            "or a dask.distributed address like tcp://HOST:8786")
    if num_workers is not None and num_workers < 1:
        raise BlockRunError(f"the number of workers must be >= 1, got {num_workers}")


def _dispatch(task: Callable[[Any], Any], todo: list[Any], scheduler: str, num_workers: int | None,
              on_done: Callable[[Any], None]) -> None:
    if "://" in scheduler:
        from distributed import Client, as_completed

        with Client(scheduler) as client:
            futures = client.map(task, todo, pure=False)
            for future in as_completed(futures):
                on_done(future.result())
        return
    import dask
    from dask.callbacks import Callback

    class _Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # noqa: ANN001
            on_done(result)

    tasks = [dask.delayed(task, pure=False)(item, dask_key_name=f"block-{_indices(item)[0]}") for item in todo]
    with _Progress():
        dask.compute(*tasks, scheduler=scheduler, num_workers=num_workers)


def map_reduce_blocks(func: Callable[..., Any], regions: Sequence[Any], combine: Callable[[list[Any]], Any], *,
                      shared: Sequence[Any] = (), scheduler: str = "threads", fan_in: int = 8) -> Any:
    """``combine`` of ``func(*shared, region)`` over every region, reduced as a tree; None without regions.

    Parameters
    ----------
    func
        Maps one region (e.g. a box of :meth:`BlockGrid.regions`) to a partial result; module-level
        (picklable) for process and distributed schedulers.
    regions
        The work items.
    combine
        Sums a list of partial results into one (associative: results are combined ``fan_in`` at
        a time, in a tree, so memory holds a few partial results, independent of the region count).
    shared
        Large read-only arguments passed to every call (array handles): each enters the task graph
        once, so a distributed scheduler ships it once rather than per region.
    scheduler
        As for :func:`run_blocks`.
    """
    import uuid

    import dask

    check_scheduler(scheduler)
    if not regions:
        return None
    token = uuid.uuid4().hex
    constants = [dask.delayed(value, name=f"shared-{i}-{token}", traverse=False) for i, value in enumerate(shared)]
    parts = [dask.delayed(func, pure=True)(*constants, region) for region in regions]
    while len(parts) > 1:
        parts = [dask.delayed(combine, pure=True)(parts[i:i + fan_in]) for i in range(0, len(parts), fan_in)]
    if "://" in scheduler:
        from distributed import Client

        with Client(scheduler) as client:
            return client.compute(parts[0]).result()
    return dask.compute(parts[0], scheduler=scheduler)[0]
