"""Downsampled OME-Zarr 0.5 pyramid levels ``s1, s2, ...`` for a volume written by this project.

Each level halves y and x of the previous one (z is kept: EM is anisotropic, 30 nm in z vs 6 nm in
xy). Labels are reduced by the most frequent label in each 2x2 window (``mode``) or by taking its
first voxel (``nearest``); grey values and affinities by the ``mean`` of the window. Levels are
written block by block (one storage chunk of the output at a time), so memory stays bounded.

Metadata (OME-Zarr 0.5, ``ome.multiscales[0]``): level ``l`` has scale ``s0_scale * (1, 2^l, 2^l)``
(z, y, x). A ``mean`` or ``mode`` voxel summarises a 2^l x 2^l window of s0 voxels, so its centre
lies (2^l - 1)/2 s0 voxels beyond the window's first voxel and the translation moves by that much
in y and x; a ``nearest`` voxel *is* the first voxel of its window and keeps the s0 translation.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from emcore.blocks import BlockGrid
from emcore.store import SCALE0, open_volume, split_location

__all__ = ["METHODS", "PyramidError", "build_pyramid", "default_method", "downsample_xy"]

METHODS = ("mean", "mode", "nearest")
#: Dataset names treated as labels by ``method="auto"`` regardless of dtype.
LABEL_NAMES = ("labels", "segmentation", "fragments", "gt", "mask")


class PyramidError(ValueError):
    """The volume cannot get a pyramid (not an OME-Zarr image, levels exist, bad option)."""


def default_method(name: str, dtype: np.dtype) -> str:
    """``mode`` for label volumes, ``mean`` otherwise.

    A volume counts as labels when its dtype is an integer type and either its dataset name is one
    of :data:`LABEL_NAMES` or the dtype is wider than 8 bits (this pipeline stores grey values as
    uint8 and affinities as uint8/float16, so wider integers are always ids).
    """
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        return "mean"
    return "mode" if name.split("/")[-1] in LABEL_NAMES or dtype.itemsize > 1 else "mean"


def downsample_xy(data: np.ndarray, method: str) -> np.ndarray:
    """Halve the last two axes of ``data``; odd sizes round up (the last window is partial).

    Parameters
    ----------
    data
        (..., y, x) array.
    method
        ``mean`` (rounded to the input dtype for integers), ``mode`` (most frequent value of the
        window; ties go to the value met first in (y, x) order) or ``nearest`` (the first voxel).
    """
    if method == "nearest":
        return np.ascontiguousarray(data[..., ::2, ::2])
    ny, nx = data.shape[-2:]
    pad = [(0, 0)] * (data.ndim - 2) + [(0, ny % 2), (0, nx % 2)]
    windows = _windows(np.pad(data, pad))
    mask = _windows(np.pad(np.ones((ny, nx), bool), pad[-2:]))
    if method == "mean":
        total = (windows.astype(np.float64) * mask).sum(-1)
        mean = total / mask.sum(-1)
        return np.rint(mean).astype(data.dtype) if np.issubdtype(data.dtype, np.integer) else mean.astype(data.dtype)
    if method == "mode":
        # count, for each of the 4 window voxels, how many valid voxels of the window carry its value
        counts = ((windows[..., :, None] == windows[..., None, :]) & mask[:, :, None, :]).sum(-1)
        counts = np.where(mask, counts, -1)
        pick = np.argmax(counts, axis=-1)
        return np.take_along_axis(windows, pick[..., None], axis=-1)[..., 0]
    raise PyramidError(f"unknown downsampling method {method!r}: use one of {', '.join(METHODS)}")


def _windows(data: np.ndarray) -> np.ndarray:
    """(..., 2a, 2b) -> (..., a, b, 4): the 2x2 windows, in (y, x) order."""
    a, b = data.shape[-2] // 2, data.shape[-1] // 2
    split = data.reshape(data.shape[:-2] + (a, 2, b, 2))
    return np.swapaxes(split, -3, -2).reshape(data.shape[:-2] + (a, b, 4))


def _level_transforms(base: list[dict[str, Any]], factor: int, shift: bool) -> list[dict[str, Any]]:
    scale = [float(v) for v in next(t["scale"] for t in base if t["type"] == "scale")]
    translation = next((t["translation"] for t in base if t["type"] == "translation"), [0.0] * len(scale))
    translation = [float(v) for v in translation]
    new_scale = scale[:-2] + [v * factor for v in scale[-2:]]
    offset = (factor - 1) / 2 if shift else 0.0
    new_translation = translation[:-2] + [t + offset * v for t, v in zip(translation[-2:], scale[-2:])]
    return [{"type": "scale", "scale": new_scale}, {"type": "translation", "translation": new_translation}]


def build_pyramid(location: str, *, levels: int = 3, method: str = "auto", overwrite: bool = False) -> list[str]:
    """Write levels ``s1..s<levels>`` of the OME-Zarr image ``vol.zarr/NAME`` and register them.

    Parameters
    ----------
    location
        ``vol.zarr/NAME``, an OME-Zarr image group written by this project (array ``s0``).
    levels
        Number of downsampled levels; level l is 2^l times coarser in y and x.
    method
        ``auto`` (:func:`default_method`), ``mean``, ``mode`` or ``nearest``.
    overwrite
        Replace existing levels; without it existing ``s1...`` arrays are an error.

    Returns
    -------
    The array paths written, ``["s1", ...]``. On failure the new arrays are removed and the
    metadata is left as it was.
    """
    root, inner = split_location(location)
    volume = open_volume(location)
    group = zarr.open(store=root, mode="r+", path=inner)
    ome = dict(group.attrs).get("ome") if isinstance(group, zarr.Group) else None
    if not ome or ome.get("multiscales", [{}])[0].get("datasets", [{}])[0].get("path") != SCALE0:
        raise PyramidError(f"{location} has no OME-Zarr 0.5 multiscales with {SCALE0}: write it with this pipeline first")
    if levels < 1:
        raise PyramidError(f"--levels must be >= 1, got {levels}")
    useful = max_levels(volume.spatial_shape)
    if useful == 0:
        raise PyramidError(f"{location}'s sections are 1x1 in y and x: there is nothing to downsample")
    if levels > useful:
        raise PyramidError(f"--levels {levels} is more than the {useful} levels that {location}'s "
                           f"{volume.spatial_shape[1]}x{volume.spatial_shape[2]} sections allow (level {useful} is "
                           f"already 1x1 in y and x): pass --levels {useful} or fewer")
    method = default_method(inner, volume.dtype) if method == "auto" else method
    if method not in METHODS:
        raise PyramidError(f"unknown method {method!r}: use auto or one of {', '.join(METHODS)}")
    existing = sorted(name for name, _ in group.arrays() if name != SCALE0)
    if existing and not overwrite:
        raise PyramidError(f"{location} already has levels {', '.join(existing)}: pass --overwrite to rebuild them")
    for name in existing:
        del group[name]
    paths = [f"s{level}" for level in range(1, levels + 1)]
    try:
        previous = group[SCALE0]
        for path in paths:
            previous = _write_level(group, previous, path, method)
    except BaseException:
        for path in paths:
            if path in group:
                del group[path]
        raise
    multiscale = dict(ome["multiscales"][0])
    base = multiscale["datasets"][0]
    multiscale["datasets"] = [base] + [
        {"path": path, "coordinateTransformations": _level_transforms(base["coordinateTransformations"], 2 ** level,
                                                                      method != "nearest")}
        for level, path in enumerate(paths, start=1)]
    multiscale["type"] = method
    multiscale["metadata"] = {"description": "2x in y and x per level, z kept", "method": method}
    group.attrs["ome"] = {**ome, "multiscales": [multiscale] + list(ome["multiscales"][1:])}
    return paths


def max_levels(shape: Sequence[int]) -> int:
    """Number of levels until a section of ``shape`` (z, y, x) is 1x1: ``ceil(log2(max(y, x)))``.

    Level ``l`` has ``ceil(n / 2**l)`` voxels along y and x, so further levels would repeat the last.
    A 1x1 volume allows no level; the result is then 0.
    """
    return int(max(shape[-2:]) - 1).bit_length()


def _write_level(group: zarr.Group, source: zarr.Array, path: str, method: str) -> zarr.Array:
    shape = tuple(source.shape[:-2]) + tuple((n + 1) // 2 for n in source.shape[-2:])
    chunks = tuple(min(c, s) for c, s in zip(group[SCALE0].chunks, shape))
    target = group.create_array(path, shape=shape, dtype=source.dtype, chunks=chunks,
                                compressors=[ZstdCodec(level=3)], fill_value=0,
                                dimension_names=source.metadata.dimension_names)
    lead = tuple(slice(None) for _ in shape[:-3])
    grid = BlockGrid(shape[-3:], chunks[-3:])
    for index in range(grid.n_blocks):
        block = grid.block(index)
        z, y, x = block.slices
        read = lead + (z, slice(2 * y.start, 2 * y.stop), slice(2 * x.start, 2 * x.stop))
        target[lead + block.slices] = downsample_xy(np.asarray(source[read]), method)
    return target


def _check_levels(value: str) -> int:
    import argparse

    try:
        levels = int(value)
    except ValueError:
        levels = 0
    if levels < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number of levels, e.g. 3")
    return levels


def register(subparsers: Any) -> None:
    """Add ``pyramid`` to ``python -m pipeline.export``."""
    parser = subparsers.add_parser("pyramid", help="add downsampled OME-Zarr levels s1..sN to vol.zarr/NAME",
                                   description=build_pyramid.__doc__.split("\n")[0])
    parser.add_argument("location", help="OME-Zarr image written by the pipeline, vol.zarr/NAME")
    parser.add_argument("--levels", type=_check_levels, default=3, help="number of levels (default 3)")
    parser.add_argument("--method", default="auto", choices=("auto",) + METHODS,
                        help="auto (default: mode for labels, mean otherwise), mean, mode or nearest")
    parser.add_argument("--overwrite", action="store_true", help="rebuild existing levels")
    parser.set_defaults(run=_run)


def _run(args: Any) -> None:
    paths = build_pyramid(args.location, levels=args.levels, method=args.method, overwrite=args.overwrite)
    print(f"pyramid: wrote {', '.join(f'{args.location}/{p}' for p in paths)}")

