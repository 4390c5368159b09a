"""Segmentation quality of a checkpoint on held-out data, through the real pipeline.

Usage::

    python benchmarks/model_quality.py [--checkpoint PATH] [--shape 32,512,512] [--seed 1000] [--min-size 0]
                                       [--isbi ../shared/data/isbi2012] [--isbi-slices 16-19] [--name NAME]

1. **Held-out synthetic volume** (a seed never used for training): ``pipeline.predict`` ->
   ``pipeline.segment`` (blockwise mutex watershed, strides 1x4x4, optional size merging) ->
   ``pipeline.evaluate`` (GT 0 ignored, VOI in bits), plus, per offset, the ROC AUC of the stored
   affinities as a same-object/different-object classifier (:mod:`corrseg3d.separability`): it
   shows which offsets the merge or split errors come from.
2. **Held-out real EM** (ISBI 2012 slices not used for training, 2D labels): affinities of the
   20-slice stack, then mutex watershed per slice (in-plane only, as the labels are 2D), scored per
   slice against the connected components of the membrane-free label.

Appends a record to ``benchmarks/results/model_quality.json`` (keyed by ``--name``) and prints it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from corrseg3d.checkpoint import load_model
from corrseg3d.inference import predict_volume, resolve_precision
from corrseg3d.separability import affinity_separability
from corrseg3d.train import segment as segment_slices
from corrseg3d.weights import default_checkpoint
from pipeline.evaluate import evaluate
from pipeline.imagestack import write_isbi2012
from pipeline.metrics import segmentation_scores
from pipeline.predict import PredictOptions, predict
from pipeline.segment import SegmentOptions, segment
from pipeline.store import open_volume
from pipeline.synth import write_synthetic

RESULTS = Path(__file__).parent / "results" / "model_quality.json"
KEYS = ("voi_split", "voi_merge", "voi", "arand")


def heldout_synthetic(checkpoint: str, shape: tuple[int, ...], seed: int, min_size: int, work: Path) -> dict:
    store = str(work / "heldout.zarr")
    write_synthetic(store, shape, seed=seed)
    predict(store, options=PredictOptions(checkpoint=checkpoint), progress=False)
    segment(store, SegmentOptions(min_size=min_size), progress=False)
    report = evaluate(f"{store}/segmentation", f"{store}/labels", top_k=0)
    affinities = open_volume(f"{store}/affinities")
    per_offset = affinity_separability(affinities[:], open_volume(f"{store}/labels")[:],
                                       affinities.attrs["offsets"])
    return {**{k: report["scores"][k] for k in KEYS}, "per_offset": per_offset}


def heldout_isbi(checkpoint: str, source: str, slices: tuple[int, int], work: Path) -> dict:
    store = str(work / "isbi.zarr")
    write_isbi2012(source, store)
    model, offsets, _ = load_model(checkpoint)
    device = torch.device("cpu")
    image = open_volume(store + "/raw")[:].astype(np.float32) / 255
    affinities = predict_volume(model, image, offsets, block=image.shape, halo=(8, 48, 48), device=device,
                                autocast_dtype=resolve_precision("auto", device), channels_last=True)
    labels = open_volume(store + "/labels")[:]
    start, stop = slices
    seg = segment_slices(affinities[:, start:stop + 1], offsets, strides=(1, 4, 4), per_slice=True)
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
    parser.add_argument("--shape", default="32,512,512")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--min-size", type=int, default=0)
    parser.add_argument("--isbi", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"))
    parser.add_argument("--isbi-slices", default="16-19")
    args = parser.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()
    shape = tuple(int(v) for v in args.shape.split(","))
    first, last = (int(v) for v in args.isbi_slices.split("-"))
    work = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    record = {"checkpoint": checkpoint, "synthetic": {"shape": shape, "seed": args.seed, "min_size": args.min_size,
                                                     **heldout_synthetic(checkpoint, shape, args.seed, args.min_size, work)}}
    if Path(args.isbi).is_dir():
        record["isbi2012"] = {"slices": [first, last], **heldout_isbi(checkpoint, args.isbi, (first, last), work)}
    print(json.dumps(record, indent=2))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.name] = record
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
