"""How well predicted affinities separate same-object from different-object pairs, per offset.

A segmentation score (VOI, ARAND) says *that* a model merges or splits; this says *which
offsets* carry the error. For every offset ``o`` the voxel pairs ``(p, p + o)`` with both ends
inside the volume and both GT labels non-zero (label 0 is ignored, as in the evaluation) are
split into positives (same GT label, target affinity 1, :func:`corrseg3d.targets.label_affinities`)
and negatives (different labels). The score of the offset is the ROC AUC of the predicted
affinity as a classifier of those two classes (the Mann-Whitney statistic)::

    AUC = P(a_pos > a_neg) + 0.5 * P(a_pos == a_neg)

over all (positive, negative) pairs: 1 = every same-object pair above every boundary pair,
0.5 = chance. It does not depend on a threshold, so it compares a cosine head (affinities
``max(0, cos)``) with a sigmoid head fairly. Affinities are quantised to the 256 levels that
``pipeline.predict`` stores (:func:`emcore.conventions.affinities_as_uint8`: floats are clipped to
[0, 1] and rounded to ``round(255 a)``), which makes the statistic exact from two 256-bin
histograms.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from emcore.conventions import affinities_as_uint8

from .targets import label_affinities

__all__ = ["affinity_separability"]

_LEVELS = 256


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann-Whitney AUC of two histograms over the same ordered levels."""
    below = np.concatenate([[0], np.cumsum(negative)[:-1]])
    return float((positive * (below + 0.5 * negative)).sum() / (positive.sum() * negative.sum()))


def affinity_separability(affinities: np.ndarray, labels: np.ndarray,
                          offsets: Sequence[Sequence[int]]) -> list[dict]:
    """ROC AUC and class means of predicted affinities, per offset.

    Parameters
    ----------
    affinities
        (C, z, y, x) predicted affinities, uint8 (0..255) or float in [0, 1]; channel ``c``
        belongs to ``offsets[c]`` (convention of :mod:`emcore.conventions`).
    labels
        (z, y, x) GT instance labels, 0 = ignored.
    offsets
        The C offsets, non-positive (dz, dy, dx).

    Returns
    -------
    One dict per offset: ``offset``, ``auc`` (nan if a class is empty), ``mean_positive`` and
    ``mean_negative`` (mean affinity in [0, 1] of each class), ``n_positive``, ``n_negative``.
    """
    if affinities.ndim != 4 or affinities.shape[0] != len(offsets) or affinities.shape[1:] != labels.shape:
        raise ValueError(f"affinities must be (C, z, y, x) = ({len(offsets)},) + {labels.shape}, "
                         f"got {affinities.shape}: pass one channel per offset, aligned with labels")
    levels = np.arange(_LEVELS) / (_LEVELS - 1)
    same, _ = label_affinities(labels, offsets)
    both_labelled, valid = label_affinities((labels > 0).astype(np.uint8), offsets)
    scored = valid & both_labelled.astype(bool)
    rows = []
    for channel, offset in enumerate(offsets):
        values = affinities_as_uint8(affinities[channel])[scored[channel]]
        is_positive = same[channel][scored[channel]].astype(bool)
        positive = np.bincount(values[is_positive], minlength=_LEVELS)
        negative = np.bincount(values[~is_positive], minlength=_LEVELS)
        n_positive, n_negative = int(positive.sum()), int(negative.sum())
        rows.append({
            "offset": tuple(int(o) for o in offset),
            "auc": _auc(positive, negative) if n_positive and n_negative else float("nan"),
            "mean_positive": float(positive @ levels / n_positive) if n_positive else float("nan"),
            "mean_negative": float(negative @ levels / n_negative) if n_negative else float("nan"),
            "n_positive": n_positive,
            "n_negative": n_negative,
        })
    return rows
