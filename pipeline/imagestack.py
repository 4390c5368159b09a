"""Ingest image stacks (PNG/TIFF folders, multi-page TIFF, HDF5, zarr, precomputed) and the ISBI 2012 slices.

Slices are read and written in z-slabs of one storage chunk, so memory is bounded by a slab
(HDF5 and multi-page TIFF inputs are read per slab too). Raw intensities are written as uint8:
uint8 input as is, other input rescaled linearly from its [min, max] to [0, 255]. Label stacks
(``labels=True``) keep their integer type. Axis order is (z, y, x). A zarr or Neuroglancer
precomputed input (any dtype, e.g. uint16 or float32 EM that ``pipeline.predict`` refuses) keeps
its stated voxel size unless one is given. The output is always zarr (``pipeline.export`` writes
precomputed layers).
"""

from __future__ import annotations

import argparse
import glob
import os
from typing import Any, Callable, Sequence

import numpy as np

from emcore.store import PRECOMPUTED_PREFIX, StoreError, Volume, create_volume, open_volume, split_location
from emcore.writing import removed_on_error

from .data import DataError, parse_numbers, refuse_existing
from .runstate import check_distinct

__all__ = ["open_stack", "convert", "write_isbi2012", "ISBI_VOXEL_SIZE", "register"]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ISBI_VOXEL_SIZE = (50.0, 4.0, 4.0)
SLAB_CHUNKS = (16, 256, 256)


def _read_image(read: Callable[[str], Any], path: str) -> Any:
    """``read(path)`` (an imageio reader); a damaged or unreadable file is a :class:`DataError` naming it."""
    try:
        return read(path)
    except (OSError, ValueError, SyntaxError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"cannot read slice {path} ({reason}): replace or remove the damaged file") from None


class _FolderStack:
    """A folder of 2D images as a lazy (z, y, x) array (files sorted by name)."""

    def __init__(self, files: Sequence[str]):
        import imageio.v3 as iio

        self.files = list(files)
        first = _read_image(iio.imread, self.files[0])
        self.dtype = first.dtype
        for path in self.files:
            props = _read_image(iio.improps, path)
            if props.shape != first.shape or props.dtype != first.dtype:
                raise DataError(f"slice {path} has shape {props.shape} {props.dtype}, expected {first.shape} "
                                f"{first.dtype} like {self.files[0]}: all slices must match")
        if first.ndim != 2:
            raise DataError(f"slice {self.files[0]} has shape {first.shape}: convert colour images to grey first")
        self.shape = (len(self.files),) + first.shape

    def __getitem__(self, z: slice) -> np.ndarray:
        import imageio.v3 as iio

        return np.stack([_read_image(iio.imread, path) for path in self.files[z]])


class _TiffStack:
    """A TIFF as a lazy (z, y, x) array: one page per slice is read per slab; a TIFF that stores the
    volume in fewer pages (one page with the slices as samples, a volumetric TIFF) is read whole on
    first access."""

    def __init__(self, path: str):
        import tifffile

        self.path = path
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            self.shape, self.dtype = tuple(series.shape), series.dtype
            self.paged = len(series.pages) == (self.shape[0] if len(self.shape) == 3 else 1)
        if len(self.shape) == 2:
            self.shape = (1,) + self.shape
        if len(self.shape) != 3:
            raise DataError(f"{path} holds an array of shape {self.shape}: expected a (z, y, x) grey stack")
        self._whole: np.ndarray | None = None

    def __getitem__(self, z: slice) -> np.ndarray:
        import tifffile

        if not self.paged:
            if self._whole is None:
                self._whole = tifffile.imread(self.path).reshape(self.shape)
            return self._whole[z]
        pages = range(*z.indices(self.shape[0]))
        return tifffile.imread(self.path, key=list(pages)).reshape((len(pages),) + self.shape[1:])


