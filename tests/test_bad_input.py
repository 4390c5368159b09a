"""The README's bad-input promise, one row per case and per command line.

Each row runs a command in a fresh copy of a small workspace and expects exit status 2, exactly
one ``error:`` line on stderr holding a given fragment, no traceback (stdout, stderr and any
worker process: fd-level capture), and the workspace unchanged: no new dataset, no run-state
folder, no file written or modified. Rows run in-process through each command's ``main(argv)``;
a few run as subprocesses to check the real process output too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import types

import imageio.v3 as iio
import numpy as np
import pytest
import yaml
import zarr

from corrseg3d import train as train_cli
from corrseg3d.cli import EXIT_INTERRUPTED, INTERRUPTED, entry_point
from emcore.store import create_volume, open_volume
from pipeline import __main__ as pipeline_cli
from pipeline import data, evaluate, export, predict, run, segment, slurm
from pipeline.predict import PredictOptions
from pipeline.segment import SegmentOptions
from pipeline.runstate import rewritten_input
from pipeline.synth import write_synthetic

MAINS = {"data": data.main, "predict": predict.main, "segment": segment.main, "evaluate": evaluate.main,
         "run": run.main, "slurm": slurm.main, "export": export.main, "train": train_cli.main,
         "pipeline": pipeline_cli.main}
MODULES = {"predict": "pipeline.predict", "segment": "pipeline.segment", "train": "corrseg3d.train",
           "pipeline": "pipeline"}
PREDICT = dict(block=(8, 32, 32), halo=(4, 32, 32), precision="fp32", device="cpu")
TRAIN = {
    "model": {"filters": [4, 4, 4, 4, 4], "embedding_dim": 4},
    "data": {"sources": [{"raw": "raw.zarr/raw", "labels": "raw.zarr/labels", "slices": [0, 10]}],
             "patch": [4, 32, 32], "context": [0, 8, 8]},
    "train": {"iterations": 1, "batch_size": 1, "num_workers": 0, "precision": "fp32"},
    "validation": {"block": [4, 32, 32], "halo": [2, 16, 16],
                   "volumes": [{"raw": "raw.zarr/raw", "labels": "raw.zarr/labels", "slices": [10, 16]}]},
}


def _run_config(**sections) -> dict:
    values = {"input": {"raw": "raw.zarr/raw"}, "output": {"store": "out.zarr"},
              "predict": {"checkpoint": "tiny.pt", "block": [8, 32, 32], "halo": [4, 32, 32], "precision": "fp32",
                          "device": "cpu"},
              "segment": {"block": [8, 32, 32]}, "evaluate": {"gt": "raw.zarr/labels"},
              "slurm": {"mem": "1G", "cpus": 1, "time": "00:10:00"}}
    for section, options in sections.items():
        values[section] = {**values[section], **options}
    return values


@pytest.fixture(scope="module")
def template(run_inputs, tmp_path_factory):
    """The workspace every row copies (paths inside it are relative to it)."""
    root = tmp_path_factory.mktemp("template")
    shutil.copy(run_inputs / "tiny.pt", root / "tiny.pt")
    (root / "not-a-checkpoint.pt").write_text("these are not weights\n")
    for name in ("raw.zarr", "vol.zarr", "partial.zarr"):
        shutil.copytree(run_inputs / "in.zarr", root / name)
    options = PredictOptions(checkpoint=str(root / "tiny.pt"), **PREDICT)
    predict.predict(str(root / "vol.zarr"), options=options, scheduler="synchronous", progress=False)
    predict.predict(str(root / "partial.zarr"), options=options, scheduler="synchronous", progress=False,
                    task_index=0, num_tasks=2)  # 6 of 12 blocks: what a killed prediction leaves
    store = str(root / "vol.zarr")
    segment.segment(store, SegmentOptions(block=(8, 32, 32)), scheduler="synchronous", progress=False)
    for phase in ("fragments", "stitch"):  # a segmentation whose relabel phase never ran
        segment.segment(store, SegmentOptions(block=(8, 32, 32)), output_name="halfseg",
                        fragments_name="halffrag", phase=phase, scheduler="synchronous", progress=False)
    affinities = open_volume(f"{store}/affinities")
    for name, values in (("f255", affinities[:].astype(np.float32)),
                         ("negative", -affinities[:].astype(np.float32) / 255)):
        create_volume(str(root / f"{name}.zarr" / "affinities"), affinities.shape, np.float32,
                      chunks=affinities.chunks, attrs={"offsets": affinities.attrs["offsets"]})[:] = values
    labels = open_volume(str(root / "raw.zarr" / "labels"))[:]
    for name, values in (("float", labels.astype(np.float32) + 0.5), ("negative", -labels.astype(np.int32))):
        create_volume(str(root / "labels.zarr" / name), labels.shape, values.dtype, chunks=labels.shape)[:] = values
    zarr.open_group(str(root / "empty.zarr"), mode="w").create_array("raw", shape=(0, 32, 32), dtype=np.uint8,
                                                                      chunks=(8, 32, 32))
    misstated = zarr.open_group(str(root / "misstated.zarr"), mode="w")
    for name, voxel_size in (("zero", [0, 6, 6]), ("negative", [-30, 6, 6]), ("short", [6, 6])):
        misstated.create_array(name, data=np.zeros((8, 32, 32), np.uint8)).attrs["voxel_size"] = voxel_size
    (root / "pngs").mkdir()
    iio.imwrite(root / "pngs" / "00.png", np.zeros((32, 32), np.uint8))
    iio.imwrite(root / "pngs" / "01.png", np.full((32, 32), 9, np.uint8))
    (root / "pngs" / "01.png").write_bytes((root / "pngs" / "01.png").read_bytes()[:60])  # truncated
    (root / "train.yaml").write_text(yaml.safe_dump(TRAIN))
    (root / "bad.yaml").write_text("model: {filters: [4, 4\n")
    for name, values in (("run", _run_config()), ("majority", _run_config(segment={"majority": 0.3})),
                         ("no-gt", _run_config(evaluate={"gt": "missing.zarr/labels"})),
                         ("fp16", _run_config(predict={"precision": "fp16"}))):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(values))
    _killed_synth(root / "killed.zarr")
    (root / "scores").mkdir()
    (root / "old-run").mkdir()
    (root / "old-run" / "train.jsonl").write_text('{"kind": "train", "iteration": 50}\n')
    shutil.copy(root / "tiny.pt", root / "old-run" / "last.pt")
    (root / "killed").mkdir()  # a run killed before its first checkpoint
    (root / "killed" / "train.jsonl").write_text('{"kind": "train", "iteration": 10}\n')
    return root


def _killed_synth(store) -> None:
    """What ``python -m pipeline.data synth`` leaves when it is killed outright (SIGKILL) after its first slab."""
    script = ("import os, signal, sys\n"
              "import pipeline.synth as synth\n"
              "generate = synth.generate\n"
              "def first_slab_then_killed(*args, roi, **kwargs):\n"
              "    if roi[0].start > 0:\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return generate(*args, roi=roi, **kwargs)\n"
              "synth.generate = first_slab_then_killed\n"
              "synth.write_synthetic(sys.argv[1], (16, 64, 96), seed=2, chunks=(8, 64, 64))\n")
    process = subprocess.run([sys.executable, "-c", script, str(store)], capture_output=True, text=True)
    assert process.returncode == -9, process.stderr
    assert open_volume(f"{store}/raw")[8:].max() == 0  # the datasets exist at full size, half written


def _snapshot(folder) -> dict[str, tuple[int, int] | None]:
    """Every folder (None) and file ((size, mtime_ns)) below ``folder``."""
    found: dict[str, tuple[int, int] | None] = {}
    for here, folders, files in os.walk(folder):
        for name in folders:
            found[os.path.relpath(os.path.join(here, name), folder)] = None
        for name in files:
            stat = os.stat(os.path.join(here, name))
            found[os.path.relpath(os.path.join(here, name), folder)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture()
def workspace(template, tmp_path, monkeypatch):
    folder = tmp_path / "w"
    shutil.copytree(template, folder)
    monkeypatch.chdir(folder)
    return folder


def _no_sleep_module() -> types.SimpleNamespace:
    return types.SimpleNamespace(sleep=lambda seconds: None)


ROWS = [
    # data
    ("data", "synth out.zarr --shape 4,32", "argument --shape", {}),
    ("data", "synth out.zarr/raw --shape 4,32,32", "names a dataset", {}),
    ("data", "synth out.zarr --shape 4,32,32 --seed -1", "--seed -1 must be >= 0", {}),
    ("data", "preview vol.zarr --png nodir/p.png", "of --png nodir/p.png does not exist", {}),
    ("data", "convert pngs out.zarr/raw", "cannot read slice", {}),
    ("data", "convert nowhere out.zarr/raw", "does not exist", {}),
    ("data", "synth out.zarr --shape 4,32,32 --voxel-size nan,6,6", "must be 3 finite positive", {}),
    ("data", "synth killed.zarr --shape 16,64,96 --seed 2", "killed.zarr/raw is incomplete (the command writing it "
     "is still running or was killed): pass --overwrite", {}),
    # predict: every option is checked before the output and its run state exist
    ("predict", "raw.zarr --checkpoint tiny.pt --precision fp16 --device cpu", "fp16 needs a CUDA device", {}),
    ("predict", "raw.zarr --checkpoint tiny.pt --device cuda", "is not available", {}),
    ("predict", "raw.zarr --checkpoint tiny.pt --device gpu", "is not a device name", {}),
    ("predict", "raw.zarr --checkpoint tiny.pt --task-index 5 --num-tasks 2", "--task-index 5 must be in 0..1", {}),
    ("predict", "raw.zarr --checkpoint not-a-checkpoint.pt", "is not a corrseg3d checkpoint", {}),
    ("predict", "raw.zarr --checkpoint missing.pt", "does not exist", {}),
    ("predict", "raw.zarr --checkpoint tiny.pt --workers 0", "workers must be >= 1", {}),
    ("predict", "raw.zarr --checkpoint tiny.pt --out plain/affinities", "not a zarr location", {}),
    ("predict", "raw.zarr --checkpoint tiny.pt --voxel-size inf,6,6", "must be 3 finite positive", {}),
    ("predict", "empty.zarr --checkpoint tiny.pt", "holds no voxels", {}),
    ("predict", "killed.zarr --checkpoint tiny.pt", "killed.zarr/raw is incomplete: the command writing it is "
     "still running or was killed; write it again with that command and --overwrite", {}),
    ("predict", "misstated.zarr/zero --checkpoint tiny.pt", "states a voxel size of [0.0, 6.0, 6.0]", {}),
    ("predict", "misstated.zarr/negative --checkpoint tiny.pt --voxel-size 30,6,6",
     "it needs 3 finite positive numbers", {}),
    ("predict", "misstated.zarr/short --checkpoint tiny.pt", "correct its voxel_size / offset attribute", {}),
    ("predict", "vol.zarr --checkpoint tiny.pt --out vol.zarr/raw --overwrite",
     "output affinities vol.zarr/raw would overwrite the input raw", {}),
    # segment
    ("segment", "partial.zarr", "`python -m pipeline.predict` run has not completed", {}),
    ("segment", "f255.zarr", "must lie in [0, 1]", {}),
    ("segment", "negative.zarr", "must lie in [0, 1]", {}),
    ("segment", "vol.zarr --output other --min-size -5", "--min-size (segment.min_size) -5 must be >= 0", {}),
    ("segment", "vol.zarr --output other --majority 0.3", "must be in [0.5, 1)", {}),
    ("segment", "vol.zarr --output other --merge-floor 2", "must be in [0, 1]", {}),
    ("segment", "vol.zarr --output other --method mws --agglomerate 1.5", "--agglomerate (segment.agglomerate) 1.5 "
     "must be in [0, 1]", {}),
    ("segment", "vol.zarr --output other --agglomerate 0.5", "does not apply to --method multicut", {}),
    ("segment", "vol.zarr --output other --beta 1", "--beta (segment.beta) 1.0 must be in (0, 1)", {}),
    ("segment", "vol.zarr --output other --sv-threshold 0", "--sv-threshold (segment.sv_threshold) 0.0 must be in "
     "(0, 1)", {}),
    ("segment", "vol.zarr --output other --sv-seed-sigma -1", "--sv-seed-sigma (segment.sv_seed_sigma) -1.0 must be "
     "a finite number >= 0", {}),
    ("segment", "vol.zarr --output other --sv-min-size -2", "--sv-min-size (segment.sv_min_size) -2 must be a finite "
     "number >= 0", {}),
    ("segment", "vol.zarr --output other --sv-weight-sigma nan", "--sv-weight-sigma (segment.sv_weight_sigma) nan "
     "must be a finite number >= 0", {}),
    ("segment", "vol.zarr --output other --sv-seed-sigma inf", "--sv-seed-sigma (segment.sv_seed_sigma) inf "
     "must be a finite number >= 0", {}),
    ("segment", "vol.zarr --output other --phase stitch", "finish --phase fragments first", {}),
    ("segment", "vol.zarr --output other --task-index 0 --num-tasks 2", "need --phase", {}),
    ("segment", "vol.zarr --output other --method mws --halo 1,1,1",
     "--halo (segment.halo) 1,1,1 is smaller than the largest offset 4,27,27", {}),
    ("segment", "vol.zarr --output affinities --overwrite", "would overwrite the input affinities", {}),
    ("segment", "vol.zarr --output other --fragments affinities --overwrite", "would overwrite the input affinities",
     {}),
    ("segment", "vol.zarr --output other --fragments other", "would overwrite the output segmentation", {}),
    # evaluate
    ("evaluate", "vol.zarr/halfseg vol.zarr/labels", "`python -m pipeline.segment` run has not completed", {}),
    ("evaluate", "vol.zarr/segmentation missing.zarr/labels", "does not exist", {}),
    ("evaluate", "vol.zarr/segmentation vol.zarr/labels --roi 0:99,:,:", "ROI range", {}),
    ("evaluate", "vol.zarr/segmentation killed.zarr/labels", "killed.zarr/labels is incomplete", {}),
    ("evaluate", "vol.zarr/segmentation vol.zarr/labels --json scores", "--json scores is a folder: name the file",
     {}),
    ("evaluate", "precomputed://ftp:///tmp/x vol.zarr/labels", "scheme 'ftp' is not supported", {}),
    ("evaluate", "precomputed://s3://corrseg3d-no-such-bucket/seg vol.zarr/labels", "your credentials",
     {"AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}),
    ("evaluate", "precomputed://gs://corrseg3d-no-such-bucket/seg vol.zarr/labels", "your credentials",
     {"GOOGLE_APPLICATION_CREDENTIALS": None, "NO_GCE_CHECK": "True", "HOME": "{empty}"}),
    ("pipeline", "view precomputed://s3://corrseg3d-no-such-bucket/seg", "your credentials",  # not "holds no volume"
     {"AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}),
    # run: the whole config is checked before the first stage starts
    ("run", "majority.yaml", "--majority (segment.majority) 0.3", {}),
    ("run", "no-gt.yaml", "missing.zarr does not exist", {}),
    ("run", "fp16.yaml", "fp16 needs a CUDA device", {}),
    ("run", "run.yaml --set segment.min_sise=5", "did you mean 'segment.min_size'", {}),
    ("run", "run.yaml --set output.store=raw.zarr --set output.segmentation=raw --overwrite",
     "raw.zarr/raw would overwrite the input input.raw", {}),
    ("slurm", "submit run.yaml --set output.store=raw.zarr --set output.fragments=labels --dry-run",
     "would overwrite the input evaluate.gt", {}),
    ("run", "run.yaml --restart segment --phase fragments", "without --phase", {}),
    ("run", "bad.yaml", "is not valid YAML", {}),
    ("run", "run.yaml --set evaluate.top_k=-1", "--top-k (evaluate.top_k) must be >= 0", {}),
    ("run", "run.yaml --set evaluate.ignore_gt=0,x", "evaluate.ignore_gt: cannot read labels '0,x'", {}),
    # slurm
    ("slurm", "submit run.yaml", "sbatch not found", {"PATH": "{empty}"}),
    ("slurm", "submit run.yaml --dry-run --cpus 0", "slurm.cpus (--cpus) must be >= 1", {}),
    ("slurm", "submit run.yaml --dry-run --time 4h", "is not a SLURM time", {}),
    ("slurm", "submit run.yaml --dry-run --mem lots", "is not a SLURM size", {}),
    ("slurm", "submit majority.yaml --dry-run", "--majority (segment.majority) 0.3", {}),
    ("slurm", "status nowhere", "neither a run folder nor a run YAML", {}),
    # export
    ("export", "vol.zarr/segmentation precomputed://ftp:///tmp/x", "scheme 'ftp' is not supported", {}),
    ("export", "vol.zarr/segmentation precomputed://file://ng", "must be absolute", {}),
    ("export", "vol.zarr/halfseg precomputed://file:///{workspace}/ng", "has not completed", {}),
    ("export", "serve precomputed://ftp:///tmp/x", "scheme 'ftp' is not supported", {}),
    ("export", "vol.zarr/segmentation precomputed://file:///{workspace}/ng --viewer-state nodir/s.json",
     "folder nodir of --viewer-state", {}),
    # train: config, data, device, checkpoint and output folder, all before anything is written
    ("train", "-c missing.yaml", "config missing.yaml does not exist", {}),
    ("train", "-c bad.yaml", "is not valid YAML", {}),
    ("train", "-c train.yaml train.iterations=-1", "train.iterations must be >= 1", {}),
    ("train", "-c train.yaml model.filterz=[4]", "did you mean 'model.filters'", {}),
    ("train", "-c train.yaml data.sources.0.slices=[0,99]", "reaches outside raw.zarr/raw", {}),
    ("train", "-c train.yaml data.sources.0.slices=[0,14]", "overlaps validation.volumes.0.slices", {}),
    ("train", "-c train.yaml validation.volumes.0.slices=[10,40]", "reaches outside", {}),
    ("train", "-c train.yaml data.sources.0.raw=missing.zarr/raw train.num_workers=2", "does not exist", {}),
    ("train", "-c train.yaml data.sources.0.raw=raw.zarr/labels", "raw.zarr/labels is uint64: training reads uint8", {}),
    ("train", "-c train.yaml validation.volumes.0.raw=raw.zarr/labels", "is uint64: training reads uint8", {}),
    ("train", "-c train.yaml train.init_from=not-a-checkpoint.pt", "is not a corrseg3d checkpoint", {}),
    ("train", "-c train.yaml data.sources.0.labels=labels.zarr/float",
     "data.sources.0.labels labels.zarr/float has dtype float32, but labels must be integers", {}),
    ("train", "-c train.yaml validation.volumes.0.labels=labels.zarr/float",
     "validation.volumes.0.labels labels.zarr/float has dtype float32, but labels must be integers", {}),
    ("train", "-c train.yaml validation.volumes.0.labels=labels.zarr/negative",
     "validation.volumes.0.labels labels.zarr/negative contains negative labels", {}),
    ("train", "-c train.yaml data.sources.0.slices=[8,4]", "data.sources.0.slices [8, 4] is empty", {}),
    ("train", "-c train.yaml data.sources.0.raw=killed.zarr/raw data.sources.0.labels=killed.zarr/labels",
     "killed.zarr/raw is incomplete", {}),
    ("train", "-c train.yaml validation.volumes.0.labels=killed.zarr/labels", "killed.zarr/labels is incomplete", {}),
    ("train", "-c train.yaml validation.halo=[-4,-16,-16]", "validation.halo.0 must be >= 0, got -4", {}),
    ("train", "-c train.yaml validation.block=[0,32,32]", "validation.block.0 must be >= 1, got 0", {}),
    ("train", "-c train.yaml augment.flip=2", "augment.flip is a probability: it must be in [0, 1], got 2", {}),
    ("train", "-c train.yaml model.filters=[4,8]", "model.filters must be five positive widths", {}),
    ("train", "-c train.yaml model.embedding_dim=0", "model.embedding_dim must be >= 1, got 0", {}),
    ("train", "-c train.yaml data.voxel_size=[.nan,1,1]", "data.voxel_size must be three finite positive", {}),
    ("train", "-c train.yaml optim.lr=.nan", "optim.lr must be >= 0, got nan", {}),
    ("train", "-c train.yaml data.sources.0.weight=-1", "data.sources.0.weight must be >= 0, got -1", {}),
    ("train", "-c train.yaml data.sources.0.weight=0", "the weights must be non-negative with a positive sum", {}),
    ("train", "-c train.yaml train.device=cuda", "is not available", {}),
    ("train", "-c train.yaml train.device=gpu", "is not a device name", {}),
    ("train", "-c train.yaml train.precision=fp16", "fp16 needs a CUDA device", {}),
    ("train", "-c train.yaml --out old-run", "pass --resume to continue that run, --overwrite", {}),
    ("train", "-c train.yaml --out fresh --resume", "nothing to resume", {}),
    ("train", "-c train.yaml --out killed --resume", "stopped before its first checkpoint: start it again with "
     "--overwrite", {}),
    # python -m pipeline STAGE
    ("pipeline", "nosuch", "unknown command 'nosuch': run python -m pipeline COMMAND", {}),
    ("pipeline", "", "no command: run python -m pipeline COMMAND [ARGS] with one of data,", {}),
    ("pipeline", "segment partial.zarr", "has not completed", {}),
]


def _status(command: str, argv: list[str]) -> int:
    """Exit status of ``main(argv)``; argparse's usage errors leave through ``SystemExit`` as in a process."""
    try:
        return MAINS[command](argv)
    except SystemExit as exit_:
        return exit_.code


