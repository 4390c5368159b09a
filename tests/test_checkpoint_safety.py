"""Checkpoints load with ``torch.load(weights_only=True)``; anything else is one clear error.

The shipped weights and checkpoints written by training (configs, offsets, RNG state, metrics,
also numpy numbers in them) load without unpickling code; a file that is not a checkpoint, a
foreign torch file and a pickle that would run code are refused with a
:class:`~corrseg3d.checkpoint.CheckpointError`, and nothing in them is executed. ``export`` drops
only the optimizer state; ``average`` is the mean of the floating-point tensors.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from corrseg3d.checkpoint import (CheckpointError, average_checkpoints, load_model, main as checkpoint_main,
                                  read_checkpoint, save_checkpoint, set_voxel_size)
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


@pytest.mark.parametrize(("kind", "cause"), [("text", "cannot read it as a weights file"),
                                             ("empty", "cannot read it as a weights file"),
                                             ("plain pickle", "cannot read it as a weights file"),
                                             ("tensor", "found 'Tensor'"), ("code", "holds Python objects"),
                                             ("missing", "does not exist"), ("folder", "is not a file")])
def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path, recwarn, kind, cause):
    path = tmp_path / "file.pt"
    marker = tmp_path / "code-ran"
    if kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "plain pickle":
        path.write_bytes(pickle.dumps({"format": "corrseg3d-checkpoint/1"}))
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "code":
        torch.save({"format": "corrseg3d-checkpoint/1", "payload": _Payload(str(marker))}, path)
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and "python -m corrseg3d.train" in message and cause in message
    assert "weights_only=False" not in message and not recwarn.list
    assert not os.path.exists(marker)


def _tiny_checkpoint(path, seed, *, filters=(2, 2, 2, 2, 2)):
    torch.manual_seed(seed)
    model = ResidualUNet3D(filters=filters, embedding_dim=4)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(1, 1, 4, 16, 16)).output.sum().backward()  # BN running statistics move, Adam holds state
    optimizer.step()
    save_checkpoint(path, model=model, optimizer=optimizer, iteration=seed, offsets=PEA_OFFSETS,
                    config={"seed": seed}, voxel_size=(30, 10, 10))


def test_export_drops_only_the_optimizer_state(tmp_path):
    _tiny_checkpoint(tmp_path / "run.pt", 1)
    assert checkpoint_main(["export", str(tmp_path / "run.pt"), str(tmp_path / "ship.pt")]) == 0
    before, after = read_checkpoint(tmp_path / "run.pt"), read_checkpoint(tmp_path / "ship.pt")
    assert "optimizer_state" in before and "optimizer_state" not in after
    assert after["model_sha256"] == before["model_sha256"]
    assert {k: v for k, v in before.items() if k not in ("optimizer_state", "model_state", "rng_state")} == \
        {k: v for k, v in after.items() if k not in ("model_state", "rng_state")}


def test_average_is_the_mean_of_the_floating_point_tensors(tmp_path):
    sources = [str(tmp_path / f"{seed}.pt") for seed in (1, 2, 3)]
    for seed, source in zip((1, 2, 3), sources):
        _tiny_checkpoint(source, seed)
    assert checkpoint_main(["average", *sources, "--out", str(tmp_path / "soup.pt")]) == 0
    states = [read_checkpoint(source)["model_state"] for source in sources]
    soup = read_checkpoint(tmp_path / "soup.pt")
    for name, tensor in soup["model_state"].items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, (states[0][name] + states[1][name] + states[2][name]) / 3, atol=1e-7)
        else:
            assert torch.equal(tensor, states[0][name])
    assert [entry["iteration"] for entry in soup["averaged_from"]] == [1, 2, 3]
    assert soup["voxel_size"] == [30.0, 10.0, 10.0] and "optimizer_state" not in soup
    load_model(tmp_path / "soup.pt")
    average_checkpoints(sources[:1], tmp_path / "one.pt")  # the average of one checkpoint is that checkpoint
    assert read_checkpoint(tmp_path / "one.pt")["model_sha256"] == read_checkpoint(sources[0])["model_sha256"]


def test_average_refuses_different_networks(tmp_path):
    _tiny_checkpoint(tmp_path / "a.pt", 1)
    _tiny_checkpoint(tmp_path / "b.pt", 2, filters=(2, 2, 2, 2, 4))
    with pytest.raises(CheckpointError, match="b.pt is a different network than .*a.pt"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "soup.pt")
    assert not (tmp_path / "soup.pt").exists()
    with pytest.raises(CheckpointError, match="no checkpoint to average"):
        average_checkpoints([], tmp_path / "soup.pt")
    _tiny_checkpoint(tmp_path / "c.pt", 3)
    set_voxel_size(tmp_path / "c.pt", (30, 6, 6))  # the same network, recorded at another voxel size
    with pytest.raises(CheckpointError, match="c.pt records other voxel sizes than .*a.pt.*set-voxel-size"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "c.pt"], tmp_path / "soup.pt")
    assert not (tmp_path / "soup.pt").exists()


def test_outputs_that_would_replace_an_input_or_a_run_checkpoint_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    _tiny_checkpoint(run / "last.pt", 1)
    (run / "train.jsonl").write_text('{"kind": "train", "iteration": 1}\n')
    _tiny_checkpoint(tmp_path / "b.pt", 2)
    before = {path: path.stat().st_mtime_ns for path in (run / "last.pt", tmp_path / "b.pt")}
    cases = [(["average", str(run / "last.pt"), str(tmp_path / "b.pt"), "--out", str(run / "last.pt")],
              "is also an input"),
             (["export", str(tmp_path / "b.pt"), str(run / "last.pt")], "belongs to the training run in"),
             (["export", str(tmp_path / "b.pt"), str(tmp_path / "b.pt")], "is also an input"),
             (["export", str(tmp_path / "b.pt"), str(run)], "is a folder: name the output file"),
             (["export", str(run / "last.pt"), str(tmp_path / "b.pt")], "b.pt already exists: pass --overwrite"),
             (["average", str(run / "last.pt"), "--out", str(tmp_path / "b.pt")], "already exists: pass --overwrite")]
    for argv, message in cases:
        assert checkpoint_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert {path: path.stat().st_mtime_ns for path in before} == before
    assert sorted(os.listdir(run)) == ["last.pt", "train.jsonl"]  # no stray .tmp
    assert checkpoint_main(["export", str(run / "last.pt"), str(tmp_path / "b.pt"), "--overwrite"]) == 0
    assert read_checkpoint(tmp_path / "b.pt")["model_sha256"] == read_checkpoint(run / "last.pt")["model_sha256"]


def test_set_voxel_size_help_names_the_three_axes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        checkpoint_main(["set-voxel-size", "--help"])
    assert exit_info.value.code == 0
    assert "path Z Y X" in capsys.readouterr().out


def test_set_voxel_size_with_too_few_values_is_a_usage_error(tmp_path, capsys):
    _tiny_checkpoint(tmp_path / "run.pt", 1)
    before = (tmp_path / "run.pt").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        checkpoint_main(["set-voxel-size", str(tmp_path / "run.pt"), "30", "10"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the following arguments are required: X") and err.count("\n") == 1
    assert (tmp_path / "run.pt").read_bytes() == before
