"""How much context does blockwise prediction need to equal one whole-volume forward pass?

Usage::

    python benchmarks/halo.py [--shape 24,192,192] [--block 8,96,96] [--halos 16,96,96;8,48,48]
                              [--checkpoint PATH] [--name NAME]

For each candidate halo, the volume is predicted (a) in one pass over the whole volume and
(b) in blocks of ``--block`` with that halo (:func:`corrseg3d.inference.predict_volume`, the same
tiling ``pipeline.predict`` uses), both quantised to uint8 like the stored affinities. Reported:
the fraction of values that differ by at most 1/255, and the largest difference, per halo, plus
the cost factor (context-padded voxels per output voxel). Rows are appended to
``benchmarks/results/halo.json`` under ``--name`` as each halo finishes.

The reference network's receptive field is 18 slices in z (two 3x3x3 convolutions in each of its
nine residual blocks, no z pooling) and about 150 voxels in y and x, so a block with less context
sees zero padding inside the network where the whole-volume pass sees tissue.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from corrseg3d.checkpoint import load_model
from corrseg3d.inference import predict_volume
from corrseg3d.weights import default_checkpoint
from emcore.conventions import raw_to_float
from pipeline.synth import generate

RESULTS = Path(__file__).parent / "results" / "halo.json"
HALOS = "8,48,48;16,48,48;16,96,96"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="24,192,192")
    parser.add_argument("--block", default="8,96,96")
    parser.add_argument("--halos", default=HALOS, help="semicolon-separated z,y,x halos")
    parser.add_argument("--name", default="default", help="key of this run in the results file")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    block = tuple(int(v) for v in args.block.split(","))
    checkpoint = args.checkpoint or default_checkpoint()
    model, offsets, _ = load_model(checkpoint)
    image = raw_to_float(generate(shape, seed=args.seed)[0])
    device = torch.device("cpu")

    def quantised(**tiling) -> np.ndarray:
        return np.rint(predict_volume(model, image, offsets, device=device, channels_last=True, **tiling) * 255)

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    rows = []
    results[args.name] = {"shape": shape, "block": block, "checkpoint": str(checkpoint), "rows": rows}
    for halo in (tuple(int(v) for v in h.split(",")) for h in args.halos.split(";")):
        whole = quantised(block=shape, halo=halo)
        start = time.perf_counter()
        tiled = quantised(block=block, halo=halo)
        seconds = time.perf_counter() - start
        diff = np.abs(whole - tiled)
        cost = math.prod(b + 2 * h for b, h in zip(block, halo)) / math.prod(block)
        rows.append({"halo": halo, "within_1_255": float((diff <= 1).mean()), "max_diff_255": int(diff.max()),
                     "cost_factor": cost, "tiled_seconds": seconds})
        print(f"halo {halo}: {rows[-1]['within_1_255']:.5f} within 1/255, max {rows[-1]['max_diff_255']}/255, "
              f"{cost:.2f} padded voxels per output voxel", flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
