"""Training targets from instance labels: affinities, class-balance weights, pyramid targets.

Pipeline per training patch (docs/method.md §5-6): :func:`widen_borders` (once per
volume), :func:`label_affinities`, :func:`balance_weights`, and :func:`pyramid_targets` for the
EPM heads. For offset ``o`` and voxel ``p`` with ``p + o`` inside the array::

    A(p, o) = 1  iff  seg(p) == seg(p + o)  and  seg(p) > 0  and  seg(p + o) > 0

and ``A(p, o) = 0`` where ``p + o`` falls outside. Background
(label 0) therefore has affinity 0 to everything.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from emcore.conventions import NEAREST_OFFSETS, validate_offsets


def label_affinities(labels: np.ndarray, offsets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth affinities and their validity mask.

    Parameters
    ----------
    labels
        (z, y, x) integer instance labels, 0 = background.
    offsets
        Non-positive (dz, dy, dx) offsets, see :mod:`emcore.conventions`.

    Returns
    -------
    affinities : (C, z, y, x) uint8 in {0, 1}
    valid : (C, z, y, x) bool, False where ``p + o`` is outside the array
    """
    offsets = validate_offsets(offsets)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    affinities = np.zeros((len(offsets),) + labels.shape, dtype=np.uint8)
    valid = np.zeros((len(offsets),) + labels.shape, dtype=bool)
    for channel, offset in enumerate(offsets):
        here = tuple(slice(-o, None) for o in offset)
        there = tuple(slice(0, max(n + o, 0)) for o, n in zip(offset, labels.shape))
        a, b = labels[here], labels[there]
        affinities[(channel,) + here] = (a == b) & (a > 0) & (b > 0)
        valid[(channel,) + here] = True
    return affinities, valid


def widen_borders(labels: np.ndarray) -> np.ndarray:
    """Turn every contact between two different objects into a background band (docs/method.md §6).

    Slice by slice (3x3 in-plane window, z is never looked at), a voxel keeps its label only if
    every *non-zero* label in its window equals its own; otherwise it becomes 0. Contacts with
    background do not widen, so each object-object contact becomes a band about 2 px wide (one
    on each side). Out-of-image window positions are ignored, which equals the reference's
    reflect padding for a 3x3 window (the reflected pixels are already in the window).
    Applied once to a whole volume before cropping, to build targets only; evaluation uses
    the un-widened labels.

    Parameters
    ----------
    labels
        (z, y, x) integer instance labels, 0 = background.

    Returns
    -------
    (z, y, x) labels of the same dtype, with the contact voxels set to 0.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    conflict = np.zeros(labels.shape, dtype=bool)
    _, height, width = labels.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            here = (slice(None), slice(max(-dy, 0), height - max(dy, 0)), slice(max(-dx, 0), width - max(dx, 0)))
            there = (slice(None), slice(max(dy, 0), height - max(-dy, 0)), slice(max(dx, 0), width - max(-dx, 0)))
            neighbour = labels[there]
            conflict[here] |= (neighbour != 0) & (neighbour != labels[here])
    widened = labels.copy()
    widened[conflict] = 0
    return widened


def balance_weights(affinities: np.ndarray, valid: np.ndarray, *, cap: float | None = None) -> np.ndarray:
    """Per-channel class-balancing weights (docs/method.md §6), with ``f`` over valid positions only.

    For each channel let ``f`` be the fraction of positive targets among the *valid* positions,
    clipped to [0.05, 0.99]. If ``f > 0.5`` positives get 1 and negatives ``f / (1 - f)`` (at
    most 99); otherwise positives get ``(1 - f) / f`` (at most 19) and negatives 1. A channel
    whose valid targets are constant gets weight 1 everywhere valid. Invalid positions get 0.
    ``cap`` (``loss.class_weight_cap``) clips every weight to at most ``cap``: 1 gives the
    unweighted MSE, None keeps the paper's weights. The rare class of the long-range channels is
    the positives (same object 27 px apart), so the paper's weights make their pull up to 19x
    the push of the negatives.

    Decision: the reference counts the zero-filled out-of-patch band as negatives,
    which for the 27-px channels inflates the negative fraction (about 17 % of a 160-px patch);
    here ``f`` is computed over the valid region only, as the loss only sees that region.

    Parameters
    ----------
    affinities
        (C, ...) targets in {0, 1}; axis 0 is the channel, the rest is one sample's patch.
    valid
        Boolean mask of the same shape.
    cap
        Upper bound of every weight (> 0), or None for none.

    Returns
    -------
    float32 weights of the same shape.
    """
    if cap is not None and not cap > 0:
        raise ValueError(f"class weight cap must be > 0 (or None for the paper's weights), got {cap}")
    if affinities.shape != valid.shape:
        raise ValueError(f"affinities {affinities.shape} and valid {valid.shape} must have the same shape")
    positive = (affinities > 0) & valid
    axes = tuple(range(1, affinities.ndim))
    n_valid = valid.sum(axis=axes)
    n_positive = positive.sum(axis=axes)
    f = np.clip(n_positive / np.maximum(n_valid, 1), 0.05, 0.99)
    constant = (n_positive == 0) | (n_positive == n_valid)
    positive_weight = np.where(constant | (f > 0.5), 1.0, (1 - f) / f)
    negative_weight = np.where(constant | (f <= 0.5), 1.0, f / (1 - f))
    expand = (slice(None),) + (None,) * len(axes)
    weights = np.where(positive, positive_weight[expand], negative_weight[expand])
    if cap is not None:
        weights = np.minimum(weights, cap)
    return np.where(valid, weights, 0.0).astype(np.float32)


def pyramid_targets(labels: np.ndarray, factors: Sequence[int] = (2, 4, 8, 16), *,
                    cap: float | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Nearest-neighbour affinity targets for the EPM pyramid heads (docs/method.md §5).

    For each xy factor ``s`` the labels are subsampled by taking the top-left voxel of every
    s x s block, ``labels[:, ::s, ::s]`` (the reference's OpenCV ``INTER_NEAREST``; no majority
    vote), z is kept. Targets use the three nearest offsets on that coarse grid with
    :func:`label_affinities` and :func:`balance_weights`.

    Parameters
    ----------
    labels
        (z, y, x) border-widened instance labels of the training patch; y and x must be
        divisible by every factor.
    factors
        xy subsampling factors, in any order.
    cap
        Class-weight cap passed to :func:`balance_weights`.

    Returns
    -------
    One ``(affinities uint8, weights float32, valid bool)`` triple of shape (3, z, y/s, x/s)
    per factor, ordered coarse to fine (largest factor first), matching
    :attr:`corrseg3d.model.ModelOutput.pyramid`.
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    levels = []
    for factor in sorted((int(s) for s in factors), reverse=True):
        if factor < 1 or labels.shape[1] % factor or labels.shape[2] % factor:
            raise ValueError(f"xy shape {labels.shape[1:]} is not divisible by pyramid factor {factor}")
        affinities, valid = label_affinities(labels[:, ::factor, ::factor], NEAREST_OFFSETS)
        levels.append((affinities, balance_weights(affinities, valid, cap=cap), valid))
    return levels
