"""Open inputs and create outputs: zarr (v3; v2 read, and written inside a v2 store) and Neuroglancer precomputed.

A *location* names one volume:

* ``vol.zarr`` -- a zarr array, or an OME-Zarr image group, at the store root;
* ``vol.zarr/raw`` -- the dataset ``raw`` inside the zarr group ``vol.zarr`` (the ``dataset``
  argument of :func:`open_volume` supplies it when the location names only the store);
* ``precomputed://file:///abs/path``, ``precomputed://gs://bucket/layer`` -- a Neuroglancer
  precomputed layer, read and written through cloud-volume.

Conventions
-----------
* Axis order is (z, y, x), channels first for multi-channel data: (c, z, y, x).
* ``voxel_size`` and ``offset`` are spatial (z, y, x) and in world units (nanometres by default);
  ``offset`` is the world coordinate of voxel (0, 0, 0). Where the store states no voxel size,
  it reads as 1 per axis with ``Volume.voxel_size_stated`` False.
* Datasets written by this project are OME-Zarr 0.5 image groups (``vol.zarr/raw/zarr.json``
  carries ``attributes.ome.multiscales``) whose full-resolution array is ``s0``; pipeline
  metadata (affinity offsets, model checksum, ...) lives in the ``s0`` array attributes.
  Plain arrays with funlib-style ``voxel_size``/``offset``/``axis_names``/``units`` attributes
  (or none) are read as well. A dataset created inside an existing zarr v2 store is written as
  v2 (the same group layout and attributes, numcodecs Zstd, no shards), so outputs can sit next
  to a v2 input.
* The *write granule* of a volume is its shard shape when sharded, else its chunk shape. Two
  writers touching one granule can lose each other's data, so blockwise writers must use blocks
  that are whole multiples of it (:func:`check_write_alignment`).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numcodecs
import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from .conventions import finite_positive

__all__ = [
    "StoreError",
    "Volume",
    "open_volume",
    "is_dataset",
    "create_volume",
    "VOLUME_ID",
    "member_names",
    "dataset_group",
    "parent_group",
    "check_write_alignment",
    "split_location",
    "remove_volume",
    "local_path",
]

PRECOMPUTED_PREFIX = "precomputed://"
OME_VERSION = "0.5"
SCALE0 = "s0"
#: Array attribute holding a random id written once when :func:`create_volume` creates the volume: a
#: stage records its input's id, so an input written anew (same name, new data) is never taken for
#: the one an unfinished output was started from.
VOLUME_ID = "volume_id"
SPATIAL_AXES = ("z", "y", "x")


class StoreError(ValueError):
    """A volume cannot be opened or created; the message says what and how to fix it."""


@dataclass
class Volume:
    """One opened volume: an array-like plus its spatial metadata.

    Parameters
    ----------
    array
        ``zarr.Array`` or a precomputed adapter; indexing is numpy-style in (c,) z, y, x.
    location
        The location string the volume was opened from.
    voxel_size, offset
        Spatial (z, y, x) voxel size and world offset of voxel 0, in ``units``.
    axis_names, units
        Names of all axes (``"c"`` for channels) and units of the spatial axes.
    voxel_size_stated
        False when the store gives no voxel size (a plain array without ``voxel_size`` or
        ``resolution`` attribute, an OME-Zarr image without a scale) and ``voxel_size`` is the
        placeholder 1 per axis; stages that depend on the physical scale (``pipeline.predict``)
        refuse such a volume unless told the voxel size.
    """

    array: Any
    location: str
    voxel_size: tuple[float, ...]
    offset: tuple[float, ...]
    axis_names: tuple[str, ...]
    units: tuple[str, ...]
    voxel_size_stated: bool = True

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self.shape[-3:]  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.array.chunks)

    @property
    def write_granule(self) -> tuple[int, ...]:
        """Shard shape if the array is sharded, else chunk shape."""
        shards = getattr(self.array, "shards", None)
        return tuple(int(c) for c in (shards or self.array.chunks))

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.array.attrs)

    def update_attrs(self, **values: Any) -> None:
        """Add JSON-serialisable pipeline metadata to the array attributes."""
        self.array.attrs.update(values)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.array[key]

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        self.array[key] = value

    def to_dask(self, chunks: Sequence[int] | None = None):
        """The volume as a dask array, chunked like storage unless ``chunks`` is given."""
        import dask.array as da

        return da.from_array(self.array, chunks=tuple(chunks) if chunks else self.chunks,
                             asarray=False, lock=False, fancy=False)


def split_location(location: str) -> tuple[str, str]:
    """Split ``.../vol.zarr/inner/path`` into the store root and the path inside it.

    The root is the last path component that ends in ``.zarr``; without one, the location
    itself is the root when it holds zarr metadata.
    """
    path = os.fspath(location).rstrip("/")
    parts = path.split("/")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].endswith(".zarr"):
            return "/".join(parts[: i + 1]), "/".join(parts[i + 1:])
    if _has_zarr_metadata(path):
        return path, ""
    raise StoreError(
        f"{location!r} is not a zarr location: name the store with a .zarr suffix "
        f"(vol.zarr or vol.zarr/DATASET) or use precomputed://file:///PATH"
    )


def _has_zarr_metadata(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("zarr.json", ".zgroup", ".zarray"))


def _check_root_group(root: str, inner: str) -> None:
    """Refuse a local store whose root has no zarr metadata although a node inside it has (arrays
    written straight to ``vol.zarr/raw``), naming the one line that adds the root group."""
    if not inner or "://" in root or _has_zarr_metadata(root):
        return
    node = os.path.join(root, inner)
    if _has_zarr_metadata(node):
        version = 2 if any(os.path.exists(os.path.join(node, f)) for f in (".zarray", ".zgroup")) else 3
        fix = f'import zarr; zarr.open_group({json.dumps(root)}, mode="a", zarr_format={version})'
        raise StoreError(f"{root} has no root group metadata (only {inner} inside it has): add it with "
                         f"python -c {shlex.quote(fix)}")


def open_volume(location: str, dataset: str | None = None, *, mode: str = "r") -> Volume:
    """Open an existing volume.

    Parameters
    ----------
    location
        ``vol.zarr``, ``vol.zarr/DATASET`` or ``precomputed://URL`` (see module docstring).
    dataset
        Dataset inside the group when ``location`` names a group of datasets (the store root or
        ``vol.zarr/G``) rather than an array or OME-Zarr image.
    mode
        ``"r"`` (read-only) or ``"r+"`` (read-write).

    Raises
    ------
    StoreError
        Path missing, not zarr, dataset missing (the message lists the datasets present).
    """
    location = os.fspath(location)
    if location.startswith(PRECOMPUTED_PREFIX):
        return _check_spatial_metadata(_open_precomputed(location, mode))
    root, inner = split_location(location)
    if not os.path.exists(root) and "://" not in root:
        raise StoreError(f"{root} does not exist: check the path (`python -m pipeline.data` writes the datasets a "
                         "config names: synth, convert, fib25, isbi2012, ac3ac4)")
    _check_root_group(root, inner)
    try:
        group_or_array = zarr.open(store=root, mode="r" if mode == "r" else "r+")
    except Exception as exc:  # zarr raises several error types for non-zarr folders
        raise StoreError(f"{root} is not a readable zarr store ({type(exc).__name__}: {exc})") from None
    node = group_or_array
    if not inner and isinstance(node, zarr.Group) and not _is_ome_image(node) and dataset is None:
        raise StoreError(f"{root} is a group: name a dataset ({_list_datasets(node)}) as {root}/NAME")
    if inner:
        if not isinstance(node, zarr.Group) or inner not in node:
            present = _list_datasets(node) if isinstance(node, zarr.Group) else "it is an array"
            raise StoreError(f"dataset {inner!r} not found in {root} ({present}); pass {root}/NAME with an existing dataset")
        node = node[inner]
    if dataset is not None and isinstance(node, zarr.Group) and not _is_ome_image(node):
        group = f"{root}/{inner}" if inner else root
        if dataset not in node:
            raise StoreError(f"dataset {dataset!r} not found in {group} ({_list_datasets(node)}); pass {group}/NAME "
                             "with an existing dataset")
        node, inner = node[dataset], f"{inner}/{dataset}" if inner else dataset
    shown = f"{root}/{inner}" if inner else root
    if isinstance(node, zarr.Group):
        if not _is_ome_image(node):
            raise StoreError(f"{shown} is a group, not an array ({_list_datasets(node)}); name one of its datasets")
        return _check_spatial_metadata(_volume_from_ome_group(node, shown))
    return _check_spatial_metadata(_volume_from_array(node, shown))


def _spatial_metadata_problem(voxel_size: Sequence[float], offset: Sequence[float], n_spatial: int) -> str | None:
    """What is wrong with a voxel size (``n_spatial`` finite numbers > 0) and an offset
    (``n_spatial`` finite numbers), or None when both are valid."""
    if not finite_positive(voxel_size, n_spatial):
        return f"a voxel size of {list(voxel_size)} (it needs {n_spatial} finite positive numbers, z, y, x)"
    if len(offset) != n_spatial or not all(math.isfinite(v) for v in offset):
        return f"an offset of {list(offset)} (it needs {n_spatial} finite numbers, z, y, x)"
    return None


def _check_spatial_metadata(volume: Volume) -> Volume:
    """``volume`` if the voxel size and offset its store states are valid.

    Raises
    ------
    StoreError
        A voxel size or offset of the wrong length, or with a value that is NaN, infinite or (for
        the voxel size) not positive; the message names the metadata to correct.
    """
    if len(volume.shape) < 3 and len(volume.voxel_size) == 3:
        raise StoreError(f"{volume.location} has shape {tuple(volume.shape)} but a (z, y, x) voxel size: volumes are "
                         "(z, y, x) or (c, z, y, x); store a 2D image as one slice of shape (1, y, x)")
    problem = _spatial_metadata_problem(volume.voxel_size, volume.offset, min(len(volume.shape), 3))
    if problem:
        raise StoreError(f"{volume.location} states {problem}: correct its voxel_size / offset attribute "
                         "(OME-Zarr: the scale / translation)")
    return volume


def parent_group(location: str) -> str:
    """The group holding the zarr dataset at ``location``: ``vol.zarr/raw`` -> ``vol.zarr``,
    ``vol.zarr/G/raw`` -> ``vol.zarr/G``; an OME image's ``s0`` array counts as its image
    (``vol.zarr/raw/s0`` -> ``vol.zarr``)."""
    root, inner = split_location(location)
    parts = inner.split("/") if inner else []
    if len(parts) > 1 and parts[-1] == SCALE0:
        parts = parts[:-1]
    return "/".join([root, *parts[:-1]])


def member_names(group: zarr.Group) -> list[str]:
    """Sorted names of the arrays and groups directly in ``group``.

    Folders that are no zarr node, such as this project's run state ``.corrseg3d``, are skipped
    without zarr's warning about them.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Object at .* is not recognized as a component")
        return sorted(name for name, _ in group.members())


