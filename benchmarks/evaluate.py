"""Benchmark ``pipeline.evaluate`` against scikit-image and elf on one uint64 label pair.

The pair (GT from :mod:`pipeline.synth`, segmentation = GT with merged and split objects and
ids above 2**32) is generated once into a zarr store under /tmp. Every implementation then runs
in its own subprocess; its peak *extra* memory is ``peak RSS at the end minus peak RSS
after imports and loading (ours reads from zarr blockwise, so it loads nothing; the peers need
both volumes in RAM and their load is part of the baseline). All use the reference convention
(GT 0 ignored, log2). ``ours-*`` run the full ``evaluate`` (scores plus top-10 offenders with
bounding boxes); ``ours-threads-noboxes`` is ``--top-k 0`` (scores only, like the peers).

Usage::

    python benchmarks/evaluate.py                      # 100x1024x1024, writes results/evaluate.json
    python benchmarks/evaluate.py --shape 32,256,256   # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

IMPLEMENTATIONS = ("ours-threads", "ours-processes", "ours-threads-noboxes", "skimage", "elf")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _perturb(gt: np.ndarray, seed: int) -> np.ndarray:
    """GT with ~10% of objects merged pairwise and ~20% split at a random z.

    Ids stay below 2 * #objects: scikit-image allocates a dense (max id)**2 sum and fails on ids
    above 2**32 (it asked for 12 TiB), so large ids would exclude it from the comparison.
    """
    import fastremap

    rng = np.random.default_rng(seed)
    compact, _ = fastremap.renumber(gt, preserve_zero=False)
    n = int(compact.max()) + 1
    lut = np.arange(n, dtype=np.uint64)
    merged = rng.random(n) < 0.1
    lut[merged] = rng.integers(1, n, int(merged.sum()))
    split = rng.random(n) < 0.2
    cut = rng.integers(0, gt.shape[0], n)
    seg = np.empty(gt.shape, np.uint64)
    for z in range(gt.shape[0]):
        c = compact[z]
        seg[z] = lut[c] + np.where(split[c] & (z >= cut[c]), np.uint64(n), np.uint64(0))
    return seg


def make_data(path: str, shape: tuple[int, ...], chunks: tuple[int, ...], seed: int = 0) -> None:
    from emcore.store import create_volume
    from pipeline.synth import generate

    _, gt = generate(shape, seed=seed)
    seg = _perturb(gt, seed)
    for name, data in (("labels", gt.astype(np.uint64)), ("segmentation", seg)):
        volume = create_volume(f"{path}/{name}", shape, np.uint64, chunks=chunks, overwrite=True)
        for z in range(0, shape[0], chunks[0]):
            volume[z:z + chunks[0]] = data[z:z + chunks[0]]


def _peak_rss_gib() -> float:
    """Peak resident memory of this process (Linux ``VmHWM``, which unlike ``ru_maxrss`` is not
    inherited from the parent across ``exec``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker(impl: str, path: str) -> dict:
    """Run one implementation; returns scores, seconds and memory."""
    if impl.startswith("ours"):
        from pipeline.evaluate import EvaluateOptions, evaluate

        def run():
            report = evaluate(f"{path}/segmentation", f"{path}/labels",
                              EvaluateOptions(top_k=0 if impl.endswith("noboxes") else 10), scheduler=impl.split("-")[1])
            return report["scores"]["voi_split"], report["scores"]["voi_merge"], report["scores"]["arand"]
    else:
        from emcore.store import open_volume

        seg = open_volume(f"{path}/segmentation")[:]
        gt = open_volume(f"{path}/labels")[:]
        if impl == "skimage":
            from skimage.metrics import adapted_rand_error, variation_of_information

            def run():
                split, merge = variation_of_information(gt, seg, ignore_labels=(0,))
                return split, merge, adapted_rand_error(gt, seg, ignore_labels=(0,))[0]
        else:
            from elf.evaluation import rand_index, variation_of_information

            def run():
                split, merge = variation_of_information(seg, gt, ignore_gt=[0])
                return split, merge, rand_index(seg, gt, ignore_gt=[0])[0]
    baseline = _peak_rss_gib()
    start = time.perf_counter()
    split, merge, arand = run()
    seconds = time.perf_counter() - start
    peak = _peak_rss_gib()
    return {"impl": impl, "seconds": seconds, "baseline_gib": baseline, "peak_gib": peak,
            "extra_gib": peak - baseline, "voi_split": float(split), "voi_merge": float(merge), "arand": float(arand)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="100,1024,1024")
    parser.add_argument("--chunks", default="32,256,256")
    parser.add_argument("--data", default=None, help="zarr store (default /tmp/corrseg3d_eval_bench_SHAPE.zarr)")
    parser.add_argument("--impl", nargs="*", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--name", default="evaluate", help="results/NAME.json")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    path = args.data or f"/tmp/corrseg3d_eval_bench_{'x'.join(map(str, shape))}.zarr"
    if args.worker:
        print(json.dumps(worker(args.worker, path)))
        return
    if not os.path.exists(f"{path}/segmentation"):
        start = time.perf_counter()
        make_data(path, shape, tuple(int(v) for v in args.chunks.split(",")))
        print(f"generated {path} in {time.perf_counter() - start:.1f} s")
    runs = []
    for _ in range(args.repeats):
        for impl in args.impl:
            out = subprocess.run([sys.executable, __file__, "--shape", args.shape, "--data", path, "--worker", impl],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
    best = {impl: min((r for r in runs if r["impl"] == impl), key=lambda r: r["seconds"]) for impl in args.impl}
    peers = [best[i]["seconds"] for i in best if not i.startswith("ours")]
    fastest_peer = min(peers) if peers else float("nan")
    print(f"shape {shape}, uint64, {os.cpu_count()} CPUs (shared machine: timings are indicative)")
    print(f"{'impl':<21} {'s':>7} {'x fastest peer':>14} {'extra GiB':>9} {'total GiB':>9} "
          f"{'voi_split':>10} {'voi_merge':>10} {'arand':>10}")
    for impl, r in best.items():
        print(f"{impl:<21} {r['seconds']:>7.2f} {r['seconds'] / fastest_peer:>14.2f} {r['extra_gib']:>9.2f} "
              f"{r['peak_gib']:>9.2f} {r['voi_split']:>10.6f} {r['voi_merge']:>10.6f} {r['arand']:>10.7f}")
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump({"shape": shape, "data": path, "cpus": os.cpu_count(), "runs": runs, "best": best,
                   "fastest_peer_seconds": fastest_peer}, f, indent=2)


if __name__ == "__main__":
    main()
