"""Which Neuroglancer layers a volume store holds, and how each one is shown.

A *view location* is a zarr store or a group in one (``vol.zarr``, ``fib.zarr/gala-test``: every
dataset in it), one zarr dataset (``vol.zarr/segmentation``), a folder of precomputed layers
(``precomputed://file:///abs/ng``, as ``python -m pipeline.export`` writes it: every layer below
it) or one precomputed layer. Layers:

* ``raw`` and other grey-value 3D volumes -> ``image`` layers;
* ``segmentation``, ``labels``, ``fragments`` and other uint32/uint64/int 3D volumes ->
  ``segmentation`` layers (ids as uint32 up to 32-bit stores, else uint64; meshes off: they would
  need the whole volume);
* ``affinities`` and other (c, z, y, x) volumes -> an ``image`` layer of the mean
  nearest-neighbour affinity (:class:`pipeline.viewarrays.MeanAffinityView`);
* ``blocks`` -> the block grid of the ``pipeline.segment`` run that wrote a segmentation layer
  (from its run state), as an annotation layer of boxes, so a stitching seam is visible.

Every volume layer carries its dataset's voxel size and offset (world units, (z, y, x)) and is
read one requested chunk at a time (:mod:`pipeline.viewarrays`).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from emcore.blocks import BlockGrid
from emcore.precomputed import LayerNotFoundError
from emcore.store import (PRECOMPUTED_PREFIX, StoreError, Volume, dataset_group, member_names, open_volume,
                          split_location)

from .runstate import workdir_for
from .viewarrays import MeanAffinityView, VolumeView

__all__ = ["ViewError", "LayerSpec", "ViewSources", "open_sources", "volume_layer", "neuroglancer_layer",
           "coordinate_space", "voxel_offset", "BLOCKS", "MAX_GRID_BOXES"]

#: Dataset names shown first, in this order; other datasets follow alphabetically.
KNOWN_ORDER = ("raw", "affinities", "fragments", "segmentation", "labels")
SEGMENTATION_NAMES = ("segmentation", "labels", "fragments")
IMAGE_NAMES = ("raw",)
#: Layers visible when the view opens (the others are one click away in the layer bar).
VISIBLE_NAMES = ("raw", "segmentation")
#: Name of the block-grid annotation layer.
BLOCKS = "blocks"
#: A larger grid is left out: every box travels in the viewer state.
MAX_GRID_BOXES = 20000
_UNITS = {"nanometer": "nm", "micrometer": "um", "millimeter": "mm", "meter": "m", "angstrom": "angstrom"}


class ViewError(ValueError):
    """A location cannot be shown; the message says what to pass instead."""


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the view.

    Attributes
    ----------
    name
        Layer name (the dataset name, or ``blocks``).
    kind
        ``image``, ``segmentation`` or ``annotation``.
    source
        ``neuroglancer.LocalVolume`` (volume layers) or a tuple of block boxes ``(lo, hi)`` in
        voxels (z, y, x), ``hi`` exclusive (the ``blocks`` layer).
    volume
        The stored volume behind the layer (for ``blocks``: the segmentation it belongs to).
    visible
        Shown when the view opens.
    """

    name: str
    kind: str
    source: Any
    volume: Volume
    visible: bool


@dataclass(frozen=True)
class ViewSources:
    """The layers of one view location; ``reference`` (the first volume) sets the axes and centre."""

    location: str
    layers: tuple[LayerSpec, ...]

    @property
    def reference(self) -> Volume:
        return self.layers[0].volume

    def layer(self, name: str) -> LayerSpec:
        return next(spec for spec in self.layers if spec.name == name)


def coordinate_space(volume: Volume, names: Sequence[str] = ("z", "y", "x")) -> Any:
    """Neuroglancer coordinate space of ``volume``'s voxels, axes ``names`` (a permutation of z, y, x)."""
    import neuroglancer

    size = dict(zip("zyx", volume.voxel_size))
    units = dict(zip("zyx", (_UNITS.get(u, "nm") for u in volume.units)))
    return neuroglancer.CoordinateSpace(names=list(names), units=[units[n] for n in names],
                                        scales=[size[n] for n in names])


def voxel_offset(volume: Volume) -> list[int]:
    """World offset of ``volume`` in voxels (z, y, x), rounded."""
    return [int(round(o / v)) for o, v in zip(volume.offset, volume.voxel_size)]


