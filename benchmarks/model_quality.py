"""Segmentation quality of a checkpoint on held-out data, through the real pipeline.

Usage::

    python benchmarks/model_quality.py [--checkpoint PATH] [--shape 32,256,256] [--seed 1000] [--min-size 300]
                                       [--method mws|waterz|multicut] [--threshold 0.5] [--beta 0.4]
                                       [--supervoxels 0.55,1,1,25] [--tta [--tta-axes yx]]
                                       [--fib ../shared/data/fib25] [--isbi ../shared/data/isbi2012]
                                       [--isbi-slices 16-19] [--precision auto|fp32|bf16] [--training-fit]
                                       [--name NAME]

Everything runs on the CPU; ``--precision auto`` is bf16 autocast on a CPU with native bf16
(AVX512-BF16 or AMX) and fp32 elsewhere, so each record states its ``cpu`` and ``precision``.

1. **Held-out synthetic volume** (a seed never used for training): ``pipeline.predict`` ->
   ``pipeline.segment`` (its defaults: multicut of the region graph, size merging; or ``--method``) ->
   ``pipeline.evaluate`` (GT 0 ignored, VOI in bits), plus, per offset, the ROC AUC of the stored
   affinities as a same-object/different-object classifier (:mod:`corrseg3d.separability`): it
   shows which offsets the merge or split errors come from.
2. **Held-out real FIB-SEM with dense 3D labels**, every third slice (30x10x10 nm, the
   serial-section geometry of the shipped weights; ``pipeline.data fib25 --z-step 3``), through the
   same predict -> segment -> evaluate chain: :data:`FIB_HELDOUT` names the volumes and slices
   (medulla slices 30-49 are never trained on by ``configs/em-mixed.yaml``, which validates on
   gala-test; gala-train and gala-example are never seen). The same held-out medulla tissue is
   also scored at its isotropic 10x10x10 nm (:data:`FIB_ISOTROPIC_HELDOUT`, source slices 90-149):
   a model trained at 30x10x10 nm only sees it resampled by ``pipeline.predict``. With
   ``--training-fit`` the medulla training slices (:data:`FIB_TRAINING`) are scored the same way
   (record key ``fib25_training``): a checkpoint that scores poorly there too underfits.
3. **Held-out real EM** (ISBI 2012 slices not used for training, 2D labels): affinities of the
   20-slice stack, then mutex watershed per slice (in-plane only, as the labels are 2D), scored per
   slice against the connected components of the membrane-free label.

``--method`` (and ``--threshold``, ``--beta``, ``--supervoxels``) segment the synthetic and FIB volumes
with other ``pipeline.segment`` settings than the defaults (``--beta 0.5 --supervoxels 0.25,2,2,100``:
the reference's multicut, the defaults until the supervoxels were chosen on data); ISBI stays
per-slice mutex watershed.

Appends a record to ``benchmarks/results/model_quality.json`` (keyed by ``--name``) and prints it.

``--segment-sweep`` instead chooses ``pipeline.segment``'s defaults on the *validation* volumes of
``configs/em-mixed.yaml`` (FIB gala-test at 30x10x10 nm and the synthetic seed-0 slices 48-63) and
the medulla training slices (:data:`FIB_TRAINING`), never the held-out test volumes: the checkpoint
predicts each volume once, then every combination of :data:`SWEEP_MIN_SIZES` and
:data:`SWEEP_STRIDES` is segmented by mutex watershed and scored, and so are waterz at each
:data:`SWEEP_WATERZ_THRESHOLDS` and min size, and multicut (:func:`sweep_options`: supervoxel
settings, boundary bias and min size). The rows and their means over the volumes
(:func:`sweep_summary`, lowest mean VOI first: the defaults) go to
``benchmarks/results/segment_defaults.json``, and the best settings are printed as a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from corrseg3d.checkpoint import load_model
from corrseg3d.config import PREDICT_HALO
from corrseg3d.inference import cpu_model_name, predict_volume, resolve_precision
from corrseg3d.separability import affinity_separability
from corrseg3d.validation import segment as segment_slices
from corrseg3d.weights import default_checkpoint
from emcore.conventions import DEFAULT_STRIDES, raw_to_float
from emcore.metrics import segmentation_scores
from emcore.regiongraph import DEFAULT_MIN_SIZE
from emcore.store import create_volume, open_volume
from emcore.supervoxels import REFERENCE_SETTINGS, SupervoxelSettings
from pipeline.evaluate import EvaluateOptions, evaluate
from pipeline.fib25 import write_fib25
from pipeline.fragments import METHODS
from pipeline.imagestack import write_isbi2012
from pipeline.predict import PredictOptions, predict
from pipeline.segment import SegmentOptions, segment, supervoxel_options
from pipeline.synth import DEFAULT_VOXEL_SIZE, generate, write_synthetic

RESULTS = Path(__file__).parent / "results" / "model_quality.json"
SWEEP_RESULTS = Path(__file__).parent / "results" / "segment_defaults.json"
SWEEP_MIN_SIZES = (0, 100, 300, 1000)
SWEEP_STRIDES = ((1, 2, 2), (1, 4, 4), (1, 8, 8))
SWEEP_WATERZ_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
SWEEP_MULTICUT_BETAS = (0.3, 0.4, 0.5, 0.6)
#: Per-slice supervoxel settings (threshold, seed sigma, weight sigma, min size) the multicut rows
#: combine with :data:`SWEEP_SUPERVOXEL_BETAS` at min size 300; the chosen setting also runs at every
#: :data:`SWEEP_MULTICUT_BETAS` and :data:`SWEEP_MIN_SIZES`.
SWEEP_SUPERVOXELS = tuple(itertools.product((0.25, 0.4, 0.55), (1.0, 2.0), (1.0, 2.0), (25, 100)))
SWEEP_SUPERVOXEL_BETAS = (0.4, 0.5)
KEYS = ("voi_split", "voi_merge", "voi", "arand")
#: Held-out FIB volumes at 30x10x10 nm: name -> [start, stop) slices of the z-step-3 store.
FIB_HELDOUT = {"medulla-ts2-z0-150": (30, 50), "gala-test": (0, None), "gala-train": (0, None),
               "gala-example": (0, None)}
#: FIB training slices at 30x10x10 nm (``configs/em-mixed.yaml``'s medulla slices 0-27, section series 0):
#: ``--training-fit`` scores them to tell underfitting (poor here too) from poor generalisation.
FIB_TRAINING = {"medulla-ts2-z0-150": (0, 28)}
#: Held-out FIB volume at 10x10x10 nm: name and [start, stop) source slices (the tissue of medulla 30-49 above).
FIB_ISOTROPIC_HELDOUT = ("medulla-ts2-z0-150", (90, 150))


def write_store(store: str, raw: np.ndarray, labels: np.ndarray, voxel_size: tuple[float, ...]) -> str:
    """``store/raw`` and ``store/labels`` from arrays (one chunk each: these volumes are small)."""
    for dataset, data in (("raw", raw), ("labels", labels)):
        create_volume(f"{store}/{dataset}", data.shape, data.dtype, chunks=data.shape, voxel_size=voxel_size)[:] = data
    return store


def segment_scores(store: str, options: SegmentOptions) -> dict:
    """Segment ``store/affinities`` with ``options`` (replacing an earlier result) and score it."""
    segment(store, options, overwrite=True, progress=False)
    report = evaluate(f"{store}/segmentation", f"{store}/labels", EvaluateOptions(top_k=0))
    return {k: report["scores"][k] for k in KEYS}


def score_store(store: str, predict_options: PredictOptions, segment_options: SegmentOptions) -> dict:
    """predict -> segment -> evaluate ``store`` (``raw`` and ``labels``); scores and per-offset AUC."""
    predict(store, options=predict_options, progress=False)
    scores = segment_scores(store, segment_options)
    affinities = open_volume(f"{store}/affinities")
    per_offset = affinity_separability(affinities[:], open_volume(f"{store}/labels")[:],
                                       affinities.attrs["offsets"])
    return {**scores, "per_offset": per_offset}


def heldout_synthetic(predict_options: PredictOptions, shape: tuple[int, ...], seed: int,
                      segment_options: SegmentOptions, work: Path) -> dict:
    store = str(work / "heldout.zarr")
    write_synthetic(store, shape, seed=seed)
    return score_store(store, predict_options, segment_options)


def fib_stores(source: str, work: Path, volumes: dict[str, tuple[int, int | None]], *, z_step: int = 3) -> dict[str, str]:
    """One store per FIB volume of ``volumes`` (name -> [start, stop) slices after keeping every
    ``z_step``-th slice) holding that slice range's ``raw`` and ``labels``; name -> store."""
    stack = str(work / f"fib25-z{z_step}.zarr")
    write_fib25(source, stack, z_step=z_step, names=list(volumes))
    stores = {}
    for name, slices in volumes.items():
        raw, labels = (open_volume(f"{stack}/{name}/{dataset}") for dataset in ("raw", "labels"))
        stores[name] = write_store(str(work / f"{name}-z{z_step}.zarr"), raw[slice(*slices)], labels[slice(*slices)],
                                   raw.voxel_size)
    return stores


