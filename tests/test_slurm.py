"""pipeline.slurm against a real single-node SLURM cluster: chained array jobs equal the local run;
scancel of a running task + resubmit finishes without recomputing any done block; dry run; status."""

from __future__ import annotations

import os
import re
import subprocess
import time


from conftest import assert_same_result, write_run_config
from pipeline.run import block_progress, done_blocks
from pipeline.runconfig import load_run_config
from pipeline.slurm import _array_spec, main, max_array_size, status


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
    assert not os.path.exists(os.path.join(config.run_dir, "jobs.json"))
    assert block_progress(config)["predict"] == (0, 12)  # outputs claimed, no block run


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
    while not done_blocks(config, "predict", 12) and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["scancel", f"{job}_0"], check=True)  # task 0 owns blocks 0, 2, ..., 10
    _wait_idle()
    before = _records(config)
    done = set(done_blocks(config, "predict", 12))
    assert 0 < len(done) < 12 and not {0, 2, 4, 6, 8, 10} <= done
    rows = {row["phase"]: row for row in status(config.run_dir)}
    assert rows["predict"]["failed"] == 12 - len(done) and rows["predict"]["failed_logs"] == [
        os.path.join(config.run_dir, "logs", f"predict-{job}_0.log")]
    assert rows["fragments"]["tasks"] == {"blocked": 2}
    assert main(["status", config.run_dir]) == 0
    assert "resubmit" in capsys.readouterr().out
    assert main(["resubmit", config.run_dir]) == 0
    out = capsys.readouterr().out
    assert re.search(r"submitted predict: job \d+ \(array 0\)\n", out)  # only the cancelled task's share
    _wait_idle()
    after = _records(config)
    assert {p: after[p] for p in before} == before  # nothing done was recomputed
    assert len(after) == 48
    assert_same_result(config, reference)
    assert main(["resubmit", config.run_dir]) == 0
    assert "nothing to resubmit" in capsys.readouterr().out
