"""Training augmentations applied to an image patch and its instance labels together.

Conventions: arrays are (z, y, x); the image is float32 in [0, 1]; labels are integer instance
ids of *any* dtype (uint64 included) with 0 = background. Geometric ops move image and labels
identically; labels are resampled by nearest neighbour through integer index arithmetic, never
by an image interpolator, so ids are never blended and every dtype works (the
reference used OpenCV, which rejects uint32/uint64 labels; docs/method.md §8). Pixels pulled in
from outside the patch become image 0 / label 0; the sampler reads extra context around the
patch and crops it off afterwards, so these never reach a training patch.

Probabilities (docs/method.md §8): the reference applies the whole chain with
probability 0.5 and then each op with probability 0.5 -- the per-op probabilities passed to its
constructors are never read -- so each op fires in 25% of samples. Here both levels are
explicit in :class:`corrseg3d.config.AugmentConfig` (``chain`` and one probability per op).

Elastic strength (docs/method.md §8): the displacement is ``alpha * gaussian_filter(U(-1, 1), sigma)``
per axis, one 2D field for all slices. With the reference ``alpha=16, sigma=4`` its standard
deviation is only about 0.65 px (max about 3 px): a very mild warp, kept for fidelity.

Missing-section and misalignment augmentations are not in the reference (docs/method.md §8) but real
serial-section EM needs them; they default to probability 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .config import AugmentConfig

__all__ = [
    "augment",
    "random_flip_rule",
    "flip_transpose",
    "warp_xy",
    "rotation_coordinates",
    "elastic_coordinates",
    "adjust_intensity",
    "drop_sections",
    "misalign",
]

FlipRule = tuple[bool, bool, bool, bool]


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            config: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Apply the primary augmentation chain (flip, rotate, elastic, intensity; then EM defects).

    With probability ``config.chain`` the ops flip/transpose, xy rotation, elastic warp and
    intensity each run with their own probability; missing sections and misalignment are drawn
    independently of the chain gate. Returns new arrays (inputs are not modified).
    """
    image = np.array(image, dtype=np.float32)
    labels = np.array(labels)
    if rng.random() < config.chain:
        if rng.random() < config.flip:
            image, labels = flip_transpose(image, labels, random_flip_rule(rng))
        if rng.random() < config.rotate:
            coords = rotation_coordinates(image.shape[1:], rng.uniform(0.0, 360.0))
            image, labels = warp_xy(image, labels, coords)
        if rng.random() < config.elastic:
            coords = elastic_coordinates(image.shape[1:], rng, alpha=config.elastic_alpha,
                                         sigma=config.elastic_sigma)
            image, labels = warp_xy(image, labels, coords)
        if rng.random() < config.intensity:
            image = adjust_intensity(image, rng, contrast=config.intensity_contrast,
                                     brightness=config.intensity_brightness,
                                     per_slice=rng.random() < config.intensity_per_slice)
    if rng.random() < config.missing_section:
        image = drop_sections(image, rng, max_sections=config.missing_section_max)
    if rng.random() < config.misalignment:
        image, labels = misalign(image, labels, rng, max_shift=config.misalignment_max_shift)
    return image, labels


def random_flip_rule(rng: np.random.Generator) -> FlipRule:
    """Four fair coin flips: reverse z, reverse y, reverse x, transpose y and x."""
    return tuple(bool(b) for b in rng.integers(0, 2, size=4))  # type: ignore[return-value]


