"""``python -m pipeline.data ac3ac4``: ingest the AC3/AC4 release (Kasthuri et al. 2015) as the paper's splits.

Accepted ``--source`` forms:

* the processed HDF5 files of the reference code, ``AC3_inputs.h5``, ``AC3_labels.h5``,
  ``AC4_inputs.h5``, ``AC4_labels.h5`` (dataset ``main``, z, y, x), or the folder holding them;
* the Lichtman-lab ``AC3AC4Package.zip`` or the folder it was unpacked into. Its layout is not
  documented by the lab; public loaders of it agree on four slice folders, found here by name at
  any depth: ``ac3_EM`` and ``ac4_EM`` (8-bit grey EM slices, e.g.
  ``Thousand_highmag_256slices_2kcenter_1k_inv_0000.png``, ``affinecropped4_inv_0001.png``) and
  ``ac3_dbseg_images`` and ``ac4_seg_daniel`` (VAST label exports ``ac3_daniel_s0001.png``...,
  RGB colour = segment id ``R << 16 | G << 8 | B``, 0 = unlabelled). The label files are numbered
  in the opposite z order to the EM files: EM slice z (ascending file number) pairs with the label
  file of the (z+1)-th *largest* number. PNG and TIFF slices are both read.

Written (voxel size 30 x 6 x 6 nm, z, y, x): ``OUT.zarr/ac4/train/{raw,labels}`` = AC4 slices 0-79,
``OUT.zarr/ac4/valid/...`` = AC4 80-99, ``OUT.zarr/ac3/test/...`` = AC3 ``[-100:]``, the *last* 100
slices. The reference code selects ``AC3_inputs.h5['main'][-100:]``; the processed AC3 holds all 256
slices, so its test block is AC3 slices 156-255 (docs/method.md §12). Taking the same
slices is what makes a score comparable with the paper's table.

Every input file is hashed (SHA-256) and compared with :data:`KNOWN_SHA256`; the hash is stored in
the outputs' ``source_sha256`` attribute. No checksum of the AC3/AC4 files is published, so an
unknown file gives a warning, not an error; a file whose name is in the table but whose hash
differs gives a warning that the data is not the known release.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from emcore.store import create_volume, split_location
from emcore.writing import removed_on_error

from .data import DataError, refuse_existing
from .imagestack import SLAB_CHUNKS, open_stack

__all__ = ["AC3AC4_URL", "KNOWN_SHA256", "SPLITS", "VOXEL_SIZE", "download", "ingest", "register", "sha256_of"]

AC3AC4_URL = "https://software.rc.fas.harvard.edu/lichtman/vast/AC3AC4Package.zip"
PACKAGE_NAME = "AC3AC4Package.zip"
VOXEL_SIZE = (30.0, 6.0, 6.0)
#: Shapes of the public release (AC3 256 sections, AC4 100; 1024 x 1024 each).
EXPECTED_SHAPES = {"AC3": (256, 1024, 1024), "AC4": (100, 1024, 1024)}
#: (output group, volume, slices): the paper's splits.
SPLITS = (("ac4/train", "AC4", slice(0, 80)), ("ac4/valid", "AC4", slice(80, 100)), ("ac3/test", "AC3", slice(-100, None)))
#: File name -> SHA-256 of a known release file. None is published for AC3/AC4 yet: add the hashes
#: printed by a first ingest of a trusted copy here so later copies are verified against them.
KNOWN_SHA256: dict[str, str] = {}
HDF5_FILES = {"AC3": ("AC3_inputs.h5", "AC3_labels.h5"), "AC4": ("AC4_inputs.h5", "AC4_labels.h5")}
PACKAGE_FOLDERS = {"AC3": ("ac3_EM", "ac3_dbseg_images"), "AC4": ("ac4_EM", "ac4_seg_daniel")}
SLICE_SUFFIXES = (".png", ".tif", ".tiff")
DOWNLOAD_BLOCK = 1 << 20


@dataclass
class _Source:
    """One volume (AC3 or AC4): lazy raw and label stacks and the files they came from."""

    raw: Any
    labels: Any
    files: tuple[str, ...]


class _SliceFiles:
    """Numbered 2D slices (in a folder or a zip) as a lazy (z, y, x) array."""

    def __init__(self, names: Sequence[str], read: Callable[[str], np.ndarray], *, labels: bool):
        self.names, self._read, self._labels = list(names), read, labels
        first = self._slice(self.names[0])
        self.shape = (len(self.names),) + first.shape
        self.dtype = first.dtype

    def _slice(self, name: str) -> np.ndarray:
        image = np.asarray(self._read(name))
        if image.ndim == 3 and self._labels:
            rgb = image[..., :3].astype(np.uint32)
            image = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        elif image.ndim == 3 and (image[..., :3] == image[..., :1]).all():
            image = image[..., 0]
        if image.ndim != 2:
            raise DataError(f"slice {name} has shape {image.shape}: expected a grey (or, for labels, RGB) image")
        return image.astype(np.uint32) if self._labels else image

    def __getitem__(self, z: slice) -> np.ndarray:
        slices = [self._slice(name) for name in self.names[z]]
        for name, image in zip(self.names[z], slices):
            if image.shape != self.shape[1:]:
                raise DataError(f"slice {name} has shape {image.shape}, expected {self.shape[1:]} like {self.names[0]}")
        return np.stack(slices)


def _number(name: str) -> int:
    found = re.findall(r"\d+", os.path.basename(name))
    return int(found[-1]) if found else -1


def sha256_of(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(DOWNLOAD_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(paths: Sequence[str]) -> dict[str, str]:
    """Hash ``paths``; warn for files with no or a different known checksum."""
    hashes = {}
    for path in paths:
        name, digest = os.path.basename(path), sha256_of(path)
        known = KNOWN_SHA256.get(name)
        if known is None:
            warnings.warn(f"no known SHA-256 for {name}; recorded {digest} in the outputs' attributes", stacklevel=3)
        elif known != digest:
            warnings.warn(f"{path} has SHA-256 {digest}, not the known {known}: it is not the known release "
                          f"(results may not be comparable)", stacklevel=3)
        hashes[name] = digest
    return hashes


def _hdf5_sources(folder: str) -> dict[str, _Source]:
    sources = {}
    for volume, names in HDF5_FILES.items():
        paths = [os.path.join(folder, name) for name in names]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise DataError(f"{missing[0]} not found: the processed release has {', '.join(sum(HDF5_FILES.values(), ()))}")
        sources[volume] = _Source(open_stack(paths[0], dataset="main"), open_stack(paths[1], dataset="main"), tuple(paths))
    return sources


def _package_sources(names: Sequence[str], read: Callable[[str], np.ndarray], where: str) -> dict[str, _Source]:
    by_folder: dict[str, list[str]] = {}
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if len(parts) >= 2 and name.lower().endswith(SLICE_SUFFIXES):
            by_folder.setdefault(parts[-2], []).append(name)
    sources = {}
    for volume, (em, seg) in PACKAGE_FOLDERS.items():
        if em not in by_folder or seg not in by_folder:
            raise DataError(f"{where} has no {em}/ and {seg}/ slice folders: expected the AC3AC4Package layout "
                            f"(ac3_EM, ac3_dbseg_images, ac4_EM, ac4_seg_daniel) or the HDF5 files AC3_inputs.h5 ...")
        images = sorted(by_folder[em], key=_number)
        labels = sorted(by_folder[seg], key=_number, reverse=True)
        if len(images) != len(labels):
            raise DataError(f"{where}: {em} has {len(images)} slices but {seg} has {len(labels)}: the package is incomplete")
        sources[volume] = _Source(_SliceFiles(images, read, labels=False), _SliceFiles(labels, read, labels=True), ())
    return sources


def _open_sources(source: str) -> tuple[dict[str, _Source], list[str]]:
    """The AC3 and AC4 stacks of ``source`` and the files to hash."""
    import imageio.v3 as iio

    if os.path.isfile(source) and zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)

        def read(name: str) -> np.ndarray:
            return iio.imread(io.BytesIO(archive.read(name)), extension=os.path.splitext(name)[1])

        return _package_sources(archive.namelist(), read, source), [source]
    if os.path.isfile(source) and source.lower().endswith((".h5", ".hdf5")):
        source = os.path.dirname(os.path.abspath(source))
    if not os.path.isdir(source):
        raise DataError(f"--source {source} does not exist: give {PACKAGE_NAME}, its unpacked folder or the folder "
                        f"with AC3_inputs.h5 ... (or add --download)")
    if os.path.isfile(os.path.join(source, HDF5_FILES["AC3"][0])):
        sources = _hdf5_sources(source)
        return sources, [path for s in sources.values() for path in s.files]
    if os.path.isfile(os.path.join(source, PACKAGE_NAME)):
        return _open_sources(os.path.join(source, PACKAGE_NAME))
    names = [os.path.relpath(p, source) for p in glob.glob(os.path.join(source, "**", "*"), recursive=True)]
    return _package_sources(names, lambda name: iio.imread(os.path.join(source, name)), source), []


def _check(sources: dict[str, _Source]) -> None:
    for volume, src in sources.items():
        if np.dtype(src.raw.dtype) != np.uint8:
            raise DataError(f"{volume} raw is {np.dtype(src.raw.dtype)}: expected 8-bit grey EM (uint8)")
        if not np.issubdtype(np.dtype(src.labels.dtype), np.integer):
            raise DataError(f"{volume} labels are stored as {np.dtype(src.labels.dtype)}: labels must be integer ids")
        if tuple(src.raw.shape) != tuple(src.labels.shape):
            raise DataError(f"{volume} raw has shape {tuple(src.raw.shape)} but labels {tuple(src.labels.shape)}: "
                            "they must match voxel for voxel")
        if src.raw.shape[0] < 100:
            raise DataError(f"{volume} has {src.raw.shape[0]} slices: the paper's splits need at least 100")
        if tuple(src.raw.shape) != EXPECTED_SHAPES[volume]:
            warnings.warn(f"{volume} has shape {tuple(src.raw.shape)}, the public release {EXPECTED_SHAPES[volume]}",
                          stacklevel=3)


def ingest(source: str, out: str, *, overwrite: bool = False) -> list[str]:
    """Write the paper's AC3/AC4 splits from ``source`` into the store ``out``.

    Parameters
    ----------
    source
        ``AC3AC4Package.zip``, its unpacked folder, the folder with the four processed HDF5 files,
        or one of those files (see the module docstring).
    out
        The store, ``OUT.zarr``.
    overwrite
        Replace existing split datasets.

    Returns
    -------
    The dataset locations written. Everything is checked before the first write; a failure
    removes what was written (and the store, if this call created it).
    """
    root, inner = split_location(out)
    if inner:
        raise DataError(f"{out} names a dataset: pass the store (OUT.zarr); the splits are written inside it")
    sources, files = _open_sources(source)
    _check(sources)
    locations = [f"{root}/{group}/{kind}" for group, _, _ in SPLITS for kind in ("raw", "labels")]
    if not overwrite:
        refuse_existing(locations)
    hashes = _verify(files)
    with removed_on_error(locations):
        for group, volume, selection in SPLITS:
            src = sources[volume]
            start, stop, _ = selection.indices(src.raw.shape[0])
            attrs = {"source": os.path.abspath(source), "source_sha256": hashes, "source_volume": volume,
                     "source_slices": [start, stop], "split": group}
            for kind, stack in (("raw", src.raw), ("labels", src.labels)):
                _copy(stack, f"{root}/{group}/{kind}", start, stop, attrs, overwrite)
    return locations


def _copy(stack: Any, location: str, start: int, stop: int, attrs: dict[str, Any], overwrite: bool) -> None:
    shape = (stop - start,) + tuple(stack.shape[1:])
    chunks = tuple(min(c, s) for c, s in zip(SLAB_CHUNKS, shape))
    volume = create_volume(location, shape, stack.dtype, chunks=chunks, voxel_size=VOXEL_SIZE, attrs=attrs,
                           overwrite=overwrite)
    for z0 in range(0, shape[0], chunks[0]):
        z1 = min(z0 + chunks[0], shape[0])
        volume[z0:z1] = np.asarray(stack[start + z0:start + z1])


def download(url: str, path: str, *, sha256: str | None = None, timeout: float = 30.0) -> str:
    """Fetch ``url`` to ``path``, resuming an interrupted download (HTTP Range) from ``path.part``.

    Parameters
    ----------
    url
        What to fetch.
    path
        Destination file; an existing complete file is only verified.
    sha256
        Expected hex digest; a mismatch deletes the download and raises :class:`DataError`.
    timeout
        Seconds to wait for the server.
    """
    if not os.path.exists(path):
        part = path + ".part"
        start = os.path.getsize(part) if os.path.exists(part) else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                mode = "ab" if start and response.status == 206 else "wb"
                with open(part, mode) as handle:
                    shutil.copyfileobj(response, handle, DOWNLOAD_BLOCK)
        except urllib.error.HTTPError as error:
            if error.code != 416:  # 416: the part file already holds everything
                raise DataError(f"cannot download {url}: HTTP {error.code} {error.reason}; download it by hand "
                                f"and put it at {path}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DataError(f"cannot download {url} ({reason}): no internet here? Download it elsewhere, put it "
                            f"at {path} and rerun without --download (a partial {part} resumes)") from None
        os.replace(part, path)
    if sha256 is not None and sha256_of(path) != sha256:
        os.remove(path)
        raise DataError(f"{path} does not match SHA-256 {sha256}: removed it; rerun --download")
    return path


def _run(args: argparse.Namespace) -> None:
    source = args.source
    if args.download:
        target = os.path.join(source, PACKAGE_NAME) if os.path.isdir(source) else source
        source = download(args.url, target, sha256=KNOWN_SHA256.get(os.path.basename(target)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = ingest(source, args.out, overwrite=args.overwrite)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print("wrote", *written)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``ac3ac4`` subcommand to ``python -m pipeline.data``."""
    parser = subparsers.add_parser("ac3ac4", help="ingest AC3/AC4 (package zip or processed HDF5) as the paper's splits",
                                   description="Ingest AC3/AC4 as the paper's splits: ac4/train = AC4 0-79, "
                                               "ac4/valid = AC4 80-99, ac3/test = AC3[-100:] (30x6x6 nm).")
    parser.add_argument("out", help="output store, OUT.zarr (writes ac4/train, ac4/valid, ac3/test)")
    parser.add_argument("--source", required=True,
                        help=f"{PACKAGE_NAME}, its unpacked folder, or the folder with AC3_inputs.h5 ...; "
                             "with --download: where to put the zip")
    parser.add_argument("--download", action="store_true", help=f"fetch {PACKAGE_NAME} first (resumes)")
    parser.add_argument("--url", default=AC3AC4_URL, help="download URL (default: the Lichtman-lab package)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing split datasets")
    parser.set_defaults(run=_run)