def heldout_fib(predict_options: PredictOptions, source: str, segment_options: SegmentOptions, work: Path, *,
                z_step: int = 3, volumes: dict[str, tuple[int, int | None]] = FIB_HELDOUT) -> dict:
    """Score FIB ``volumes`` (name -> [start, stop) slices after keeping every ``z_step``-th slice)."""
    scores = {}
    for name, store in fib_stores(source, work, volumes, z_step=z_step).items():
        shape = open_volume(f"{store}/raw").shape
        scores[name] = {"slices": list(volumes[name]), "shape": list(shape),
                        **score_store(store, predict_options, segment_options)}
    return scores


def heldout_fib_isotropic(predict_options: PredictOptions, source: str, segment_options: SegmentOptions,
                          work: Path) -> dict:
    """Score :data:`FIB_ISOTROPIC_HELDOUT` at the source's own 10x10x10 nm."""
    name, slices = FIB_ISOTROPIC_HELDOUT
    return heldout_fib(predict_options, source, segment_options, work, z_step=1, volumes={name: slices})


def _settings_text(settings: SupervoxelSettings) -> str:
    """``settings`` as ``--supervoxels`` takes them: ``T,SEED,WEIGHT,SIZE``."""
    return ",".join(f"{v:g}" for v in dataclasses.astuple(settings))


