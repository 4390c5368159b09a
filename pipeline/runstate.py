"""Where a blockwise stage keeps its run state, and how it claims its outputs.

Each stage writing into ``vol.zarr`` keeps a work folder ``vol.zarr/.corrseg3d/<stage>/<output>/``
with ``config.json`` (the parameters and input identity that define the result, among them the
input's :data:`emcore.store.VOLUME_ID`, so an input written anew under the same name is a different
input) and per-block
done records. A rerun with the same config resumes (also after an upgrade that added options, while
they stay at their defaults); a different config is refused unless the user passes ``--overwrite``,
which deletes the outputs and the work folder and starts again.
Locations are not part of that identity where something better names the data: an input with a
``VOLUME_ID`` is compared by its id, outputs by their dataset path inside the store that holds the
work folder. So a run resumes when its paths are typed differently (``vol.zarr``, ``./vol.zarr``,
``/abs/vol.zarr``), from another working directory (a SLURM job), or after the store was moved
or copied (:func:`claim_outputs`).
When every block is done the stage writes ``complete.json`` (:func:`mark_complete`); a stage
reading an output of another stage refuses it while that marker is missing
(:func:`require_finished`), so a killed run is never read as if it were whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Any, Iterator, Mapping

from emcore.blocks import write_json_atomic
from emcore.store import VOLUME_ID, is_dataset, open_volume, remove_volume, split_location
from emcore.writing import check_whole, remove_empty_folders

__all__ = ["RunStateError", "ConfigChangedError", "COMPLETE", "workdir_for", "dataset_path", "check_distinct",
           "check_claim", "claim_outputs", "claimed", "mark_complete", "unfinished_stage", "rewritten_input",
           "require_finished"]

#: File in a stage's work folder written once every block of the stage is done.
COMPLETE = "complete.json"


class RunStateError(ValueError):
    """An output exists with a different config, was not written by this stage, or is unfinished."""


class ConfigChangedError(RunStateError):
    """``stage`` (``predict``, ``segment``) started its output with a different config; ``reason`` says which
    keys differ, the message adds the fix of the stage's own command (callers with other flags replace it,
    starting with :attr:`original_options`: empty when only the input was written anew, which no option
    undoes)."""

    def __init__(self, stage: str, reason: str, *, options_changed: bool = True) -> None:
        self.stage = stage
        self.reason = reason
        self.original_options = "rerun with the original options, or " if options_changed else ""
        super().__init__(f"{reason}: {self.original_options}pass --overwrite to start again")


def dataset_path(location: str) -> str:
    """Filesystem path of a zarr dataset location (``vol.zarr/NAME`` -> ``vol.zarr/NAME``)."""
    root, inner = split_location(location)
    return os.path.join(root, inner)


def _nested(a: str, b: str) -> bool:
    """Whether filesystem paths ``a`` and ``b`` are the same or one lies inside the other."""
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def _dataset_parts(location: str) -> list[str]:
    """The parts of the dataset path of ``location`` inside its store; refuses empty, ``.`` and ``..`` parts."""
    parts = split_location(location)[1].split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise RunStateError(f"{location}: a dataset path may not have empty, '.' or '..' parts; "
                            "name the dataset plainly, e.g. vol.zarr/segmentation or vol.zarr/runs/segmentation")
    return parts


def check_distinct(inputs: Mapping[str, str], outputs: Mapping[str, str]) -> None:
    """Refuse outputs that are, hold or lie inside an input dataset or another output, that lie
    inside any existing dataset (an array or OME-Zarr image), or whose dataset path has an empty,
    ``.`` or ``..`` part.

    Parameters
    ----------
    inputs, outputs
        Dataset locations by role (``vol.zarr/NAME``); inputs that are not zarr (precomputed
        URLs) cannot clash with a zarr output and are skipped.

    Raises
    ------
    RunStateError
        Naming both datasets; checked before anything is written, so ``--overwrite`` can never
        delete an input.
    """
    paths = [(f"input {role}", location) for role, location in inputs.items() if "://" not in location]
    for role, location in outputs.items():
        root = split_location(location)[0]
        parts = _dataset_parts(location)
        for depth in range(1, len(parts)):
            outer = f"{root}/{'/'.join(parts[:depth])}"
            if is_dataset(outer):
                raise RunStateError(f"output {role} {location} lies inside the dataset {outer}, which replacing that "
                                    f"dataset would delete: name a dataset outside it, e.g. {root}/{parts[-1]}")
        for other_role, other in paths:
            if _nested(dataset_path(location), dataset_path(other)):
                raise RunStateError(f"output {role} {location} would overwrite the {other_role} {other}: "
                                    "name another output dataset")
        paths.append((f"output {role}", location))


def workdir_for(output_location: str, stage: str) -> str:
    """``vol.zarr/.corrseg3d/<stage>/<output>`` for an output dataset ``vol.zarr/<output>``.

    A nested output ``vol.zarr/a/b`` gets the nested folder ``<stage>/a/b``, so every dataset path
    has its own folder (zarr arrays are leaves: no output path is a prefix of another).

    Run state written before this layout kept a nested output in the flattened folder
    ``<stage>/a_b``; such a folder is still used while ``a/b`` has no folder of its own and the store
    holds no dataset ``a_b`` (whose folder it would be).

    Raises
    ------
    RunStateError
        The dataset path has an empty, ``.`` or ``..`` part (it could name a folder outside the stage's).
    """
    root = split_location(output_location)[0]
    parts = _dataset_parts(output_location)
    nested = os.path.join(root, ".corrseg3d", stage, *parts)
    flattened_name = "_".join(parts)
    flattened = os.path.join(root, ".corrseg3d", stage, flattened_name)
    if (len(parts) > 1 and not os.path.isdir(nested) and os.path.isdir(flattened)
            and not os.path.exists(os.path.join(root, flattened_name))):
        return flattened
    return nested


def _stage_of(workdir: str) -> str:
    """The stage owning ``workdir`` (the folder below ``.corrseg3d`` in :func:`workdir_for`)."""
    parts = os.path.normpath(workdir).split(os.sep)
    below = len(parts) - parts[::-1].index(".corrseg3d")  # the part after the last ".corrseg3d"
    return parts[below]


def _compared(config: Any) -> Any:
    """``config`` as compared between runs: the ``location`` beside a ``VOLUME_ID`` dropped (the id
    names the data wherever it lies) and each ``outputs`` location reduced to its dataset path in
    its store (the store holds the work folder, so it moves with it)."""
    if not isinstance(config, dict):
        return config
    compared = {}
    for key, value in config.items():
        if key == "location" and config.get(VOLUME_ID):
            continue
        if key == "outputs" and isinstance(value, dict):
            value = {role: split_location(location)[1] for role, location in value.items()}
        compared[key] = _compared(value)
    return compared


def _differences(new: Mapping[str, Any], old: Mapping[str, Any], defaults: Mapping[str, Any],
                 prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between ``new`` and ``old``; a key missing from ``old`` counts as
    unchanged where ``new`` holds its value in ``defaults`` (an option added since ``old`` was written)."""
    found = []
    for key in sorted(set(new) | set(old)):
        a, b, default = new.get(key), old.get(key), defaults.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, default if isinstance(default, dict) else {}, f"{prefix}{key}.")
        elif key not in old and key in defaults and a == default:
            continue
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


