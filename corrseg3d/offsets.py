"""The affinity offsets: the one place the default neighbourhood is defined.

Convention: an offset ``o = (dz, dy, dx)`` has non-positive components; the affinity stored at
voxel ``p`` for offset ``o`` describes the pair ``(p, p + o)`` (a neighbour *before* ``p``).
Affinity 1 means "same object". The first three offsets are the nearest neighbours along z, y, x
(the attractive channels of mutex watershed); the rest are long range.
"""

from __future__ import annotations

from typing import Sequence

Offset = tuple[int, int, int]

#: The 12 PEA offsets for AC3/AC4 (pea-method.md section 2.2): ranges z 1..4, xy 1, 3, 9, 27.
PEA_OFFSETS: tuple[Offset, ...] = (
    (-1, 0, 0), (0, -1, 0), (0, 0, -1),
    (-2, 0, 0), (0, -3, 0), (0, 0, -3),
    (-3, 0, 0), (0, -9, 0), (0, 0, -9),
    (-4, 0, 0), (0, -27, 0), (0, 0, -27),
)

#: The nearest-neighbour offsets (the first three channels of any offset list used here).
NEAREST_OFFSETS: tuple[Offset, ...] = PEA_OFFSETS[:3]


def validate_offsets(offsets: Sequence[Sequence[int]]) -> tuple[Offset, ...]:
    """Return ``offsets`` as a tuple of int triples, checking the conventions above.

    Raises
    ------
    ValueError
        If an offset is not three non-positive integers, is all zero, or the first three are not
        the z, y, x nearest neighbours.
    """
    result = tuple(tuple(int(v) for v in o) for o in offsets)
    for o in result:
        if len(o) != 3 or any(v > 0 for v in o) or not any(o):
            raise ValueError(f"offset {o} must be three non-positive integers (z, y, x), not all zero")
    if result[:3] != NEAREST_OFFSETS:
        raise ValueError(f"the first three offsets must be {list(NEAREST_OFFSETS)} (attractive channels), got {list(result[:3])}")
    return result  # type: ignore[return-value]


def max_offset(offsets: Sequence[Sequence[int]]) -> Offset:
    """Largest absolute offset per axis (z, y, x): the halo affinities need on top of context."""
    return tuple(max(abs(o[axis]) for o in offsets) for axis in range(3))  # type: ignore[return-value]