def parse_supervoxels(text: str) -> SupervoxelSettings:
    """``--supervoxels T,SEED,WEIGHT,SIZE`` (threshold, seed sigma, weight sigma, min size)."""
    parts = text.split(",")
    try:
        settings = SupervoxelSettings(float(parts[0]), float(parts[1]), float(parts[2]), int(parts[3]))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r}: give threshold,seed sigma,weight sigma,min size, "
                                         f"e.g. {_settings_text(REFERENCE_SETTINGS)}") from None
    if len(parts) != 4 or settings.problems():
        raise argparse.ArgumentTypeError(f"{text!r}: four settings in range, e.g. {_settings_text(REFERENCE_SETTINGS)} "
                                         f"({'; '.join(f'{n} {r}' for n, r in settings.problems())})")
    return settings


def sweep_options() -> list[SegmentOptions]:
    """The post-processing the sweep compares (all with ``pipeline.segment``'s default block): mutex
    watershed at every (:data:`SWEEP_MIN_SIZES`, :data:`SWEEP_STRIDES`), waterz at every
    :data:`SWEEP_WATERZ_THRESHOLDS` and min size, multicut on every :data:`SWEEP_SUPERVOXELS` at
    each :data:`SWEEP_SUPERVOXEL_BETAS` (min size 300), and multicut on the default supervoxels at
    every :data:`SWEEP_MULTICUT_BETAS` and min size."""
    mws = [SegmentOptions(method="mws", min_size=m, strides=s) for m in SWEEP_MIN_SIZES for s in SWEEP_STRIDES]
    waterz = [SegmentOptions(method="waterz", threshold=t, min_size=m) for t in SWEEP_WATERZ_THRESHOLDS
              for m in SWEEP_MIN_SIZES]
    supervoxels = [SegmentOptions(method="multicut", beta=b, min_size=300,
                                  **supervoxel_options(SupervoxelSettings(*settings)))
                   for settings in SWEEP_SUPERVOXELS for b in SWEEP_SUPERVOXEL_BETAS]
    multicut = [SegmentOptions(method="multicut", beta=b, min_size=m) for b in SWEEP_MULTICUT_BETAS
                for m in SWEEP_MIN_SIZES]
    unique = {dataclasses.astuple(o): o for o in mws + waterz + supervoxels + multicut}
    return list(unique.values())


