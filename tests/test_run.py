"""pipeline.run: one config, validated; resume skips finished work; changed config refused;
dask.distributed equals the local run; the demo end to end with a tiny checkpoint."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from conftest import assert_same_result, write_run_config

from emcore.store import VOLUME_ID, open_volume
from pipeline import demo, slurm
from pipeline.run import BLOCK_PHASES, block_progress, done_blocks, main, prepare, run_phase
from pipeline.runconfig import RunConfig, default_config_yaml, load_run_config


def _records(store):
    """{path: mtime_ns} of every per-block done record under the store's work folders."""
    found = {}
    for folder, _, files in os.walk(os.path.join(store, ".corrseg3d")):
        for name in files:
            if name.endswith(".done") and f"{os.sep}done" in folder:
                path = os.path.join(folder, name)
                found[path] = os.stat(path).st_mtime_ns
    return found


def test_default_config_is_valid_and_complete(tmp_path):
    text = default_config_yaml()
    assert "# Scoring against ground truth" in text
    (tmp_path / "run.yaml").write_text(text)
    config = load_run_config(tmp_path / "run.yaml")
    assert config.input.raw == str(tmp_path / "vol.zarr")
    assert config.run_dir == str(tmp_path / "vol.zarr" / ".corrseg3d" / "run")
    defaults = RunConfig()
    assert (config.predict, config.segment, config.slurm) == (defaults.predict, defaults.segment, defaults.slurm)