def dataset_group(location: str) -> zarr.Group | None:
    """The zarr group ``location`` names (``vol.zarr`` or ``vol.zarr/G``) when it is a folder of
    datasets, not an OME-Zarr image; None for an array, an image or a path that is no zarr group."""
    root, inner = split_location(location)
    try:
        group = zarr.open_group(store=root, path=inner or "", mode="r")
    except Exception:  # zarr raises several error types for paths that are not groups
        return None
    return None if _is_ome_image(group) else group


def _list_datasets(group: zarr.Group) -> str:
    names = member_names(group)
    return "has: " + ", ".join(names) if names else "it is empty"


def _ome_attrs(group: zarr.Group) -> dict[str, Any] | None:
    attrs = dict(group.attrs)
    if "ome" in attrs and "multiscales" in attrs["ome"]:
        return attrs["ome"]
    if "multiscales" in attrs:
        return attrs
    return None


def is_dataset(location: str) -> bool:
    """Whether zarr ``location`` names an existing array or OME-Zarr image (a plain group or a
    missing path does not). Reads the metadata only; metadata that zarr cannot read counts as
    no dataset."""
    root, inner = split_location(location)
    try:
        node = zarr.open(store=root, mode="r")
        if inner:
            node = node[inner] if isinstance(node, zarr.Group) and inner in node else None
    except Exception:  # zarr raises several error types for folders that are not zarr
        return False
    return isinstance(node, zarr.Array) or (isinstance(node, zarr.Group) and _is_ome_image(node))


