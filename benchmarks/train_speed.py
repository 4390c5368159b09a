"""Training iterations per second on the CPU: fp32 vs bf16 autocast + channels_last_3d.

Reference model (pea-method.md section 1, 1.48 M parameters), one full PEA step (forward of the
patch, no-grad forward of the CCM view, SCM + CCM + EPM losses, backward, Adam), patch
18x160x160, batch 1, synthetic targets from :mod:`pipeline.synth` through the real sampler.
Writes ``benchmarks/results/train_speed.json``. The machine's CPU is shared, so the numbers
carry the load of whatever else ran (recorded as the 1-minute load average before each run).

Usage: ``python benchmarks/train_speed.py [--iterations 3] [--threads 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from corrseg3d.config import Config, SourceConfig
from corrseg3d.sampler import TrainingPatches, collate
from corrseg3d.inference import cpu_has_native_bf16
from corrseg3d.train import build_optimizer, train_step
from corrseg3d.model import build_model
from pipeline.store import create_volume
from pipeline.synth import generate

RESULTS = Path(__file__).parent / "results" / "train_speed.json"
VARIANTS = {"fp32": (None, False), "fp32+channels_last_3d": (None, True),
            "bf16+channels_last_3d": (torch.bfloat16, True)}


def _data(root: Path) -> SourceConfig:
    raw, labels = generate((18, 160, 160), seed=0)
    create_volume(f"{root}/raw", raw.shape, raw.dtype, chunks=(18, 160, 160)).array[...] = raw
    create_volume(f"{root}/labels", labels.shape, labels.dtype, chunks=(18, 160, 160)).array[...] = labels
    return SourceConfig(raw=f"{root}/raw", labels=f"{root}/labels")


def measure(source: SourceConfig, *, dtype: torch.dtype | None, channels_last: bool, iterations: int) -> dict:
    config = Config()
    config.train.channels_last = channels_last
    dataset = TrainingPatches([source], patch=(18, 160, 160), context=(0, 0, 0), offsets=config.loss.offsets,
                              augment_config=config.augment, seed=0)
    batches = [collate([dataset[i]]) for i in range(iterations + 1)]
    torch.manual_seed(0)
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = build_model({}).to(memory_format=memory_format)
    optimizer = build_optimizer(model, config)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = dict(device=torch.device("cpu"), autocast_dtype=dtype, scaler=scaler)
    load = os.getloadavg()[0]
    train_step(model, optimizer, batches[0], config, **step)  # warm-up
    start = time.perf_counter()
    for batch in batches[1:]:
        train_step(model, optimizer, batch, config, **step)
    seconds = (time.perf_counter() - start) / iterations
    return dict(seconds_per_iteration=seconds, it_per_s=1 / seconds, load_average_1min=load)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = dict(patch=[18, 160, 160], batch=1, iterations=args.iterations, threads=args.threads,
                   torch=torch.__version__, cpu=platform.processor() or platform.machine(),
                   cpu_capability=torch.backends.cpu.get_cpu_capability(), native_bf16=cpu_has_native_bf16(),
                   note="shared CPU: other jobs may run concurrently (see load_average_1min)", variants={})
    with tempfile.TemporaryDirectory() as tmp:
        source = _data(Path(tmp) / "bench.zarr")
        for name, (dtype, channels_last) in VARIANTS.items():
            results["variants"][name] = measure(source, dtype=dtype, channels_last=channels_last,
                                                iterations=args.iterations)
            print(name, json.dumps(results["variants"][name]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
