"""``python -m pipeline.run run.yaml``: raw EM -> affinities -> segmentation -> scores, from one config.

Phases, in order: ``predict`` (:func:`pipeline.predict.predict`), ``fragments``, ``stitch``,
``relabel`` (:func:`pipeline.segment.segment`) and ``evaluate`` (:func:`pipeline.evaluate.evaluate`,
only when ``evaluate.gt`` is set). Each stage keeps its own done records, so a rerun skips
finished blocks and a rerun with a changed config is refused by the stage (exit 2) rather than
mixing two results. The scores go to ``RUN_DIR/scores.json``.

A whole run first checks the whole config (:func:`check_run`: every stage's options, the raw
volume, the checkpoint, device and precision, the ground truth), then claims every stage's
outputs (:func:`prepare`: a stage whose earlier results were made with another config is
refused, naming the ``--restart`` that discards it) and only then starts the first stage, so a
bad ``segment`` or ``evaluate`` setting, or a changed ``segment`` one, is reported before hours of
prediction. ``--restart STAGE`` discards the results of ``predict``, ``segment`` or ``evaluate``
and of every later stage, then runs (``--overwrite`` = ``--restart predict``): the way to rerun
after a config change without deleting folders by hand.

``--phase P --task-index I --num-tasks N`` runs one phase's share of blocks; this is what each
SLURM array task of ``python -m pipeline.slurm submit`` executes. ``--cluster slurm`` runs the
blocks on a dask-jobqueue ``SLURMCluster`` built from the ``slurm`` section instead.

Examples
--------
::

    python -m pipeline.run --print-default-config > run.yaml
    python -m pipeline.run run.yaml
    python -m pipeline.run run.yaml --set segment.min_size=500 --scheduler tcp://head:8786
    python -m pipeline.run run.yaml --set segment.min_size=500 --restart segment
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Iterator, Sequence

import numpy as np

from corrseg3d.cli import ArgumentParser, entry_point
from emcore.blocks import check_scheduler, write_json_atomic
from emcore.contingency import EvaluationError
from emcore.store import open_volume
from emcore.writing import check_whole

from .evaluate import check_evaluate_options, evaluate, format_report, parse_roi
from .predict import PredictStage, plan_predict
from .runconfig import RunConfig, default_config_yaml, load_run_config, to_dict
from .runstate import ConfigChangedError, check_distinct
from .segment import SegmentStage, check_options
from .slurmlimits import fitted_slurm_defaults
from .stage import PhaseProgress, Stage

__all__ = ["PHASES", "BLOCK_PHASES", "STAGES", "RunError", "check_run", "run", "run_phase", "stages", "prepare", "preview",
           "phase_progress", "block_progress", "done_blocks", "scores_finished", "dask_cluster", "restart_advice",
           "SUBMIT_AGAIN", "main"]

#: Blockwise phases (SLURM array jobs) and all phases in execution order.
BLOCK_PHASES = PredictStage.phases + SegmentStage.phases
PHASES = BLOCK_PHASES + ("evaluate",)
#: Stages in order (``--restart``) and the first phase of each, where a restart discards its results.
STAGES = {"predict": "predict", "segment": "fragments", "evaluate": "evaluate"}


class RunError(ValueError):
    """A phase cannot run yet (an earlier one is unfinished) or the run folder is inconsistent."""


def _scores_path(config: RunConfig) -> str:
    return os.path.join(config.run_dir, "scores.json")


def _evaluate_key(config: RunConfig) -> dict[str, Any]:
    return {"segmentation": config.location("segmentation"), **to_dict(config.evaluate)}


def check_run(config: RunConfig, *, scheduler: str | None = None) -> None:
    """Check the whole run before its first stage starts; nothing is written.

    Covers the scheduler and workers, everything ``predict`` checks (raw volume, checkpoint,
    options, device and precision), the ``segment`` options, with ``evaluate.gt`` the ground
    truth, mask and ROI against the raw volume's shape and the other ``evaluate`` options, and
    that no output is an input or another output (so no ``--restart`` can discard an input).

    Raises
    ------
    ValueError
        A subclass naming the stage, the problem and the fix.
    """
    scheduler = scheduler or config.execution.scheduler
    check_scheduler(scheduler, config.execution.workers)
    plan = plan_predict(config.input.raw, out_location=config.location("affinities"),
                        options=config.predict, scheduler=scheduler,
                        num_workers=config.execution.workers, dataset=config.input.dataset)
    check_options(config.segment)
    inputs = {"input.raw": plan.raw.location}
    if config.evaluate.gt is not None:
        inputs.update(_check_ground_truth(config, plan.raw.spatial_shape))
    check_distinct(inputs, {name: config.location(name) for name in ("affinities", "fragments", "segmentation")})


def _check_ground_truth(config: RunConfig, shape: tuple[int, int, int]) -> dict[str, str]:
    """The ``evaluate`` section against the shape the segmentation will have; the locations of the
    ground truth and mask by config key."""
    options = config.evaluate
    volumes = {"evaluate.gt": open_volume(options.gt, options.gt_dataset)}
    if options.mask is not None:
        volumes["evaluate.mask"] = open_volume(options.mask, options.mask_dataset)
    for key, volume in volumes.items():
        check_whole(volume.location)
        if volume.shape != tuple(shape):
            raise EvaluationError(f"{key} {volume.location} has shape {volume.shape} but the segmentation of "
                                  f"{config.input.raw} will be {tuple(shape)}: give a volume of the same extent")
    gt = volumes["evaluate.gt"]
    if not np.issubdtype(gt.dtype, np.integer):
        raise EvaluationError(f"evaluate.gt {gt.location} holds {gt.dtype} values: ground truth must be integer ids")
    check_evaluate_options(options)
    if options.roi:
        parse_roi(options.roi, shape)
    return {key: volume.location for key, volume in volumes.items()}


def run_phase(config: RunConfig, phase: str, *, task_index: int | None = None, num_tasks: int | None = None,
              scheduler: str | None = None, progress: bool = True,
              allow_incomplete: bool = False) -> dict[str, Any]:
    """Run ``phase`` (or task ``task_index`` of ``num_tasks`` of it) and return the stage's summary.

    Earlier results are discarded by :func:`prepare` (``restart``), never here. ``allow_incomplete``
    lets the segment phases claim their outputs before the prediction has finished (:func:`prepare`).
    """
    scheduler = scheduler or config.execution.scheduler
    if phase in BLOCK_PHASES:
        return _stage_of(config, phase).run_phase(phase, task_index=task_index, num_tasks=num_tasks,
                                                  scheduler=scheduler, num_workers=config.execution.workers,
                                                  progress=progress, allow_incomplete=allow_incomplete)
    if phase == "evaluate":
        return _evaluate(config, scheduler)
    raise RunError(f"unknown phase {phase!r}: use one of {', '.join(PHASES)}")


def _evaluate(config: RunConfig, scheduler: str) -> dict[str, Any]:
    """Score the finished segmentation once; a rerun with the same settings reuses ``scores.json``
    (which a restart of ``evaluate`` or an earlier stage deletes)."""
    if config.evaluate.gt is None:
        raise RunError("evaluate.gt is not set: give the ground truth location to score the segmentation")
    progress = block_progress(config)
    if progress.get("relabel") is None or progress["relabel"][0] != progress["relabel"][1]:
        raise RunError(f"the segmentation {config.location('segmentation')} is not finished: run the relabel phase first")
    path = _scores_path(config)
    if scores_finished(config):
        with open(path) as handle:
            return {**json.load(handle)["report"], "reused": True}
    report = evaluate(config.location("segmentation"), config.evaluate.gt, config.evaluate, scheduler=scheduler)
    os.makedirs(config.run_dir, exist_ok=True)
    write_json_atomic(path, {"key": _evaluate_key(config), "report": report})
    return report


@contextlib.contextmanager
def restart_advice(how: str = "pass") -> Iterator[None]:
    """Give a stage's changed-config refusal the fix of the whole chain: ``{how} --restart STAGE``
    (a stage's own ``--overwrite`` would discard the earlier stages' results too)."""
    try:
        yield
    except ConfigChangedError as error:
        raise RunError(f"{error.reason}: {error.original_options}{how} --restart {error.stage} to "
                       f"discard the {error.stage} results and every later stage's and compute them again") from None


#: :func:`restart_advice` for commands that cannot restart (one phase, a resubmission).
SUBMIT_AGAIN = "submit the whole chain again (python -m pipeline.slurm submit, or python -m pipeline.run) with"


def _discarded(restart: str | None) -> set[str]:
    """The first phases of the stages that restarting ``restart`` discards (none without a restart)."""
    if restart is None:
        return set()
    if restart not in STAGES:
        raise RunError(f"cannot restart {restart!r}: use one of {', '.join(STAGES)}")
    names = list(STAGES)
    return {STAGES[name] for name in names[names.index(restart):]}


def run(config: RunConfig, *, scheduler: str | None = None, progress: bool = True,
        restart: str | None = None) -> dict[str, Any]:
    """Check the whole config and every stage's earlier results, then run every phase in order
    (evaluate only with ``evaluate.gt``).

    ``restart`` (a key of :data:`STAGES`) discards the results of that stage and of every later
    one before they run. Returns per-phase summaries.

    Raises
    ------
    RunError
        Before any stage runs, when a stage that ``restart`` keeps was started with another
        config (naming the ``--restart`` that discards it), or ``restart`` names no stage.
    """
    check_run(config, scheduler=scheduler)
    phases = PHASES if config.evaluate.gt is not None else BLOCK_PHASES
    with restart_advice():
        prepare(config, restart=restart)
        return {phase: run_phase(config, phase, scheduler=scheduler, progress=progress) for phase in phases}


def stages(config: RunConfig) -> tuple[Stage, ...]:
    """The run's blockwise stages in order (:mod:`pipeline.stage`)."""
    return (PredictStage(config.input.raw, config.location("affinities"), config.predict, config.input.dataset),
            SegmentStage(config.store, config.segment, input_name=config.output.affinities,
                         output_name=config.output.segmentation, fragments_name=config.output.fragments))


