"""Training checkpoints: save, resume, and load a model for inference.

A checkpoint is a ``torch.save`` dict that loads with ``torch.load(..., weights_only=True)``
(only tensors, numbers, strings, lists and dicts). Keys:

``format``
    ``"corrseg3d-checkpoint/1"``.
``model_state``
    ``model.state_dict()`` (float32 weights, BN running statistics).
``model_config``
    :func:`corrseg3d.model.model_config` -- the keywords of
    :class:`corrseg3d.model.ResidualUNet3D`; :func:`load_model` rebuilds the network from it.
``model_sha256``
    SHA-256 of the model state (names, dtypes, shapes and bytes in key order), checked on load.
``offsets``
    The affinity offsets (list of [dz, dy, dx]) the model was trained for.
``voxel_size``
    The voxel size [z, y, x] in nm the model was trained at (the training rule is in
    :func:`corrseg3d.train.training_voxel_size`), or None where unknown. Checkpoints written before
    the key existed lack it (read as None); :func:`set_voxel_size` adds it without touching the
    weights (``python -m corrseg3d.checkpoint set-voxel-size PATH Z Y X``).
``trained_voxel_sizes``
    Every voxel size [z, y, x] of the training sources (``voxel_size`` first): a model trained on
    several resolutions is used on inputs near any of them without resampling
    (:func:`corrseg3d.resample.needs_resampling`). Absent = ``[voxel_size]``.
``iteration``
    Number of completed training iterations.
``optimizer_state``
    ``optimizer.state_dict()`` (absent from checkpoints written with ``optimizer=None``).
``rng_state``
    ``torch.get_rng_state()`` (data randomness is seeded per sample, see
    :mod:`corrseg3d.sampler`, so nothing else is needed to resume bit for bit).
``config``
    The full training configuration (:func:`corrseg3d.typed_yaml.to_dict`).
``metrics``
    Validation scores at this iteration (``voi``, ``arand``, ...; may be empty) and
    ``best_voi``, the best validation VOI so far.
``code_version``
    ``git describe --always --dirty`` of the source tree, else ``corrseg3d.__version__``.
``averaged_from``
    Only in a weight average (:func:`average_checkpoints`): ``path``, ``iteration`` and
    ``model_sha256`` of each averaged checkpoint.
``created``
    UTC time stamp (ISO 8601).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from emcore.conventions import finite_positive, validate_offsets

from . import __version__
from .cli import ArgumentParser, entry_point
from .model import ResidualUNet3D, build_model, model_config
from .preflight import RUN_FILES

__all__ = ["FORMAT", "CheckpointError", "code_version", "state_sha256", "save_checkpoint", "read_checkpoint",
           "load_model", "set_voxel_size", "export_weights", "average_checkpoints", "main"]

FORMAT = "corrseg3d-checkpoint/1"
#: Keys every checkpoint holds (``optimizer_state`` is optional).
REQUIRED_KEYS = ("model_state", "model_config", "model_sha256", "offsets", "iteration", "config", "metrics")


class CheckpointError(ValueError):
    """A file is not a readable corrseg3d checkpoint; the message names the file and the fix."""


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists (``weights_only`` loads them)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def code_version() -> str:
    """``git describe --always --dirty`` of this package's source tree, or the package version."""
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10, check=True)
        return result.stdout.strip() or __version__
    except (OSError, subprocess.SubprocessError):
        return __version__


