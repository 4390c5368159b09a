"""Checks a training run passes before it writes anything (:func:`corrseg3d.train.train` calls them).

* The output folder: a folder that already holds a run is never overwritten by accident; it
  needs ``--resume`` (continue it) or ``--overwrite`` (replace it).
* Slice ranges: a ``[start, stop)`` range must lie inside its volume (no silent clipping) and
  training ranges must not overlap the validation ranges of the same volume unless
  ``data.allow_validation_overlap`` is set (validation scores would be measured on training data).

Volumes are opened by the caller; this module only sees names, depths and ranges.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .config import ConfigError

__all__ = ["RUN_FILES", "SliceRange", "check_out", "discard_run", "check_slices", "check_disjoint"]

#: Files a training run writes into its output folder.
RUN_FILES = ("config.yaml", "train.jsonl", "last.pt", "best.pt", "loss.png")

#: (config path, volume location, start, stop) of one resolved slice range.
SliceRange = tuple[str, str, int, int]


def check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder that would lose or mix runs.

    Raises
    ------
    ConfigError
        ``--resume`` together with ``--overwrite``; ``--resume`` without ``OUT/last.pt``; a
        non-empty folder without ``--resume`` or ``--overwrite``; an output path that is a file.
    """
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder for the run")
    if resume:
        if not (out / "last.pt").is_file():
            fix = ("the run stopped before its first checkpoint: start it again with --overwrite instead of --resume"
                   if out.is_dir() and any(out.iterdir()) else "start without --resume")
            raise ConfigError(f"nothing to resume: {out / 'last.pt'} does not exist; {fix}")
        return
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        held = sorted(name for name in RUN_FILES if (out / name).exists()) or sorted(os.listdir(out))[:3]
        raise ConfigError(f"--out {out} is not empty ({', '.join(held)}): pass --resume to continue that run, "
                          "--overwrite to replace it, or choose another --out")


def discard_run(out: Path) -> None:
    """Delete the files of an earlier run in ``out`` (``--overwrite``); other files stay."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def check_slices(path: str, location: str, slices: Sequence[int | None], depth: int) -> SliceRange:
    """Resolve a ``[start, stop)`` z range of a volume of ``depth`` slices, refusing one outside it.

    ``stop`` None = the end; negative values count from the end, as in Python.
    """
    if any(value is not None and not -depth <= value <= depth for value in slices):
        raise ConfigError(f"{path} {list(slices)} reaches outside {location}, which has {depth} slices: "
                          f"use a range within [0, {depth}] (negative values count from the end)")
    start, stop, _ = slice(*slices).indices(depth)
    if stop <= start:
        raise ConfigError(f"{path} {list(slices)} is empty for {location} ({depth} slices): give start < stop")
    return path, location, start, stop


def _same_volume(a: str, b: str) -> bool:
    return (a if "://" in a else os.path.abspath(a)) == (b if "://" in b else os.path.abspath(b))


def check_disjoint(training: Sequence[SliceRange], validation: Sequence[SliceRange], *, allowed: bool) -> None:
    """Refuse a training range that overlaps a validation range of the same volume (unless ``allowed``)."""
    if allowed:
        return
    for train_path, train_location, train_start, train_stop in training:
        for valid_path, valid_location, valid_start, valid_stop in validation:
            if _same_volume(train_location, valid_location) and train_start < valid_stop and valid_start < train_stop:
                raise ConfigError(
                    f"{train_path} [{train_start}, {train_stop}) overlaps {valid_path} [{valid_start}, {valid_stop}) "
                    f"of {train_location}: validation would score slices the model trained on; make the ranges "
                    "disjoint, or set data.allow_validation_overlap: true")
