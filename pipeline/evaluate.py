"""Score a segmentation against ground truth, out of core: ``python -m pipeline.evaluate SEG GT``.

Both volumes are read blockwise (Dask over the storage chunks); each block yields a sparse
contingency table and per-id bounding boxes, summed exactly across blocks
(:mod:`emcore.contingency`), and the scores follow from the summed table
(:mod:`emcore.metrics`): VOI split/merge (bits), adapted Rand error and its split/merge
parts, CREMI score, plus the GT objects split most and the segments that merge most.

Conventions (the PEA reference's): voxels with GT label 0 are ignored, segment 0 is an ordinary
label, probabilities are normalised over evaluated voxels, log base 2. A volume with no
evaluated voxel is an error, not NaN.

Examples
--------
::

    python -m pipeline.evaluate out.zarr/segmentation data.zarr/labels --json scores.json
    python -m pipeline.evaluate out.zarr data.zarr --roi 0:50,:,: --mask data.zarr/mask
    python -m pipeline.evaluate seg.zarr gt.zarr --ignore-gt none --scheduler tcp://host:8786
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from corrseg3d.cli import ArgumentParser, entry_point
from emcore.blocks import SCHEDULERS, write_json_atomic
from emcore.contingency import BlockCounts, EvaluationError, count_volumes
from emcore.metrics import SCORE_KEYS, merge_contributions, scores_from_table, split_contributions
from emcore.store import open_volume

from .data import parse_numbers
from .options import add_options, deprecated_flag, option, options_from_args
from .runstate import require_finished

__all__ = ["EvaluateOptions", "check_evaluate_options", "evaluate", "evaluate_counts", "format_report",
           "parse_labels", "parse_roi", "main"]


def parse_labels(text: str) -> tuple[int, ...]:
    """``"0"`` -> (0,), ``"0,7"`` -> (0, 7), ``"none"`` or ``""`` -> ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        labels = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise EvaluationError(f"cannot read labels {text!r}: give comma-separated integers "
                              f"(e.g. 0,5) or none") from None
    if min(labels) < 0:
        raise EvaluationError(f"ignore labels {text!r} must be >= 0")
    return labels


def parse_roi(text: str, shape: Sequence[int]) -> tuple[slice, ...]:
    """``"z0:z1,y0:y1,x0:x1"`` (bounds may be omitted, ``":"`` = whole axis) -> slices inside ``shape``."""
    parts = text.split(",")
    if len(parts) != len(shape):
        raise EvaluationError(f"ROI {text!r} needs {len(shape)} comma-separated ranges like 0:10,0:64,0:64")
    roi = []
    for part, size in zip(parts, shape):
        bounds = part.split(":")
        try:
            start, stop = (int(b) if b.strip() else default for b, default in zip(bounds, (0, size)))
        except ValueError:
            raise EvaluationError(f"cannot read ROI range {part!r}: use START:STOP with integers") from None
        if len(bounds) != 2 or not 0 <= start < stop <= size:
            raise EvaluationError(f"ROI range {part!r} must be START:STOP with 0 <= START < STOP <= {size}")
        roi.append(slice(start, stop))
    return tuple(roi)


#: Overlapping ids listed per worst offender (``partners``), largest overlap first.
MAX_PARTNERS = 20


def _partner_ids(own: np.ndarray, other: np.ndarray, counts: np.ndarray, object_id: int) -> list[int]:
    rows = np.flatnonzero(own == object_id)
    rows = rows[np.argsort(-counts[rows], kind="stable")][:MAX_PARTNERS]
    return [int(v) for v in other[rows]]


