"""Validation of a training run: a model's affinities on whole volumes, segmented and scored.

Affinities come from :func:`corrseg3d.inference.predict_volume` (blocks of ``validation.block``
with ``validation.halo`` context, as ``pipeline.predict`` tiles a volume); they are segmented as
``pipeline.segment``'s default does, the multicut of per-slice supervoxels
(:func:`emcore.regiongraph.multicut_segmentation`; ``validation.method: mws`` for
:func:`emcore.mws.mutex_watershed`), and scored by :func:`emcore.metrics.segmentation_scores`
against the un-widened labels (GT 0 ignored). Volumes with ``labels_2d`` are segmented by mutex
watershed and scored slice by slice.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from emcore.contingency import check_labels
from emcore.conventions import check_raw, raw_to_float
from emcore.metrics import segmentation_scores
from emcore.mws import mutex_watershed
from emcore.regiongraph import multicut_segmentation
from emcore.store import open_volume
from emcore.writing import check_whole

from .config import ConfigError, ValidationConfig
from .inference import predict_volume
from .model import ResidualUNet3D
from .preflight import check_slices
from .sampler import volume_is_2d

__all__ = ["segment", "validation_segmentation", "validate", "load_validation_volumes"]


def _unique_per_slice(labels: np.ndarray) -> np.ndarray:
    """Make ids of different slices distinct (0 stays 0): for 2D labels and 2D segmentations."""
    step = np.uint64(int(labels.max()) + 1)
    slices = np.arange(labels.shape[0], dtype=np.uint64)[:, None, None]
    return np.where(labels > 0, labels.astype(np.uint64) + slices * step, 0).astype(np.uint64)


def segment(affinities: np.ndarray, offsets: Sequence[Sequence[int]], *, strides: Sequence[int],
            per_slice: bool) -> np.ndarray:
    """Mutex watershed of (C, z, y, x) affinities, in 3D or independently per slice."""
    if not per_slice:
        return mutex_watershed(affinities, offsets, strides=strides)
    slices = [mutex_watershed(affinities[:, z:z + 1], offsets, strides=strides)[0] for z in range(affinities.shape[1])]
    return _unique_per_slice(np.stack(slices))


def validation_segmentation(affinities: np.ndarray, offsets: Sequence[Sequence[int]], config: ValidationConfig, *,
                            labels_2d: bool) -> np.ndarray:
    """Segment a validation volume by ``config.method``.

    Parameters
    ----------
    affinities
        (C, z, y, x) affinities of ``offsets``, 1 = same object; float in [0, 1] or uint8 (``round(255 a)``).
    offsets
        The model's offsets (the first three are the nearest neighbours in z, y, x).
    config
        ``method: multicut``: :func:`emcore.regiongraph.multicut_segmentation` with ``beta``,
        ``min_size`` and ``supervoxels``; ``mws``: mutex watershed with ``mws_strides``.
    labels_2d
        The volume has 2D labels: mutex watershed of each slice on its own, whatever the method.

    Returns
    -------
    (z, y, x) uint64 labels (ids of different slices differ for 2D labels).
    """
    if config.method == "multicut" and not labels_2d:
        return multicut_segmentation(affinities[:3], beta=config.beta, min_size=config.min_size,
                                     supervoxels=config.supervoxels)
    return segment(affinities, offsets, strides=config.mws_strides, per_slice=labels_2d)


def validate(model: ResidualUNet3D, volumes: Sequence[dict[str, Any]], config: ValidationConfig, *,
             offsets: Sequence[Sequence[int]], device: torch.device, autocast_dtype: torch.dtype | None,
             channels_last: bool) -> dict[str, Any]:
    """Scores of every validation volume and their means (``voi``, ``arand``, ...).

    ``volumes`` are dicts with ``name``, ``image`` (z, y, x) float32, ``labels`` (un-widened GT)
    and ``labels_2d``.
    """
    per_volume = {}
    for volume in volumes:
        affinities = predict_volume(model, volume["image"], offsets, block=config.block, halo=config.halo,
                                    device=device, autocast_dtype=autocast_dtype, channels_last=channels_last)
        seg = validation_segmentation(affinities, offsets, config, labels_2d=volume["labels_2d"])
        gt = _unique_per_slice(volume["labels"]) if volume["labels_2d"] else volume["labels"]
        scores = segmentation_scores(seg, gt)
        per_volume[volume["name"]] = {k: scores[k] for k in ("voi_split", "voi_merge", "voi", "arand")}
    means = {k: float(np.mean([s[k] for s in per_volume.values()])) for k in ("voi_split", "voi_merge", "voi", "arand")}
    return dict(means, volumes=per_volume)


def load_validation_volumes(config: ValidationConfig) -> list[dict[str, Any]]:
    """Read the validation volumes' slice ranges into memory (ranges outside a volume are refused)."""
    volumes = []
    for index, spec in enumerate(config.volumes):
        raw, labels = open_volume(spec.raw), open_volume(spec.labels)
        for volume in (raw, labels):
            check_whole(volume.location)
        check_raw(raw.location, raw.shape, raw.dtype, "training")
        if raw.spatial_shape != labels.spatial_shape:
            raise ConfigError(f"validation.volumes.{index}: {spec.raw} {raw.spatial_shape} and {spec.labels} "
                              f"{labels.spatial_shape} differ in shape: give labels of the raw volume")
        _, _, start, stop = check_slices(f"validation.volumes.{index}.slices", spec.raw, spec.slices,
                                         raw.spatial_shape[0])
        values = labels[start:stop]
        check_labels(values, f"validation.volumes.{index}.labels {spec.labels}")
        volumes.append(dict(name=f"{spec.raw}[{start}:{stop}]", image=raw_to_float(raw[start:stop]),
                            labels=values, labels_2d=volume_is_2d(labels, spec.labels_2d),
                            slices=(f"validation.volumes.{index}.slices", spec.raw, start, stop)))
    return volumes
