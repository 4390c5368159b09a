"""Segment pass 2: map every block of fragments through the lookup table into the segmentation.

Fragment ``b << 32 | l`` of block ``b`` becomes ``values[node_offsets[b] + l - 1]`` (see
:mod:`pipeline.stitch`); 0 stays 0. Blocks are whole multiples of the output write granule, so
concurrent blocks never share a chunk (checked by the caller with ``check_write_alignment``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from emcore.blocks import BlockGrid, load_npz
from emcore.conventions import fragment_local
from emcore.store import open_volume

from .stitch import lookup_path

__all__ = ["RelabelParams", "relabel_block"]


@dataclass(frozen=True)
class RelabelParams:
    """Where pass 2 reads and writes (picklable)."""

    fragments: str
    segmentation: str
    workdir: str
    shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]


@lru_cache(maxsize=2)
def _lookup(path: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """The lookup table, loaded once per process (and again only if the file changed)."""
    table = load_npz(path)
    return table["node_offsets"], table["values"]


def relabel_block(params: RelabelParams, index: int) -> None:
    """Write block ``index`` of the segmentation from the fragments and the lookup table."""
    path = lookup_path(params.workdir)
    node_offsets, values = _lookup(path, os.stat(path).st_mtime_ns)
    block = BlockGrid(params.shape, params.block_shape).block(index)
    table = np.concatenate([[np.uint64(0)], values[node_offsets[index]:node_offsets[index + 1]]])
    local = fragment_local(open_volume(params.fragments)[block.slices])
    open_volume(params.segmentation, mode="r+")[block.slices] = table[local.astype(np.intp)]
