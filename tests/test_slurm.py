"""pipeline.slurm against a real single-node SLURM cluster: chained array jobs equal the local run;
scancel of a running task + resubmit finishes without recomputing any done block; dry run; status
with SLURM's pending reasons; a request no node can satisfy is refused with the fix; the README's
workstation recipe, run as written, finishes. Request checks against parsed ``sinfo`` output run
without a cluster."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict

import pytest
from conftest import REPO, assert_same_result, file_mtimes, write_run_config

from pipeline.run import block_progress, done_blocks, prepare, preview
from pipeline.runconfig import SlurmConfig, load_run_config
from pipeline.slurm import _array_spec, format_status, main, max_array_size, status
from pipeline.slurmlimits import (
    SlurmRequestError,
    check_request,
    fitted_slurm_defaults,
    parse_memory_mb,
    parse_minutes,
    parse_sinfo,
)

#: Port of the README recipe's own cluster (the session cluster of conftest uses another one).
RECIPE_PORT = "17937"


def _wait_idle(timeout: float = 240) -> None:
    """Wait until the queue is empty, or holds only jobs waiting on a chain that can never run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = subprocess.run(["squeue", "-h", "-o", "%T|%r"], capture_output=True, text=True).stdout.split()
        if not rows or ("PENDING|DependencyNeverSatisfied" in rows
                        and all(row.startswith("PENDING|Dependency") for row in rows)):
            return
        time.sleep(0.5)
    raise AssertionError(f"SLURM queue still busy after {timeout} s")


def _records(config):
    """{path: mtime_ns} of every per-block done record of the run."""
    found = {}
    for folder, _, files in os.walk(os.path.join(config.store, ".corrseg3d")):
        for name in files:
            if name.endswith(".done") and f"{os.sep}done" in folder:
                found[os.path.join(folder, name)] = os.stat(os.path.join(folder, name)).st_mtime_ns
    return found


def test_array_spec_compresses_task_lists():
    assert _array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _array_spec([3]) == "3"


