"""Neuroglancer precomputed volumes through cloud-volume, in this project's (c,) z, y, x order.

cloud-volume indexes (x, y, z, channel) and counts voxels from ``voxel_offset``; the adapter
transposes to (z, y, x) / (c, z, y, x) and indexes from 0 so a precomputed layer behaves like a
zarr array in :class:`emcore.store.Volume`. ``file://`` layers work offline.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from typing import Any, Iterator, Sequence

import numpy as np

from .store import PRECOMPUTED_PREFIX, SPATIAL_AXES, StoreError, Volume

SEGMENTATION_DTYPES = (np.uint32, np.uint64)


class PrecomputedArray:
    """Array-like view of a CloudVolume at mip 0, indexed (c,) z, y, x from 0."""

    def __init__(self, cloudvolume: Any):
        self._cv = cloudvolume
        size_xyz = [int(v) for v in cloudvolume.volume_size]
        self._origin_xyz = np.asarray(cloudvolume.voxel_offset, dtype=np.int64)
        self._channels = int(cloudvolume.num_channels)
        spatial = tuple(reversed(size_xyz))
        self.shape = ((self._channels,) if self._channels > 1 else ()) + spatial
        self.dtype = np.dtype(cloudvolume.dtype)
        self.ndim = len(self.shape)
        chunk_xyz = [int(v) for v in cloudvolume.underlying]
        self.chunks = ((self._channels,) if self._channels > 1 else ()) + tuple(reversed(chunk_xyz))
        self.shards = None
        self.attrs = _PrecomputedAttrs(cloudvolume)

    def _spatial_bounds(self, key: Any) -> tuple[slice, list[tuple[int, int]]]:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        channel = key[0] if self._channels > 1 else slice(None)
        spatial = key[-3:]
        bounds = []
        for k, n in zip(spatial, self.shape[-3:]):
            if not isinstance(k, slice) or k.step not in (None, 1):
                raise TypeError("precomputed volumes support contiguous slices only")
            start, stop, _ = k.indices(n)
            bounds.append((start, stop))
        return channel, bounds

    def __getitem__(self, key: Any) -> np.ndarray:
        channel, bounds = self._spatial_bounds(key)
        (z0, z1), (y0, y1), (x0, x1) = bounds
        ox, oy, oz = self._origin_xyz
        data = np.asarray(self._cv[x0 + ox:x1 + ox, y0 + oy:y1 + oy, z0 + oz:z1 + oz])
        zyx = np.transpose(data, (3, 2, 1, 0))  # (c, z, y, x)
        return np.ascontiguousarray(zyx[channel] if self._channels > 1 else zyx[0])

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        channel, bounds = self._spatial_bounds(key)
        if self._channels > 1 and channel != slice(None):
            raise TypeError("precomputed writes must cover all channels")
        (z0, z1), (y0, y1), (x0, x1) = bounds
        ox, oy, oz = self._origin_xyz
        value = np.asarray(value, dtype=self.dtype)
        cxyz = np.transpose(value if value.ndim == 4 else value[None], (3, 2, 1, 0))
        self._cv[x0 + ox:x1 + ox, y0 + oy:y1 + oy, z0 + oz:z1 + oz] = cxyz


class _PrecomputedAttrs(dict):
    """Pipeline metadata kept in the layer's ``info`` under ``corrseg3d``."""

    def __init__(self, cloudvolume: Any):
        super().__init__(cloudvolume.info.get("corrseg3d", {}))
        self._cv = cloudvolume

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(*args, **kwargs)
        self._cv.info["corrseg3d"] = dict(self)
        self._cv.commit_info()


def check_location(location: str) -> str:
    """The cloud path of ``precomputed://CLOUDPATH``, refused unless cloud-volume can address it.

    The scheme must be one cloud-volume supports (``file``, ``gs``, ``s3``, ``http(s)``, ...) and a
    ``file://`` path must be absolute, so nothing is ever written relative to the working folder.
    """
    from cloudfiles.paths import ALLOWED_PROTOCOLS

    cloudpath = location[len(PRECOMPUTED_PREFIX):]
    scheme, separator, path = cloudpath.partition("://")
    if not separator or scheme not in ALLOWED_PROTOCOLS:
        problem = f"scheme {scheme!r} is not supported by cloud-volume" if separator else "names no scheme"
        raise StoreError(f"{location}: {problem}: use precomputed://file:///ABS/PATH, precomputed://gs://BUCKET/PATH "
                         f"or precomputed://s3://BUCKET/PATH (supported schemes: {', '.join(ALLOWED_PROTOCOLS)})")
    if scheme == "file" and not path.startswith("/"):
        raise StoreError(f"{location}: a file:// path must be absolute (three slashes), "
                         f"e.g. precomputed://file://{os.path.abspath(path)}")
    return cloudpath