def _argv(text: str, folder) -> list[str]:
    return [part.format(workspace=str(folder).lstrip("/")) for part in text.split()]


@pytest.mark.parametrize("command, arguments, fragment, env", ROWS,
                         ids=[f"{c}: {a}" for c, a, _, _ in ROWS])
def test_bad_input_is_one_error_line_and_writes_nothing(workspace, monkeypatch, capfd, command, arguments,
                                                        fragment, env):
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            (workspace.parent / "empty").mkdir(exist_ok=True)
            monkeypatch.setenv(key, value.format(empty=workspace.parent / "empty"))
    monkeypatch.setattr("tenacity.nap.time", _no_sleep_module())  # cloud-files retries without waiting
    before = _snapshot(workspace)
    assert _status(command, _argv(arguments, workspace)) == 2
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert not out.strip(), out  # nor notes on stdout (cloud-volume's clients print some)
    assert _snapshot(workspace) == before  # nothing created, written or modified


SUBPROCESS_ROWS = [
    ("predict", "raw.zarr --checkpoint not-a-checkpoint.pt", "is not a corrseg3d checkpoint"),
    ("segment", "f255.zarr", "must lie in [0, 1]"),
    ("train", "-c train.yaml data.sources.0.raw=missing.zarr/raw train.num_workers=2", "does not exist"),
    ("pipeline", "evaluate vol.zarr/halfseg vol.zarr/labels", "has not completed"),
]