def _is_ome_image(group: zarr.Group) -> bool:
    return _ome_attrs(group) is not None


def _volume_from_ome_group(group: zarr.Group, shown: str) -> Volume:
    multiscale = _ome_attrs(group)["multiscales"][0]  # type: ignore[index]
    scale0 = multiscale["datasets"][0]
    array = group[scale0["path"]]
    axes = multiscale["axes"]
    scale = [1.0] * len(axes)
    translation = [0.0] * len(axes)
    scaled = False
    for transform in scale0.get("coordinateTransformations", []) + multiscale.get("coordinateTransformations", []):
        values = transform.get(transform["type"])
        if isinstance(values, list) and len(values) != len(axes):
            raise StoreError(f"{shown} states an OME-Zarr {transform['type']} of {values} for {len(axes)} axes: "
                             f"correct its metadata to {len(axes)} entries")
        if transform["type"] == "scale":
            scale = [a * b for a, b in zip(scale, transform["scale"])]
            scaled = True
        elif transform["type"] == "translation":
            translation = [a + b for a, b in zip(translation, transform["translation"])]
    spatial = [i for i, ax in enumerate(axes) if ax.get("type") == "space"]
    return Volume(
        array=array,
        location=shown,
        voxel_size=tuple(float(scale[i]) for i in spatial),
        offset=tuple(float(translation[i]) for i in spatial),
        axis_names=tuple("c" if ax.get("type") == "channel" else ax["name"] for ax in axes),
        units=tuple(axes[i].get("unit", "nanometer") for i in spatial),
        voxel_size_stated=scaled,
    )


