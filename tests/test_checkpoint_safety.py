"""Checkpoints load with ``torch.load(weights_only=True)``; anything else is one clear error.

The shipped weights and checkpoints written by training (configs, offsets, RNG state, metrics,
also numpy numbers in them) load without unpickling code; a file that is not a checkpoint, a
foreign torch file and a pickle that would run code are refused with a
:class:`~corrseg3d.checkpoint.CheckpointError`, and nothing in them is executed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from corrseg3d.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from corrseg3d.model import ResidualUNet3D
from corrseg3d.weights import default_checkpoint
from emcore.conventions import PEA_OFFSETS


class _Payload:
    """Unpickling this would create the file named in ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_shipped_weights_load_as_weights_only():
    checkpoint = read_checkpoint(default_checkpoint())
    assert checkpoint["offsets"] and checkpoint["model_state"]
    model, offsets, _ = load_model(default_checkpoint())
    assert not model.training and len(offsets) == 12


def test_numpy_values_are_stored_as_plain_numbers(tmp_path):
    model = ResidualUNet3D(filters=(4, 4, 4, 4, 4), embedding_dim=4)
    optimizer = torch.optim.Adam(model.parameters())
    metrics = {"voi": np.float64(1.25), "volumes": {"a": {"arand": np.float32(0.5)}}, "best_voi": float("inf")}
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=optimizer, iteration=3, offsets=PEA_OFFSETS,
                    config={"train": {"seed": np.int64(5), "patch": (4, 32, 32)}}, metrics=metrics)
    checkpoint = read_checkpoint(tmp_path / "c.pt")
    assert checkpoint["metrics"]["voi"] == 1.25 and type(checkpoint["metrics"]["voi"]) is float
    assert checkpoint["metrics"]["volumes"]["a"]["arand"] == 0.5 and checkpoint["config"]["train"]["seed"] == 5
    assert checkpoint["optimizer_state"]["param_groups"][0]["lr"] == 1e-3


@pytest.mark.parametrize("kind", ["text", "empty", "tensor", "code", "missing", "folder"])
def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path, kind):
    path = tmp_path / "file.pt"
    marker = tmp_path / "code-ran"
    if kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "code":
        torch.save({"format": "corrseg3d-checkpoint/1", "payload": _Payload(str(marker))}, path)
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and "python -m corrseg3d.train" in message
    assert "weights_only=False" not in message
    assert not os.path.exists(marker)
