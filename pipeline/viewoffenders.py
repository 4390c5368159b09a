"""Viewer links to the worst errors of an evaluation: ``python -m pipeline.evaluate SEG GT --view``.

For every worst split (a GT object cut into pieces) and worst merge (a segment joining GT objects)
of a report from :func:`pipeline.evaluate.evaluate`, one Neuroglancer viewer of the local server
(:mod:`pipeline.view`) opens on the error: centred on a voxel of the object, zoomed to its bounding
box, with the object and the ids it overlaps (``partners``) selected. Layers: ``raw`` (the
dataset beside the segmentation, when present), ``segmentation`` and ``ground truth``; voxel
coordinates are (z, y, x) of the full volume, bounding boxes ``[bbox_lo, bbox_hi)``.
"""

from __future__ import annotations

from typing import Any, Mapping, NoReturn, Sequence

import numpy as np

from emcore.store import PRECOMPUTED_PREFIX, StoreError, Volume, open_volume, parent_group, split_location

from .view import make_viewer, wait_until_interrupted
from .viewlayers import ViewSources, volume_layer

__all__ = ["evaluation_sources", "offender_viewers", "serve_offenders"]

#: Screen pixels the bounding box of a worst offender spans in its link's view (about).
OFFENDER_VIEW_PIXELS = 300
#: Closest zoom of an offender view (voxels per pixel): small objects are shown 4 pixels per voxel.
MIN_OFFENDER_ZOOM = 0.25
#: Side (voxels) of the section window searched for a voxel of an offender near its box centre.
OFFENDER_SEARCH = 256


def _sibling_raw(volume: Volume) -> Volume | None:
    """The ``raw`` dataset next to ``volume`` (same store or export folder), if there is one."""
    if volume.location.startswith(PRECOMPUTED_PREFIX):
        location = volume.location.rstrip("/").rsplit("/", 1)[0] + "/raw"
    else:
        if not split_location(volume.location)[1]:
            return None
        location = f"{parent_group(volume.location)}/raw"
    try:
        raw = open_volume(location)
    except StoreError:
        return None
    return raw if raw.ndim == 3 and raw.spatial_shape == volume.spatial_shape else None


def evaluation_sources(segmentation: str, ground_truth: str) -> ViewSources:
    """Layers for looking at evaluation errors: ``raw`` (beside the segmentation, if present),
    ``segmentation`` and ``ground truth``."""
    seg_volume, gt_volume = open_volume(segmentation), open_volume(ground_truth)
    raw = _sibling_raw(seg_volume)
    layers = [volume_layer("raw", raw, visible=True)] if raw is not None else []
    layers += [volume_layer("segmentation", seg_volume, kind="segmentation", visible=True),
               volume_layer("ground truth", gt_volume, kind="segmentation", visible=True)]
    return ViewSources(segmentation, tuple(layers))


def _object_voxel(volume: Volume, object_id: int, lo: Sequence[int], hi: Sequence[int]) -> list[float]:
    """Centre (z, y, x) of a voxel of ``object_id`` near the middle of its box ``[lo, hi)``.

    Reads one window of the middle section (at most :data:`OFFENDER_SEARCH` voxels square);
    without a hit there, the box centre.
    """
    middle = [(a + b - 1) // 2 for a, b in zip(lo, hi)]
    half = OFFENDER_SEARCH // 2
    y0, x0 = (max(lo[a], middle[a] - half) for a in (1, 2))
    y1, x1 = (min(hi[a], middle[a] + half) for a in (1, 2))
    section = np.asarray(volume[middle[0]:middle[0] + 1, y0:y1, x0:x1])[0]
    hits = np.argwhere(section == object_id)
    if hits.size == 0:
        return [(a + b) / 2 for a, b in zip(lo, hi)]
    nearest = hits[np.argmin(((hits - [middle[1] - y0, middle[2] - x0]) ** 2).sum(1))]
    return [middle[0] + 0.5, y0 + nearest[0] + 0.5, x0 + nearest[1] + 0.5]


def offender_viewers(report: Mapping[str, Any], sources: ViewSources, *, layout: str = "4panel") -> list[tuple[str, Any]]:
    """One viewer per worst split and worst merge of an evaluation report.

    Each is centred on a voxel of the object, zoomed to its bounding box, with the object and the
    ids it overlaps selected: a split GT object in ``ground truth`` and its pieces in
    ``segmentation``; a merging segment in ``segmentation`` and the GT objects it joins in
    ``ground truth``. The layer of the overlapping ids is drawn on top, so the pieces of a split
    (or the objects a merge joins) show in their own colours over the object.

    Returns
    -------
    (description, viewer) pairs, splits first, in report order.
    """
    rows = [("split", row, "ground truth", "segmentation") for row in report["worst_splits"]]
    rows += [("merge", row, "segmentation", "ground truth") for row in report["worst_merges"]]
    viewers = []
    for kind, row, own, other in rows:
        lo, hi = row["bbox_lo"], row["bbox_hi"]
        position = _object_voxel(sources.layer(own).volume, row["id"], lo, hi)
        zoom = max(MIN_OFFENDER_ZOOM, max(hi[1] - lo[1], hi[2] - lo[2]) / OFFENDER_VIEW_PIXELS)
        on_top = ViewSources(sources.location, tuple(sorted(sources.layers, key=lambda spec: spec.name == other)))
        viewer = make_viewer(on_top, position=position, zoom=zoom, layout=layout,
                             selected={own: [row["id"]], other: row["partners"]})
        label = "GT object" if kind == "split" else "segment"
        description = (f"{kind} {label} {row['id']} ({row['size']} voxels, {row['overlaps']} "
                       f"{'segments' if kind == 'split' else 'GT objects'})")
        viewers.append((description, viewer))
    return viewers


def serve_offenders(report: Mapping[str, Any], *, layout: str = "4panel") -> NoReturn:
    """Print a viewer link for the whole volume and one per worst offender of ``report``; serve until Ctrl-C,
    then end the process (:func:`pipeline.view.wait_until_interrupted`).

    The server must be started (:func:`pipeline.view.start_server`).
    """
    sources = evaluation_sources(report["segmentation"], report["ground_truth"])
    overview = make_viewer(sources, layout=layout)
    viewers = offender_viewers(report, sources, layout=layout)
    print(f"\nview: {overview.get_viewer_url()}   (whole volume; Ctrl-C stops)", flush=True)
    for description, viewer in viewers:
        print(f"  {description:<60} {viewer.get_viewer_url()}", flush=True)
    wait_until_interrupted()
