"""Affinity targets from instance labels.

For offset ``o`` and voxel ``p`` with ``p + o`` inside the array::

    A(p, o) = 1  iff  seg(p) == seg(p + o)  and  seg(p) > 0  and  seg(p + o) > 0

and ``A(p, o) = 0`` where ``p + o`` falls outside (pea-method.md section 3.2). Background
(label 0) therefore has affinity 0 to everything.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .offsets import validate_offsets


def label_affinities(labels: np.ndarray, offsets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth affinities and their validity mask.

    Parameters
    ----------
    labels
        (z, y, x) integer instance labels, 0 = background.
    offsets
        Non-positive (dz, dy, dx) offsets, see :mod:`corrseg3d.offsets`.

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
