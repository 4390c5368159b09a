"""Segment pass 1: per-block segmentation of block + halo, fragments and per-block small tables.

For block ``b`` the segmenter runs on the block grown by the halo; its local labels ``1..n``
become global fragment ids ``b << 32 | local`` (0 stays background). The inner block is written
to the fragments array (chunk-aligned) and a small table file ``tables/<b>.npz`` records:

* ``n_labels``: n, the number of local labels in the halo'd block;
* ``sizes``: (n+1,) voxel counts of every local label inside the inner block;
* ``edges``/``edge_sum``/``edge_count``: local label pairs adjacent inside the inner block with the
  sum and count of their nearest-neighbour affinities (links with both ends in the inner block);
* ``slab_<axis>_<side>``: local labels over the region this block's halo'd box shares with its face
  neighbour (side ``lo``/``hi``), zstd-compressed, with ``slab_<axis>_<side>_begin``;
* ``face_aff_<axis>``: NN affinity of channel ``axis`` on the first inner plane (the links that
  cross the lower face), for the region adjacency across block faces.

Methods: ``mws`` (mutex watershed, :mod:`emcore.mws`), ``waterz`` (mean-affinity agglomeration
of the NN channels at ``threshold``) and ``multicut`` (per-slice watershed supervoxels with the
``supervoxels`` settings; the multicut itself, the paper's "LMC" (docs/method.md §11), partitions
the region graph of all blocks in the stitch step, :func:`emcore.regiongraph.multicut`).
Affinities: (C, z, y, x), 1 = same object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from numcodecs import Zstd
from scipy import ndimage

from emcore.blocks import Block, BlockGrid, save_npz_atomic
from emcore.conventions import DEFAULT_STRIDES, affinities_as_float, fragment_ids
from emcore.mws import check_affinity_values, mutex_watershed
from emcore.regiongraph import region_adjacency
from emcore.store import open_volume
from emcore.supervoxels import SupervoxelSettings, consecutive_labels, slice_supervoxels

__all__ = ["FragmentParams", "METHODS", "compute_fragments", "segment_labels", "sample_mutex_edges", "load_slab",
           "table_path"]

METHODS = ("mws", "waterz", "multicut")
SIDES = {-1: "lo", 1: "hi"}
_CODEC = Zstd(level=1)


@dataclass(frozen=True)
class FragmentParams:
    """Everything pass 1 needs; picklable so process and distributed schedulers can run it."""

    affinities: str
    fragments: str
    workdir: str
    shape: tuple[int, int, int]
    block_shape: tuple[int, int, int]
    halo: tuple[int, int, int]
    offsets: tuple[tuple[int, int, int], ...]
    method: str = "mws"
    strides: tuple[int, int, int] = DEFAULT_STRIDES
    randomize_strides: int | None = None
    threshold: float = 0.5
    supervoxels: SupervoxelSettings = SupervoxelSettings()

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.shape, self.block_shape)


def table_path(workdir: str, index: int) -> str:
    """Path of the pass-1 small table of block ``index``."""
    return os.path.join(workdir, "tables", f"{index}.npz")


def compute_fragments(params: FragmentParams, index: int) -> None:
    """Pass 1 for block ``index``: segment block + halo, write inner fragments and the table."""
    grid = params.grid
    block = grid.block(index)
    begin, end = grid.outer(block, params.halo)
    outer = tuple(slice(b, e) for b, e in zip(begin, end))
    stored = open_volume(params.affinities)[(slice(None),) + outer]
    check_affinity_values(stored, f"{params.affinities} (block {index})")
    labels = segment_labels(stored, params, origin=begin)
    nn_affs = affinities_as_float(stored[:3])
    inner = tuple(slice(b - o, e - o) for b, e, o in zip(block.begin, block.end, begin))
    local = labels[inner]
    ids = fragment_ids(index, local)
    open_volume(params.fragments, mode="r+")[block.slices] = ids
    n_labels = int(labels.max(initial=0))
    tables = {"n_labels": np.int64(n_labels),
              "sizes": np.bincount(local.ravel(), minlength=n_labels + 1).astype(np.int64)}
    tables.update(region_adjacency(local, nn_affs[(slice(None),) + inner]))
    tables.update(_face_tables(grid, block, begin, labels, nn_affs, params.halo))
    save_npz_atomic(table_path(params.workdir, index), tables)


def segment_labels(affs: np.ndarray, params: FragmentParams, *, origin: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
    """Local labels (uint64, consecutive 1..n) of stored affinities.

    ``affs`` is (C, z, y, x), uint8 (``round(255 a)``) or float in [0, 1], whose voxel (0, 0, 0)
    sits at global ``origin``.
    """
    if params.method == "mws":
        if params.randomize_strides is None:
            return mutex_watershed(affs, params.offsets, strides=params.strides)
        sampled = sample_mutex_edges(affs, params.strides, params.randomize_strides, origin)
        return mutex_watershed(sampled, params.offsets, strides=(1, 1, 1))
    if params.method == "waterz":
        import waterz

        seg = next(iter(waterz.agglomerate(np.ascontiguousarray(affinities_as_float(affs[:3])), [params.threshold])))
        unassigned, _ = ndimage.label(seg == 0)  # waterz leaves voxels without edges at 0
        return consecutive_labels(np.where(seg == 0, unassigned.astype(np.uint64) + seg.max(), seg))
    if params.method == "multicut":
        return slice_supervoxels(affinities_as_float(affs[:3]), params.supervoxels)
    raise ValueError(f"unknown method {params.method!r}: use one of {', '.join(METHODS)}")


def sample_mutex_edges(affs: np.ndarray, strides: tuple[int, ...], seed: int, origin: tuple[int, ...]) -> np.ndarray:
    """Seeded random mutex-edge sampling that depends only on global coordinates.

    Each long-range edge is kept with probability 1/prod(strides), decided by a hash of
    (seed, channel, global z, y, x), so the overlapping halos of neighbouring blocks sample the
    same edges and the result does not depend on the block layout. Dropped edges get affinity 1
    (255 for uint8; repulsion 0): they sort last and constrain nothing. The dtype is kept.
    """
    dropped = 255 if affs.dtype == np.uint8 else 1.0
    keep_one_in = np.uint64(int(np.prod(strides)))
    grids = np.ogrid[tuple(slice(o, o + n) for o, n in zip(origin, affs.shape[1:]))]
    coords = [g.astype(np.uint64) * np.uint64(m) for g, m in zip(grids, (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D))]
    base = coords[0] ^ coords[1] ^ coords[2]
    sampled = affs.copy()
    for channel in range(3, affs.shape[0]):
        salt = np.uint64((seed * 1000003 + channel * 2654435761) & 0xFFFFFFFFFFFF)
        mixed = (base ^ salt) * np.uint64(0xFF51AFD7ED558CCD)
        mixed ^= mixed >> np.uint64(29)
        sampled[channel][mixed % keep_one_in != 0] = dropped
    return sampled


def _face_tables(grid: BlockGrid, block: Block, begin: tuple[int, ...], labels: np.ndarray,
                 nn_affs: np.ndarray, halo: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Label slabs over the boxes shared with face neighbours, and lower-face NN affinities.

    ``labels`` and ``nn_affs`` (the 3 nearest-neighbour channels, float) cover the halo'd box
    starting at global ``begin``.
    """
    tables: dict[str, np.ndarray] = {}
    for axis in range(3):
        for side, name in SIDES.items():
            neighbour = grid.neighbour(block, axis, side)
            if neighbour is None:
                continue
            nb_begin, nb_end = grid.outer(grid.block(neighbour), halo)
            lo = [max(b, nb) for b, nb in zip(begin, nb_begin)]
            hi = [min(b + n, nb) for b, n, nb in zip(begin, labels.shape, nb_end)]
            slab = labels[tuple(slice(l - b, h - b) for l, h, b in zip(lo, hi, begin))].astype(np.uint32)
            key = f"slab_{axis}_{name}"
            tables[key] = np.frombuffer(_CODEC.encode(np.ascontiguousarray(slab)), dtype=np.uint8)
            tables[f"{key}_shape"] = np.array(slab.shape, dtype=np.int64)
            tables[f"{key}_begin"] = np.array(lo, dtype=np.int64)
        if grid.neighbour(block, axis, -1) is not None:
            plane = [slice(b - o, e - o) for b, e, o in zip(block.begin, block.end, begin)]
            plane[axis] = block.begin[axis] - begin[axis]
            tables[f"face_aff_{axis}"] = nn_affs[axis][tuple(plane)].astype(np.float32)
    return tables


def load_slab(tables: Mapping[str, np.ndarray], axis: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode the label slab of one face: (labels uint32, begin (3,) global origin)."""
    key = f"slab_{axis}_{SIDES[side]}"
    shape = tuple(tables[f"{key}_shape"])
    labels = np.frombuffer(_CODEC.decode(tables[key].tobytes()), dtype=np.uint32).reshape(shape)
    return labels, tables[f"{key}_begin"]