def segment_sweep(checkpoint: str, fib_source: str, work: Path) -> dict:
    """Scores of every :func:`sweep_options` on the validation volumes and the medulla training slices
    (see module docstring)."""
    training = work / "training"
    training.mkdir()
    stores = {**fib_stores(fib_source, work, {"gala-test": (0, None)}),
              "medulla-ts2-z0-150-training": fib_stores(fib_source, training, FIB_TRAINING)["medulla-ts2-z0-150"],
              "synthetic-seed0-z48-64": write_store(str(work / "valid-synthetic.zarr"),
                                                    *generate((64, 512, 512), seed=0, roi=(slice(48, 64), slice(None), slice(None))),
                                                    DEFAULT_VOXEL_SIZE)}
    rows = []
    for name, store in stores.items():
        predict(store, options=PredictOptions(checkpoint=checkpoint), progress=False)
        for options in sweep_options():
            rows.append({"volume": name, "method": options.method, "min_size": options.min_size,
                         "strides": list(options.strides), "threshold": options.threshold, "beta": options.beta,
                         "supervoxels": dataclasses.asdict(options.supervoxels),
                         **segment_scores(store, options)})
            print(json.dumps(rows[-1]))
    return {"checkpoint": checkpoint, "rows": rows}


def sweep_summary(rows: list[dict]) -> list[dict]:
    """One entry per post-processing setting of :func:`segment_sweep`'s ``rows``: its options and the mean
    VOI (split / merge) and ARAND over the volumes, lowest mean VOI first."""
    settings: dict[str, list[dict]] = {}
    for row in rows:
        key = json.dumps({k: v for k, v in row.items() if k not in KEYS and k != "volume"}, sort_keys=True)
        settings.setdefault(key, []).append(row)
    summary = [{**json.loads(key), **{k: float(np.mean([r[k] for r in group])) for k in KEYS}}
               for key, group in settings.items()]
    return sorted(summary, key=lambda entry: entry["voi"])


def print_sweep_summary(summary: list[dict], top: int = 10) -> None:
    """The ``top`` settings of :func:`sweep_summary` and the best of each method, as a table ("-": an
    option the method does not use)."""
    best = {}
    for entry in summary:
        best.setdefault(entry["method"], entry)
    print(f"{'method':9} {'min size':>8} {'strides':>8} {'thresh.':>7} {'beta':>5} "
          f"{'supervoxels (thr, seed, weight, size)':>38} {'VOI':>6} {'split':>6} {'merge':>6} {'ARAND':>6}")
    for entry in summary[:top] + [e for e in best.values() if e not in summary[:top]]:
        method, sv = entry["method"], entry["supervoxels"]
        strides = "x".join(map(str, entry["strides"])) if method == "mws" else "-"
        threshold = f"{entry['threshold']:.2f}" if method == "waterz" else "-"
        beta = f"{entry['beta']:.2f}" if method == "multicut" else "-"
        supervoxels = (f"{sv['threshold']:.2f}, {sv['seed_sigma']:g}, {sv['weight_sigma']:g}, {sv['min_size']}"
                       if method == "multicut" else "-")
        print(f"{method:9} {entry['min_size']:8d} {strides:>8} {threshold:>7} {beta:>5} {supervoxels:>38} "
              f"{entry['voi']:6.3f} {entry['voi_split']:6.3f} {entry['voi_merge']:6.3f} {entry['arand']:6.3f}")