def _volume_from_array(array: zarr.Array, shown: str) -> Volume:
    attrs = dict(array.attrs)
    n_spatial = min(array.ndim, 3)
    stated = attrs.get("voxel_size", attrs.get("resolution"))
    voxel_size = tuple(float(v) for v in (stated if stated is not None else [1.0] * n_spatial))
    offset = tuple(float(v) for v in attrs.get("offset", [0.0] * n_spatial))
    default_axes = ("c",) * (array.ndim - n_spatial) + SPATIAL_AXES[-n_spatial:]
    axis_names = tuple(attrs.get("axis_names", default_axes))
    units = tuple(attrs.get("units", ["nanometer"] * n_spatial))
    return Volume(array, shown, voxel_size, offset, axis_names, units, voxel_size_stated=stated is not None)


def _ome_metadata(name: str, ndim: int, voxel_size: Sequence[float], offset: Sequence[float],
                  units: Sequence[str]) -> dict[str, Any]:
    n_channel = ndim - 3
    axes: list[dict[str, str]] = [{"name": "c", "type": "channel"}] * n_channel
    axes = axes + [{"name": n, "type": "space", "unit": u} for n, u in zip(SPATIAL_AXES, units)]
    return {
        "version": OME_VERSION,
        "multiscales": [{
            "name": name,
            "axes": axes,
            "datasets": [{
                "path": SCALE0,
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0] * n_channel + [float(v) for v in voxel_size]},
                    {"type": "translation", "translation": [0.0] * n_channel + [float(v) for v in offset]},
                ],
            }],
        }],
    }