def _kind(name: str, volume: Volume) -> str:
    if volume.ndim == 4:
        return "affinity"
    if volume.ndim != 3:
        raise ViewError(f"{volume.location} has shape {volume.shape}: only (z, y, x) and (c, z, y, x) volumes can be shown")
    if name in SEGMENTATION_NAMES:
        return "segmentation"
    if name not in IMAGE_NAMES and volume.dtype.kind in "iu" and volume.dtype.itemsize >= 4:
        return "segmentation"
    return "image"


def volume_layer(name: str, volume: Volume, *, kind: str | None = None, visible: bool = True) -> LayerSpec:
    """The layer showing ``volume``; ``kind`` (``image``, ``segmentation``, ``affinity``) defaults to
    what its name, shape and dtype suggest (module docstring)."""
    kind = kind or _kind(name, volume)
    return LayerSpec(name, "segmentation" if kind == "segmentation" else "image", _local_volume(volume, kind),
                     volume, visible)


def _local_volume(volume: Volume, kind: str) -> Any:
    import neuroglancer

    if kind == "affinity":
        data: Any = MeanAffinityView(volume)
    elif kind == "segmentation":
        if volume.dtype.kind not in "iub":
            raise ViewError(f"{volume.location} holds {volume.dtype} values: a segmentation must hold integer ids")
        data = VolumeView(volume, np.uint32 if volume.dtype in (np.uint8, np.uint16, np.uint32, np.bool_) else np.uint64)
    else:
        data = VolumeView(volume, np.uint8 if volume.dtype == np.bool_ else None)
    return neuroglancer.LocalVolume(data, dimensions=coordinate_space(volume), voxel_offset=voxel_offset(volume),
                                    volume_type="segmentation" if kind == "segmentation" else "image")


def _block_boxes(volume: Volume) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] | None:
    """Block grid of the ``pipeline.segment`` run that wrote ``volume`` (None if it has no run state)."""
    if volume.location.startswith(PRECOMPUTED_PREFIX):
        return None
    path = os.path.join(workdir_for(volume.location, "segment"), "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        block_shape = json.load(handle).get("options", {}).get("block")
    if not block_shape:
        return None
    grid = BlockGrid(volume.spatial_shape, tuple(block_shape))
    if grid.n_blocks > MAX_GRID_BOXES:
        return None
    return tuple((block.begin, block.end) for block in map(grid.block, range(grid.n_blocks)))


def _dataset_names(location: str) -> tuple[str, list[str]]:
    """(base, dataset names) of a zarr store or a folder of precomputed layers."""
    if location.startswith(PRECOMPUTED_PREFIX):
        base = location.rstrip("/")
        cloudpath = base[len(PRECOMPUTED_PREFIX):]
        if not cloudpath.startswith("file://"):
            return base, list(KNOWN_ORDER)
        folder = cloudpath[len("file://"):]
        if not os.path.isdir(folder):
            raise ViewError(f"{folder} does not exist: pass precomputed://file:///ABS/PATH of a layer or of an export folder")
        return base, sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n, "info")))
    group = dataset_group(location)
    if group is None:
        raise ViewError(f"{location} is not a zarr store: pass vol.zarr, vol.zarr/NAME or "
                        "precomputed://file:///ABS/PATH")
    return location.rstrip("/"), member_names(group)


def _open_single(location: str) -> Volume | None:
    """The volume at ``location``, or None when it names a store or folder of datasets."""
    if not location.startswith(PRECOMPUTED_PREFIX):
        root, inner = split_location(location)
        if not os.path.exists(root):
            raise ViewError(f"{root} does not exist: pass a zarr store (vol.zarr), a dataset in it (vol.zarr/NAME) "
                            "or precomputed://file:///ABS/PATH")
        if inner and dataset_group(location) is None:
            return open_volume(location)
    try:
        return open_volume(location)
    except LayerNotFoundError:  # a folder of layers (or nothing there)
        return None
    except StoreError:
        if location.startswith(PRECOMPUTED_PREFIX):
            raise  # the layer's own problem: scheme, path, credentials, a corrupt info file
        return None


def _order(names: Sequence[str]) -> list[str]:
    known = [n for n in KNOWN_ORDER if n in names]
    return known + sorted(n for n in names if n not in KNOWN_ORDER)