def check_claim(workdir: str, config: Mapping[str, Any], outputs: Mapping[str, str], *,
                defaults: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """What :func:`claim_outputs` checks without ``overwrite``, writing nothing; the recorded config.

    Returns the config recorded in ``workdir`` (None when the stage has not started there).

    Raises
    ------
    ConfigChangedError
        The work folder holds a different config.
    RunStateError
        An output exists that this stage did not start (no ``config.json``).
    """
    path = os.path.join(workdir, "config.json")
    config = json.loads(json.dumps(config))
    if os.path.exists(path):
        with open(path) as handle:
            previous = json.load(handle)
        changed = _differences(_compared(config), _compared(previous), json.loads(json.dumps(defaults or {})))
        if changed:
            rewritten = "; the input was written anew since" if f"input.{VOLUME_ID}" in changed else ""
            raise ConfigChangedError(_stage_of(workdir), f"{next(iter(outputs.values()))} was started with a "
                                                         f"different config ({', '.join(changed)} differ{rewritten})",
                                     options_changed=changed != [f"input.{VOLUME_ID}"])
        return previous
    for role, location in outputs.items():
        if os.path.exists(dataset_path(location)):
            raise RunStateError(f"{location} exists but this {_stage_of(workdir)} run did not start it (another run or "
                                f"tool wrote it): name another {role} dataset, or pass --overwrite to replace it")
    return None


def claim_outputs(workdir: str, config: Mapping[str, Any], outputs: Mapping[str, str], *, overwrite: bool,
                  defaults: Mapping[str, Any] | None = None) -> None:
    """Start or resume a run whose result is defined by ``config``.

    Parameters
    ----------
    workdir
        The stage's work folder (see :func:`workdir_for`).
    config
        JSON-serialisable parameters and input identity of the result; compared with the recorded
        one without the paths that :func:`_compared` leaves out.
    outputs
        Output dataset locations by role; the first is named in error messages.
    overwrite
        Delete outputs and work folder first (a fresh start).
    defaults
        Values of ``config``'s keys (same nesting) that a run started before the key existed used
        implicitly: an option added in a later release whose default keeps the earlier result. A run
        started before the option existed resumes when the option is at its default, and its
        ``config.json`` is brought up to date; any other value is a changed config.

    Raises
    ------
    ConfigChangedError, RunStateError
        Without ``overwrite``, as :func:`check_claim`.
    """
    config = json.loads(json.dumps(config))
    previous = None
    if overwrite:
        shutil.rmtree(workdir, ignore_errors=True)
        for location in outputs.values():
            remove_volume(location)
    else:
        previous = check_claim(workdir, config, outputs, defaults=defaults)
    os.makedirs(workdir, exist_ok=True)
    if previous != config:
        write_json_atomic(os.path.join(workdir, "config.json"), config)


@contextlib.contextmanager
def claimed(workdir: str, config: Mapping[str, Any], outputs: Mapping[str, str], *, overwrite: bool,
            defaults: Mapping[str, Any] | None = None, alone: bool = True) -> Iterator[None]:
    """:func:`claim_outputs`, then the ``with`` block that opens or creates the outputs.

    When the block fails on a fresh claim (no run had started there, or ``overwrite``) of a process
    that runs the whole output ``alone``, the claim and the outputs are removed again, so no
    half-made run state blocks the corrected command. Array tasks (not ``alone``) remove nothing:
    another task may have created the outputs meanwhile and be writing them.
    """
    fresh = alone and (overwrite or not os.path.exists(os.path.join(workdir, "config.json")))
    claim_outputs(workdir, config, outputs, overwrite=overwrite, defaults=defaults)
    try:
        yield
    except BaseException:
        if fresh:
            shutil.rmtree(workdir, ignore_errors=True)
            for location in outputs.values():
                remove_volume(location)
            remove_empty_folders(os.path.dirname(os.path.normpath(workdir)))
        raise


def mark_complete(workdir: str, summary: Mapping[str, Any]) -> None:
    """Record that the stage owning ``workdir`` finished every block (atomic; kept once written)."""
    path = os.path.join(workdir, COMPLETE)
    if not os.path.exists(path):
        write_json_atomic(path, dict(summary))


def _started_stages(location: str) -> Iterator[tuple[str, str]]:
    """(stage, work folder) of every stage whose work folder for ``location`` holds a ``config.json``,
    by stage name (none for precomputed layers and datasets no stage wrote)."""
    if "://" in location:
        return
    root, inner = split_location(location)
    stages = os.path.join(root, ".corrseg3d")
    if not inner or not os.path.isdir(stages):
        return
    for stage in sorted(os.listdir(stages)):
        workdir = workdir_for(location, stage)
        if os.path.exists(os.path.join(workdir, "config.json")):
            yield stage, workdir


def unfinished_stage(location: str) -> str | None:
    """The stage of this pipeline that started writing ``location`` and has not finished it, else None.

    Precomputed layers and datasets no stage wrote (no work folder, e.g. ground truth or
    user-supplied affinities) count as finished.
    """
    return next((stage for stage, workdir in _started_stages(location)
                 if not os.path.exists(os.path.join(workdir, COMPLETE))), None)


def _recorded_input(location: str) -> tuple[str, str, str] | None:
    """(stage, input location, input :data:`VOLUME_ID`) that the stage which wrote ``location`` recorded.

    Only an input recorded by an absolute path inside this very store (the same real path) is
    followed, and looked up there as it is now. None without a recorded id, for an input recorded by a
    relative path, in another store or a remote one, or in a store moved or copied since (an input
    elsewhere cannot be told apart from another volume), and when it is gone.
    """
    stage, workdir = next(_started_stages(location), (None, None))
    if stage is None:
        return None
    with open(os.path.join(workdir, "config.json")) as handle:
        recorded = json.load(handle).get("input", {})
    source, source_id = recorded.get("location"), recorded.get(VOLUME_ID)
    if not isinstance(source, str) or not source_id or not os.path.isabs(source):
        return None
    root = split_location(location)[0]
    inside = os.path.relpath(os.path.realpath(source), os.path.realpath(root))
    if inside == os.curdir or inside.startswith(os.pardir):
        return None  # another store, or this one before it was moved or copied: nothing to compare safely
    source = f"{root}/{inside.replace(os.sep, '/')}"
    return (stage, source, source_id) if is_dataset(source) else None


def rewritten_input(location: str) -> tuple[str, str, str] | None:
    """(output, stage, input) when ``location``, or an output of this pipeline it was made from, was
    made from an input that has been written anew since (its :data:`VOLUME_ID` changed): ``stage``
    wrote ``output`` from ``input``. None when every recorded input along the chain is unchanged.
    """
    seen = set()
    while location not in seen:
        seen.add(location)
        recorded = _recorded_input(location)
        if recorded is None:
            return None
        stage, source, source_id = recorded
        if open_volume(source).attrs.get(VOLUME_ID) != source_id:
            return location, stage, source
        location = source
    return None


def require_finished(location: str, *, allow_incomplete: bool = False) -> None:
    """Refuse ``location`` if a stage of this pipeline started writing it and has not finished, if a
    data command writing it was killed (:func:`emcore.writing.being_written`), or if it was computed
    from an input written anew since (:func:`rewritten_input`, checked also with ``allow_incomplete``).

    Parameters
    ----------
    location
        A dataset location ``vol.zarr/NAME`` (see :func:`unfinished_stage` for what passes).
    allow_incomplete
        Read it anyway (experts: ``--allow-incomplete``).

    Raises
    ------
    RunStateError
        The producing stage's work folder holds a ``config.json`` but no ``complete.json``, or an
        input along its chain was written anew; the message names the stage to rerun.
    StoreError
        A data command writing it was killed (:func:`emcore.writing.check_whole`).
    """
    rewritten = rewritten_input(location)
    if rewritten is not None:
        output, stage, source = rewritten
        made = "was" if output == location else f"was made from {output}, which was"
        raise RunStateError(f"{location} {made} computed from {source} before {source} was written anew: rerun "
                            f"`python -m pipeline.{stage}` with --overwrite and the stages after it (pipeline.run: "
                            f"--restart {stage})")
    if allow_incomplete:
        return
    check_whole(location)
    stage = unfinished_stage(location)
    if stage is not None:
        raise RunStateError(f"{location} is unfinished: its `python -m pipeline.{stage}` run has not completed "
                            f"every block (no {COMPLETE} in {workdir_for(location, stage)}); rerun that {stage} "
                            "with the same options to finish it (done blocks are kept), or pass --allow-incomplete "
                            "to read it as it is")