def open_stack(path: str, *, dataset: str = "main") -> Any:
    """Open an image stack lazily as an array-like with ``shape``, ``dtype`` and z-slab slicing.

    Parameters
    ----------
    path
        A folder of PNG/TIFF slices (sorted by file name), a (multi-page) TIFF, an HDF5 file, or a
        zarr dataset (``vol.zarr/NAME``) or a precomputed layer (``precomputed://URL``), both opened as
        an :class:`emcore.store.Volume`.
    dataset
        Dataset key inside an HDF5 file.

    Raises
    ------
    DataError
        Missing input, no slices, slices of different shapes, missing HDF5 key (lists the keys),
        a zarr dataset that is not (z, y, x).
    """
    if path.startswith(PRECOMPUTED_PREFIX) or _is_zarr(path):
        volume = open_volume(path)
        if volume.ndim != 3:
            raise DataError(f"{path} has shape {volume.shape}: expected a (z, y, x) volume")
        return volume
    if os.path.isdir(path):
        files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise DataError(f"{path} holds no {'/'.join(IMAGE_SUFFIXES)} slices: point INPUT at the slice folder")
        return _FolderStack(files)
    if not os.path.isfile(path):
        raise DataError(f"input {path} does not exist: give a slice folder, a TIFF, an HDF5 file, IN.zarr/NAME or "
                        "precomputed://URL")
    if path.lower().endswith((".tif", ".tiff")):
        return _TiffStack(path)
    if path.lower().endswith(HDF5_SUFFIXES):
        import h5py

        handle = h5py.File(path, "r")
        if dataset not in handle or not isinstance(handle[dataset], h5py.Dataset):
            keys: list[str] = []
            handle.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
            handle.close()
            raise DataError(f"{path} has no dataset {dataset!r} (datasets: {', '.join(keys) or 'none'}): "
                            f"pass --dataset KEY")
        if handle[dataset].ndim != 3:
            shape = handle[dataset].shape
            handle.close()
            raise DataError(f"{path}:{dataset} has shape {shape}: expected a (z, y, x) volume")
        return handle[dataset]
    raise DataError(f"input {path} is not a folder, .tif/.tiff or .h5/.hdf5 file, IN.zarr/NAME or precomputed://URL")


def _is_zarr(path: str) -> bool:
    """Whether ``path`` names a zarr location (a ``.zarr`` component, or zarr metadata)."""
    try:
        split_location(path)
    except StoreError:
        return False
    return True


def _intensity_range(stack: Any, slab: int, name: str) -> tuple[float, float]:
    """[min, max] of a stack read in z-slabs of ``slab``; NaN and infinity are refused (they have no
    grey value, and one infinity would scale every other voxel to 0), and so is a constant stack
    (min = max: nothing to rescale)."""
    low, high = np.inf, -np.inf
    for z0 in range(0, stack.shape[0], slab):
        block = np.asarray(stack[z0:z0 + slab])
        if np.issubdtype(block.dtype, np.floating) and not np.isfinite(block).all():
            raise DataError(f"{name} holds NaN or infinite values in slices {z0}-{z0 + len(block) - 1}: replace "
                            "them by grey values before converting")
        low, high = min(low, float(block.min())), max(high, float(block.max()))
    if low == high:
        raise DataError(f"{name} holds the single value {low:g} everywhere: there is no image to rescale to "
                        "0-255; check that this is the right stack (or pass --labels for a label stack)")
    return low, high


def convert(
    input_path: str,
    out_location: str,
    *,
    voxel_size: Sequence[float] | None = None,
    dataset: str = "main",
    labels: bool = False,
    overwrite: bool = False,
) -> str:
    """Convert an image stack to a zarr volume, writing one z-slab at a time.

    Parameters
    ----------
    input_path
        See :func:`open_stack`.
    out_location
        ``OUT.zarr/NAME``.
    voxel_size
        (z, y, x) voxel size in nm; default: a zarr or precomputed input's stated one, else
        :data:`ISBI_VOXEL_SIZE`.
    dataset
        HDF5 dataset key.
    labels
        The stack holds integer instance labels: written with their own dtype, unscaled.
    overwrite
        Replace an existing dataset.

    Returns
    -------
    ``out_location``. Nothing is left behind if conversion fails.
    """
    if out_location.startswith(PRECOMPUTED_PREFIX):
        raise DataError(f"convert writes zarr, not {out_location}: write OUT.zarr/NAME (`python -m pipeline.export` "
                        "writes precomputed layers)")
    if not split_location(out_location)[1]:
        raise DataError(f"{out_location} names no dataset: write to OUT.zarr/NAME, e.g. OUT.zarr/raw")
    stack = open_stack(input_path, dataset=dataset)
    if voxel_size is None:
        voxel_size = stack.voxel_size if getattr(stack, "voxel_size_stated", False) else ISBI_VOXEL_SIZE
    kind = np.dtype(stack.dtype)
    if labels and not np.issubdtype(kind, np.integer):
        raise DataError(f"{input_path} holds {kind} values: labels must be integers (drop --labels for raw images)")
    if isinstance(stack, Volume):
        check_distinct({"stack": input_path}, {"raw": out_location})
    if not overwrite:
        refuse_existing([out_location])
    chunks = tuple(min(c, s) for c, s in zip(SLAB_CHUNKS, stack.shape))
    scale = None if labels or kind == np.uint8 else _intensity_range(stack, chunks[0], input_path)
    with removed_on_error([out_location]):
        volume = create_volume(out_location, stack.shape, kind if labels else np.uint8, chunks=chunks,
                               voxel_size=voxel_size, attrs={"source": input_path if "://" in input_path else os.path.abspath(input_path)},
                               overwrite=overwrite)
        for z0 in range(0, stack.shape[0], chunks[0]):
            block = np.asarray(stack[z0:z0 + chunks[0]])
            if scale is not None:
                low, high = scale
                block = np.rint((block.astype(np.float64) - low) * (255.0 / (high - low)))
            volume[z0:z0 + len(block)] = block.astype(volume.dtype)
    return out_location