def _offenders(ids: np.ndarray, sizes: np.ndarray, terms: np.ndarray, partners: np.ndarray,
               boxes: Any, top_k: int, term: str, pairs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[dict[str, Any]]:
    if top_k == 0:
        return []
    order = np.lexsort((ids, -terms))[:top_k]
    order = order[terms[order] > 0]
    lo, hi = boxes.lookup(ids[order])
    return [{"id": int(ids[k]), "size": int(sizes[k]), term: float(terms[k]), "overlaps": int(partners[k]),
             "partners": _partner_ids(*pairs, ids[k]),
             "bbox_lo": [int(v) for v in lo[r]], "bbox_hi": [int(v) for v in hi[r]]}
            for r, k in enumerate(order)]


def show_labels(labels: Sequence[int]) -> str:
    """The inverse of :func:`parse_labels`: ``(0, 7)`` -> ``"0,7"``, ``()`` -> ``"none"``."""
    return ",".join(str(v) for v in labels) or "none"


@dataclass(frozen=True)
class EvaluateOptions:
    """Which voxels are scored and how many worst offenders are listed.

    One declaration for the Python API, the ``evaluate`` section of a run YAML (same keys, plus
    ``gt``) and the command line (``--NAME``; :mod:`pipeline.options`).
    """

    gt_dataset: str = option("labels", "dataset when GT names a store")
    ignore_gt: tuple[int, ...] = option((0,), "GT labels not evaluated, comma-separated, or none", metavar="LABELS",
                                        parse=parse_labels, show=show_labels)
    ignore_seg: tuple[int, ...] = option((), "segment labels not evaluated, comma-separated, or none",
                                         metavar="LABELS", parse=parse_labels, show=show_labels)
    mask: str | None = option(None, "volume whose nonzero voxels are evaluated", metavar="LOCATION")
    mask_dataset: str = option("mask", "dataset when --mask names a store")
    roi: str | None = option(None, "evaluate only this box (voxels)", metavar="z0:z1,y0:y1,x0:x1")
    top_k: int = option(10, "worst offenders listed")


def check_evaluate_options(options: EvaluateOptions) -> None:
    """Refuse options no volume can satisfy (``top_k`` < 0, negative ignore labels) before any reading.

    Raises
    ------
    EvaluationError
        The message names the option (command line and run YAML key) and its bound.
    """
    if options.top_k < 0:
        raise EvaluationError(f"--top-k (evaluate.top_k) must be >= 0, got {options.top_k}")
    if any(label < 0 for label in [*options.ignore_gt, *options.ignore_seg]):
        raise EvaluationError("--ignore-gt and --ignore-seg (evaluate.ignore_gt, evaluate.ignore_seg) must be labels "
                              ">= 0")


def evaluate_counts(counts: BlockCounts, *, top_k: int = 10) -> dict[str, Any]:
    """Scores and worst offenders from summed block counts (with bounding boxes unless ``top_k == 0``).

    ``worst_splits`` are GT objects ranked by their VOI-split contribution
    (:func:`emcore.metrics.split_contributions`), ``worst_merges`` segments ranked by their
    VOI-merge contribution (only those with a positive contribution); each entry has the id,
    evaluated size, contribution, number of overlapping ids on the other side, the first
    :data:`MAX_PARTNERS` of those ids by overlap (``partners``) and the bounding box (``bbox_hi``
    exclusive).
    """
    table = counts.table
    scores = scores_from_table(table)
    gt_ids, gt_sizes, split_terms = split_contributions(table)
    seg_ids, seg_sizes, merge_terms = merge_contributions(table)
    gt_partners = np.unique(table.gt, return_counts=True)[1]
    seg_partners = np.unique(table.seg, return_counts=True)[1]
    return {
        "scores": scores,
        "n_voxels": table.n_voxels,
        "n_gt_objects": int(gt_ids.size),
        "n_segments": int(seg_ids.size),
        "worst_splits": _offenders(gt_ids, gt_sizes, split_terms, gt_partners, counts.gt_boxes, top_k, "voi_split",
                                   (table.gt, table.seg, table.counts)),
        "worst_merges": _offenders(seg_ids, seg_sizes, merge_terms, seg_partners, counts.seg_boxes, top_k, "voi_merge",
                                   (table.seg, table.gt, table.counts)),
    }


def evaluate(
    seg: str,
    gt: str,
    options: EvaluateOptions = EvaluateOptions(),
    *,
    seg_dataset: str = "segmentation",
    block: Sequence[int] | None = None,
    scheduler: str = "threads",
    allow_incomplete: bool = False,
) -> dict[str, Any]:
    """Evaluate the segmentation at location ``seg`` against the GT at location ``gt``.

    Parameters
    ----------
    seg, gt
        Locations (``a.zarr/segmentation``, ``precomputed://...``, or a store root plus
        ``seg_dataset``/``options.gt_dataset``). Note the order: segmentation first.
    options
        ``ignore_gt``, ``ignore_seg``: labels whose voxels are not evaluated (default GT 0 only);
        ``mask``, ``mask_dataset``: optional location of a boolean/integer volume, voxels where it
        is 0 are not evaluated; ``roi``: ``"z0:z1,y0:y1,x0:x1"`` restricting the evaluation
        (bounding boxes stay in full-volume voxel coordinates); ``top_k``: number of worst split
        GT objects and worst merging segments to report.
    block
        Block grid (default: aligned to the storage chunks of both volumes,
        :func:`emcore.contingency.default_block_shape`).
    scheduler
        ``threads``, ``processes``, ``synchronous`` or ``tcp://HOST:PORT``.
    allow_incomplete
        Score a segmentation whose ``pipeline.segment`` run has not finished (experts); by
        default it is refused (:func:`pipeline.runstate.require_finished`).

    Returns
    -------
    dict
        JSON-serialisable report: inputs, conventions, ``scores`` (keys
        :data:`emcore.metrics.SCORE_KEYS`), voxel and object counts, ``worst_splits``,
        ``worst_merges``, ``seconds``.

    Raises
    ------
    ValueError
        :class:`emcore.store.StoreError` (missing or non-zarr input) or
        :class:`emcore.contingency.EvaluationError` (shape mismatch, float or negative
        labels, bad ROI, nothing to evaluate), :class:`pipeline.runstate.RunStateError`
        (an unfinished segmentation).
    """
    start = time.perf_counter()
    check_evaluate_options(options)
    ignore_gt, ignore_seg, roi, top_k = options.ignore_gt, options.ignore_seg, options.roi, options.top_k
    seg_volume = open_volume(seg, seg_dataset)
    gt_volume = open_volume(gt, options.gt_dataset)
    mask_volume = open_volume(options.mask, options.mask_dataset) if options.mask is not None else None
    for volume in (seg_volume, gt_volume, mask_volume):
        if volume is not None:
            require_finished(volume.location, allow_incomplete=allow_incomplete)
    if seg_volume.shape != gt_volume.shape:
        raise EvaluationError(f"shape mismatch: segmentation {seg_volume.location} is {seg_volume.shape}, "
                              f"GT {gt_volume.location} is {gt_volume.shape}; evaluate volumes of the same extent")
    region = parse_roi(roi, gt_volume.shape) if roi else tuple(slice(0, n) for n in gt_volume.shape)
    counts = count_volumes(seg_volume, gt_volume, ignore_gt=ignore_gt, ignore_seg=ignore_seg,
                           mask=mask_volume, roi=region, block_shape=block, scheduler=scheduler,
                           with_boxes=top_k > 0)
    report = {
        "segmentation": seg_volume.location,
        "ground_truth": gt_volume.location,
        "mask": mask_volume.location if mask_volume is not None else None,
        "roi": ",".join(f"{r.start}:{r.stop}" for r in region),
        "conventions": {"log_base": 2, "ignore_gt": list(ignore_gt), "ignore_seg": list(ignore_seg),
                        "normalisation": "over evaluated voxels", "bbox": "voxels (z, y, x), hi exclusive"},
        **evaluate_counts(counts, top_k=top_k),
    }
    report["seconds"] = time.perf_counter() - start
    return report


def _offender_lines(title: str, rows: list[dict[str, Any]], term: str) -> list[str]:
    lines = [title, f"  {'id':>20} {'size':>12} {term:>10} {'overlaps':>8}  bbox (z, y, x) [lo, hi)"]
    lines += [f"  {r['id']:>20} {r['size']:>12} {r[term]:>10.5f} {r['overlaps']:>8}  "
              f"{tuple(r['bbox_lo'])} - {tuple(r['bbox_hi'])}" for r in rows]
    return lines


def format_report(report: dict[str, Any]) -> str:
    """Human-readable table of a report from :func:`evaluate`."""
    conv = report["conventions"]
    lines = [
        f"segmentation  {report['segmentation']}",
        f"ground truth  {report['ground_truth']}",
        f"evaluated     {report['n_voxels']} voxels in ROI {report['roi']}"
        + (f", mask {report['mask']}" if report["mask"] else "")
        + f"; ignore GT {conv['ignore_gt']}, ignore seg {conv['ignore_seg']}; log2",
        f"objects       {report['n_gt_objects']} GT, {report['n_segments']} segments",
        "",
        f"{'metric':<12} {'value':>10}",
    ]
    lines += [f"{key:<12} {report['scores'][key]:>10.6f}" for key in SCORE_KEYS]
    if report["worst_splits"]:
        lines += [""] + _offender_lines("worst splits (GT objects by VOI-split contribution)",
                                        report["worst_splits"], "voi_split")
    if report["worst_merges"]:
        lines += [""] + _offender_lines("worst merges (segments by VOI-merge contribution)",
                                        report["worst_merges"], "voi_merge")
    lines += ["", f"took {report['seconds']:.2f} s"]
    return "\n".join(lines)


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("seg", metavar="SEG", help="segmentation location (a.zarr/segmentation or a.zarr)")
    p.add_argument("gt", metavar="GT", help="ground-truth location (a.zarr/labels or a.zarr)")
    p.add_argument("--seg-dataset", default="segmentation",
                   help="dataset when SEG names a store (default: %(default)s)")
    add_options(p, EvaluateOptions)
    p.add_argument("--block", type=parse_numbers(int, 3, "32,512,512"), metavar="Z,Y,X",
                   help="block grid (default: the storage chunks)")
    deprecated_flag(p, "--block-shape", "--block", type=parse_numbers(int, 3, "32,512,512"))
    p.add_argument("--scheduler", default="threads",
                   help=f"{', '.join(SCHEDULERS)} or tcp://HOST:PORT (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="experts: score a segmentation whose pipeline.segment run has not finished")
    p.add_argument("--view", action="store_true",
                   help="then serve a local Neuroglancer with one link per worst split and merge (Ctrl-C stops)")
    p.add_argument("--port", type=int, default=0, help="viewer port with --view (default 0: a free port)")
    p.add_argument("--bind", default="127.0.0.1", help="viewer address with --view (default: %(default)s)")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 with a one-line ``error:`` on bad input)."""
    args = _parser().parse_args(argv)
    if args.json and (os.path.isdir(args.json) or args.json.endswith(os.sep)):
        raise EvaluationError(f"--json {args.json} is a folder: name the file to write, e.g. {os.path.join(args.json, 'scores.json')}")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise EvaluationError(f"cannot write --json {args.json}: its folder does not exist")
    if args.view:
        from .view import start_server

        start_server(args.bind, args.port)
    report = evaluate(args.seg, args.gt, options_from_args(EvaluateOptions, args), seg_dataset=args.seg_dataset,
                      block=args.block, scheduler=args.scheduler, allow_incomplete=args.allow_incomplete)
    print(format_report(report))
    if args.json:
        write_json_atomic(args.json, report)
    if args.view:
        from .viewoffenders import serve_offenders

        serve_offenders(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