def _provenance() -> dict[str, str]:
    """``code_version`` and ``created`` (UTC, ISO 8601) of a checkpoint written now."""
    return {"code_version": code_version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict: each entry's name, dtype, shape and raw bytes, in key order."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, *, model: ResidualUNet3D, optimizer: torch.optim.Optimizer | None,
                    iteration: int, offsets: Sequence[Sequence[int]], config: dict[str, Any],
                    metrics: dict[str, Any] | None = None, voxel_size: Sequence[float] | None = None,
                    trained_voxel_sizes: Sequence[Sequence[float]] = ()) -> None:
    """Write a checkpoint atomically (temporary file + rename; a crash never leaves half a file).

    ``voxel_size`` is the (z, y, x) voxel size in nm the model was trained at (None = unknown);
    ``trained_voxel_sizes`` the other voxel sizes of its training data.
    """
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    checkpoint = {
        "format": FORMAT,
        "model_state": state,
        "model_config": model_config(model),
        "model_sha256": state_sha256(state),
        "offsets": [list(o) for o in validate_offsets(offsets)],
        "voxel_size": _voxel_size(voxel_size, "voxel_size"),
        "trained_voxel_sizes": _trained_voxel_sizes(voxel_size, trained_voxel_sizes),
        "iteration": int(iteration),
        "rng_state": torch.get_rng_state(),
        "config": _plain(config),
        "metrics": _plain(dict(metrics or {})),
        **_provenance(),
    }
    if optimizer is not None:
        checkpoint["optimizer_state"] = optimizer.state_dict()
    _write_atomic(checkpoint, path)


def _write_atomic(checkpoint: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)


def _voxel_size(value: Sequence[float] | None, where: str) -> list[float] | None:
    """``value`` as three positive floats (z, y, x) in nm, or None; ``where`` names it in the error."""
    if value is None:
        return None
    if not finite_positive(value, 3):
        raise CheckpointError(f"{where} {value!r} must be three positive numbers (z, y, x) in nm")
    return [float(v) for v in value]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU and verify its format and checksum.

    The file is read with ``torch.load(..., weights_only=True)``: it may hold only tensors,
    numbers, strings and containers of them, so loading never runs code from the file.

    Raises
    ------
    CheckpointError
        Missing file, a file torch cannot read as weights (not a checkpoint, truncated, pickled
        objects), another format, missing keys or weights that do not match their checksum.
    """
    fix = "pass a checkpoint written by `python -m corrseg3d.train` (its last.pt or best.pt)"
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file: {fix}")
    try:
        with warnings.catch_warnings():  # a plain pickle draws torch's protocol warning before it fails below
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's weights-only unpickler fails in many ways on foreign bytes
        objects = isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error)
        cause = ("it holds Python objects besides tensors and plain data, which are never unpickled" if objects
                 else "torch cannot read it as a weights file")
        raise CheckpointError(f"{path} is not a corrseg3d checkpoint ({cause}): {fix}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (found {found!r}): {fix}")
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)} (truncated or hand-made?): {fix}")
    if state_sha256(checkpoint["model_state"]) != checkpoint["model_sha256"]:
        raise CheckpointError(f"{path}: model weights do not match the stored sha256 (corrupt file?): {fix}")
    return checkpoint


def load_model(path: str | Path) -> tuple[ResidualUNet3D, tuple[tuple[int, int, int], ...], dict[str, Any]]:
    """Rebuild the trained network for inference.

    Returns
    -------
    model
        :class:`~corrseg3d.model.ResidualUNet3D` on the CPU, in eval mode.
    offsets
        The affinity offsets the model was trained for.
    metadata
        Every checkpoint key except the weights and optimizer/RNG states (``model_config``,
        ``model_sha256``, ``iteration``, ``config``, ``metrics``, ``code_version``, ``created``),
        ``voxel_size``: the training voxel size as a (z, y, x) tuple in nm, None where the
        checkpoint records none, and ``trained_voxel_sizes``: a tuple of every training voxel size
        (``voxel_size`` first; empty where unknown).
    """
    checkpoint = read_checkpoint(path)
    model = build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model_state"])
    model.eval()
    metadata = {k: v for k, v in checkpoint.items() if k not in ("model_state", "optimizer_state", "rng_state")}
    voxel_size = _voxel_size(checkpoint.get("voxel_size"), f"{path}: voxel_size")
    metadata["voxel_size"] = tuple(voxel_size) if voxel_size is not None else None
    metadata["trained_voxel_sizes"] = tuple(tuple(v) for v in _trained_voxel_sizes(
        voxel_size, checkpoint.get("trained_voxel_sizes") or ()))
    return model, validate_offsets(checkpoint["offsets"]), metadata


def _trained_voxel_sizes(voxel_size: Sequence[float] | None, others: Sequence[Sequence[float]]) -> list[list[float]]:
    """``voxel_size`` followed by the distinct ``others`` (each checked by :func:`_voxel_size`)."""
    sizes: list[list[float]] = []
    for value in ([voxel_size] if voxel_size is not None else []) + list(others):
        size = _voxel_size(value, "trained voxel size")
        if size is not None and size not in sizes:
            sizes.append(size)
    return sizes


def set_voxel_size(path: str | Path, voxel_size: Sequence[float], trained: Sequence[Sequence[float]] = ()) -> None:
    """Record the training voxel size (z, y, x, nm) in checkpoint ``path``, rewriting it atomically.

    For checkpoints written before ``voxel_size`` was recorded; ``trained`` are the other voxel
    sizes of the training data (``trained_voxel_sizes``). Every other entry, the weights
    included, is written back unchanged (bit-identical tensors, same ``model_sha256``).
    """
    checkpoint = read_checkpoint(path)
    checkpoint["voxel_size"] = _voxel_size(voxel_size, "voxel size")
    checkpoint["trained_voxel_sizes"] = _trained_voxel_sizes(voxel_size, trained)
    _write_atomic(checkpoint, path)


def _check_output(path: str | Path, sources: Sequence[str | Path], *, overwrite: bool) -> None:
    """Refuse an output that is a folder, one of ``sources``, a checkpoint of a training run (its
    ``last.pt`` would lose the optimizer state that ``--resume`` needs) or, unless ``overwrite``,
    any other existing file."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: name the output file, e.g. {path / 'model.pt'}")
    if any(os.path.realpath(path) == os.path.realpath(source) for source in sources):
        raise CheckpointError(f"{path} is also an input: write the result to another file")
    if path.exists() and path.name in RUN_FILES and (path.parent / "train.jsonl").exists():
        raise CheckpointError(f"{path} belongs to the training run in {path.parent}: write the result to another file")
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists: pass --overwrite to replace it")