def _stage_of(config: RunConfig, phase: str) -> Stage:
    return next(stage for stage in stages(config) if phase in stage.phases)


def prepare(config: RunConfig, *, restart: str | None = None) -> dict[str, int]:
    """Claim and create every output once, running no block; return the block count of each phase.

    Array tasks then only open existing outputs, so they never race creating them, and a changed
    config is refused here, before anything is submitted or run. ``restart`` (a key of
    :data:`STAGES`) first discards the results of that stage and of every later one: their
    outputs and run state are claimed afresh, and stored scores are deleted.
    """
    discarded = _discarded(restart)
    counts: dict[str, int] = {}
    for stage in stages(config):
        counts.update(stage.prepare(overwrite=stage.phases[0] in discarded))
    if "evaluate" in discarded and os.path.exists(_scores_path(config)):
        os.remove(_scores_path(config))
    return counts


def preview(config: RunConfig) -> dict[str, int]:
    """What :func:`prepare` checks and counts, writing nothing: the block count of each phase.

    Each stage is checked against the planned output of the one before, so a run whose outputs do
    not exist yet is previewed as a submission would create them (``pipeline.slurm submit --dry-run``).
    """
    counts: dict[str, int] = {}
    upstream = None
    for stage in stages(config):
        stage_counts, upstream = stage.preview(upstream)
        counts.update(stage_counts)
    return counts