@pytest.mark.parametrize("text, expected", [
    ("input: {raw: v.zarr}\nsegment: {min_sise: 5}\n", "unknown key 'segment.min_sise'; did you mean 'segment.min_size'?"),
    ("input: {raw: v.zarr}\nexecuton: {}\n", "unknown key 'executon'; did you mean 'execution'?"),
    ("input: {raw: v.zarr}\npredict: {block: [8, 32]}\n", "predict.block: expected 3 values"),
    ("segment: {}\n", "input.raw is required"),
])
def test_bad_config_is_one_error_line_and_writes_nothing(tmp_path, capsys, text, expected):
    (tmp_path / "run.yaml").write_text(text)
    assert main([str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == ["run.yaml"]


def test_rerun_does_nothing_and_changed_config_is_refused(reference, capsys):
    path = reference[0]
    config = load_run_config(path)
    before = _records(config.store)
    assert len(before) == 12 + 3 * 12  # predict, fragments/faces/relabel
    assert all(done == total for done, total in block_progress(config).values())
    assert main([path, "--no-progress"]) == 0
    assert "scores:" in capsys.readouterr().out
    assert _records(config.store) == before  # no block recomputed, no record rewritten
    assert_same_result(config, reference)
    assert main([path, "--set", "predict.halo=[4,40,40]"]) == 2
    assert "different config (options.halo differ)" in capsys.readouterr().err
    assert main([path, "--set", "segment.min_size=5", "--phase", "fragments"]) == 2
    assert "different config (options.min_size differ)" in capsys.readouterr().err
    assert _records(config.store) == before
    with open(os.path.join(config.run_dir, "scores.json")) as handle:
        assert 0 < json.load(handle)["report"]["scores"]["voi"] < 10


def test_changed_segment_config_is_refused_before_predict_resumes(run_inputs, tmp_path, capsys, keep_torch_threads):
    """A run killed during predict (outputs claimed, 3 of 12 blocks done) rerun with another
    ``segment.min_size``: refused before any predict block runs, with pipeline.run's fix."""
    path = write_run_config(tmp_path, "changed", run_inputs)
    config = load_run_config(path)
    prepare(config)
    run_phase(config, "predict", task_index=0, num_tasks=4, progress=False)
    done = done_blocks(config, "predict")
    assert len(done) == 3
    capsys.readouterr()
    assert main([path, "--set", "segment.min_size=5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "different config (options.min_size differ)" in err and err.count("\n") == 1
    assert "pass --restart segment to discard the segment results" in err and "--overwrite" not in err
    assert done_blocks(config, "predict") == done
    capsys.readouterr()
    assert slurm.main(["submit", path, "--set", "segment.min_size=5", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "pass --restart segment" in err and err.count("\n") == 1
    assert slurm.main(["submit", path, "--set", "segment.min_size=5", "--dry-run", "--restart", "segment"]) == 2
    assert "drop one of them" in capsys.readouterr().err
    changed = load_run_config(path, ["segment.min_size=5"])
    assert set(prepare(changed, restart="segment")) == set(BLOCK_PHASES)  # what submit --restart segment does
    assert done_blocks(config, "predict") == done
    prepare(changed)  # the segment outputs are claimed afresh with the new config


def test_dask_local_cluster_with_two_processes_equals_local_run(run_inputs, reference, tmp_path, monkeypatch):
    from distributed import LocalCluster

    monkeypatch.chdir("/")  # relative paths resolve against the config's folder, not the cwd
    path = write_run_config(tmp_path, "dask", run_inputs)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert main([path, "--scheduler", cluster.scheduler_address, "--no-progress"]) == 0
    assert_same_result(load_run_config(path), reference)


def test_demo_with_tiny_checkpoint(run_inputs, tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--checkpoint", str(run_inputs / "tiny.pt"), "--shape", "16,64,64",
                      "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "voi " in printed and "arand " in printed and "napari" in printed
    assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads((out / "neuroglancer.json").read_text())
    assert state["layers"][1]["source"] == "zarr3://http://localhost:8000/demo.zarr/segmentation/"
    assert (out / "demo.zarr" / "segmentation" / "zarr.json").exists()
    config = load_run_config(out / "run.yaml")
    assert yaml.safe_load((out / "run.yaml").read_text())["predict"]["checkpoint"] == str(run_inputs / "tiny.pt")
    assert all(done == total for done, total in block_progress(config).values())


def test_demo_writes_the_volume_anew_for_another_seed_or_after_a_killed_generation(run_inputs, tmp_path):
    """A rerun with another --seed (or over a generation that was killed) scores a new volume from scratch."""
    out, tiny = tmp_path / "demo", str(run_inputs / "tiny.pt")
    common = dict(checkpoint=tiny, shape=(16, 64, 64), scheduler="synchronous", progress=False)
    first = demo.run_demo(str(out), seed=3, **common)
    assert demo.main(["--out", str(out), "--checkpoint", tiny, "--shape", "16,64,64", "--seed", "4",
                      "--no-progress", "--scheduler", "synchronous"]) == 0
    labels = open_volume(str(out / "demo.zarr" / "labels"))
    assert labels.attrs["synthetic"]["seed"] == 4
    second = demo.run_demo(str(out), seed=4, **common)  # the same volume: resumes, nothing to do
    assert open_volume(str(out / "demo.zarr" / "labels")).attrs[VOLUME_ID] == labels.attrs[VOLUME_ID]
    assert second["n_gt_objects"] != first["n_gt_objects"] and second["scores"] != first["scores"]
    marker = out / "demo.zarr" / ".corrseg3d" / "writing" / "labels"
    marker.parent.mkdir(parents=True)
    marker.touch()  # what a generation killed outright leaves
    third = demo.run_demo(str(out), seed=4, **common)
    assert not marker.exists() and open_volume(str(out / "demo.zarr" / "labels")).attrs[VOLUME_ID] != labels.attrs[VOLUME_ID]
    assert third["scores"] == second["scores"]


def test_demo_without_weights_fails_before_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("corrseg3d.weights.default_checkpoint", lambda: str(tmp_path / "missing.pt"))
    assert demo.main(["--out", str(tmp_path / "demo"), "--shape", "16,64,64"]) == 2
    err = capsys.readouterr().err
    assert "the shipped weights" in err and "pass --checkpoint PATH" in err
    assert not (tmp_path / "demo").exists()