@pytest.mark.parametrize("command, arguments, fragment", SUBPROCESS_ROWS,
                         ids=[f"{c}: {a}" for c, a, _ in SUBPROCESS_ROWS])
def test_processes_print_one_error_line(workspace, command, arguments, fragment):
    before = _snapshot(workspace)
    result = subprocess.run([sys.executable, "-m", MODULES[command], *_argv(arguments, workspace)],
                            capture_output=True, text=True, cwd=workspace, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0] and "Traceback" not in result.stdout + result.stderr
    assert _snapshot(workspace) == before


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(tmp_path):
    """SIGINT while ``pipeline.data synth`` writes: one ``interrupted:`` line, exit 130, no half-written store."""
    store = tmp_path / "big.zarr"
    process = subprocess.Popen([sys.executable, "-m", "pipeline.data", "synth", str(store), "--shape", "128,512,512"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               preexec_fn=_default_sigint)  # a background job (CI) inherits SIGINT ignored
    marker = store / ".corrseg3d" / "writing" / "raw"
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 130 and lines == [INTERRUPTED], err
    assert "Traceback" not in out + err
    assert not store.exists()


def test_interrupt_of_any_entry_point_is_one_line(capsys):
    @entry_point
    def interrupted(argv=None):
        raise KeyboardInterrupt

    assert interrupted([]) == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == INTERRUPTED + "\n"


def test_outputs_of_an_input_written_anew_are_refused_along_the_chain(run_inputs, tmp_path, monkeypatch, capfd):
    """Raw regenerated after predict and segment ran: segment refuses the affinities, evaluate the
    segmentation (made from affinities made from the old raw), each naming predict; nothing is written."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(run_inputs / "in.zarr", "vol.zarr")
    options = PredictOptions(checkpoint=str(run_inputs / "tiny.pt"), **PREDICT)
    predict.predict("vol.zarr", options=options, scheduler="synchronous", progress=False)
    segment.segment("vol.zarr", SegmentOptions(block=(8, 32, 32)), scheduler="synchronous", progress=False)
    assert evaluate.main(["vol.zarr", "vol.zarr"]) == 0
    write_synthetic("vol.zarr", (16, 64, 96), seed=5, chunks=(8, 64, 64), overwrite=True)
    capfd.readouterr()
    before = _snapshot(tmp_path)
    rewritten = ("vol.zarr/affinities was computed from vol.zarr/raw before vol.zarr/raw was written anew: rerun "
                 "`python -m pipeline.predict` with --overwrite")
    rows = [(segment.main, ["vol.zarr"], rewritten),  # the finished run is not taken as done
            (segment.main, ["vol.zarr", "--output", "other", "--fragments", "otherfrag"], rewritten),
            (evaluate.main, ["vol.zarr", "vol.zarr", "--allow-incomplete"],
             "vol.zarr/segmentation was made from vol.zarr/affinities, which was computed from vol.zarr/raw before")]
    for main, argv, fragment in rows:
        assert main(argv) == 2
        lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and fragment in lines[0], lines
    assert _snapshot(tmp_path) == before
    predict.predict("vol.zarr", options=options, scheduler="synchronous", progress=False, overwrite=True)
    segment.segment("vol.zarr", SegmentOptions(block=(8, 32, 32)), scheduler="synchronous", progress=False,
                    overwrite=True)
    assert evaluate.main(["vol.zarr", "vol.zarr"]) == 0


def test_inputs_of_another_store_are_not_compared(run_inputs, tmp_path, monkeypatch):
    """A segmentation of ``../vol.zarr/affinities`` written into other.zarr, which holds affinities of its
    own: they are not its input, so it is scored, also after vol.zarr's raw was written anew (an input in
    another store is not followed)."""
    monkeypatch.chdir(tmp_path)
    options = PredictOptions(checkpoint=str(run_inputs / "tiny.pt"), **PREDICT)
    for name in ("vol.zarr", "other.zarr"):
        shutil.copytree(run_inputs / "in.zarr", name)
        predict.predict(name, options=options, scheduler="synchronous", progress=False)
    assert open_volume("vol.zarr/affinities").attrs["volume_id"] != open_volume("other.zarr/affinities").attrs["volume_id"]
    segment.segment("other.zarr", SegmentOptions(block=(8, 32, 32)), input_name="../vol.zarr/affinities",
                    output_name="fromvol", fragments_name="fromvolfragments", scheduler="synchronous",
                    progress=False)
    write_synthetic("vol.zarr", (16, 64, 96), seed=5, chunks=(8, 64, 64), overwrite=True)
    assert rewritten_input("other.zarr/fromvol") is None
    assert evaluate.main(["other.zarr/fromvol", str(run_inputs / "in.zarr" / "labels")]) == 0
