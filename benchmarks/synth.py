"""Time and peak memory of writing synthetic volumes with ``python -m pipeline.data synth``.

Each size runs in its own process (so each peak RSS, ``ru_maxrss`` of that child from ``os.wait4``,
belongs to one run and includes Python, numpy and zarr). Prints a table and writes
``benchmarks/results/synth.json``. The machine's CPUs may be shared: say so when quoting.

Usage: ``python benchmarks/synth.py [--sizes 64,512,512 100,1024,1024] [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "synth.json")


def run_one(shape: str, seed: int) -> dict:
    """Write one volume in a child process; return shape, seconds, peak RSS and label stats."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        out = os.path.join(tmp, "synth.zarr")
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "pipeline.data", "synth", out, "--shape", shape,
                                  "--seed", str(seed)], stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        if status != 0:
            raise RuntimeError(f"synth {shape} failed with status {status}")
        stats = subprocess.run([sys.executable, "-c", _STATS, out], check=True, capture_output=True, text=True)
    return {"shape": [int(v) for v in shape.split(",")], "seed": seed, "seconds": round(seconds, 2),
            "peak_rss_gib": round(usage.ru_maxrss / 2 ** 20, 3),
            **json.loads(stats.stdout)}


_STATS = """
import json, sys
import numpy as np
from emcore.store import open_volume
labels = open_volume(sys.argv[1] + "/labels")[:]
print(json.dumps({"labels": int(len(np.unique(labels)) - 1), "background_fraction": round(float(np.mean(labels == 0)), 4)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["64,512,512", "100,1024,1024"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    records = [run_one(shape, args.seed) for shape in args.sizes]
    print(f"{'shape':>16} {'seconds':>8} {'Mvox/s':>7} {'peak RSS GiB':>13} {'labels':>7} {'label 0':>8}")
    for r in records:
        mvox = r["shape"][0] * r["shape"][1] * r["shape"][2] / 1e6
        print(f"{'x'.join(map(str, r['shape'])):>16} {r['seconds']:8.1f} {mvox / r['seconds']:7.2f} "
              f"{r['peak_rss_gib']:13.2f} {r['labels']:7d} {r['background_fraction']:8.3f}")
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as handle:
        json.dump({"benchmark": "synth", "cpu_count": os.cpu_count(), "note": "CPU shared with other jobs",
                   "runs": records}, handle, indent=2)


if __name__ == "__main__":
    main()
