"""The second view of the Cross-Correlation Module (CCM, docs/method.md §4).

:func:`make_view` builds the transformed input ``I'`` from a training patch ``I`` on the CPU in
numpy (it runs in the data sampler, next to the other augmentations), in the reference order:

1. intensity jitter (probability 0.5 per patch), always slice by slice, as in the reference: with
   ``u1, u2, u3 ~ U[0, 1)`` drawn per slice,
   ``x <- clip(x (1 + 0.1 (u1 - 0.5)) + 0.1 (u2 - 0.5), 0, 1) ** (2 ** (2 u3 - 1))``;
2. cutout: ``N ~ U{0..60}`` cuboids set to 0, all with one size drawn per patch, depth
   ``U{5..10}`` and square side ``U{10..20}`` (clipped to the patch), placed uniformly inside;
3. flip rule ``r ~ {0,1}^4`` applied as z-reversal, x-reversal, y-reversal, then xy transpose.

:func:`apply_flip` / :func:`invert_flip` work on the last three axes (z, y, x) of numpy arrays
or torch tensors, so the training step maps the view's embedding back to the original geometry
with :func:`invert_flip` (then detaches it, see :func:`corrseg3d.losses.pea_loss`). The xy
transpose needs a square patch: :func:`apply_flip` raises for a non-square one, and
:func:`make_view` never draws the transpose for a non-square patch (the remaining 8 rules).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, TypeVar

import numpy as np
import torch

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

INTENSITY_PROBABILITY = 0.5
MAX_CUBOIDS = 60
CUBOID_DEPTH = (5, 10)
CUBOID_SIDE = (10, 20)


class FlipRule(NamedTuple):
    """Which of the four CCM flips to apply, in the reference's bit order."""

    z: bool
    x: bool
    y: bool
    transpose: bool


def _reverse(data: ArrayOrTensor, axis: int) -> ArrayOrTensor:
    """Reverse ``data`` along ``axis`` (negative, counted from the end)."""
    if isinstance(data, torch.Tensor):
        return data.flip(axis)
    return np.flip(data, axis)


def _transpose_xy(data: ArrayOrTensor) -> ArrayOrTensor:
    """Swap the last two axes (y and x) of a square-xy array."""
    if data.shape[-1] != data.shape[-2]:
        raise ValueError(f"the xy transpose of the CCM flip needs a square xy patch, got shape {tuple(data.shape)}")
    if isinstance(data, torch.Tensor):
        return data.transpose(-1, -2)
    return np.swapaxes(data, -1, -2)


def _finish(data: ArrayOrTensor) -> ArrayOrTensor:
    """A contiguous result (numpy flips and transposes are strided views)."""
    if isinstance(data, torch.Tensor):
        return data.contiguous()
    return np.ascontiguousarray(data)


def apply_flip(data: ArrayOrTensor, rule: FlipRule) -> ArrayOrTensor:
    """Apply ``rule`` to the last three axes (z, y, x): z-, x-, y-reversal, then xy transpose."""
    if data.ndim < 3:
        raise ValueError(f"data must have (..., z, y, x) axes, got shape {tuple(data.shape)}")
    for flag, axis in ((rule.z, -3), (rule.x, -1), (rule.y, -2)):
        if flag:
            data = _reverse(data, axis)
    if rule.transpose:
        data = _transpose_xy(data)
    return _finish(data)


def invert_flip(data: ArrayOrTensor, rule: FlipRule) -> ArrayOrTensor:
    """Undo :func:`apply_flip`: undo the transpose, then the y-, x- and z-reversals."""
    if data.ndim < 3:
        raise ValueError(f"data must have (..., z, y, x) axes, got shape {tuple(data.shape)}")
    if rule.transpose:
        data = _transpose_xy(data)
    for flag, axis in ((rule.y, -2), (rule.x, -1), (rule.z, -3)):
        if flag:
            data = _reverse(data, axis)
    return _finish(data)


def invert_flips(batch: torch.Tensor, rules: Sequence[FlipRule]) -> torch.Tensor:
    """:func:`invert_flip` per sample of a (B, ..., z, y, x) batch with one rule per sample."""
    if len(rules) != batch.shape[0]:
        raise ValueError(f"{len(rules)} flip rules for a batch of {batch.shape[0]}")
    return torch.stack([invert_flip(sample, rule) for sample, rule in zip(batch, rules)])


def _jitter_intensity(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-slice contrast, brightness and gamma jitter (step 1 of the module docstring)."""
    u1, u2, u3 = rng.random((3, image.shape[0], 1, 1))
    jittered = np.clip(image * (1 + (u1 - 0.5) * 0.1) + (u2 - 0.5) * 0.1, 0, 1)
    return jittered ** (2.0 ** (2 * u3 - 1))


def _cutout(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zero ``U{0..60}`` cuboids of one random size (depth 5-10, side 10-20, clipped to the patch)."""
    count = rng.integers(0, MAX_CUBOIDS + 1)
    depth = min(int(rng.integers(CUBOID_DEPTH[0], CUBOID_DEPTH[1] + 1)), image.shape[0])
    side = int(rng.integers(CUBOID_SIDE[0], CUBOID_SIDE[1] + 1))
    size = (depth, min(side, image.shape[1]), min(side, image.shape[2]))
    result = image.copy()
    for _ in range(count):
        start = [int(rng.integers(0, n - s + 1)) for n, s in zip(image.shape, size)]
        result[tuple(slice(b, b + s) for b, s in zip(start, size))] = 0
    return result


def make_view(image: np.ndarray, rng: np.random.Generator, *, intensity: bool = True, cutout: bool = True,
              flip: bool = True) -> tuple[np.ndarray, FlipRule]:
    """The CCM view ``I'`` of a training patch and the flip rule that produced it.

    Parameters
    ----------
    image
        (z, y, x) float patch with values in [0, 1] (the original view ``I``, after the
        ordinary augmentations).
    rng
        Source of all random draws.
    intensity, cutout, flip
        Switch the three transforms (the reference's ``if_ema_intensity``, ``if_ema_mask``,
        ``if_ema_flip``). Without ``flip`` the rule is the identity.

    Returns
    -------
    view
        (z, y, x) float32 transformed patch, a new array.
    rule
        The :class:`FlipRule` applied last; never a transpose for non-square xy.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be 3D (z, y, x), got shape {image.shape}")
    view = image.astype(np.float32)
    if intensity and rng.random() < INTENSITY_PROBABILITY:
        view = _jitter_intensity(view, rng)
    if cutout:
        view = _cutout(view, rng)
    rule = FlipRule(False, False, False, False)
    if flip:
        bits = rng.integers(0, 2, 4).astype(bool)
        rule = FlipRule(bool(bits[0]), bool(bits[1]), bool(bits[2]), bool(bits[3]) and image.shape[1] == image.shape[2])
    return apply_flip(view, rule).astype(np.float32, copy=False), rule