def create_volume(
    location: str,
    shape: Sequence[int],
    dtype: Any,
    *,
    chunks: Sequence[int],
    shards: Sequence[int] | None = None,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    offset: Sequence[float] = (0.0, 0.0, 0.0),
    units: Sequence[str] = ("nanometer",) * 3,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    compression_level: int = 3,
) -> Volume:
    """Create an empty volume (zarr v3 OME-Zarr image, v2 inside a v2 store, or precomputed layer) and return it.

    Parameters
    ----------
    location
        ``vol.zarr/NAME`` (a dataset in a group) or ``precomputed://URL``.
    shape, dtype
        Full shape, (z, y, x) or (c, z, y, x), and element type.
    chunks, shards
        Storage chunk shape and optional shard shape (a multiple of ``chunks``); blocks of a
        blockwise writer must be multiples of the shard (or chunk) shape.
    voxel_size, offset, units
        Spatial metadata in (z, y, x).
    attrs
        Extra JSON metadata stored on the array, besides a fresh :data:`VOLUME_ID`.
    overwrite
        Replace an existing dataset; without it an existing dataset is an error.
    compression_level
        zstd level (``ZstdCodec``, numcodecs ``Zstd`` in v2; measured best ratio and speed for EM and
        affinities).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4):
        raise StoreError(f"cannot create {location}: shape {shape} must be (z, y, x) or (c, z, y, x)")
    if len(chunks) != len(shape):
        raise StoreError(f"cannot create {location}: chunks {tuple(chunks)} must have {len(shape)} entries like shape {shape}")
    problem = _spatial_metadata_problem(tuple(voxel_size), tuple(offset), 3)
    if problem:
        raise StoreError(f"cannot create {location} with {problem}")
    attrs = {**(attrs or {}), VOLUME_ID: uuid.uuid4().hex}
    if location.startswith(PRECOMPUTED_PREFIX):
        from .precomputed import create_precomputed

        return create_precomputed(location, shape, dtype, chunks=chunks, voxel_size=voxel_size,
                                  offset=offset, attrs=attrs, overwrite=overwrite)
    root, inner = split_location(location)
    if not inner:
        raise StoreError(f"cannot create {location}: name the dataset inside the store, e.g. {root}/segmentation")
    group = zarr.open_group(store=root, mode="a", zarr_format=3) if not os.path.exists(root) else zarr.open_group(store=root, mode="a")
    if inner in group:
        if not overwrite:
            raise StoreError(f"{root}/{inner} already exists: pass --overwrite to replace it")
        del group[inner]
    if group.metadata.zarr_format == 2:
        if shards:
            raise StoreError(f"cannot create {location}: {root} is a zarr v2 store, which has no shards; "
                             "write to a zarr v3 store (a new vol.zarr) instead")
        layout = {"compressors": numcodecs.Zstd(level=compression_level)}
    else:
        layout = {"compressors": [ZstdCodec(level=compression_level)],
                  "shards": tuple(int(s) for s in shards) if shards else None,
                  "dimension_names": ["c"] * (len(shape) - 3) + list(SPATIAL_AXES)}
    image = group.create_group(inner)
    image.attrs["ome"] = _ome_metadata(inner.split("/")[-1], len(shape), voxel_size, offset, units)
    array = image.create_array(SCALE0, shape=shape, dtype=dtype, chunks=tuple(int(c) for c in chunks), fill_value=0,
                               **layout)
    array.attrs.update(attrs)
    return _volume_from_ome_group(image, f"{root}/{inner}")


def local_path(location: str) -> str | None:
    """The folder of a zarr dataset or store, or of a local (``file://``) precomputed layer; else None."""
    if location.startswith(PRECOMPUTED_PREFIX):
        cloudpath = location[len(PRECOMPUTED_PREFIX):]
        return cloudpath[len("file://"):] if cloudpath.startswith("file://") else None
    root, inner = split_location(location)
    return os.path.join(root, inner) if inner else root


def remove_volume(location: str) -> None:
    """Delete a zarr dataset or a local (``file://``) precomputed layer, if it exists."""
    path = local_path(location)
    if path and os.path.isdir(path):
        shutil.rmtree(path)


def check_write_alignment(volume: Volume, block_shape: Sequence[int]) -> None:
    """Refuse a block layout that would let two blockwise writers share one write granule.

    Each spatial block extent must be a multiple of the granule (shard, else chunk) along that
    axis; a block may end early only at the volume border.
    """
    granule = volume.write_granule[-len(block_shape):]
    shape = volume.shape[-len(block_shape):]
    for axis, (b, g, s) in enumerate(zip(block_shape, granule, shape)):
        if b % g != 0 and b < s:
            raise StoreError(
                f"block shape {tuple(block_shape)} is not aligned to the write granule {tuple(granule)} of "
                f"{volume.location} (axis {axis}: {b} % {g} != 0); use a block shape that is a multiple of it"
            )


def _open_precomputed(location: str, mode: str) -> Volume:
    from .precomputed import open_precomputed

    return open_precomputed(location, mode)