def phase_progress(config: RunConfig) -> dict[str, PhaseProgress | None]:
    """Progress of each blockwise phase, None for a phase whose stage never started."""
    result: dict[str, PhaseProgress | None] = dict.fromkeys(BLOCK_PHASES)
    for stage in stages(config):
        result.update(stage.progress() or {})
    return result


def done_blocks(config: RunConfig, phase: str) -> list[int]:
    """Indices of the blocks of blockwise ``phase`` that are marked done."""
    progress = phase_progress(config)[phase]
    return list(progress.done) if progress is not None else []


def scores_finished(config: RunConfig) -> bool:
    """Whether ``scores.json`` holds the evaluation of the current segmentation and settings."""
    path = _scores_path(config)
    if not os.path.exists(path):
        return False
    with open(path) as handle:
        return json.load(handle).get("key") == _evaluate_key(config)


def block_progress(config: RunConfig) -> dict[str, tuple[int, int] | None]:
    """``(done, total)`` blocks of each blockwise phase, None for a phase whose stage never started."""
    return {phase: None if progress is None else (len(progress.done), progress.total)
            for phase, progress in phase_progress(config).items()}


@contextlib.contextmanager
def dask_cluster(config: RunConfig) -> Iterator[str | None]:
    """Yield the scheduler address of the cluster ``execution.cluster`` asks for (None: no cluster).

    ``slurm`` starts a dask-jobqueue ``SLURMCluster`` with ``execution.workers`` jobs (default 1)
    using the ``slurm`` section's account, time, memory, CPUs and GPUs, in ``gpu_partition`` when
    set (its workers run every stage, prediction included), else ``partition``.
    """
    if config.execution.cluster == "none":
        yield None
        return
    from dask_jobqueue import SLURMCluster

    slurm = config.slurm
    directives = [f"--gpus={slurm.gpus}"] if slurm.gpus else []
    cluster = SLURMCluster(queue=slurm.gpu_partition or slurm.partition, account=slurm.account, walltime=slurm.time, memory=slurm.mem,
                           cores=slurm.cpus, processes=1, job_script_prologue=list(slurm.setup),
                           job_extra_directives=directives + list(slurm.extra),
                           log_directory=os.path.join(config.run_dir, "dask-logs"))
    try:
        cluster.scale(jobs=config.execution.workers or 1)
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m pipeline.run", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("Examples")[1].replace("--------\n::\n", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="run YAML (see --print-default-config)")
    parser.add_argument("--print-default-config", action="store_true", help="print the commented default YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. segment.min_size=500 (repeatable)")
    parser.add_argument("--phase", choices=PHASES, help="run one phase only (default: all)")
    parser.add_argument("--task-index", type=int, help="this array task's index (with --phase and --num-tasks)")
    parser.add_argument("--num-tasks", type=int, help="number of array tasks sharing the phase's blocks")
    parser.add_argument("--scheduler", help="override execution.scheduler (threads, processes, synchronous, tcp://...)")
    parser.add_argument("--cluster", choices=("none", "slurm"), help="override execution.cluster")
    parser.add_argument("--restart", choices=tuple(STAGES),
                        help="discard the results of this stage and of every later one, then run "
                             "(after a config change; without it a changed config is refused)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard every result of this run and start again (= --restart predict)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (summaries stay)")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.print_default_config:
        print(default_config_yaml(slurm=fitted_slurm_defaults()), end="")
        return 0
    if args.config is None:
        raise RunError("give a run config (python -m pipeline.run run.yaml) or --print-default-config")
    if (args.task_index is not None or args.num_tasks is not None) and args.phase is None:
        raise RunError("--task-index/--num-tasks need --phase")
    restart = "predict" if args.overwrite else args.restart
    if restart and args.phase:
        raise RunError("--restart/--overwrite discard whole stages: use them without --phase")
    overrides = list(args.set) + ([f"execution.cluster={args.cluster}"] if args.cluster else [])
    config = load_run_config(args.config, overrides)
    if not args.phase:
        check_run(config, scheduler=args.scheduler)  # before a dask cluster is started for it
    with dask_cluster(config) as address:
        scheduler = address or args.scheduler
        if args.phase:
            with restart_advice(SUBMIT_AGAIN):
                summaries = {args.phase: run_phase(config, args.phase, task_index=args.task_index,
                                                   num_tasks=args.num_tasks, scheduler=scheduler,
                                                   progress=not args.no_progress)}
        else:
            summaries = run(config, scheduler=scheduler, progress=not args.no_progress, restart=restart)
    if "evaluate" in summaries:
        print(format_report(summaries["evaluate"]))
        print(f"scores: {_scores_path(config)}")
    print(f"run: {config.location('segmentation')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
