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
``iteration``
    Number of completed training iterations.
``optimizer_state``
    ``optimizer.state_dict()`` (absent from checkpoints written with ``optimizer=None``).
``rng_state``
    ``torch.get_rng_state()`` (data randomness is seeded per sample, see
    :mod:`corrseg3d.sampler`, so nothing else is needed to resume bit for bit).
``config``
    The full training configuration (:func:`corrseg3d.config.to_dict`).
``metrics``
    Validation scores at this iteration (``voi``, ``arand``, ...; may be empty) and
    ``best_voi``, the best validation VOI so far.
``code_version``
    ``git describe --always --dirty`` of the source tree, else ``corrseg3d.__version__``.
``created``
    UTC time stamp (ISO 8601).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any, Sequence

import torch

from . import __version__
from .model import ResidualUNet3D, build_model, model_config
from .offsets import validate_offsets

__all__ = ["FORMAT", "code_version", "state_sha256", "save_checkpoint", "read_checkpoint", "load_model"]

FORMAT = "corrseg3d-checkpoint/1"


def code_version() -> str:
    """``git describe --always --dirty`` of this package's source tree, or the package version."""
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10, check=True)
        return result.stdout.strip() or __version__
    except (OSError, subprocess.SubprocessError):
        return __version__


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
                    metrics: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically (temporary file + rename; a crash never leaves half a file)."""
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    checkpoint = {
        "format": FORMAT,
        "model_state": state,
        "model_config": model_config(model),
        "model_sha256": state_sha256(state),
        "offsets": [list(o) for o in validate_offsets(offsets)],
        "iteration": int(iteration),
        "rng_state": torch.get_rng_state(),
        "config": config,
        "metrics": dict(metrics or {}),
        "code_version": code_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if optimizer is not None:
        checkpoint["optimizer_state"] = optimizer.state_dict()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, temporary)
    os.replace(temporary, path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict on the CPU (``weights_only``) and verify its format and checksum."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint (format {checkpoint.get('format')!r})")
    if state_sha256(checkpoint["model_state"]) != checkpoint["model_sha256"]:
        raise ValueError(f"{path}: model weights do not match the stored sha256 (corrupt file?)")
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
        ``model_sha256``, ``iteration``, ``config``, ``metrics``, ``code_version``, ``created``).
    """
    checkpoint = read_checkpoint(path)
    model = build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model_state"])
    model.eval()
    metadata = {k: v for k, v in checkpoint.items() if k not in ("model_state", "optimizer_state", "rng_state")}
    return model, validate_offsets(checkpoint["offsets"]), metadata