def export_weights(source: str | Path, path: str | Path, *, overwrite: bool = False) -> None:
    """Write checkpoint ``source`` to ``path`` without its optimizer state (a file to ship or share).

    Every other entry is copied unchanged (same weights and ``model_sha256``); the result loads for
    prediction and fine-tuning (``train.init_from``) but cannot ``--resume`` a run.

    Raises
    ------
    CheckpointError
        ``source`` is not a checkpoint, or ``path`` is a folder, ``source`` itself, a training
        run's checkpoint or (without ``overwrite``) another existing file.
    """
    _check_output(path, [source], overwrite=overwrite)
    checkpoint = read_checkpoint(source)
    checkpoint.pop("optimizer_state", None)
    _write_atomic(checkpoint, path)


def average_checkpoints(sources: Sequence[str | Path], path: str | Path, *, overwrite: bool = False) -> None:
    """Write the uniform average of the weights of ``sources`` to ``path`` (a "model soup").

    Every floating-point tensor of the state (weights, BatchNorm running mean and variance) is
    ``w = (1 / n) * sum_i w_i`` over the ``n`` sources; integer tensors (BatchNorm
    ``num_batches_tracked``) and every other entry (config, offsets, voxel sizes, iteration) are
    the first source's. ``averaged_from`` records each source; there is no optimizer state.
    Averaging is meant for runs fine-tuned from one starting checkpoint, whose weights stay close.

    Raises
    ------
    CheckpointError
        No source, sources with different model configs, offsets, tensor shapes or recorded
        voxel sizes, or an output that is a folder, a source, a training run's checkpoint or
        (without ``overwrite``) another existing file.
    """
    if not sources:
        raise CheckpointError("no checkpoint to average: pass one or more checkpoint files")
    _check_output(path, sources, overwrite=overwrite)
    checkpoints = [read_checkpoint(source) for source in sources]
    first = checkpoints[0]

    def network(checkpoint: dict[str, Any]) -> tuple[Any, ...]:
        shapes = {name: tuple(tensor.shape) for name, tensor in checkpoint["model_state"].items()}
        return checkpoint["model_config"], checkpoint["offsets"], shapes

    def voxel_sizes(checkpoint: dict[str, Any]) -> tuple[Any, ...]:
        return checkpoint.get("voxel_size"), checkpoint.get("trained_voxel_sizes")

    for source, checkpoint in zip(sources[1:], checkpoints[1:]):
        if network(checkpoint) != network(first):
            raise CheckpointError(f"{source} is a different network than {sources[0]} (model config, offsets or tensor "
                                  f"shapes differ): average only checkpoints of one network")
        if voxel_sizes(checkpoint) != voxel_sizes(first):
            raise CheckpointError(f"{source} records other voxel sizes than {sources[0]} ({voxel_sizes(checkpoint)} "
                                  f"against {voxel_sizes(first)}): make them agree with `python -m corrseg3d.checkpoint "
                                  "set-voxel-size` first")
    state = {}
    for name, tensor in first["model_state"].items():
        if tensor.is_floating_point():
            tensor = torch.stack([checkpoint["model_state"][name] for checkpoint in checkpoints]).mean(dim=0)
        state[name] = tensor
    averaged = {key: value for key, value in first.items() if key != "optimizer_state"}
    averaged.update(model_state=state, model_sha256=state_sha256(state), metrics={},
                    averaged_from=[{"path": str(source), "iteration": checkpoint["iteration"],
                                    "model_sha256": checkpoint["model_sha256"]}
                                   for source, checkpoint in zip(sources, checkpoints)],
                    **_provenance())
    _write_atomic(averaged, path)