def test_dry_run_prints_chained_scripts_and_submits_nothing(run_inputs, tmp_path, capsys):
    path = write_run_config(tmp_path, "dry", run_inputs)
    assert main(["submit", path, "--dry-run", "--partition", "gpu", "--max-array", "5"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --partition=gpu" in out and "--num-tasks 5" in out
    assert "sbatch --parsable --array=0-4 " in out and "--dependency=afterok:<predict>" in out
    assert "--dependency=afterok:<relabel>" in out and "scripts/evaluate.sbatch" in out
    config = load_run_config(path)
    assert not os.path.exists(config.store) and block_progress(config)["predict"] is None  # nothing written


@pytest.mark.parametrize("segment", [{}, {"block": None, "halo": None}])
def test_dry_run_counts_the_blocks_a_submission_gets_and_writes_nothing(run_inputs, tmp_path, segment):
    config = load_run_config(write_run_config(tmp_path, "counts", run_inputs, segment=segment))
    planned = preview(config)  # before the outputs exist: segment plans with the affinities predict will create
    assert not os.path.exists(config.store)
    assert prepare(config) == planned and preview(config) == planned
    assert planned["predict"] == 12 and set(planned) == {"predict", "fragments", "stitch", "relabel"}


def test_dry_run_after_a_local_run_says_what_is_done(run_inputs, tmp_path, capsys):
    from pipeline import run

    path = write_run_config(tmp_path, "finished", run_inputs)
    assert run.main([path, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["submit", path, "--dry-run"]) == 0
    assert "nothing to submit: every phase is done" in capsys.readouterr().out
    os.remove(os.path.join(load_run_config(path).run_dir, "scores.json"))  # evaluate is left to do
    assert main(["submit", path, "--dry-run"]) == 0
    assert ("# blocks already done (their tasks skip them): predict 12 of 12, fragments 12 of 12, stitch 12 of 12, "
            "relabel 12 of 12") in capsys.readouterr().out


def test_dry_run_refuses_a_changed_config_like_a_submission(run_inputs, tmp_path, capsys):
    path = write_run_config(tmp_path, "changed", run_inputs)
    prepare(load_run_config(path))
    path = write_run_config(tmp_path, "changed", run_inputs, segment={"min_size": 31})
    before = file_mtimes(tmp_path)
    assert main(["submit", path, "--dry-run"]) == 2
    assert "options.min_size differ" in capsys.readouterr().err
    assert file_mtimes(tmp_path) == before


def test_dry_run_requests_gpus_for_predict_only(run_inputs, tmp_path, capsys):
    path = write_run_config(tmp_path, "gpus", run_inputs)
    assert main(["submit", path, "--dry-run", "--partition", "gpu", "--gpus", "1"]) == 0
    printed = re.findall(r"^# \S+/scripts/(\w+)\.sbatch\n(.*?)\n\$ sbatch", capsys.readouterr().out, re.S | re.M)
    scripts = dict(printed)
    assert sorted(scripts) == ["evaluate", "fragments", "predict", "relabel", "stitch"]
    assert [phase for phase, text in printed if "#SBATCH --gpus=1" in text] == ["predict"]
    assert all("#SBATCH --partition=gpu" in text for text in scripts.values())


def test_dry_run_sends_only_predict_to_the_gpu_partition(run_inputs, tmp_path, capsys):
    path = write_run_config(tmp_path, "gpu-partition", run_inputs)
    assert main(["submit", path, "--dry-run", "--partition", "cpu", "--gpu-partition", "gpu", "--gpus", "1"]) == 0
    scripts = dict(re.findall(r"^# \S+/scripts/(\w+)\.sbatch\n(.*?)\n\$ sbatch", capsys.readouterr().out, re.S | re.M))
    partitions = {phase: re.findall(r"^#SBATCH --partition=(\w+)$", text, re.M) for phase, text in scripts.items()}
    assert partitions == {"predict": ["gpu"], "fragments": ["cpu"], "stitch": ["cpu"], "relabel": ["cpu"],
                          "evaluate": ["cpu"]}


def test_array_jobs_equal_local_run(slurm_cluster, run_inputs, reference, tmp_path, capsys):
    assert max_array_size() == 1001
    path = write_run_config(tmp_path, "slurm", run_inputs)
    assert main(["submit", path]) == 0
    _wait_idle()
    config = load_run_config(path)
    assert_same_result(config, reference)
    rows = {row["phase"]: row for row in status(config.run_dir)}
    assert all(row["done"] == row["total"] and row["tasks"] == {"ok": 2} for p, row in rows.items() if p != "evaluate")
    assert rows["predict"]["total"] == 12 and rows["evaluate"]["done"] == 1
    logs = sorted(os.listdir(os.path.join(config.run_dir, "logs")))
    assert len(logs) == 9 and all("corrseg3d-task-exit 0" in open(os.path.join(config.run_dir, "logs", log)).read()
                                  for log in logs)


def test_scancel_then_resubmit_recomputes_nothing_done(slurm_cluster, run_inputs, reference, tmp_path, capsys):
    path = write_run_config(tmp_path, "cancel", run_inputs)
    config = load_run_config(path)
    assert main(["submit", path]) == 0
    job = capsys.readouterr().out.split("submitted predict: job ")[1].split()[0]
    deadline = time.monotonic() + 120
    while not done_blocks(config, "predict") and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["scancel", f"{job}_0"], check=True)  # task 0 owns blocks 0, 2, ..., 10
    _wait_idle()
    before = _records(config)
    done = set(done_blocks(config, "predict"))
    assert 0 < len(done) < 12 and not {0, 2, 4, 6, 8, 10} <= done
    rows = {row["phase"]: row for row in status(config.run_dir)}
    assert rows["predict"]["failed"] == 12 - len(done) and rows["predict"]["failed_logs"] == [
        os.path.join(config.run_dir, "logs", f"predict-{job}_0.log")]
    assert rows["fragments"]["tasks"] == {"blocked": 2}
    assert main(["status", config.run_dir]) == 0
    assert f"`python -m pipeline.slurm resubmit {config.run_dir}` reruns what is not done" in capsys.readouterr().out
    recorded = {name: open(os.path.join(config.run_dir, name)).read() for name in ("run.yaml", "jobs.json")}
    assert main(["resubmit", config.run_dir, "--mem", "900M", "--dry-run"]) == 0
    assert "#SBATCH --mem=900M" in capsys.readouterr().out
    assert {name: open(os.path.join(config.run_dir, name)).read() for name in recorded} == recorded
    assert main(["resubmit", config.run_dir, "--mem", "900M"]) == 0  # e.g. after tasks ran out of memory
    out = capsys.readouterr().out
    assert re.search(r"submitted predict: job \d+ \(array 0\)\n", out)  # only the cancelled task's share
    assert "#SBATCH --mem=900M" in open(os.path.join(config.run_dir, "scripts", "predict.sbatch")).read()
    assert load_run_config(os.path.join(config.run_dir, "run.yaml")).slurm.mem == "900M"
    _wait_idle()
    after = _records(config)
    assert {p: after[p] for p in before} == before  # nothing done was recomputed
    assert len(after) == 48
    assert_same_result(config, reference)
    assert main(["resubmit", config.run_dir]) == 0
    assert "nothing to resubmit" in capsys.readouterr().out
    assert main(["submit", path]) == 0
    assert "nothing to submit: every phase is done" in capsys.readouterr().out
    # a task that died after its share was done (here: task 1 of the first predict job, never rerun) no
    # longer counts as failed once its phase finished
    with open(os.path.join(config.run_dir, "logs", f"predict-{job}_1.log"), "w") as handle:
        handle.write("killed\n")
    rows = {row["phase"]: row for row in status(config.run_dir)}
    assert rows["predict"]["tasks"] == {"ok": 1, "failed (phase done)": 1} and rows["predict"]["failed_logs"] == []
    assert main(["status", config.run_dir]) == 0
    assert "resubmit" not in capsys.readouterr().out


def test_request_no_node_can_satisfy_is_refused_with_the_fix(slurm_cluster, run_inputs, tmp_path, capsys):
    path = write_run_config(tmp_path, "big", run_inputs)
    cpus = os.cpu_count()
    cases = [(["--cpus", "64"], f"use --cpus {cpus} (slurm.cpus)"),
             (["--mem", "100T"], "use --mem "),
             (["--gpus", "1"], "--gpus 0 or a partition with GPUs"),
             (["--partition", "nosuch"], "partition 'nosuch' does not exist on this cluster: use --partition"),
             (["--gpu-partition", "nosuch"], "partition 'nosuch' does not exist on this cluster: use --gpu-partition")]
    for extra, fix in cases:
        assert main(["submit", path, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and fix in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == ["big.yaml"]  # no store, no run state, nothing submitted
    assert "PENDING" not in subprocess.run(["squeue", "-h", "-o", "%T"], capture_output=True, text=True).stdout


def test_status_shows_the_reason_a_task_waits(slurm_cluster, run_inputs, tmp_path, capsys):
    path = write_run_config(tmp_path, "later", run_inputs, slurm={"extra": ["--begin=now+1hour"]})
    assert main(["submit", path]) == 0
    config = load_run_config(path)
    try:
        deadline = time.monotonic() + 60
        while (tasks := {row["phase"]: row for row in status(config.run_dir)}["predict"]["tasks"]) == {"queued": 2}:
            assert time.monotonic() < deadline, "SLURM gave the pending tasks no reason"
            time.sleep(0.5)  # the reason is set by the scheduler's next pass
        assert tasks == {"queued (BeginTime)": 2}
        assert main(["status", config.run_dir]) == 0
        assert "2 queued (BeginTime)" in capsys.readouterr().out
        assert main(["submit", path]) == 2  # a second chain beside a waiting one would run every task twice
        assert "still running or queued: wait for them" in capsys.readouterr().err
    finally:
        with open(os.path.join(config.run_dir, "jobs.json")) as handle:
            jobs = [entry["job"] for entry in json.load(handle)["submissions"][0].values()]
        subprocess.run(["scancel", *jobs], check=True)


def test_a_chain_whose_second_sbatch_fails_is_withdrawn_whole(slurm_cluster, run_inputs, tmp_path, monkeypatch, capsys):
    from pipeline import slurm

    path = write_run_config(tmp_path, "withdrawn", run_inputs, slurm={"extra": ["--begin=now+1hour"]})
    calls = []

    def second_sbatch_fails(args):
        calls.append(list(args))
        if args[0] == "sbatch" and sum(call[0] == "sbatch" for call in calls) == 2:
            raise slurm.SlurmError("sbatch --parsable failed: Socket timed out")
        return real(args)

    real = slurm._slurm
    monkeypatch.setattr(slurm, "_slurm", second_sbatch_fails)
    run_yaml = os.path.join(load_run_config(path).run_dir, "run.yaml")
    os.makedirs(os.path.dirname(run_yaml))
    with open(run_yaml, "w") as handle:
        handle.write("# the request of an earlier submission\n")
    assert main(["submit", path]) == 2
    assert open(run_yaml).read() == "# the request of an earlier submission\n"  # the refused request is not kept
    first = next(call for call in calls if call[0] == "scancel")[1]
    assert "were cancelled, so nothing of this submission runs" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(load_run_config(path).run_dir, "jobs.json"))
    assert subprocess.run(["squeue", "-h", "-j", first, "-o", "%T"], capture_output=True, text=True).stdout.strip() in (
        "", "CANCELLED")


def _readme_recipe() -> list[str]:
    """The command lines of the README's workstation recipe (the block that starts a local cluster)."""
    with open(os.path.join(REPO, "README.md")) as handle:
        blocks = re.findall(r"```bash\n(.*?)```", handle.read(), re.S)
    recipe = next(block for block in blocks if block.startswith("slurm/local_cluster.sh start"))
    return [line.split("   #")[0].strip() for line in recipe.strip().splitlines()]


def test_readme_workstation_recipe_finishes(slurm_installed, tmp_path):
    """Runs the README's lines as written in a scratch folder: its own cluster (another port, another
    folder than /tmp/slurm), the synthetic volume, the generated default config, submit, status, stop."""
    work, cluster = tmp_path / "work", tmp_path / "cluster"
    work.mkdir()
    os.symlink(os.path.join(REPO, "slurm"), work / "slurm")
    env = {**os.environ, "CORRSEG3D_SLURMCTLD_PORT": RECIPE_PORT, "SLURM_CONF": str(cluster / "slurm.conf"),
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    lines = [line.replace("/tmp/slurm", str(cluster)) for line in _readme_recipe()]
    start, *commands, watch, stop = lines
    assert start.startswith("slurm/local_cluster.sh start") and stop.startswith("slurm/local_cluster.sh stop")
    try:
        script = "\n".join(["set -e", start, *commands])
        result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        assert "submitted predict" in result.stdout
        assert "slurm: cpus, mem and time shrunk" in (work / "run.yaml").read_text() or os.cpu_count() >= 4
        deadline = time.monotonic() + 480
        while True:
            shown = subprocess.run(["bash", "-c", watch], cwd=work, env=env, capture_output=True, text=True)
            assert shown.returncode == 0, shown.stderr
            rows = re.findall(r"^(predict|fragments|stitch|relabel)\s+(\d+)\s+(\d+)\s+\d+\s+(\d+)", shown.stdout, re.M)
            if len(rows) == 4 and all(done == total for _, done, _, total in rows):
                break
            assert all(failed == "0" for _, _, failed, _ in rows) and time.monotonic() < deadline, shown.stdout
            time.sleep(2)
    finally:
        subprocess.run(["bash", "-c", stop], cwd=work, env=env, capture_output=True, timeout=120)


NODES = parse_sinfo("n1|debug*|2|1843|(null)|infinite\n"
                    "n2|gpu|8|64000|gpu:a100:4(S:0-1)|1-00:00:00\n")


@pytest.mark.parametrize("values, fix", [
    ({"cpus": 4}, "use --cpus 2 (slurm.cpus)"),
    ({"mem": "16G"}, "use --mem 1843M (slurm.mem)"),
    ({"gpus": 1}, "--gpus 0 or a partition with GPUs"),
    ({"partition": "gpu", "gpus": 8}, "use --gpus 4 (slurm.gpus)"),
    ({"partition": "gpu", "time": "2-00:00:00"}, "use --time 1-00:00:00 (slurm.time)"),
    ({"partition": "big"}, "partition 'big' does not exist on this cluster: use --partition (slurm.partition) debug or gpu"),
    ({"gpu_partition": "big"}, "partition 'big' does not exist on this cluster: use --gpu-partition "
                               "(slurm.gpu_partition) debug or gpu"),
    ({"gpu_partition": "debug", "gpus": 1}, "--gpus 0 or a partition with GPUs via --gpu-partition (slurm.gpu_partition)"),
    ({"partition": "gpu", "gpu_partition": "gpu", "cpus": 16}, "use --cpus 8 (slurm.cpus)"),
    ({"gpu_partition": "gpu", "gpus": 1, "mem": "16G"}, "no node of partition 'debug'"),
    ({"time": "4h"}, "is not a SLURM time"),
    ({"mem": "lots"}, "is not a SLURM size"),
])
def test_requests_are_checked_against_the_nodes(values, fix):
    request = SlurmConfig(**{**asdict(SlurmConfig(cpus=1, mem="1G")), **values})
    with pytest.raises(SlurmRequestError) as error:
        check_request(request, NODES)
    assert fix in str(error.value)


def test_fitting_requests_pass_and_defaults_shrink_to_the_default_partition(monkeypatch):
    check_request(SlurmConfig(cpus=2, mem="1800M", time="10-00:00:00"), NODES)
    check_request(SlurmConfig(partition="gpu", cpus=8, mem="60G", gpus=4, time="23:59:00"), NODES)
    check_request(SlurmConfig(gpu_partition="gpu", cpus=2, mem="1800M", gpus=4, time="23:59:00"), NODES)
    assert (parse_minutes("90"), parse_minutes("30:30"), parse_minutes("1-12"), parse_minutes("UNLIMITED")) == (
        90, 31, 2160, None)
    assert (parse_memory_mb("16G"), parse_memory_mb("2048"), parse_memory_mb("1T")) == (16384, 2048, 1048576)
    monkeypatch.setattr("pipeline.slurmlimits.query_nodes", lambda: NODES)
    fitted = fitted_slurm_defaults()
    assert (fitted.cpus, fitted.mem, fitted.time) == (2, "1843M", "04:00:00")
    check_request(fitted, NODES)

    def unreachable():
        raise SlurmRequestError("cannot read the cluster's nodes with sinfo")

    monkeypatch.setattr("pipeline.slurmlimits.query_nodes", unreachable)
    assert fitted_slurm_defaults() == SlurmConfig()


def test_status_says_when_every_block_is_done_but_the_closing_step_is_not():
    row = {"phase": "stitch", "tasks": {"failed": 1, "ok": 1}, "failed_logs": ["logs/stitch-7_1.log"],
           "done": 12, "total": 12, "failed": 0, "pending": 0}
    text = format_status([{**row, "finished": False}], "run")
    assert "every block done, the closing step not (stitch: the global step)" in text
    assert "pipeline.slurm resubmit run` reruns what is not done" in text
    assert "closing step" not in format_status([{**row, "finished": True}], "run")
    never = {**row, "done": 0, "total": 0, "finished": False}  # jobs submitted, no run state yet
    assert "closing step" not in format_status([never], "run")
