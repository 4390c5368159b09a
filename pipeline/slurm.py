"""``python -m pipeline.slurm``: run a whole pipeline as chained SLURM array jobs, watch it, resume it.

``submit run.yaml`` claims and creates every output once (so array tasks never race creating
them), writes the resolved config and one batch script per phase (from
``pipeline/templates/phase.sbatch``, shipped as package data) into the run folder and submits, chained with
``--dependency=afterok``: one array job each for ``predict``, ``fragments``, ``stitch`` and
``relabel``, then an ``evaluate`` job when ground truth is configured. Only the ``predict`` jobs
request ``slurm.gpus`` (and go to ``slurm.gpu_partition`` when one is set): the other phases run
no network. Array task ``I`` runs
``python -m pipeline.run RUN/run.yaml --phase P --task-index I --num-tasks N``; with more blocks
than the cluster's ``MaxArraySize`` each task takes several blocks (``N`` = array size). There is
no central server and no open port: tasks only share the zarr store and the done records.

Before anything is created or submitted, ``submit`` checks the whole run config
(:func:`pipeline.run.check_run`) and the request (CPUs, memory, GPUs, time, partition) against
the nodes ``sinfo`` reports (:mod:`pipeline.slurmlimits`): a request no node can satisfy would
pend forever, so it is refused with the values that fit. ``--dry-run`` checks the run config and
the run state as a submission does (:func:`pipeline.run.preview`) but only the request's formats,
and writes nothing: it prints the scripts and ``sbatch`` commands a submission would write and run.

``status RUN`` shows per phase the blocks done / failed / pending (done records, ``squeue`` and
the task logs; no accounting database needed), SLURM's reason for every waiting task (e.g.
``queued (Resources)``) and the log of each failed task. ``resubmit RUN``
submits only the tasks that own unfinished blocks; a task that died (OOM, node failure,
preemption, ``scancel``) lost nothing that was marked done.

Run folder (``output.run_dir``, default ``STORE/.corrseg3d/run``): ``run.yaml``, ``jobs.json``,
``scripts/<phase>.sbatch``, ``logs/<phase>-<job>_<task>.log``, ``scores.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence

import yaml

from corrseg3d.cli import ArgumentParser, entry_point
from emcore.blocks import SCHEDULERS, task_blocks, write_json_atomic

from .predict import PredictStage
from .run import (BLOCK_PHASES, STAGES, SUBMIT_AGAIN, block_progress, check_run, phase_progress, prepare, preview,
                  restart_advice, scores_finished)
from .runconfig import RunConfig, load_run_config, to_dict
from .slurmlimits import check_request, check_request_format, query_nodes

__all__ = ["SlurmError", "max_array_size", "check_submission", "submit", "resubmit", "status", "format_status", "main"]

TEMPLATE = Path(__file__).with_name("templates") / "phase.sbatch"  # package data: works from a wheel
DEFAULT_MAX_ARRAY = 1001
EXIT_MARK = "corrseg3d-task-exit"
#: State of a failed task whose phase finished since (:func:`status`).
FAILED_PHASE_DONE = "failed (phase done)"
#: Phases that run the network, the only ones whose jobs request ``slurm.gpus``.
GPU_PHASES = PredictStage.phases


class SlurmError(ValueError):
    """SLURM is unavailable, a submission failed, or the run folder is not a submitted run."""


def _slurm(args: Sequence[str]) -> str:
    try:
        result = subprocess.run(list(args), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SlurmError(f"{args[0]} not found: run this on a SLURM login node (or use --dry-run)") from None
    if result.returncode != 0:
        raise SlurmError(f"{' '.join(args[:2])} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def max_array_size() -> int:
    """The cluster's ``MaxArraySize`` from ``scontrol show config`` (1001, SLURM's default, if unknown)."""
    try:
        text = _slurm(["scontrol", "show", "config"])
    except SlurmError:
        return DEFAULT_MAX_ARRAY
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value.strip())
    return DEFAULT_MAX_ARRAY


def _array_spec(tasks: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts: list[str] = []
    for task in sorted(tasks):
        if parts and parts[-1].split("-")[-1] == str(task - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{task}"
        else:
            parts.append(str(task))
    return ",".join(parts)


def _directives(config: RunConfig, phase: str) -> list[str]:
    """The ``#SBATCH`` lines of ``phase``'s jobs; only prediction (:data:`GPU_PHASES`) asks for ``slurm.gpus``
    and goes to ``slurm.gpu_partition`` (when set)."""
    slurm = config.slurm
    options = [f"--time={slurm.time}", f"--mem={slurm.mem}", f"--cpus-per-task={slurm.cpus}"]
    partition = slurm.gpu_partition if phase in GPU_PHASES and slurm.gpu_partition else slurm.partition
    options += [f"--partition={partition}"] if partition else []
    options += [f"--account={slurm.account}"] if slurm.account else []
    options += [f"--gpus={slurm.gpus}"] if slurm.gpus and phase in GPU_PHASES else []
    return [f"#SBATCH {option}" for option in options + list(slurm.extra)]


def _script(config: RunConfig, phase: str, num_tasks: int | None) -> str:
    """The batch script of ``phase`` (an array job of ``num_tasks`` tasks, or one job for evaluate)."""
    run_dir = config.run_dir
    scheduler = config.execution.scheduler if config.execution.scheduler in SCHEDULERS else "threads"
    command = [sys.executable, "-m", "pipeline.run", os.path.join(run_dir, "run.yaml"), "--phase", phase,
               "--cluster", "none", "--scheduler", scheduler, "--no-progress"]
    quoted = " ".join(shlex.quote(c) for c in command)
    if num_tasks is not None:
        quoted += f' --task-index "$SLURM_ARRAY_TASK_ID" --num-tasks {num_tasks}'
        log, description = f"{phase}-%A_%a.log", f"phase {phase}, task $SLURM_ARRAY_TASK_ID of {num_tasks}"
    else:
        log, description = f"{phase}-%j.log", f"phase {phase}"
    return TEMPLATE.read_text().format(
        job_name=f"corrseg3d-{phase}", log=os.path.join(run_dir, "logs", log),
        directives="\n".join(_directives(config, phase)), description=description, run_dir=shlex.quote(run_dir),
        setup="\n".join([f"export OMP_NUM_THREADS={config.slurm.cpus}", *config.slurm.setup]),
        cwd=shlex.quote(run_dir), command=quoted)


@dataclass(frozen=True)
class _Job:
    phase: str
    tasks: tuple[int, ...] | None  # None: a plain (non-array) job
    num_tasks: int | None


def _submit_chain(config: RunConfig, jobs: Sequence[_Job], *, dry_run: bool, fresh: bool = False) -> dict[str, Any]:
    """Write and submit ``jobs`` in order, each after the previous one succeeded; record them (``fresh``:
    as the run's first submission, forgetting the earlier ones, after a restart discarded their results).
    ``dry_run`` prints the scripts and commands and writes nothing."""
    run_dir = config.run_dir
    run_yaml = os.path.join(run_dir, "run.yaml")
    before = None
    if not dry_run:
        for folder in ("scripts", "logs"):
            os.makedirs(os.path.join(run_dir, folder), exist_ok=True)
        if os.path.exists(run_yaml):
            with open(run_yaml) as handle:
                before = handle.read()
        with open(run_yaml, "w") as handle:
            yaml.safe_dump(to_dict(config), handle, sort_keys=False)
    submitted: dict[str, Any] = {}
    previous: str | None = None
    for job in jobs:
        script = os.path.join(run_dir, "scripts", f"{job.phase}.sbatch")
        text = _script(config, job.phase, job.num_tasks)
        if not dry_run:
            with open(script, "w") as handle:
                handle.write(text)
        command = ["sbatch", "--parsable"]
        command += [f"--array={_array_spec(job.tasks)}"] if job.tasks is not None else []
        command += [f"--dependency=afterok:{previous}"] if previous else []
        command.append(script)
        if dry_run:
            print(f"# {script}\n{text}\n$ {' '.join(shlex.quote(c) for c in command)}\n")
            job_id = f"<{job.phase}>"
        else:
            try:
                job_id = _slurm(command).strip().split(";")[0]
            except SlurmError as error:
                if before is not None:  # the request sbatch refused must not stay the run's
                    with open(run_yaml, "w") as handle:
                        handle.write(before)
                _withdraw([entry["job"] for entry in submitted.values()], error)
            print(f"submitted {job.phase}: job {job_id}" + (f" (array {_array_spec(job.tasks)})" if job.tasks else ""))
        submitted[job.phase] = {"job": job_id, "tasks": list(job.tasks) if job.tasks is not None else None,
                                "num_tasks": job.num_tasks}
        previous = job_id
    if not dry_run:
        record = {"submissions": []} if fresh else _load_jobs(run_dir, missing_ok=True)
        record["submissions"].append(submitted)
        write_json_atomic(os.path.join(run_dir, "jobs.json"), record)
    return submitted


def _withdraw(jobs: Sequence[str], error: SlurmError) -> NoReturn:
    """Cancel ``jobs``, the part of a chain submitted before ``sbatch`` failed with ``error``, and raise:
    a submission runs whole or not at all, so no job runs that ``jobs.json`` does not record."""
    if not jobs:
        raise error
    try:
        _slurm(["scancel", *jobs])
    except SlurmError as cancel_error:
        raise SlurmError(f"{error}; the jobs submitted before it ({', '.join(jobs)}) could not be cancelled "
                         f"({cancel_error}): scancel them, then submit again") from None
    raise SlurmError(f"{error}; the jobs submitted before it ({', '.join(jobs)}) were cancelled, so nothing of this "
                     "submission runs (blocks already done are kept): fix the cause and submit again") from None


def _load_jobs(run_dir: str, *, missing_ok: bool = False) -> dict[str, Any]:
    path = os.path.join(run_dir, "jobs.json")
    if not os.path.exists(path):
        if missing_ok:
            return {"submissions": []}
        raise SlurmError(f"{run_dir} holds no SLURM submission (no jobs.json; a local `pipeline.run` records "
                         "none): submit with `python -m pipeline.slurm submit run.yaml`")
    with open(path) as handle:
        return json.load(handle)


def check_submission(config: RunConfig, *, dry_run: bool = False) -> None:
    """Everything :func:`submit` checks before it creates or submits anything.

    The run config (:func:`pipeline.run.check_run`), the ``slurm`` values' formats and, unless
    ``dry_run``, that ``sbatch`` exists and some node of the partition can run a task.
    """
    check_request_format(config.slurm)
    if not dry_run:
        if shutil.which("sbatch") is None:
            raise SlurmError("sbatch not found: run this on a SLURM login node, or pass --dry-run to only "
                             "print the batch scripts")
        check_request(config.slurm, query_nodes())
    check_run(config)


def submit(config: RunConfig, *, dry_run: bool = False, restart: str | None = None) -> dict[str, Any]:
    """Check, prepare the outputs and submit every phase as chained jobs; return the submitted job ids.

    ``restart`` (``predict``, ``segment``, ``evaluate``) discards that stage's results and every
    later stage's before submitting, as ``pipeline.run --restart`` does; a stage started with
    another config is otherwise refused, naming it. Refused while a job of an earlier submission
    of the run is running or waiting for resources; jobs of one left waiting on a dependency that
    failed are cancelled. A run whose every phase is done submits nothing.
    """
    if restart is not None and dry_run:
        raise SlurmError(f"--restart {restart} discards results and --dry-run discards nothing: drop one of them")
    check_submission(config, dry_run=dry_run)
    again = "submit again" if restart is None else f"submit with --restart {restart}"
    queue = {} if dry_run else _active_queue(config.run_dir, again)
    limit = max_array_size()
    if config.slurm.max_array is not None:
        limit = min(limit, config.slurm.max_array)
    with restart_advice():
        blocks = preview(config) if dry_run else prepare(config, restart=restart)
    _cancel_waiting(queue)
    if _all_done(config):
        print("nothing to submit: every phase is done (--restart STAGE computes a stage and the later ones again)")
        return {}
    jobs = []
    for phase in BLOCK_PHASES:
        num_tasks = min(blocks[phase], limit)
        jobs.append(_Job(phase, tuple(range(num_tasks)), num_tasks))
    if config.evaluate.gt is not None:
        jobs.append(_Job("evaluate", None, None))
    if dry_run:
        done = ", ".join(f"{phase} {counts[0]} of {counts[1]}"
                         for phase, counts in block_progress(config).items() if counts is not None)
        print("# dry run: nothing was written or submitted; the scripts would be written as named"
              + (f"\n# blocks already done (their tasks skip them): {done}" if done else "") + "\n")
    return _submit_chain(config, jobs, dry_run=dry_run, fresh=restart is not None)


def _all_done(config: RunConfig) -> bool:
    """Whether every blockwise phase has finished and, with ground truth, the scores are current."""
    progress = phase_progress(config)
    phases_done = all(progress[phase] is not None and progress[phase].finished for phase in BLOCK_PHASES)
    return phases_done and (config.evaluate.gt is None or scores_finished(config))


def _queue() -> dict[str, tuple[str, str]]:
    """``{"JOB_TASK" or "JOB": (state, reason)}`` of the jobs in the queue (array tasks expanded)."""
    rows = _slurm(["squeue", "-h", "-r", "-o", "%i|%T|%r"]).splitlines()
    return {row.split("|")[0]: (row.split("|")[1], row.split("|")[2]) for row in rows if row.count("|") == 2}


def _task_key(job: str, task: int | None) -> str:
    return job if task is None else f"{job}_{task}"


def _log(run_dir: str, phase: str, job: str, task: int | None) -> str:
    name = f"{phase}-{job}.log" if task is None else f"{phase}-{job}_{task}.log"
    return os.path.join(run_dir, "logs", name)


def _task_state(run_dir: str, phase: str, job: str, task: int | None, queue: dict[str, tuple[str, str]]) -> str:
    """``running``, ``queued`` (with SLURM's pending reason, e.g. ``queued (Resources)``), ``blocked``
    (an earlier phase failed), ``ok``, ``failed`` or ``not run``."""
    key = _task_key(job, task)
    if key in queue:
        state, reason = queue[key]
        if state == "RUNNING":
            return "running"
        if reason == "DependencyNeverSatisfied":
            return "blocked"
        return f"queued ({reason})" if reason and reason != "None" else "queued"
    log = _log(run_dir, phase, job, task)
    if not os.path.exists(log):
        return "not run"
    with open(log, errors="replace") as handle:
        return "ok" if f"{EXIT_MARK} 0\n" in handle.read() else "failed"


def status(run_dir: str) -> list[dict[str, Any]]:
    """Per phase: blocks done/failed/pending/total, whether the phase finished, task states and the
    logs of failed tasks.

    A task's state is that of its latest job. Once its phase has finished, a failed task is
    :data:`FAILED_PHASE_DONE` (nothing of it is missing) and its log is not listed.
    """
    submissions = _load_jobs(run_dir)["submissions"]
    config = load_run_config(os.path.join(run_dir, "run.yaml"))
    queue = _queue()
    progress = phase_progress(config)
    rows = []
    for phase in BLOCK_PHASES + ("evaluate",):
        latest: dict[int | None, tuple[str, int | None]] = {}
        for submission in submissions:
            entry = submission.get(phase)
            for task in (entry["tasks"] if entry and entry["tasks"] is not None else [None] if entry else []):
                latest[task] = (entry["job"], entry["num_tasks"])
        if not latest:
            continue
        states = {task: _task_state(run_dir, phase, job, task, queue) for task, (job, _) in latest.items()}
        finished = scores_finished(config) if phase == "evaluate" else bool(progress[phase] and progress[phase].finished)
        if finished:  # a later task (resubmit) redid what these failed tasks left, or they died after their share
            states = {task: FAILED_PHASE_DONE if state == "failed" else state for task, state in states.items()}
        failed_logs = [_log(run_dir, phase, latest[t][0], t) for t, s in sorted(states.items(), key=str) if s == "failed"]
        counts: dict[str, int] = {}
        for state in states.values():
            counts[state] = counts.get(state, 0) + 1
        row: dict[str, Any] = {"phase": phase, "tasks": counts, "failed_logs": failed_logs, "finished": finished}
        if phase == "evaluate":
            row.update(done=int(scores_finished(config)), total=1, failed=0)
        else:
            done_set = set(progress[phase].done) if progress[phase] is not None else set()
            total = progress[phase].total if progress[phase] is not None else 0
            num_tasks = next(iter(latest.values()))[1] or 1
            failed_blocks = {b for t, s in states.items() if s == "failed"
                             for b in task_blocks(total, t, num_tasks) if b not in done_set}
            row.update(done=len(done_set), total=total, failed=len(failed_blocks))
        row["pending"] = row["total"] - row["done"] - row["failed"]
        rows.append(row)
    return rows


def format_status(rows: Sequence[dict[str, Any]], run_dir: str) -> str:
    """Table of :func:`status` rows of ``run_dir`` with the failed tasks' log paths below it."""
    lines = [f"{'phase':<10} {'done':>7} {'failed':>7} {'pending':>8} {'total':>7}  tasks"]
    for row in rows:
        tasks = ", ".join(f"{n} {state}" for state, n in sorted(row["tasks"].items()))
        if row["total"] and row["done"] == row["total"] and not row["finished"]:
            tasks += "; every block done, the closing step not (stitch: the global step)"
        lines.append(f"{row['phase']:<10} {row['done']:>7} {row['failed']:>7} {row['pending']:>8} {row['total']:>7}  {tasks}")
    logs = [log for row in rows for log in row["failed_logs"]]
    if logs:
        lines += ["", "failed tasks' logs:"] + [f"  {log}" for log in logs]
    # A task queued only for its dependency waits on the chain: with nothing running or otherwise queued and a
    # task that failed, was blocked or never ran, it waits forever (SLURM marks only the job right after a failed
    # one DependencyNeverSatisfied, "blocked"); right after a phase succeeded it may still wait, briefly.
    states = [state for row in rows for state in row["tasks"]]
    active = any(state == "running" or (state.startswith("queued") and state != "queued (Dependency)")
                 for state in states)
    stuck = any(state in ("failed", "blocked", "not run") for state in states)
    if not all(row["finished"] for row in rows) and stuck and not active:
        lines += ["", f"unfinished and nothing running: `python -m pipeline.slurm resubmit {shlex.quote(run_dir)}` "
                      "reruns what is not done"]
    return "\n".join(lines)


def _active_queue(run_dir: str, then: str) -> dict[str, tuple[str, str]]:
    """The queued jobs of the run in ``run_dir`` (``{"JOB_TASK" or "JOB": (state, reason)}``), refusing
    while one of them is running or waiting for resources (``then``: what to do once they are gone)."""
    submissions = _load_jobs(run_dir, missing_ok=True)["submissions"]
    ours = {entry["job"] for submission in submissions for entry in submission.values()}
    if not ours:
        return {}
    queue = {key: value for key, value in _queue().items() if key.split("_")[0] in ours}
    active = sorted(key for key, (state, reason) in queue.items() if not reason.startswith("Dependency"))
    if active:
        raise SlurmError(f"jobs {', '.join(active)} of this run are still running or queued: wait for them "
                         f"(python -m pipeline.slurm status) or scancel them, then {then}")
    return queue


def _cancel_waiting(queue: dict[str, tuple[str, str]]) -> None:
    """scancel the jobs of :func:`_active_queue`'s ``queue``: all wait on a dependency of an earlier chain."""
    waiting = sorted({key.split("_")[0] for key in queue})
    if waiting:
        _slurm(["scancel", *waiting])


def resubmit(run_dir: str, *, dry_run: bool = False, request: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Submit only the tasks owning unfinished blocks (same task split as before), chained again.

    Refuses while a task of the run is running or waiting for resources; cancels the run's jobs
    left waiting on a dependency (they would wait on the failed chain forever). ``request`` replaces
    values of the run's ``slurm`` section for these jobs and later ones (e.g. ``{"mem": "32G"}``
    after tasks ran out of memory; the command line offers :data:`RESUBMIT_FLAGS`).
    """
    submissions = _load_jobs(run_dir)["submissions"]
    config = load_run_config(os.path.join(run_dir, "run.yaml"))
    config = replace(config, slurm=replace(config.slurm, **(request or {})))
    check_submission(config, dry_run=dry_run)
    queue = _active_queue(run_dir, "resubmit")
    if not dry_run:
        _cancel_waiting(queue)
    with restart_advice(SUBMIT_AGAIN):
        blocks = preview(config) if dry_run else prepare(config)
    num_tasks = {phase: submissions[0][phase]["num_tasks"] for phase in BLOCK_PHASES}
    progress = phase_progress(config)
    jobs = []
    for phase in BLOCK_PHASES:
        done = set(progress[phase].done)
        tasks = sorted({b % num_tasks[phase] for b in range(blocks[phase]) if b not in done})
        if not tasks and not progress[phase].finished:
            tasks = [0]  # every block is done, the phase's closing step (stitch: the lookup table) is not
        if tasks:
            jobs.append(_Job(phase, tuple(tasks), num_tasks[phase]))
    if config.evaluate.gt is not None and (jobs or not scores_finished(config)):
        jobs.append(_Job("evaluate", None, None))
    if not jobs:
        print("nothing to resubmit: every phase is done")
        return {}
    return _submit_chain(config, jobs, dry_run=dry_run)


def _run_dir(path: str) -> str:
    """A run folder, or the run folder of a run YAML."""
    if os.path.isfile(path):
        return load_run_config(path).run_dir
    if not os.path.isdir(path):
        raise SlurmError(f"{path} is neither a run folder nor a run YAML")
    return os.path.abspath(path)


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m pipeline.slurm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("submit", help="prepare outputs and submit all phases as chained array jobs")
    sub.add_argument("config", help="run YAML (python -m pipeline.run --print-default-config)")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    _add_request_flags(sub, SUBMIT_FLAGS)
    sub.add_argument("--dry-run", action="store_true",
                     help="print the scripts and sbatch commands; write and submit nothing (the request is not checked against the nodes)")
    sub.add_argument("--restart", choices=tuple(STAGES),
                     help="discard this stage's results and every later stage's, then submit (after a config change)")
    for name, text in (("status", "blocks done / failed / pending per phase"),
                       ("resubmit", "submit only what is not done")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("run", help="run folder (output.run_dir) or the run YAML")
        if name == "resubmit":
            _add_request_flags(sub, RESUBMIT_FLAGS)
            sub.add_argument("--dry-run", action="store_true", help="print; write and submit nothing")
    return parser


#: The request flags of ``resubmit``: (flag, type, help), each a key of the ``slurm`` section. None of them
#: changes where prediction runs, so none changes the precision ``predict.precision: auto`` picks.
RESUBMIT_FLAGS = (("account", str, "account to charge"), ("time", str, "time limit per task, e.g. 04:00:00"),
                  ("mem", str, "memory per task, e.g. 16G"), ("cpus", int, "CPUs per task"))
#: The request flags of ``submit``: those of ``resubmit``, where the jobs run and the array size.
SUBMIT_FLAGS = RESUBMIT_FLAGS + (
    ("partition", str, "partition"), ("gpu-partition", str, "partition of the predict jobs, if not --partition"),
    ("gpus", int, "GPUs per task"), ("max-array", int, "largest array size, at most the cluster's MaxArraySize"))


def _add_request_flags(parser: argparse.ArgumentParser, flags: Sequence[tuple[str, type, str]]) -> None:
    for name, kind, text in flags:
        parser.add_argument(f"--{name}", type=kind, help=f"{text} (default: the run config's slurm section)")


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """The ``slurm`` values given as request flags."""
    keys = [name.replace("-", "_") for name, _, _ in SUBMIT_FLAGS]
    return {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "submit":
        config = load_run_config(args.config, args.set)
        submit(replace(config, slurm=replace(config.slurm, **_request(args))), dry_run=args.dry_run,
               restart=args.restart)
        print(f"run folder: {config.run_dir}  (python -m pipeline.slurm status {config.run_dir})")
    elif args.command == "status":
        run_dir = _run_dir(args.run)
        print(format_status(status(run_dir), run_dir))
    else:
        resubmit(_run_dir(args.run), dry_run=args.dry_run, request=_request(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
