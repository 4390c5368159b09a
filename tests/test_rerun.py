"""A refused run never blocks its own fix: the corrected command succeeds without deleting anything.

Every check runs before outputs or run state exist, so the corrected rerun starts cleanly; after
a config change, ``pipeline.run --restart STAGE`` (or ``--overwrite``) replaces what the change
invalidates and keeps the rest; training replaces a run only with ``--overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import yaml
from conftest import file_mtimes, write_run_config

from corrseg3d import train as train_cli
from pipeline import predict, run, segment, slurm
from pipeline.run import block_progress
from pipeline.runconfig import load_run_config
from pipeline.synth import write_synthetic

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


def test_corrected_predict_after_a_refused_one(run_inputs, tmp_path, capsys):
    store = tmp_path / "in.zarr"
    shutil.copytree(run_inputs / "in.zarr", store)
    args = [str(store), "--checkpoint", str(run_inputs / "tiny.pt"), "--block", "8,32,32", "--halo", "4,32,32",
            "--device", "cpu", "--no-progress"]
    for refused in (["--precision", "fp16"], ["--device", "cuda"], ["--task-index", "7", "--num-tasks", "2"]):
        assert predict.main(args + refused) == 2
    assert sorted(os.listdir(store)) == ["labels", "raw", "zarr.json"]
    assert predict.main(args + ["--precision", "fp32"]) == 0
    assert "12 blocks run" in capsys.readouterr().out


def test_an_input_written_anew_is_not_taken_for_the_old_one(run_inputs, tmp_path, capsys):
    store = tmp_path / "in.zarr"
    shutil.copytree(run_inputs / "in.zarr", store)
    args = [str(store), "--checkpoint", str(run_inputs / "tiny.pt"), "--block", "8,32,32", "--halo", "4,32,32",
            "--device", "cpu", "--precision", "fp32", "--no-progress"]
    assert predict.main(args) == 0
    assert segment.main([str(store), "--block", "8,32,32", "--no-progress"]) == 0
    write_synthetic(str(store), (16, 64, 96), seed=5, chunks=(8, 64, 64), overwrite=True)
    capsys.readouterr()
    assert predict.main(args) == 2  # same name, same shape, other data: no resume from the old blocks
    err = capsys.readouterr().err  # no option undoes a new input: the only fix named is --overwrite
    assert "input.volume_id differ; the input was written anew since): pass --overwrite to start again" in err
    assert predict.main(args + ["--halo", "4,32,31"]) == 2
    assert "options.halo differ; the input was written anew since): rerun with the original options, or pass " \
           "--overwrite" in capsys.readouterr().err
    assert predict.main(args + ["--overwrite"]) == 0
    assert segment.main([str(store), "--block", "8,32,32", "--no-progress"]) == 2  # new affinities, old fragments
    assert "the input was written anew since" in capsys.readouterr().err
    assert segment.main([str(store), "--block", "8,32,32", "--no-progress", "--overwrite"]) == 0
    summary = [line for line in capsys.readouterr().err.splitlines() if line.startswith("segment: ")]
    assert len(summary) == 1 and "fragments ->" in summary[0]
    assert segment.main([str(store), "--block", "8,32,32", "--no-progress"]) == 0  # all done: the same summary
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("segment: ")] == summary


def test_a_run_begun_before_an_upgrade_resumes_while_the_new_options_are_at_their_defaults(run_inputs, tmp_path,
                                                                                          capsys):
    """A config.json without an option that a later release added (as written before the upgrade) resumes
    with that option at its default and is brought up to date; the option set otherwise is a changed config."""
    store = tmp_path / "in.zarr"
    shutil.copytree(run_inputs / "in.zarr", store)
    args = [str(store), "--checkpoint", str(run_inputs / "tiny.pt"), "--block", "8,32,32", "--halo", "4,32,32",
            "--device", "cpu", "--precision", "fp32", "--no-progress"]
    segment_args = [str(store), "--block", "8,32,32", "--no-progress"]
    assert predict.main(args) == 0 and segment.main(segment_args) == 0
    added = {"predict": "tta_axes", "segment": "merge_floor"}
    configs = {stage: store / ".corrseg3d" / stage / output / "config.json"
               for stage, output in (("predict", "affinities"), ("segment", "segmentation"))}
    for stage, path in configs.items():
        config = json.loads(path.read_text())
        del config["options"][added[stage]]
        path.write_text(json.dumps(config))
    written = file_mtimes(store / "affinities") | file_mtimes(store / "segmentation")
    capsys.readouterr()
    assert predict.main(args + ["--tta", "--tta-axes", "yx"]) == 2
    assert "options.tta_axes" in capsys.readouterr().err
    assert segment.main(segment_args + ["--merge-floor", "0.1"]) == 2
    assert "options.merge_floor differ" in capsys.readouterr().err
    assert predict.main(args) == 0 and segment.main(segment_args) == 0
    assert "12 blocks already done" in capsys.readouterr().out
    assert file_mtimes(store / "affinities") | file_mtimes(store / "segmentation") == written
    for stage, path in configs.items():
        assert added[stage] in json.loads(path.read_text())["options"]


def test_a_segmentation_begun_before_the_supervoxel_options_resumes_on_its_own_settings(run_inputs, tmp_path,
                                                                                         capsys):
    """A multicut run from before the ``sv_*`` options (its config.json lacks them, beta 0.5) ran on the
    reference's supervoxels: today's defaults are a changed config, its own settings resume it. A mutex
    watershed run of then resumes with today's defaults: the multicut's settings change nothing for it."""
    store = tmp_path / "in.zarr"
    shutil.copytree(run_inputs / "in.zarr", store)
    assert predict.main([str(store), "--checkpoint", str(run_inputs / "tiny.pt"), "--block", "8,32,32", "--halo",
                         "4,32,32", "--device", "cpu", "--precision", "fp32", "--no-progress"]) == 0
    earlier = ["--beta", "0.5", "--sv-threshold", "0.25", "--sv-seed-sigma", "2", "--sv-weight-sigma", "2",
               "--sv-min-size", "100"]
    runs = {"multicut": [str(store), "--block", "8,32,32", "--no-progress"],
            "mws": [str(store), "--block", "8,32,32", "--method", "mws", "--output", "mws", "--fragments",
                    "mws_fragments", "--no-progress"]}
    assert segment.main(runs["multicut"] + earlier) == 0 and segment.main(runs["mws"] + ["--beta", "0.5"]) == 0
    for output in ("segmentation", "mws"):
        path = store / ".corrseg3d" / "segment" / output / "config.json"
        config = json.loads(path.read_text())
        assert config["options"]["beta"] == 0.5
        config["options"] = {k: v for k, v in config["options"].items() if not k.startswith("sv_")}
        path.write_text(json.dumps(config))
    written = file_mtimes(store / "segmentation") | file_mtimes(store / "mws")
    capsys.readouterr()
    assert segment.main(runs["multicut"]) == 2
    assert "options.beta, options.sv_min_size, options.sv_seed_sigma, options.sv_threshold, options.sv_weight_sigma " \
           "differ" in capsys.readouterr().err
    assert segment.main(runs["multicut"] + earlier) == 0 and segment.main(runs["mws"]) == 0
    assert capsys.readouterr().err.count("fragments: 0 blocks run, 12 already done") == 2
    assert file_mtimes(store / "segmentation") | file_mtimes(store / "mws") == written


def test_a_moved_store_or_a_path_typed_otherwise_resumes(run_inputs, tmp_path, monkeypatch, capsys):
    """Run state names its input by volume id and its outputs by dataset path: ``./a.zarr``,
    ``a.zarr`` and ``/abs/a.zarr``, another working directory, or a moved store resume the run."""
    shutil.copytree(run_inputs / "in.zarr", tmp_path / "a.zarr")
    monkeypatch.chdir(tmp_path)
    common = ["--checkpoint", str(run_inputs / "tiny.pt"), "--block", "8,32,32", "--halo", "4,32,32",
              "--device", "cpu", "--precision", "fp32", "--no-progress"]
    assert predict.main(["a.zarr", *common, "--task-index", "0", "--num-tasks", "2"]) == 0  # half, as if killed
    shutil.move(tmp_path / "a.zarr", tmp_path / "moved.zarr")
    capsys.readouterr()
    assert predict.main([str(tmp_path / "moved.zarr"), *common]) == 0
    assert "6 blocks already done" in capsys.readouterr().out
    assert segment.main(["./moved.zarr", "--block", "8,32,32", "--no-progress"]) == 0
    shutil.copytree(tmp_path / "moved.zarr", tmp_path / "copy.zarr")
    written = file_mtimes(tmp_path / "copy.zarr" / "segmentation")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert segment.main([str(tmp_path / "copy.zarr"), "--block", "8,32,32", "--no-progress"]) == 0
    assert predict.main(["../copy.zarr", *common]) == 0
    assert file_mtimes(tmp_path / "copy.zarr" / "segmentation") == written


def test_outputs_whose_paths_differ_only_by_a_slash_keep_their_own_run_state(run_inputs, tmp_path, capsys):
    store = tmp_path / "in.zarr"
    shutil.copytree(run_inputs / "in.zarr", store)
    assert predict.main([str(store), "--checkpoint", str(run_inputs / "tiny.pt"), "--block", "8,32,32", "--halo",
                         "4,32,32", "--device", "cpu", "--precision", "fp32", "--no-progress"]) == 0
    runs = [["--output", "seg/a", "--fragments", "frag/a", "--min-size", "0"],
            ["--output", "seg_a", "--fragments", "frag_a", "--min-size", "50"]]
    for options in runs + runs:  # each run, then each again: it resumes from its own records
        assert segment.main([str(store), "--block", "8,32,32", "--no-progress"] + options) == 0, capsys.readouterr().err
    assert os.path.isfile(store / ".corrseg3d" / "segment" / "seg" / "a" / "complete.json")
    assert os.path.isfile(store / ".corrseg3d" / "segment" / "seg_a" / "complete.json")
    assert segment.main([str(store), "--block", "8,32,32", "--no-progress", "--output", "../seg"]) == 2
    assert "a dataset path may not have empty, '.' or '..' parts" in capsys.readouterr().err


def test_outputs_that_would_clash_are_refused_before_anything_is_written(run_inputs, tmp_path, capsys):
    store = tmp_path / "in.zarr"
    shutil.copytree(run_inputs / "in.zarr", store)
    assert predict.main([str(store), "--checkpoint", str(run_inputs / "tiny.pt"), "--block", "8,32,32", "--halo",
                         "4,32,32", "--device", "cpu", "--precision", "fp32", "--no-progress"]) == 0
    assert segment.main([str(store), "--block", "8,32,32", "--no-progress"]) == 0
    before = file_mtimes(store)
    capsys.readouterr()
    for options, message in (
            (["--output", "segmentation/v2", "--fragments", "frag/v2"], "lies inside the dataset"),
            (["--output", "seg v1", "--fragments", "../x"], "may not have empty, '.' or '..' parts"),
            (["--output", "seg2"], "this segment run did not start it (another run or tool wrote it): name another "
                                   "fragments dataset")):
        assert segment.main([str(store), "--block", "8,32,32", "--no-progress"] + options) == 2
        assert message in capsys.readouterr().err
        assert file_mtimes(store) == before


def test_outputs_that_fail_to_be_created_leave_no_claim_behind(run_inputs, tmp_path, monkeypatch, capsys):
    store = tmp_path / "in.zarr"
    shutil.copytree(run_inputs / "in.zarr", store)
    args = [str(store), "--checkpoint", str(run_inputs / "tiny.pt"), "--block", "8,32,32", "--halo", "4,32,32",
            "--device", "cpu", "--precision", "fp32", "--no-progress"]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("pipeline.predict.create_volume", disk_full)
        assert predict.main(args) != 0
    assert sorted(os.listdir(store)) == ["labels", "raw", "zarr.json"]  # neither run state nor output
    assert predict.main(args) == 0
    with monkeypatch.context() as patch:
        patch.setattr("pipeline.segment.create_volume", disk_full)
        assert segment.main([str(store), "--block", "8,32,32", "--no-progress"]) != 0
    assert not os.path.exists(store / ".corrseg3d" / "segment") and not os.path.exists(store / "fragments")
    capsys.readouterr()
    assert segment.main([str(store), "--block", "8,32,32", "--no-progress"]) == 0, capsys.readouterr().err


def test_a_nested_output_started_with_the_flattened_run_state_folder_resumes(run_inputs, tmp_path, capsys):
    store = tmp_path / "in.zarr"
    shutil.copytree(run_inputs / "in.zarr", store)
    options = ["--block", "8,32,32", "--halo", "4,32,32", "--device", "cpu", "--precision", "fp32", "--no-progress"]
    args = [str(store / "raw"), "--out", str(store / "runs" / "aff"), "--checkpoint", str(run_inputs / "tiny.pt")]
    assert predict.main(args + options + ["--task-index", "0", "--num-tasks", "2"]) == 0
    folder = store / ".corrseg3d" / "predict"
    os.rename(folder / "runs" / "aff", folder / "runs_aff")  # the layout of earlier releases
    os.rmdir(folder / "runs")
    capsys.readouterr()
    assert predict.main(args + options) == 0
    assert "6 blocks run, 6 blocks already done" in capsys.readouterr().out
    assert os.path.isfile(folder / "runs_aff" / "complete.json") and not os.path.exists(folder / "runs")


def test_a_changed_config_of_a_nested_output_names_the_stage_to_restart(run_inputs, tmp_path, capsys):
    path = write_run_config(tmp_path, "nested", run_inputs, output={"segmentation": "seg/v1"}, evaluate={"gt": None})
    run.prepare(load_run_config(path))
    assert run.main([path, "--set", "segment.min_size=31", "--no-progress"]) == 2
    assert "pass --restart segment to discard the segment results" in capsys.readouterr().err


def test_tta_axes_without_tta_change_nothing_and_resume(run_inputs, tmp_path, capsys):
    store = tmp_path / "in.zarr"
    shutil.copytree(run_inputs / "in.zarr", store)
    args = [str(store), "--checkpoint", str(run_inputs / "tiny.pt"), "--block", "8,32,32", "--halo", "4,32,32",
            "--device", "cpu", "--precision", "fp32", "--no-progress"]
    assert predict.main(args + ["--tta-axes", "yx"]) == 0
    written = file_mtimes(store / "affinities")
    capsys.readouterr()
    assert predict.main(args) == 0 and "12 blocks already done" in capsys.readouterr().out
    assert file_mtimes(store / "affinities") == written
    assert predict.main(args + ["--tta"]) == 2 and "options.tta differ" in capsys.readouterr().err


def test_run_restarts_a_stage_after_a_config_change(run_inputs, tmp_path, capsys):
    path = write_run_config(tmp_path, "rerun", run_inputs)
    assert run.main([path, "--set", "predict.precision=fp16", "--no-progress"]) == 2
    assert run.main([path, "--set", "segment.majority=0.2", "--no-progress"]) == 2
    assert sorted(os.listdir(tmp_path)) == ["rerun.yaml"]  # refused before the first stage
    assert run.main([path, "--no-progress"]) == 0
    config = load_run_config(path)
    predicted = file_mtimes(os.path.join(config.store, ".corrseg3d", "predict"))
    segmented = file_mtimes(os.path.join(config.store, ".corrseg3d", "segment"))
    capsys.readouterr()
    assert run.main([path, "--set", "segment.min_size=300", "--no-progress"]) == 2
    assert "pass --restart segment" in capsys.readouterr().err
    assert run.main([path, "--set", "segment.min_size=300", "--restart", "segment", "--no-progress"]) == 0
    assert file_mtimes(os.path.join(config.store, ".corrseg3d", "predict")) == predicted  # predict kept
    after = file_mtimes(os.path.join(config.store, ".corrseg3d", "segment"))
    assert all(after.get(name) != stamp for name, stamp in segmented.items() if name.endswith(".done"))
    with open(os.path.join(config.run_dir, "scores.json")) as handle:
        scores = json.load(handle)
    assert scores["report"]["n_segments"] > 0 and "min_size" not in scores["key"]
    assert run.main([path, "--set", "segment.min_size=300", "--overwrite", "--no-progress"]) == 0
    assert all(done == total for done, total in block_progress(load_run_config(
        path, ["segment.min_size=300"])).values())


def test_slurm_submit_after_a_refused_one(run_inputs, tmp_path, monkeypatch, capsys):
    path = write_run_config(tmp_path, "submit", run_inputs)
    empty = tmp_path / "empty"
    empty.mkdir()
    with monkeypatch.context() as patch:
        patch.setenv("PATH", str(empty))
        assert slurm.main(["submit", path]) == 2
    assert "sbatch not found" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["empty", "submit.yaml"]
    assert slurm.main(["submit", path, "--dry-run"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["empty", "submit.yaml"]  # the dry run writes nothing either


def test_training_replaces_a_run_only_with_overwrite(run_inputs, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"filters": [4, 4, 4, 4, 4], "embedding_dim": 4},
        "data": {"sources": [{"raw": str(run_inputs / "in.zarr" / "raw"), "labels": str(run_inputs / "in.zarr" / "labels")}],
                 "patch": [4, 32, 32], "context": [0, 8, 8]},
        "train": {"iterations": 1, "batch_size": 1, "num_workers": 0, "precision": "fp32"}}))
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.jsonl").write_text('{"kind": "train", "iteration": 5000}\n')
    (out / "notes.txt").write_text("keep me\n")
    argv = ["-c", str(config), "--out", str(out), "--no-progress"]
    assert train_cli.main(argv) == 2
    assert "--overwrite to replace it" in capsys.readouterr().err
    assert (out / "train.jsonl").read_text() == '{"kind": "train", "iteration": 5000}\n'
    assert train_cli.main(argv + ["--overwrite"]) == 0
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in records] == [1] and (out / "notes.txt").exists()
    assert train_cli.main(argv + ["train.iterations=2", "--resume"]) == 0