def parse_voxel_size(text: str) -> tuple[float, float, float]:
    """``Z,Y,X`` (nm) as three floats (an argparse ``type``)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} must be three comma-separated numbers Z,Y,X in nm, e.g. 30,10,10")
    return values  # type: ignore[return-value]


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m corrseg3d.checkpoint set-voxel-size PATH Z Y X`` (:func:`set_voxel_size`),
    ``export SOURCE PATH`` (:func:`export_weights`), ``average SOURCE... --out PATH``
    (:func:`average_checkpoints`)."""
    parser = ArgumentParser(prog="python -m corrseg3d.checkpoint", description="Edit, export and average checkpoints.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("set-voxel-size", help="record the voxel size (z y x, nm) the model was trained at")
    command.add_argument("path", help="checkpoint file (rewritten in place; weights unchanged)")
    for axis in "ZYX":  # three positionals: argparse cannot name the values of one nargs=3 positional
        command.add_argument(axis.lower(), type=float, metavar=axis, help=f"voxel size along {axis.lower()}, nm")
    command.add_argument("--trained", action="append", default=[], type=parse_voxel_size, metavar="Z,Y,X",
                         help="another voxel size of the training data (repeatable): inputs near it are not resampled")
    command = commands.add_parser("export", help="copy a checkpoint without its optimizer state (to ship or share)")
    command.add_argument("source", help="checkpoint file")
    command.add_argument("path", help="output file")
    command.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    command = commands.add_parser("average", help="uniform average of the weights of checkpoints of one network")
    command.add_argument("sources", nargs="+", help="checkpoint files (fine-tuned from one start)")
    command.add_argument("--out", required=True, help="output file")
    command.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    if args.command == "set-voxel-size":
        voxel_size = (args.z, args.y, args.x)
        set_voxel_size(args.path, voxel_size, args.trained)
        print(f"{args.path}: voxel_size {' x '.join(f'{v:g}' for v in voxel_size)} nm")
    elif args.command == "export":
        export_weights(args.source, args.path, overwrite=args.overwrite)
        print(f"{args.path}: weights of {args.source} without optimizer state")
    else:
        average_checkpoints(args.sources, args.out, overwrite=args.overwrite)
        print(f"{args.out}: average of {len(args.sources)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
