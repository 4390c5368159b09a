"""Kill, then read: a stage refuses an input whose producing stage was killed before it finished.

A prediction killed with SIGKILL leaves affinities that ``pipeline.segment`` refuses (naming
``pipeline.predict``); a segmentation killed before relabelling is refused by
``pipeline.evaluate`` (naming ``pipeline.segment``). Rerunning the producer finishes the output
and the reader then accepts it; ``--allow-incomplete`` reads it anyway, and such a result is
never resumed on the finished input.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from test_predict import _tiny_checkpoint

from emcore.store import create_volume
from pipeline import evaluate, predict, segment
from pipeline.noisy_affinities import noisy_affinities
from pipeline.runstate import COMPLETE
from pipeline.synth import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _kill_when(command: list[str], records: str, count: int) -> int:
    """Start ``command``, SIGKILL it once ``records`` holds ``count`` done records; return how many it left."""
    def done() -> int:
        return len([name for name in os.listdir(records) if name.endswith(".done")]) if os.path.isdir(records) else 0

    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and done() < count:
        assert process.poll() is None, f"{command} ended before it was killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return done()


def test_segment_refuses_affinities_of_a_killed_prediction(tmp_path, capsys):
    raw, _ = generate((16, 64, 96), seed=5)
    store = str(tmp_path / "v.zarr")
    create_volume(f"{store}/raw", raw.shape, "uint8", chunks=(4, 32, 32), voxel_size=(30, 6, 6))[:] = raw
    _tiny_checkpoint(tmp_path / "m.pt")
    args = ["--checkpoint", str(tmp_path / "m.pt"), "--block", "4,32,32", "--halo", "4,32,32", "--workers", "1",
            "--no-progress", "--precision", "fp32", "--device", "cpu"]
    records = os.path.join(store, ".corrseg3d", "predict", "affinities", "done")
    done = _kill_when([sys.executable, "-m", "pipeline.predict", store, *args], records, 2)
    assert 2 <= done < 24, "the prediction must be killed mid-way"
    assert segment.main([store, "--block", "4,32,32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "v.zarr/affinities is unfinished" in err and "`python -m pipeline.predict`" in err
    assert not os.path.exists(os.path.join(store, "segmentation"))
    assert not os.path.exists(os.path.join(store, ".corrseg3d", "segment"))
    # Experts may read it anyway; that result is then never resumed on the finished affinities.
    assert segment.main([store, "--block", "4,32,32", "--no-progress", "--allow-incomplete"]) == 0
    assert predict.main([store, *args]) == 0  # the rerun finishes the prediction
    assert os.path.exists(os.path.join(os.path.dirname(records), COMPLETE))
    capsys.readouterr()
    assert segment.main([store, "--block", "4,32,32", "--no-progress"]) == 2
    assert "input.unfinished differ" in capsys.readouterr().err
    assert segment.main([store, "--block", "4,32,32", "--no-progress", "--overwrite"]) == 0


def test_evaluate_refuses_a_segmentation_killed_before_relabelling(tmp_path, capsys):
    _, labels = generate((16, 128, 128), seed=4)
    store = str(tmp_path / "s.zarr")
    create_volume(f"{store}/labels", labels.shape, labels.dtype, chunks=(16, 128, 128))[...] = labels
    affinities = noisy_affinities(labels, seed=4)  # user-supplied affinities: no run state, accepted
    create_volume(f"{store}/affinities", affinities.shape, affinities.dtype, chunks=(1, 4, 64, 64),
                  attrs={"offsets": [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-2, 0, 0], [0, -3, 0], [0, 0, -3],
                                     [-3, 0, 0], [0, -9, 0], [0, 0, -9], [-4, 0, 0], [0, -27, 0],
                                     [0, 0, -27]]})[...] = affinities
    command = [sys.executable, "-m", "pipeline.segment", store, "--block", "4,64,64", "--scheduler",
               "synchronous", "--no-progress"]
    records = os.path.join(store, ".corrseg3d", "segment", "segmentation", "done", "fragments")
    done = _kill_when(command, records, 2)
    assert 2 <= done < 16, "the segmentation must be killed before relabelling"
    gt = f"{store}/labels"
    assert evaluate.main([f"{store}/segmentation", gt]) == 2
    err = capsys.readouterr().err
    assert "s.zarr/segmentation is unfinished" in err and "`python -m pipeline.segment`" in err
    assert err.count("\n") == 1
    assert subprocess.run(command, cwd=REPO, capture_output=True).returncode == 0  # finish it
    assert evaluate.main([f"{store}/segmentation", gt]) == 0
    assert "voi" in capsys.readouterr().out
