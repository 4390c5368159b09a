"""Training iterations per second on the CPU: fp32 vs bf16 autocast + channels_last_3d.

Reference model (docs/method.md §1, 1.48 M parameters), one full PEA step (forward of the
patch, no-grad forward of the CCM view, SCM + CCM + EPM losses, backward, Adam), patch
18x160x160 (``--patch``), batch 1, synthetic targets from :mod:`pipeline.synth` through the real sampler.
Writes ``benchmarks/results/train_speed.json``. The machine's CPU is shared, so the numbers
carry the load of whatever else ran (recorded as the 1-minute load average before each run).

Usage: ``python benchmarks/train_speed.py [--iterations 3] [--threads 2] [--patch 18,160,160]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from corrseg3d.config import Config, SourceConfig
from corrseg3d.inference import cpu_has_native_bf16, cpu_model_name
from corrseg3d.model import build_model
from corrseg3d.sampler import TrainingPatches, collate
from corrseg3d.train import build_optimizer, train_step
from emcore.store import create_volume
from pipeline.synth import generate

RESULTS = Path(__file__).parent / "results" / "train_speed.json"
VARIANTS = {"fp32": (None, False), "fp32+channels_last_3d": (None, True),
            "bf16+channels_last_3d": (torch.bfloat16, True)}


def _data(root: Path, patch: tuple[int, int, int]) -> SourceConfig:
    raw, labels = generate(patch, seed=0)
    create_volume(f"{root}/raw", raw.shape, raw.dtype, chunks=patch).array[...] = raw
    create_volume(f"{root}/labels", labels.shape, labels.dtype, chunks=patch).array[...] = labels
    return SourceConfig(raw=f"{root}/raw", labels=f"{root}/labels")


def measure(source: SourceConfig, *, patch: tuple[int, int, int], dtype: torch.dtype | None, channels_last: bool,
            iterations: int, max_seconds: float) -> dict:
    config = Config()
    config.train.channels_last = channels_last
    dataset = TrainingPatches([source], patch=patch, context=(0, 0, 0), offsets=config.loss.offsets,
                              augment_config=config.augment, seed=0)
    batches = [collate([dataset[i]]) for i in range(iterations + 1)]
    torch.manual_seed(0)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = build_model({}).to(memory_format=memory_format)
    optimizer = build_optimizer(model, config)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = dict(device=torch.device("cpu"), autocast_dtype=dtype, scaler=scaler)
    load = os.getloadavg()[0]
    seconds = []
    for batch in batches:  # the first step is the warm-up; steps stop once max_seconds are spent
        start = time.perf_counter()
        train_step(model, optimizer, batch, config, **step)
        seconds.append(time.perf_counter() - start)
        if sum(seconds) > max_seconds:
            break
    timed = seconds[1:] or seconds
    per_step = sum(timed) / len(timed)
    return dict(seconds_per_iteration=per_step, it_per_s=1 / per_step, step_seconds=seconds,
                warm_up_only=len(seconds) == 1, load_average_1min=load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patch", default="18,160,160", help="z,y,x training patch")
    parser.add_argument("--max-seconds", type=float, default=600,
                        help="per variant: stop timing once this is spent; a variant still in its first step after "
                             "twice this is stopped and reported unfinished (emulated bf16 is slow)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of the variants")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    patch = tuple(int(v) for v in args.patch.split(","))
    torch.set_num_threads(args.threads)
    if args.child:
        dtype, channels_last = VARIANTS[args.child]
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(measure(_data(Path(tmp) / "bench.zarr", patch), patch=patch, dtype=dtype,
                                     channels_last=channels_last, iterations=args.iterations,
                                     max_seconds=args.max_seconds)))
        return
    results = dict(patch=list(patch), batch=1, iterations=args.iterations, threads=args.threads,
                   torch=torch.__version__, cpu=cpu_model_name(),
                   cpu_capability=torch.backends.cpu.get_cpu_capability(), native_bf16=cpu_has_native_bf16(),
                   note="shared CPU: other jobs may run concurrently (see load_average_1min)", variants={})
    for name in args.variants.split(","):
        command = [sys.executable, __file__, *sys.argv[1:], "--child", name]
        try:
            out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=2 * args.max_seconds)
            results["variants"][name] = json.loads(out.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            results["variants"][name] = dict(unfinished=True, seconds_without_a_finished_step=2 * args.max_seconds)
        print(name, json.dumps(results["variants"][name]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
