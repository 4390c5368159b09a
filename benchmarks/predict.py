"""Prediction throughput: ``pipeline.predict`` vs. the reference-style sliding window, same run.

Usage::

    python benchmarks/predict.py [--shape 24,384,384] [--checkpoint PATH] [--seed 7]

Both variants run on the same synthetic volume with the same weights, each in its own process
(so ``ru_maxrss`` is that variant's peak RSS):

* ``pipeline``: ``pipeline.predict`` from zarr to zarr with its defaults (output blocks = storage
  chunks, halo, ``channels_last_3d``, autocast where the CPU has native bf16), plus, for the
  record, the same with ``--precision fp32``.
* ``reference``: the PEA repository's inference as specified in pea-method.md section 5 --
  reflect pad (4, 48, 48), 18x160x160 windows at stride (10, 80, 80) clamped to the end,
  Gaussian blending ``1e-6 + exp(-d^2 / (2 * 0.2^2))`` over normalised window coordinates, fp32,
  ReLU of the cosine with the nearest-neighbour border fill; written to zarr the same way.

Reported: output voxels/s, peak RSS, and agreement with the ground-truth affinities of the
volume's labels (fraction of valid affinities on the correct side of 0.5, and mean absolute
error), plus the agreement between the two predictions. Results go to
``benchmarks/results/predict.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "predict.json"
WINDOW, STRIDE, PAD, SIGMA = (18, 160, 160), (10, 80, 80), (4, 48, 48), 0.2


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, size - window + 1, stride))
    return starts if starts[-1] == size - window else starts + [size - window]


def _gaussian_weight() -> np.ndarray:
    axes = [np.linspace(-1, 1, n) for n in WINDOW]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return (1e-6 + np.exp(-(zz ** 2 + yy ** 2 + xx ** 2) / (2 * SIGMA ** 2))).astype(np.float32)


def run_reference(raw_location: str, out_location: str, checkpoint: str) -> None:
    """The reference sliding window over the whole volume in memory (fp32, no channels_last)."""
    import torch

    from corrseg3d.checkpoint import load_model
    from corrseg3d.inference import predict_patch
    from pipeline.store import create_volume, open_volume

    model, offsets, _ = load_model(checkpoint)
    raw = open_volume(raw_location)
    image = np.pad(raw[:].astype(np.float32) / 255, [(p, p) for p in PAD], mode="reflect")
    total = np.zeros((len(offsets),) + image.shape, np.float32)
    norm = np.zeros(image.shape, np.float32)
    weight = _gaussian_weight()
    starts = [_window_starts(n, w, s) for n, w, s in zip(image.shape, WINDOW, STRIDE)]
    for z, y, x in itertools.product(*starts):
        box = (slice(z, z + WINDOW[0]), slice(y, y + WINDOW[1]), slice(x, x + WINDOW[2]))
        affinities = predict_patch(model, image[box], offsets, device=torch.device("cpu"))
        total[(slice(None),) + box] += affinities * weight
        norm[box] += weight
    crop = tuple(slice(p, n - p) for p, n in zip(PAD, image.shape))
    result = total[(slice(None),) + crop] / norm[crop]
    out = create_volume(out_location, result.shape, "uint8", chunks=(len(offsets), 32, 256, 256),
                        voxel_size=raw.voxel_size, attrs={"offsets": [list(o) for o in offsets]})
    out[:] = np.rint(np.clip(result, 0, 1) * 255).astype(np.uint8)


def _child(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    if args.variant == "reference":
        run_reference(args.raw, args.out, args.checkpoint)
    else:
        from pipeline.predict import main

        extra = ["--precision", "fp32"] if args.variant == "pipeline-fp32" else []
        code = main([args.raw, "--out", args.out, "--checkpoint", args.checkpoint, "--no-progress"] + extra)
        if code:
            sys.exit(code)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps({"seconds": seconds, "peak_rss_gib": peak}))


def _agreement(prediction: np.ndarray, labels: np.ndarray, offsets) -> dict[str, float]:
    from corrseg3d.targets import label_affinities

    truth, valid = label_affinities(labels, offsets)
    predicted = prediction.astype(np.float32) / 255
    return {"accuracy": float(((predicted > 0.5) == truth.astype(bool))[valid].mean()),
            "mae": float(np.abs(predicted - truth)[valid].mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="24,384,384")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--checkpoint", default=None, help="default: the shipped weights")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--raw", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    from corrseg3d.weights import default_checkpoint
    from pipeline.store import open_volume
    from pipeline.synth import write_synthetic

    checkpoint = args.checkpoint or default_checkpoint()
    shape = tuple(int(v) for v in args.shape.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    store = str(work / "vol.zarr")
    write_synthetic(store, shape, seed=args.seed)
    labels = open_volume(store + "/labels")[:]
    rows = []
    for variant in ("pipeline", "pipeline-fp32", "reference"):
        out = f"{store}/{variant}"
        completed = subprocess.run([sys.executable, __file__, "--child", "--variant", variant, "--raw", store + "/raw",
                                    "--out", out, "--checkpoint", checkpoint], capture_output=True, text=True)
        if completed.returncode:
            raise SystemExit(f"{variant} failed:\n{completed.stderr}")
        measured = json.loads(completed.stdout.strip().splitlines()[-1])
        volume = open_volume(out)
        prediction = volume[:]
        rows.append({"variant": variant, **measured, "voxels_per_second": int(np.prod(shape)) / measured["seconds"],
                     **_agreement(prediction, labels, volume.attrs["offsets"])})
    reference = open_volume(f"{store}/reference")[:].astype(np.int16)
    pipeline = open_volume(f"{store}/pipeline")[:].astype(np.int16)
    between = {"max_abs_diff_255": int(np.abs(reference - pipeline).max()),
               "within_1_255": float((np.abs(reference - pipeline) <= 1).mean())}
    base = next(r for r in rows if r["variant"] == "reference")["voxels_per_second"]
    print(f"volume {shape}, checkpoint {checkpoint}")
    print(f"{'variant':<15}{'s':>9}{'Mvox/s':>9}{'vs ref':>8}{'peak GiB':>10}{'acc':>8}{'MAE':>8}")
    for row in rows:
        print(f"{row['variant']:<15}{row['seconds']:>9.1f}{row['voxels_per_second'] / 1e6:>9.3f}"
              f"{row['voxels_per_second'] / base:>8.2f}{row['peak_rss_gib']:>10.2f}{row['accuracy']:>8.4f}{row['mae']:>8.4f}")
    print(f"pipeline vs reference: max |diff| {between['max_abs_diff_255']}/255, "
          f"{between['within_1_255']:.4f} of values within 1/255")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"shape": shape, "checkpoint": checkpoint, "rows": rows,
                                   "pipeline_vs_reference": between}, indent=2))


if __name__ == "__main__":
    main()
