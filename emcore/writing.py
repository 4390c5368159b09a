"""Markers of datasets being written, so a writer killed outright never leaves a volume that reads as whole.

:func:`removed_on_error` wraps the writing of whole datasets (the data commands: synth, convert,
fib25, ...): if the body raises (an error, Ctrl-C) the volumes are removed; while it runs each zarr
dataset ``vol.zarr/NAME`` has a marker file ``vol.zarr/.corrseg3d/writing/NAME``, which a process
killed outright (SIGKILL, out of memory) leaves behind. Readers that need the whole dataset call
:func:`check_whole` (or :func:`being_written`) and refuse it until it is written again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from typing import Iterator, Sequence

from .store import PRECOMPUTED_PREFIX, StoreError, local_path, split_location

__all__ = ["WRITING", "removed_on_error", "being_written", "check_whole", "remove_empty_folders"]

#: Folder of a zarr store holding one marker file per dataset that :func:`removed_on_error` is
#: writing (``vol.zarr/.corrseg3d/writing/NAME``): a writer killed outright (no exception, so no
#: clean-up) leaves its marker, and readers refuse the dataset (:func:`being_written`).
WRITING = os.path.join(".corrseg3d", "writing")


def _writing_marker(location: str) -> str | None:
    """The marker file of a zarr dataset location while it is written (None for precomputed layers)."""
    if location.startswith(PRECOMPUTED_PREFIX):
        return None
    root, inner = split_location(location)
    parts = [part for part in inner.split("/") if part not in ("", ".")]
    return os.path.join(root, WRITING, *parts) if parts else None


def being_written(location: str) -> bool:
    """Whether a :func:`removed_on_error` body writing ``location`` started and never finished (it was killed)."""
    marker = _writing_marker(location)
    return marker is not None and os.path.exists(marker)


def check_whole(location: str) -> None:
    """Refuse a dataset whose writer was killed part way (:func:`being_written`) with a :class:`StoreError`."""
    if being_written(location):
        raise StoreError(f"{location} is incomplete: the command writing it is still running or was killed; "
                         "write it again with that command and --overwrite")


def remove_empty_folders(folder: str) -> None:
    """Remove ``folder`` and the folders above it, up to and including ``.corrseg3d``, while they are
    empty (a folder another process fills meanwhile stays)."""
    while os.path.isdir(folder) and not os.listdir(folder):
        try:
            os.rmdir(folder)
        except OSError:
            return
        if os.path.basename(folder) == ".corrseg3d":
            return
        folder = os.path.dirname(folder)


def _create_marker(marker: str) -> None:
    """Create the empty file ``marker`` and its folders (again if another writer just removed them)."""
    for _ in range(3):
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        try:
            open(marker, "w").close()
            return
        except FileNotFoundError:
            continue
    open(marker, "w").close()


@contextlib.contextmanager
def removed_on_error(locations: Sequence[str]) -> Iterator[None]:
    """Write the volumes at ``locations`` in the body, all or nothing.

    If the body raises, the volumes are deleted, and so are the zarr stores that did not exist
    before the body ran. While the body runs, each zarr dataset has a marker file under
    :data:`WRITING`, removed once the body succeeded or its clean-up removed everything; a process
    killed outright (or stopped during the clean-up, or one whose clean-up could not remove the
    volumes) leaves it, so :func:`being_written` tells readers that the dataset is incomplete.
    """
    roots = {split_location(location)[0] for location in locations if not location.startswith(PRECOMPUTED_PREFIX)}
    new_roots = [root for root in sorted(roots) if not os.path.exists(root)]
    markers = [marker for marker in map(_writing_marker, locations) if marker is not None]
    try:
        for marker in markers:
            _create_marker(marker)
        yield
    except BaseException:
        paths = [local_path(location) for location in locations] + new_roots
        if _removed_for_good([path for path in paths if path]):
            _remove_markers(markers)
        raise
    _remove_markers(markers)


def _removed_for_good(paths: Sequence[str], *, settle: float = 0.2, attempts: int = 25) -> bool:
    """Remove the folders ``paths`` until they stay gone for ``settle`` seconds; whether they did.

    After Ctrl-C, zarr's I/O thread may still finish the chunk writes in flight: into a folder being
    removed ("directory not empty") or into one already removed (which it creates again).
    """
    for _ in range(attempts):
        try:
            for path in paths:
                if os.path.isdir(path):
                    shutil.rmtree(path)
        except OSError:
            time.sleep(0.05)
            continue
        time.sleep(settle)
        if not any(os.path.exists(path) for path in paths):
            return True
    return False


def _remove_markers(markers: Sequence[str]) -> None:
    for marker in markers:
        if os.path.exists(marker):
            os.remove(marker)
        remove_empty_folders(os.path.dirname(marker))