class LayerNotFoundError(StoreError):
    """The location holds no precomputed layer (no ``info`` file there)."""


#: Held while stdout is redirected (:func:`_client_notes_silenced`): the redirection is process-wide.
_SILENCE = threading.Lock()


@contextlib.contextmanager
def _client_notes_silenced() -> Iterator[None]:
    """Swallow what cloud-volume's storage clients print on stdout while they set up (e.g. nine coloured
    lines about default Google credentials); a failure still ends in one :func:`_cloud_error` line."""
    with _SILENCE, contextlib.redirect_stdout(io.StringIO()):
        yield


def _cloud_error(location: str, error: Exception) -> StoreError:
    """One-line :class:`StoreError` for a failure of cloud-volume or its storage clients."""
    reason = " ".join(str(error).split())[:200] or "no details"
    return StoreError(f"cannot open {location} ({type(error).__name__}: {reason}): check the path and, "
                      "for gs:// or s3://, your credentials (~/.cloudvolume/secrets)")


def _volume(cloudvolume: Any, location: str) -> Volume:
    resolution_xyz = [float(v) for v in cloudvolume.resolution]
    voxel_size = tuple(reversed(resolution_xyz))
    origin = tuple(reversed([float(v) for v in cloudvolume.voxel_offset]))
    array = PrecomputedArray(cloudvolume)
    axis_names = (("c",) if array.ndim == 4 else ()) + SPATIAL_AXES
    return Volume(array, location, voxel_size, tuple(o * v for o, v in zip(origin, voxel_size)),
                  axis_names, ("nanometer",) * 3)


def open_precomputed(location: str, mode: str = "r") -> Volume:
    """Open an existing precomputed layer at mip 0."""
    from cloudvolume import CloudVolume
    from cloudvolume.exceptions import InfoUnavailableError

    cloudpath = check_location(location)
    try:
        with _client_notes_silenced():
            cv = CloudVolume(cloudpath, mip=0, fill_missing=True, progress=False,
                             bounded=True, non_aligned_writes=False, cache=False)
    except InfoUnavailableError:
        raise LayerNotFoundError(f"{location} has no precomputed info file: check the path") from None
    except Exception as error:  # credentials, network, permissions: each client has its own error types
        raise _cloud_error(location, error) from None
    return _volume(cv, location)


def create_precomputed(location: str, shape: Sequence[int], dtype: Any, *, chunks: Sequence[int],
                       voxel_size: Sequence[float], offset: Sequence[float],
                       attrs: dict[str, Any] | None, overwrite: bool) -> Volume:
    """Create a precomputed layer: ``segmentation`` with compressed_segmentation encoding for
    uint32/uint64 3D data, else an ``image`` layer with raw encoding."""
    from cloudvolume import CloudVolume

    dtype = np.dtype(dtype)
    channels = int(shape[0]) if len(shape) == 4 else 1
    is_segmentation = len(shape) == 3 and dtype.type in SEGMENTATION_DTYPES
    cloudpath = check_location(location)
    try:
        with _client_notes_silenced():
            existing = CloudVolume(cloudpath, progress=False)
        exists = existing.info is not None
    except Exception:
        exists = False
    if exists and not overwrite:
        raise StoreError(f"{location} already exists: pass --overwrite to replace it")
    voxel_offset = [int(round(o / v)) for o, v in zip(reversed(list(offset)), reversed(list(voxel_size)))]
    info = CloudVolume.create_new_info(
        num_channels=channels,
        layer_type="segmentation" if is_segmentation else "image",
        data_type=dtype.name,
        encoding="compressed_segmentation" if is_segmentation else "raw",
        resolution=[float(v) for v in reversed(list(voxel_size))],
        voxel_offset=voxel_offset,
        volume_size=[int(v) for v in reversed(list(shape[-3:]))],
        chunk_size=[int(v) for v in reversed(list(chunks[-3:]))],
    )
    if attrs:
        info["corrseg3d"] = dict(attrs)
    try:
        with _client_notes_silenced():
            cv = CloudVolume(cloudpath, info=info, progress=False, bounded=True, non_aligned_writes=False,
                             fill_missing=True, cache=False)
            cv.commit_info()
    except Exception as error:  # credentials, network, permissions: each client has its own error types
        raise _cloud_error(location, error) from None
    return _volume(cv, location)