def flip_transpose(image: np.ndarray, labels: np.ndarray, rule: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Reverse z / y / x and transpose y with x, as selected by ``rule`` (16 combinations)."""
    def apply(a: np.ndarray) -> np.ndarray:
        for axis, flag in enumerate(rule[:3]):
            if flag:
                a = np.flip(a, axis)
        if rule[3]:
            a = a.transpose(0, 2, 1)
        return np.ascontiguousarray(a)

    return apply(image), apply(labels)


def rotation_coordinates(shape_yx: Sequence[int], angle_degrees: float) -> np.ndarray:
    """Source (y, x) coordinates, shape (2, y, x), of an in-plane rotation about the centre."""
    theta = np.deg2rad(angle_degrees)
    centre = (np.asarray(shape_yx, dtype=np.float64) - 1) / 2
    yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape_yx), indexing="ij")
    dy, dx = yy - centre[0], xx - centre[1]
    cos, sin = np.cos(theta), np.sin(theta)
    return np.stack([cos * dy - sin * dx + centre[0], sin * dy + cos * dx + centre[1]])


def elastic_coordinates(shape_yx: Sequence[int], rng: np.random.Generator, *, alpha: float,
                        sigma: float) -> np.ndarray:
    """Source (y, x) coordinates, shape (2, y, x), of a smooth random displacement field."""
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape_yx), indexing="ij"))
    field = [ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, size=tuple(shape_yx)), sigma) * alpha
             for _ in range(2)]
    return grid + np.stack(field)


def warp_xy(image: np.ndarray, labels: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resample every slice at the (y, x) source coordinates ``coords`` (2, y, x).

    The image is interpolated bilinearly, the labels take the nearest source voxel (rounded
    index, any dtype); sources outside the slice give image 0 and label 0.
    """
    warped = np.stack([ndimage.map_coordinates(s, coords, order=1, mode="constant", cval=0.0)
                       for s in image]).astype(np.float32)
    iy, ix = np.rint(coords).astype(np.int64)
    inside = (iy >= 0) & (iy < labels.shape[1]) & (ix >= 0) & (ix < labels.shape[2])
    resampled = np.zeros_like(labels)
    resampled[:, inside] = labels[:, iy[inside], ix[inside]]
    return warped, resampled


def adjust_intensity(image: np.ndarray, rng: np.random.Generator, *, contrast: float,
                     brightness: float, per_slice: bool) -> np.ndarray:
    """Contrast, brightness and gamma jitter, per slice or for the whole patch.

    ``x <- x * (1 + (u1 - 0.5) * contrast)``, ``x <- x + (u2 - 0.5) * brightness``, clip to
    [0, 1], ``x <- x ** 2 ** (2 u3 - 1)``; u ~ U[0, 1) drawn once per slice or once per patch.
    """
    n = image.shape[0] if per_slice else 1
    u = rng.random((3, n, 1, 1)).astype(np.float32)
    out = image * (1 + (u[0] - 0.5) * contrast) + (u[1] - 0.5) * brightness
    return np.clip(out, 0.0, 1.0) ** (2.0 ** (2 * u[2] - 1))


def drop_sections(image: np.ndarray, rng: np.random.Generator, *, max_sections: int) -> np.ndarray:
    """Blank 1..``max_sections`` random slices (missing sections); labels stay, so the network
    learns to bridge the gap in z."""
    out = image.copy()
    count = int(rng.integers(1, max(max_sections, 1) + 1))
    out[rng.choice(image.shape[0], size=min(count, image.shape[0]), replace=False)] = 0.0
    return out


def misalign(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *,
             max_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Translate all slices from a random z on by a random in-plane shift (image and labels
    together: a section-alignment error). Uncovered pixels become image 0 / label 0."""
    if image.shape[0] < 2:
        return image, labels
    start = int(rng.integers(1, image.shape[0]))
    shift = rng.integers(-max_shift, max_shift + 1, size=2)
    image, labels = image.copy(), labels.copy()
    for array, fill in ((image, 0.0), (labels, 0)):
        array[start:] = _shift_yx(array[start:], shift, fill)
    return image, labels


def _shift_yx(block: np.ndarray, shift: Sequence[int], fill: float) -> np.ndarray:
    out = np.full_like(block, fill)
    dst = tuple(slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, block.shape[1:]))
    src = tuple(slice(max(-s, 0), n + min(-s, 0)) for s, n in zip(shift, block.shape[1:]))
    out[(slice(None),) + dst] = block[(slice(None),) + src]
    return out