def _parse_slices(text: str) -> tuple[int, int]:
    try:
        first, last = (int(v) for v in text.split("-")) if "-" in text else (int(text),) * 2
    except ValueError:
        first, last = -1, -1
    if not 0 <= first <= last:
        raise argparse.ArgumentTypeError(f"{text!r} must be a slice range FIRST-LAST, e.g. 0-19")
    return first, last


def write_isbi2012(source: str, out_location: str, *, slices: tuple[int, int] = (0, 19),
                   overwrite: bool = False) -> tuple[str, str]:
    """Write the ISBI 2012 training slices as ``OUT.zarr/raw`` and 2D instance ``OUT.zarr/labels``.

    Labels of slice z are the 4-connected components of ``label == 255`` (neurite interior),
    numbered consecutively and uniquely across slices; membranes are 0. They link nothing across
    slices, so the labels carry the attribute ``labels_2d: true`` (mask z-affinities in training).

    Parameters
    ----------
    source
        Folder with ``image/NN.png`` and ``label/NN.png``.
    out_location
        The store, ``OUT.zarr``.
    slices
        Inclusive (first, last) slice numbers.
    overwrite
        Replace existing datasets.
    """
    import imageio.v3 as iio
    from skimage.measure import label as connected_components

    root, inner = split_location(out_location)
    if inner:
        raise DataError(f"{out_location} names a dataset: pass the store (OUT.zarr); raw and labels are written inside it")
    names = [f"{z:02d}.png" for z in range(slices[0], slices[1] + 1)]
    missing = [os.path.join(source, sub, n) for sub in ("image", "label") for n in names
               if not os.path.isfile(os.path.join(source, sub, n))]
    if missing:
        raise DataError(f"{missing[0]} not found ({len(missing)} files missing): check --source and --slices")
    raw = np.stack([iio.imread(os.path.join(source, "image", n)) for n in names])
    if raw.dtype != np.uint8 or raw.ndim != 3:
        raise DataError(f"ISBI images in {source} must be uint8 grey slices, got {raw.dtype} {raw.shape}")
    labels = np.zeros(raw.shape, np.uint64)
    next_id = 0
    for z, name in enumerate(names):
        components, count = connected_components(iio.imread(os.path.join(source, "label", name)) == 255,
                                                 connectivity=1, return_num=True)
        labels[z] = np.where(components > 0, components + next_id, 0)
        next_id += count
    locations = (f"{root}/raw", f"{root}/labels")
    if not overwrite:
        refuse_existing(locations)
    attrs = {"source": os.path.abspath(source), "slices": list(slices)}
    with removed_on_error(locations):
        for location, data, extra in ((locations[0], raw, {}), (locations[1], labels, {"labels_2d": True})):
            volume = create_volume(location, data.shape, data.dtype, chunks=(1,) + data.shape[1:],
                                   voxel_size=ISBI_VOXEL_SIZE, attrs={**attrs, **extra}, overwrite=overwrite)
            volume[:] = data
    return locations


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` and ``isbi2012`` subcommands to ``python -m pipeline.data``."""
    parser = subparsers.add_parser("convert", help="convert a PNG/TIFF folder, TIFF, HDF5 or zarr stack to zarr",
                                   description=convert.__doc__.split("\n")[0])
    parser.add_argument("input", help="slice folder, (multi-page) TIFF, HDF5 file, zarr dataset IN.zarr/NAME or precomputed://URL")
    parser.add_argument("out", help="output dataset, OUT.zarr/NAME")
    parser.add_argument("--voxel-size", type=parse_numbers(float, 3, "50,4,4"), default=None,
                        help="z,y,x voxel size in nm (default: a zarr or precomputed input's own, else 50,4,4)")
    parser.add_argument("--dataset", default="main", help="HDF5 dataset key (default main)")
    parser.add_argument("--labels", action="store_true", help="input holds integer labels: keep dtype, no scaling")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.set_defaults(run=lambda a: print("wrote", convert(a.input, a.out, voxel_size=a.voxel_size,
                                                             dataset=a.dataset, labels=a.labels,
                                                             overwrite=a.overwrite)))
    parser = subparsers.add_parser("isbi2012", help="write the ISBI 2012 training slices (raw + 2D labels)",
                                   description=write_isbi2012.__doc__.split("\n")[0])
    parser.add_argument("out", help="output store, OUT.zarr")
    parser.add_argument("--source", required=True,
                        help="folder with image/NN.png and label/NN.png (the ISBI 2012 training slices)")
    parser.add_argument("--slices", type=_parse_slices, default=(0, 19), help="slice range FIRST-LAST (default 0-19)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing raw/labels")
    parser.set_defaults(run=lambda a: print("wrote", *write_isbi2012(a.source, a.out, slices=a.slices,
                                                                     overwrite=a.overwrite)))
