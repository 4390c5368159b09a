"""Benchmark: blockwise segment pipeline vs whole-volume MWS vs elf blockwise_mutex_watershed.

Contenders: ``pipeline`` (``pipeline.segment --method mws``, min_size 0), ``pipeline_min_size``
(with size merging), ``pipeline_multicut`` (``pipeline.segment``'s default method, multicut of the
region graph of per-slice supervoxels, with size merging), ``whole_mws`` (bioimage-cpp's mutex
watershed on the whole volume, float weights), ``whole_mws_uint8`` (this project's uint8 kernel,
:mod:`emcore.mws_uint8`, on the whole volume: the same partition as ``whole_mws`` on the same
quantised weights) and ``elf_blockwise``.

Same synthetic noisy affinities (pipeline.synth labels + pipeline.noisy_affinities, generated once
under /tmp, in a child process), each contender in its own subprocess so peak RSS (ru_maxrss, inputs and libraries
included) belongs to it alone. Times cover the segmentation call only (not data generation, not
scoring). Contenders whose known memory need exceeds the budget are skipped above
``--max-whole-voxels`` (whole-volume bic needs ~160 B/voxel; elf blockwise peaked at 22 GB on
100x1024x1024, docs/conventions.md §2); the uint8 kernel needs ~60-90 B/voxel and runs up to
``--max-uint8-voxels``. Each row records the 1-minute load average before
it ran; compare ratios within one run only.

    python benchmarks/segment.py --shape 64,512,512        # quick
    python benchmarks/segment.py                            # 100x1024x1024
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from emcore.conventions import PEA_OFFSETS, affinities_as_float  # noqa: E402
from emcore.metrics import segmentation_scores  # noqa: E402
from emcore.store import create_volume, open_volume  # noqa: E402

CONTENDERS = ("pipeline", "pipeline_min_size", "pipeline_multicut", "whole_mws", "whole_mws_uint8", "elf_blockwise")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "segment_{shape}{tag}.json")


def make_data(store: str, shape: tuple[int, ...], seed: int) -> None:
    """Synthetic labels + noisy affinities (run in a child process, only when the store has none)."""
    from pipeline.noisy_affinities import noisy_affinities
    from pipeline.synth import generate

    _, labels = generate(shape, seed=seed)
    create_volume(f"{store}/labels", shape, labels.dtype, chunks=(32, 256, 256))[...] = labels
    affs = noisy_affinities(labels, seed=seed)
    create_volume(f"{store}/affinities", affs.shape, np.uint8, chunks=(1, 32, 256, 256),
                  attrs={"offsets": [list(o) for o in PEA_OFFSETS]})[...] = affs


def run_child(name: str, store: str, block: tuple[int, ...], halo: tuple[int, ...] | None, min_size: int,
              workers: int) -> dict:
    from pipeline.segment import SegmentOptions, segment

    affinities = open_volume(f"{store}/affinities")
    load = os.getloadavg()[0]
    if name.startswith("pipeline"):
        options = SegmentOptions(method="multicut" if name == "pipeline_multicut" else "mws", block=block, halo=halo,
                                 min_size=0 if name == "pipeline" else min_size)
        start = time.perf_counter()
        segment(store, options, output_name=name, fragments_name=f"{name}_fragments", overwrite=True,
                num_workers=workers, progress=False)
        seconds = time.perf_counter() - start
        seg = open_volume(f"{store}/{name}")[...]
    else:
        affs = affinities[...]
        start = time.perf_counter()
        if name == "whole_mws":
            from bioimage_cpp.segmentation import mutex_watershed

            weights = affinities_as_float(affs)  # attractive: affinity; repulsive: 1 - affinity
            del affs
            np.subtract(np.float32(1), weights[3:], out=weights[3:])
            seg = mutex_watershed(weights, affinities.attrs["offsets"], 3, strides=[1, 4, 4], randomized_strides=False)
        elif name == "whole_mws_uint8":
            from emcore.mws_uint8 import mutex_watershed_uint8

            seg = mutex_watershed_uint8(affs, affinities.attrs["offsets"], (1, 4, 4))
        else:
            from elf.segmentation.mutex_watershed import blockwise_mutex_watershed

            boundaries = 1.0 - affinities_as_float(affs)  # elf: boundary convention for all channels
            del affs
            seg = blockwise_mutex_watershed(boundaries, affinities.attrs["offsets"], [1, 4, 4], list(block),
                                            n_threads=workers)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    scores = segmentation_scores(seg, open_volume(f"{store}/labels")[...])
    voxels = int(np.prod(affinities.shape[1:]))
    return {"contender": name, "load_average_1min_before": load, "shape": list(affinities.shape[1:]), "seconds": seconds,
            "mvox_per_s": voxels / seconds / 1e6, "peak_rss_gib": peak, "segments": int(len(np.unique(seg))),
            **{k: scores[k] for k in ("voi_split", "voi_merge", "voi", "arand")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="100,1024,1024")
    parser.add_argument("--block", default="32,256,256")
    parser.add_argument("--tag", default="", help="suffix of the results file (segment_SHAPE_TAG.json)")
    parser.add_argument("--halo", help="z,y,x halo of the pipeline rows (default: pipeline.segment's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-whole-voxels", type=float, default=2e7,
                        help="skip whole_mws / elf_blockwise above this many voxels (RAM)")
    parser.add_argument("--max-uint8-voxels", type=float, default=1.2e8,
                        help="skip whole_mws_uint8 above this many voxels (RAM)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    block = tuple(int(v) for v in args.block.split(","))
    halo = tuple(int(v) for v in args.halo.split(",")) if args.halo else None
    store = f"/tmp/bench_segment_{'x'.join(map(str, shape))}_s{args.seed}.zarr"
    if args.child == "data":
        make_data(store, shape, args.seed)
        return
    if args.child:
        print(json.dumps(run_child(args.child, store, block, halo, args.min_size, args.workers)))
        return
    if not os.path.exists(os.path.join(store, "affinities")):
        # generated in a child: a forked contender inherits its parent's ru_maxrss high-water mark
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", "data"], check=True)
    # numba compiles the uint8 MWS kernel on its first call after an install or an edit (~10 s) and
    # caches it on disk; compile once here so that no contender's time includes it.
    from emcore.mws_uint8 import mutex_watershed_uint8

    mutex_watershed_uint8(np.zeros((12, 4, 32, 32), np.uint8), PEA_OFFSETS, (1, 4, 4))
    rows = []
    for name in args.contenders.split(","):
        if name in ("whole_mws", "elf_blockwise") and np.prod(shape) > args.max_whole_voxels:
            print(f"skip {name}: {np.prod(shape) / 1e6:.0f} Mvoxel exceeds --max-whole-voxels (RAM)", file=sys.stderr)
            continue
        if name == "whole_mws_uint8" and np.prod(shape) > args.max_uint8_voxels:
            print(f"skip {name}: {np.prod(shape) / 1e6:.0f} Mvoxel exceeds --max-uint8-voxels (RAM)", file=sys.stderr)
            continue
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", name], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name} failed: {out.stderr[-500:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    reference = next((r for r in rows if r["contender"] in ("whole_mws", "whole_mws_uint8")), None)
    print(f"{'contender':<18} {'s':>7} {'Mvox/s':>7} {'RSS GiB':>8} {'#seg':>8} {'VOI split/merge':>16} {'VOI':>6} "
          f"{'ARAND':>6}  vs whole")
    for r in rows:
        versus = (f"dVOI {r['voi'] - reference['voi']:+.3f} dARAND {r['arand'] - reference['arand']:+.3f} "
                  f"speed x{reference['seconds'] / r['seconds']:.2f}") if reference else ""
        print(f"{r['contender']:<18} {r['seconds']:7.1f} {r['mvox_per_s']:7.2f} {r['peak_rss_gib']:8.2f} "
              f"{r['segments']:8d} {r['voi_split']:7.3f}/{r['voi_merge']:.3f} {r['voi']:6.3f} {r['arand']:6.3f}  {versus}")
    results = RESULTS.format(shape="x".join(map(str, shape)), tag=f"_{args.tag}" if args.tag else "")
    os.makedirs(os.path.dirname(results), exist_ok=True)
    with open(results, "w") as handle:
        json.dump({"shape": shape, "block": block, "halo": halo or "default", "workers": args.workers, "cpu_count": os.cpu_count(),
                   "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