def heldout_isbi(checkpoint: str, source: str, slices: tuple[int, int], work: Path, precision: str = "auto") -> dict:
    store = str(work / "isbi.zarr")
    write_isbi2012(source, store)
    model, offsets, _ = load_model(checkpoint)
    device = torch.device("cpu")
    image = raw_to_float(open_volume(store + "/raw")[:])
    affinities = predict_volume(model, image, offsets, block=image.shape, halo=PREDICT_HALO, device=device,
                                autocast_dtype=resolve_precision(precision, device), channels_last=True)
    labels = open_volume(store + "/labels")[:]
    start, stop = slices
    seg = segment_slices(affinities[:, start:stop + 1], offsets, strides=DEFAULT_STRIDES, per_slice=True)
    per_slice = {}
    for z in range(start, stop + 1):
        scores = segmentation_scores(seg[z - start], labels[z])
        per_slice[z] = {k: scores[k] for k in KEYS}
    mean = {k: float(np.mean([s[k] for s in per_slice.values()])) for k in KEYS}
    return {"per_slice": per_slice, "mean": mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped weights")
    parser.add_argument("--name", default="shipped")
    parser.add_argument("--shape", default="32,256,256")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE, help="pipeline.segment's (default %(default)s)")
    parser.add_argument("--method", default=SegmentOptions().method, choices=METHODS,
                        help="pipeline.segment's method for the 3D volumes (default %(default)s; ISBI stays per-slice MWS)")
    parser.add_argument("--threshold", type=float, default=SegmentOptions().threshold,
                        help="pipeline.segment's --threshold (waterz; default %(default)s)")
    parser.add_argument("--beta", type=float, default=SegmentOptions().beta,
                        help="pipeline.segment's --beta (multicut; default %(default)s)")
    parser.add_argument("--supervoxels", type=parse_supervoxels, default=SupervoxelSettings(),
                        metavar="T,SEED,WEIGHT,SIZE",
                        help="pipeline.segment's --sv-threshold, --sv-seed-sigma, --sv-weight-sigma, --sv-min-size "
                             f"(multicut; default {_settings_text(SupervoxelSettings())}; the reference's: "
                             f"{_settings_text(REFERENCE_SETTINGS)})")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--fib", default=str(shared / "fib25"))
    parser.add_argument("--isbi", default=str(shared / "isbi2012"))
    parser.add_argument("--isbi-slices", default="16-19")
    parser.add_argument("--tta", action="store_true",
                        help="pipeline.predict --tta for the synthetic and FIB volumes (8x slower; ISBI without)")
    parser.add_argument("--tta-axes", default="zyx", choices=("zyx", "yx"),
                        help="pipeline.predict --tta-axes (yx: the 4 in-plane flips; default %(default)s)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="pipeline.predict's --precision on the CPU (default auto: bf16 autocast on CPUs with "
                             "native bf16, else fp32); the record states the one used")
    parser.add_argument("--training-fit", action="store_true",
                        help="also score the FIB training slices (FIB_TRAINING) like the held-out volumes")
    parser.add_argument("--segment-sweep", action="store_true",
                        help="choose segment defaults on the validation volumes and the medulla training "
                             "slices instead (segment_defaults.json)")
    args = parser.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()
    if args.segment_sweep:
        sweep = segment_sweep(checkpoint, args.fib, Path(tempfile.mkdtemp(prefix="bench-sweep-")))
        sweep["summary"] = sweep_summary(sweep["rows"])
        SWEEP_RESULTS.write_text(json.dumps(sweep, indent=2))
        print_sweep_summary(sweep["summary"])
        return
    shape = tuple(int(v) for v in args.shape.split(","))
    first, last = (int(v) for v in args.isbi_slices.split("-"))
    work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    options = SegmentOptions(method=args.method, threshold=args.threshold, min_size=args.min_size, beta=args.beta,
                             **supervoxel_options(args.supervoxels))
    predict_options = PredictOptions(checkpoint=checkpoint, tta=args.tta, tta_axes=args.tta_axes,
                                     precision=args.precision, device="cpu")
    record = {"checkpoint": checkpoint, "tta": args.tta, **({"tta_axes": args.tta_axes} if args.tta else {}),
              "cpu": cpu_model_name(),
              "precision": str(resolve_precision(args.precision, torch.device("cpu")) or "fp32"),
              "segment": {"method": options.method, "min_size": options.min_size, "strides": list(options.strides),
                          "threshold": options.threshold if options.method == "waterz" else None,
                          "beta": options.beta if options.method == "multicut" else None,
                          "supervoxels": (dataclasses.asdict(options.supervoxels) if options.method == "multicut"
                                          else None)},
              "synthetic": {"shape": shape, "seed": args.seed, "min_size": args.min_size,
                            **heldout_synthetic(predict_options, shape, args.seed, options, work)}}
    if Path(args.fib).is_dir():
        record["fib25"] = heldout_fib(predict_options, args.fib, options, work)
        record["fib25_10nm"] = heldout_fib_isotropic(predict_options, args.fib, options, work)
        if args.training_fit:
            training = work / "training"
            training.mkdir()
            record["fib25_training"] = heldout_fib(predict_options, args.fib, options, training, volumes=FIB_TRAINING)
    if Path(args.isbi).is_dir():
        record["isbi2012"] = {"slices": [first, last], **heldout_isbi(checkpoint, args.isbi, (first, last), work,
                                                                            args.precision)}
    print(json.dumps(record, indent=2))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.name] = record
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
