"""The stage protocol: what ``pipeline.run`` and ``pipeline.slurm`` need to drive a blockwise stage.

A stage (:class:`pipeline.predict.PredictStage`, :class:`pipeline.segment.SegmentStage`) owns its
outputs, its run-state folder and its done records; the orchestration only calls these five
members and never opens a stage's files:

* ``phases``: the stage's blockwise phases in order (each one SLURM array job);
* ``prepare(overwrite=False)``: check everything, claim and create the outputs (``overwrite``:
  discard earlier ones and their run state first), run no block; returns the number of blocks of
  each phase (array tasks then only open existing outputs, so they never race creating them, and
  a changed configuration is refused before anything is submitted);
* ``preview(upstream)``: the checks and block counts of ``prepare`` writing nothing (a dry run),
  and the stage's main output as it will be created (a :class:`PlannedArray` in a
  :class:`emcore.store.Volume`), so the next stage can be previewed before its input exists
  (``upstream``: the previous stage's planned output, None for the first);
* ``run_phase(phase, ...)``: run one phase, or one array task's share of its blocks;
* ``progress()``: a :class:`PhaseProgress` per phase, None while the stage has never started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from emcore.store import Volume


@dataclass(frozen=True)
class PhaseProgress:
    """Blocks of one phase: ``done`` block indices of ``total``; ``finished`` once every block is done
    and the phase's closing step, if it has one (stitch builds the global lookup table), has run."""

    done: tuple[int, ...]
    total: int
    finished: bool


@dataclass(frozen=True)
class PlannedArray:
    """The layout of an array a stage will create, without data: ``shape``, ``dtype``, ``chunks`` and
    the attributes it will carry (those a next stage checks, e.g. ``offsets``)."""

    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)


class Stage(Protocol):
    """A blockwise stage as seen by the orchestration (see module docstring)."""

    phases: tuple[str, ...]

    def prepare(self, *, overwrite: bool = False) -> dict[str, int]: ...

    def preview(self, upstream: Volume | None) -> tuple[dict[str, int], Volume | None]: ...

    def run_phase(self, phase: str, *, task_index: int | None = None, num_tasks: int | None = None,
                  scheduler: str = "threads", num_workers: int | None = None, progress: bool = True,
                  overwrite: bool = False, allow_incomplete: bool = False) -> dict[str, Any]: ...

    def progress(self) -> dict[str, PhaseProgress] | None: ...