def _visible(kinds: dict[str, str]) -> set[str]:
    """The names in :data:`VISIBLE_NAMES`, else the first image and the first segmentation layer."""
    chosen = {name for name in kinds if name in VISIBLE_NAMES}
    if chosen:
        return chosen
    first: dict[bool, str] = {}
    for name, kind in kinds.items():
        first.setdefault(kind == "segmentation", name)
    return set(first.values())


def open_sources(location: str, names: Sequence[str] | None = None) -> ViewSources:
    """The layers to show for ``location`` (see the module docstring).

    Parameters
    ----------
    location
        ``vol.zarr``, ``vol.zarr/NAME``, ``precomputed://file:///abs/ng`` (a folder of layers) or
        ``precomputed://.../NAME`` (one layer).
    names
        Layers to show, in order (dataset names and ``blocks``), all visible; default: every
        (z, y, x) or (c, z, y, x) dataset, known ones first (raw, affinities, fragments,
        segmentation, labels), then ``blocks`` when a segmentation layer has ``pipeline.segment``
        run state, with raw and segmentation visible and the others a click away.

    Raises
    ------
    ViewError, StoreError
        The location holds no volume, or a named layer does not exist (the message lists those
        that do).
    """
    return _open_sources(os.fspath(location), names)


def _open_sources(location: str, names: Sequence[str] | None) -> ViewSources:
    single = _open_single(location)
    if single is not None:
        volumes = {single.location.rstrip("/").split("/")[-1]: single}
    else:
        base, found = _dataset_names(location)
        volumes = {}
        for name in found:
            try:
                volume = open_volume(f"{base}/{name}")
            except LayerNotFoundError:  # a guessed name in a remote folder
                continue
            except StoreError as error:
                warnings.warn(f"layer {name!r} left out: {error}", stacklevel=2)
                continue
            if volume.ndim in (3, 4):
                volumes[name] = volume
        if not volumes:
            raise ViewError(f"{location} holds no volume ({', '.join(found) or 'it is empty'}): pass a store "
                            "written by this project (python -m pipeline.data synth OUT.zarr) or a dataset in it")
    grid = _block_grid(volumes)
    available = _order(list(volumes)) + ([BLOCKS] if grid else [])
    wanted = list(names) if names else available
    missing = [n for n in wanted if n not in available]
    if missing:
        raise ViewError(f"{location} has no layer {', '.join(map(repr, missing))}; it has: {', '.join(available)} "
                        "(pass some of them to --layers)")
    kinds = {name: _kind(name, volumes[name]) for name in wanted if name != BLOCKS}
    visible = set(wanted) if names else _visible(kinds)
    layers = []
    for name in wanted:
        if name == BLOCKS:
            layers.append(replace(grid, visible=name in visible))
        else:
            layers.append(volume_layer(name, volumes[name], kind=kinds[name], visible=name in visible))
    return ViewSources(location, tuple(layers))


def _block_grid(volumes: dict[str, Volume]) -> LayerSpec | None:
    """The ``blocks`` layer (hidden): the grid of the first segmentation-like volume with
    ``pipeline.segment`` run state (None without one, or with more than :data:`MAX_GRID_BOXES` blocks)."""
    for name in _order(list(volumes)):
        if _kind(name, volumes[name]) == "segmentation":
            boxes = _block_boxes(volumes[name])
            if boxes is not None:
                return LayerSpec(BLOCKS, "annotation", boxes, volumes[name], False)
    return None


def neuroglancer_layer(spec: LayerSpec) -> Any:
    """A new Neuroglancer layer object for ``spec`` (one per viewer state)."""
    import neuroglancer

    if spec.kind == "image":
        return neuroglancer.ImageLayer(source=spec.source)
    if spec.kind == "segmentation":
        source = neuroglancer.LayerDataSource(url=spec.source, subsources={"default": True, "mesh": False},
                                              enable_default_subsources=False)
        return neuroglancer.SegmentationLayer(source=source)
    offset = np.asarray(voxel_offset(spec.volume))
    boxes = [neuroglancer.AxisAlignedBoundingBoxAnnotation(id=str(index), point_a=offset + lo, point_b=offset + hi,
                                                           description=f"block {index}")
             for index, (lo, hi) in enumerate(spec.source)]
    return neuroglancer.LocalAnnotationLayer(dimensions=coordinate_space(spec.volume), annotations=boxes)
