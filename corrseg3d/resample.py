"""Prediction at the model's voxel size for an input of another voxel size.

A network sees voxels of the size it was trained at (the checkpoint's ``voxel_size``). When an
input's voxel size differs by more than a tolerance, :class:`Resampling` maps each block of the
input onto the model's grid, the network runs there, and the affinities are mapped back onto the
input grid: the output keeps the input's shape, voxel size and block layout.

Conventions
-----------
* Axis order (z, y, x); voxel sizes in nanometres.
* ``ratio[a] = model_voxel_size[a] / input_voxel_size[a]``, input voxels per model voxel
  (> 1: the model grid is coarser than the input along ``a``).
* The model grid is one global grid: model voxel ``j`` lies at input coordinate ``j * ratio``
  (model voxel 0 on the centre of input voxel 0), whichever block is predicted. A block's model
  patch starts and ends on multiples of the network's pooling factor
  (:attr:`corrseg3d.model.ResidualUNet3D.xy_multiple` in y and x), so every block shows the
  network the same grid phase and blockwise prediction equals a whole-volume pass wherever the
  network's context is within the halo.
* Interpolation is linear (order 1) in both directions, separable per axis, with weights computed
  from global coordinates (so a voxel's value does not depend on the block it is computed in).
  There is no smoothing before downsampling: an input finer than the model is sampled, not
  averaged. Outside the volume the input is reflect-padded, as in
  :func:`corrseg3d.inference.pad_context`.
* Offsets: model channel ``k`` links model voxels ``j`` and ``j + o_k``. On the input grid it
  links ``p`` and ``p + o'_k`` with ``o'_k = -round(|o_k| * ratio)`` per axis, a non-zero
  component staying at least one voxel, except that the three nearest-neighbour channels stay
  (-1, 0, 0), (0, -1, 0), (0, 0, -1): they are the attractive edges of the input grid in
  ``pipeline.segment``. The value stored at ``p`` is the model's channel-``k`` affinity
  interpolated at the model pair whose midpoint is the midpoint of ``(p, p + o'_k)``, i.e. at
  model coordinate ``(p + o'_k / 2) / ratio - o_k / 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Sequence

import numpy as np

from emcore.conventions import Offset, validate_offsets

from .inference import pad_context
from .model import ResidualUNet3D

__all__ = ["needs_resampling", "voxel_ratio", "input_grid_offsets", "Resampling"]

Triple = tuple[float, float, float]


def needs_resampling(input_voxel_size: Sequence[float], model_voxel_size: Sequence[float], tolerance: float) -> bool:
    """True if ``|input / model - 1| > tolerance`` along any axis (voxel sizes (z, y, x), nm)."""
    return any(abs(i / m - 1) > tolerance for i, m in zip(input_voxel_size, model_voxel_size))


def voxel_ratio(model_voxel_size: Sequence[float], input_voxel_size: Sequence[float]) -> Triple:
    """Input voxels per model voxel, (z, y, x): ``model_voxel_size / input_voxel_size``."""
    return tuple(float(m) / float(i) for m, i in zip(model_voxel_size, input_voxel_size))  # type: ignore[return-value]


def input_grid_offsets(offsets: Sequence[Sequence[int]], ratio: Sequence[float]) -> tuple[Offset, ...]:
    """The model's offsets (model voxels) as offsets of the input grid (see module docstring).

    Each non-zero component becomes ``-max(1, round(|o| * ratio))`` (halves round up); the first
    three (nearest-neighbour) offsets are kept, so the result satisfies
    :func:`emcore.conventions.validate_offsets`.
    """
    offsets = validate_offsets(offsets)
    scaled = [tuple(-max(1, math.floor(-c * r + 0.5)) if c else 0 for c, r in zip(o, ratio)) for o in offsets[3:]]
    return offsets[:3] + tuple(scaled)  # type: ignore[return-value]


def _interpolate(data: np.ndarray, axis: int, coords: np.ndarray, origin: int) -> np.ndarray:
    """Linear interpolation of ``data`` along ``axis`` at global coordinates ``coords``.

    ``data[..., 0, ...]`` (index 0 along ``axis``) is global index ``origin``; the weights come
    from the global coordinates, so the result at a coordinate does not depend on ``origin``.
    """
    base = np.floor(coords)
    shape = [1] * data.ndim
    shape[axis] = len(coords)
    weight = (coords - base).astype(np.float32).reshape(shape)
    index = base.astype(np.int64) - origin
    low = np.take(data, index, axis=axis)
    high = np.take(data, index + 1, axis=axis)
    return low + weight * (high - low)


@dataclass(frozen=True)
class Resampling:
    """Map input blocks to the model grid and the model's affinities back (see module docstring).

    Parameters
    ----------
    ratio
        Input voxels per model voxel, (z, y, x) (:func:`voxel_ratio`).
    model_offsets
        The model's affinity offsets, in model voxels.
    halo
        Network context on each side of what a block needs, in model voxels (at least the largest
        model offset, so every affinity sees its partner voxel).
    """

    ratio: Triple
    model_offsets: tuple[Offset, ...]
    halo: tuple[int, int, int]

    @cached_property
    def offsets(self) -> tuple[Offset, ...]:
        """The output's offsets, in input voxels (:func:`input_grid_offsets`)."""
        return input_grid_offsets(self.model_offsets, self.ratio)

    def _model_coords(self, axis: int, begin: int, end: int, channel: int) -> np.ndarray:
        """Model coordinates (float64) sampled for channel ``channel`` at input voxels ``[begin, end)``."""
        o, o_input, r = self.model_offsets[channel][axis], self.offsets[channel][axis], self.ratio[axis]
        return (np.arange(begin, end, dtype=np.float64) + o_input / 2) / r - o / 2

    def model_box(self, begin: Sequence[int], end: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Model-grid box ``[lo, hi)`` the network runs on for input block ``[begin, end)``.

        It holds every model voxel the block's affinities interpolate from, plus ``halo`` on each
        side, widened to multiples of the pooling factor (1 in z, ``xy_multiple`` in y and x).
        """
        multiple = (1, ResidualUNet3D.xy_multiple, ResidualUNet3D.xy_multiple)
        channels = range(len(self.model_offsets))
        lo, hi = [], []
        for axis in range(3):
            first = min(self._model_coords(axis, begin[axis], begin[axis] + 1, k)[0] for k in channels)
            last = max(self._model_coords(axis, end[axis] - 1, end[axis], k)[0] for k in channels)
            start = math.floor(first) - self.halo[axis]
            stop = math.floor(last) + 2 + self.halo[axis]
            m = multiple[axis]
            lo.append(start // m * m)
            hi.append(-(-stop // m) * m)
        return tuple(lo), tuple(hi)

    def input_box(self, lo: Sequence[int], hi: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Input box ``[begin, end)`` (may extend past the volume) that model box ``[lo, hi)`` samples."""
        begin = tuple(math.floor(a * r) for a, r in zip(lo, self.ratio))
        end = tuple(math.floor((b - 1) * r) + 2 for b, r in zip(hi, self.ratio))
        return begin, end

    def model_patch(self, image: np.ndarray, begin: Sequence[int], end: Sequence[int],
                    read: Callable[[tuple[slice, ...]], np.ndarray] | None = None) -> np.ndarray:
        """The (z, y, x) float32 model-grid patch the network runs on for input block ``[begin, end)``.

        ``image`` and ``read`` are as for :func:`corrseg3d.inference.pad_context` (``read`` must
        return float32 grey values); the input is reflect-padded outside the volume.
        """
        lo, hi = self.model_box(begin, end)
        start, stop = self.input_box(lo, hi)
        data = pad_context(image, start, stop, (0, 0, 0), read=read).astype(np.float32, copy=False)
        for axis in range(3):
            coords = np.arange(lo[axis], hi[axis], dtype=np.float64) * self.ratio[axis]
            data = _interpolate(data, axis, coords, start[axis])
        return data

    def to_input(self, affinities: np.ndarray, begin: Sequence[int], end: Sequence[int]) -> np.ndarray:
        """(C, z, y, x) float32 affinities of input block ``[begin, end)`` from the model patch's.

        ``affinities`` are the network's (C, z, y, x) affinities on :meth:`model_box` of the block.
        """
        lo, _ = self.model_box(begin, end)
        out = np.empty((len(self.model_offsets),) + tuple(e - b for b, e in zip(begin, end)), np.float32)
        for channel in range(len(self.model_offsets)):
            data = affinities[channel]
            for axis in range(3):
                data = _interpolate(data, axis, self._model_coords(axis, begin[axis], end[axis], channel), lo[axis])
            out[channel] = data
        return out
