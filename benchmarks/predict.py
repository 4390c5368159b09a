"""Prediction throughput: ``pipeline.predict``, the network's own speed on the same blocks, and the
reference-style sliding window, all in one run.

Usage::

    python benchmarks/predict.py [--shape 64,512,512] [--blocks "32,256,256;32,512,512"] [--halo 8,48,48]
                                 [--threads 2] [--device cpu] [--batch-size 1] [--reference-shape Z,Y,X]
                                 [--checkpoint PATH] [--seed 7]

Every variant runs on the same synthetic volume with the same weights on the same ``--device``
(``cpu`` or ``cuda``), each in its own process (so ``ru_maxrss`` is that variant's peak RSS, and
on CUDA ``max_memory_allocated`` its peak GPU memory) with the same number of torch threads:

* ``pipeline B``: ``pipeline.predict`` from zarr to zarr with output block ``B`` and
  ``--batch-size`` blocks per network call (all other options at their defaults: halo, two
  workers so reading and writing overlap the network, ``auto`` precision), end to end including
  model load, device initialisation, zarr reads, the correlation head and uint8 writes.
* ``forward B``: the ceiling -- only the network's forward pass
  (:func:`corrseg3d.inference.inference_model`, no gradient, the pipeline's memory layout and
  ``auto`` precision on that device, recorded as ``precision``) on exactly the padded context
  patches ``pipeline B`` evaluates, grouped into network calls as the pipeline groups them
  (``--batch-size`` consecutive blocks, split by shape), each batch prepared before its call and
  only the forward calls timed (after one untimed warm-up call per batch shape; on CUDA
  synchronised before the clock is read). Its rate counts *output* voxels, like the pipeline's,
  so ``pipeline / forward`` is the share of the network's speed the pipeline keeps. (Results
  carry ``forward_warm_up``; ``predict_gpu-h200.json`` warmed up on its first batch, all of one
  shape.)
* ``reference``: the PEA repository's inference (docs/method.md §10) -- reflect pad (4, 48, 48),
  18x160x160 windows at stride (10, 80, 80) clamped to the end, Gaussian blending
  ``1e-6 + exp(-d^2 / (2 * 0.2^2))`` over normalised window coordinates, fp32, ReLU of the cosine
  with the nearest-neighbour border fill; written to zarr the same way. ``--reference-shape``
  runs it on a corner crop of the volume instead (it is the slowest variant). Every window costs
  the same, so its whole-volume time is the crop's time per window times the whole volume's
  window count (:func:`reference_windows`); that projected rate is the one the ratios use, and
  the measured crop rate is reported beside it.

Reported: output Mvoxel/s, the ratios to the reference and to the forward ceiling of the same
block, peak RSS (and peak GPU memory), and agreement with the ground-truth affinities of the volume's labels (fraction
of valid affinities on the correct side of 0.5, and mean absolute error). Results go to
``benchmarks/results/predict.json`` (or ``predict_NAME.json``).
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
from typing import Iterator

import numpy as np

RESULTS = Path(__file__).parent / "results"
WINDOW, STRIDE, PAD, SIGMA = (18, 160, 160), (10, 80, 80), (4, 48, 48), 0.2


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, size - window + 1, stride))
    return starts if starts[-1] == size - window else starts + [size - window]


def _gaussian_weight() -> np.ndarray:
    axes = [np.linspace(-1, 1, n) for n in WINDOW]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    return (1e-6 + np.exp(-(zz ** 2 + yy ** 2 + xx ** 2) / (2 * SIGMA ** 2))).astype(np.float32)


def reference_windows(shape: tuple[int, ...]) -> int:
    """Number of sliding windows the reference evaluates for a volume of ``shape``."""
    return int(np.prod([len(_window_starts(n + 2 * p, w, s)) for n, p, w, s in zip(shape, PAD, WINDOW, STRIDE)]))


def run_reference(raw_location: str, out_location: str, checkpoint: str, crop: tuple[int, ...], device: str) -> None:
    """The reference sliding window over the ``crop`` corner of the volume in memory (fp32, no channels_last)."""
    import torch

    from corrseg3d.checkpoint import load_model
    from corrseg3d.inference import predict_patch
    from emcore.conventions import affinities_as_uint8, raw_to_float
    from emcore.store import create_volume, open_volume

    model, offsets, _ = load_model(checkpoint)
    model.to(device)
    raw = open_volume(raw_location)
    image = np.pad(raw_to_float(raw[tuple(slice(0, n) for n in crop)]), [(p, p) for p in PAD],
                   mode="reflect")
    total = np.zeros((len(offsets),) + image.shape, np.float32)
    norm = np.zeros(image.shape, np.float32)
    weight = _gaussian_weight()
    starts = [_window_starts(n, w, s) for n, w, s in zip(image.shape, WINDOW, STRIDE)]
    for z, y, x in itertools.product(*starts):
        box = (slice(z, z + WINDOW[0]), slice(y, y + WINDOW[1]), slice(x, x + WINDOW[2]))
        affinities = predict_patch(model, image[box], offsets, device=torch.device(device))
        total[(slice(None),) + box] += affinities * weight
        norm[box] += weight
    inner = tuple(slice(p, n - p) for p, n in zip(PAD, image.shape))
    result = total[(slice(None),) + inner] / norm[inner]
    out = create_volume(out_location, result.shape, "uint8", chunks=(len(offsets), 32, 256, 256),
                        voxel_size=raw.voxel_size, attrs={"offsets": [list(o) for o in offsets]})
    out[:] = affinities_as_uint8(result)


def run_forward(raw_location: str, checkpoint: str, block: tuple[int, ...], halo: tuple[int, ...], device: str,
                batch_size: int) -> float:
    """Seconds of the network's forward passes alone over the context patches of ``block`` (the ceiling).

    Blocks go ``batch_size`` consecutive ones at a time, split by shape (as
    :func:`emcore.blocks.run_blocks` and ``pipeline.predict`` group them), in the memory layout and
    ``auto`` precision ``pipeline.predict`` uses on ``device``; one untimed call per batch shape
    warms up.
    """
    import torch

    from corrseg3d.checkpoint import load_model
    from corrseg3d.inference import autocast, inference_model, network_batch, pad_context, resolve_precision
    from emcore.blocks import BlockGrid
    from emcore.conventions import raw_to_float
    from emcore.store import open_volume

    target = torch.device(device)
    channels_last = target.type == "cpu"
    dtype = resolve_precision("auto", target)
    model, _, _ = load_model(checkpoint)
    model = inference_model(model).to(target)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    image = raw_to_float(open_volume(raw_location)[:])
    grid = BlockGrid(image.shape, block)

    def batches() -> Iterator[np.ndarray]:
        for first in range(0, grid.n_blocks, batch_size):
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for index in range(first, min(first + batch_size, grid.n_blocks)):
                by_shape.setdefault(grid.block(index).shape, []).append(index)
            for indices in by_shape.values():
                yield np.stack([pad_context(image, grid.block(i).begin, grid.block(i).end, halo) for i in indices])

    def forward(images: np.ndarray) -> float:
        batch = network_batch(images, device=target, channels_last=channels_last)
        with torch.no_grad(), autocast(target, dtype):
            if target.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(batch)
            if target.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

    seconds, warmed = 0.0, set()
    for images in batches():
        if images.shape not in warmed:
            forward(images)
            warmed.add(images.shape)
        seconds += forward(images)
    return seconds


def _child(args: argparse.Namespace) -> None:
    """One variant in this process; prints its seconds (forward: the forward passes only) and peak RSS."""
    import torch

    torch.set_num_threads(args.threads)
    if args.variant == "forward":
        seconds = run_forward(args.raw, args.checkpoint, tuple(int(v) for v in args.block.split(",")),
                              tuple(int(v) for v in args.halo.split(",")), args.device, args.batch_size)
    else:
        start = time.perf_counter()
        if args.variant == "reference":
            run_reference(args.raw, args.out, args.checkpoint, tuple(int(v) for v in args.crop.split(",")),
                          args.device)
        else:
            from pipeline.predict import main

            code = main([args.raw, "--out", args.out, "--checkpoint", args.checkpoint, "--no-progress", "--block",
                         args.block, "--halo", args.halo, "--threads", str(args.threads), "--device", args.device,
                         "--batch-size", str(args.batch_size)])
            if code:
                sys.exit(code)
        seconds = time.perf_counter() - start
    from corrseg3d.inference import resolve_precision

    result = {"seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
    if args.variant != "reference":
        result["precision"] = str(resolve_precision("auto", torch.device(args.device)) or "fp32")
    if args.device.startswith("cuda"):
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(torch.device(args.device)) / 2 ** 30
    print(json.dumps(result))


def _agreement(prediction: np.ndarray, labels: np.ndarray, offsets) -> dict[str, float]:
    from corrseg3d.targets import label_affinities
    from emcore.conventions import affinities_as_float

    truth, valid = label_affinities(labels, offsets)
    predicted = affinities_as_float(prediction)
    return {"accuracy": float(((predicted > 0.5) == truth.astype(bool))[valid].mean()),
            "mae": float(np.abs(predicted - truth)[valid].mean())}


def _run_child(variant: str, store: str, args: argparse.Namespace, *, block: str = "", crop: str = "") -> dict:
    out = f"{store}/{variant}-{block.replace(',', 'x')}" if block else f"{store}/{variant}"
    command = [sys.executable, __file__, "--child", "--variant", variant, "--raw", store + "/raw", "--out", out,
               "--checkpoint", args.checkpoint, "--threads", str(args.threads), "--block", block, "--halo", args.halo,
               "--crop", crop, "--device", args.device, "--batch-size", str(args.batch_size)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode:
        raise SystemExit(f"{variant} {block} failed:\n{completed.stderr}")
    return {"variant": variant, "block": block or None, "out": out, **json.loads(completed.stdout.strip().splitlines()[-1])}


def _device_name(device: str) -> str:
    """``cpu`` with the processor's model name, or the CUDA device's name."""
    import torch

    from corrseg3d.inference import cpu_model_name

    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({cpu_model_name()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,512,512")
    parser.add_argument("--blocks", default="32,256,256;32,512,512", help="output blocks to compare, ;-separated")
    parser.add_argument("--halo", default="8,48,48")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every variant")
    parser.add_argument("--device", default="cpu", help="device of every variant: cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=1, help="blocks per network call (pipeline and forward)")
    parser.add_argument("--reference-shape", help="run the reference on this corner crop (default: the whole volume)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--checkpoint", default=None, help="default: the shipped weights")
    parser.add_argument("--name", default=None, help="results file predict_NAME.json (default predict.json)")
    for hidden in ("--variant", "--raw", "--out", "--block", "--crop"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    from corrseg3d.weights import default_checkpoint
    from emcore.store import open_volume
    from pipeline.synth import write_synthetic

    args.checkpoint = checkpoint = args.checkpoint or default_checkpoint()
    shape = tuple(int(v) for v in args.shape.split(","))
    crop = args.reference_shape or args.shape
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    store = str(work / "vol.zarr")
    write_synthetic(store, shape, seed=args.seed)
    labels = open_volume(store + "/labels")[:]
    blocks = args.blocks.split(";")
    rows = []
    for block in blocks:
        rows.append(_run_child("pipeline", store, args, block=block))
        rows.append(_run_child("forward", store, args, block=block))
    rows.append(_run_child("reference", store, args, crop=crop))
    for row in rows:
        extent = tuple(int(v) for v in crop.split(",")) if row["variant"] == "reference" else shape
        row["voxels_per_second"] = int(np.prod(extent)) / row["seconds"]
        if row["variant"] == "reference":
            row["measured_on"] = list(extent)
            row["measured_voxels_per_second"] = row["voxels_per_second"]
            row["windows"] = [reference_windows(extent), reference_windows(shape)]
            row["voxels_per_second"] = int(np.prod(shape)) / (row["seconds"] / row["windows"][0] * row["windows"][1])
        if row["variant"] != "forward":
            volume = open_volume(row["out"])
            row.update(_agreement(volume[:], labels[tuple(slice(0, n) for n in extent)], volume.attrs["offsets"]))
    reference = next(r for r in rows if r["variant"] == "reference")["voxels_per_second"]
    ceiling = {r["block"]: r["voxels_per_second"] for r in rows if r["variant"] == "forward"}
    for row in rows:
        row["vs_reference"] = row["voxels_per_second"] / reference
        row["vs_forward"] = row["voxels_per_second"] / ceiling[row["block"]] if row["block"] in ceiling else None
    print(f"volume {shape}, halo {args.halo}, device {args.device}, batch size {args.batch_size}, "
          f"{args.threads} threads, checkpoint {checkpoint}")
    measured = next(r for r in rows if r["variant"] == "reference")
    print(f"reference measured on {crop}: {measured['measured_voxels_per_second'] / 1e6:.4f} Mvox/s "
          f"({measured['windows'][0]} windows); projected to {args.shape} ({measured['windows'][1]} windows) below")
    print(f"{'variant':<14}{'block':>12}{'s':>9}{'Mvox/s':>9}{'vs ref':>8}{'vs fwd':>8}{'peak GiB':>10}"
          f"{'GPU GiB':>9}{'acc':>8}{'MAE':>8}")
    for row in rows:
        ratio = f"{row['vs_forward']:>8.2f}" if row["vs_forward"] is not None else f"{'':>8}"
        gpu = f"{row['peak_gpu_gib']:>9.2f}" if "peak_gpu_gib" in row else f"{'':>9}"
        quality = f"{row['accuracy']:>8.4f}{row['mae']:>8.4f}" if "accuracy" in row else ""
        print(f"{row['variant']:<14}{row['block'] or '':>12}{row['seconds']:>9.1f}{row['voxels_per_second'] / 1e6:>9.3f}"
              f"{row['vs_reference']:>8.2f}{ratio}{row['peak_rss_gib']:>10.2f}{gpu}{quality}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (f"predict_{args.name}.json" if args.name else "predict.json")
    path.write_text(json.dumps({"shape": shape, "halo": args.halo, "threads": args.threads, "device": _device_name(args.device),
                                "forward_warm_up": True,
                                "batch_size": args.batch_size, "reference_shape": crop, "checkpoint": checkpoint,
                                "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
