"""Synthetic serial-section EM of neuropil with dense instance ground truth.

The volume is a function of ``(shape, seed, missing_sections, misalignment)`` only, evaluated
one z-slice at a time, so any region of it can be generated on its own and equals the same
region of the whole volume (the writer generates z-slabs; an xy region costs its full slices).

Model
-----
*Objects* are generated once per volume (cheap: a few numbers per object and slice):

* axons: tubes of core radius 3-10 px (log-uniform) with varicosities, most running along z, a quarter
  oblique (up to 2.5 px/slice lateral drift); their xy direction and speed are smooth random
  walks, and some start or end inside the volume;
* dendrites: core radius 10-25 px, slow drift;
* cell bodies: ellipsoids of xy radius 50-100 px and z radius 0.3 of it (a few per 64x512x512).

In slice ``z`` object ``i`` has a *core disc* of centre ``c_i(z)`` (rounded to a pixel) and
radius ``r_i(z)``. Cores never overlap: the lower-priority core of a pair (priority = radius,
then index) shrinks to ``r_low <= |c_i - c_j| - r_high - 1``; a core shrunk below 0, or with its
centre outside the image, is absent. Each pixel takes the object of its nearest core pixel
(Euclidean distance transform with ``return_indices``), an additively weighted Voronoi tessellation
of the cores, so objects fill the slice and touch over long membranes. Extracellular space
(label 0, about 3%) is carved as small concave pockets at junctions of three objects: pixels at
least 3 px from every core and within a radius, set by a smooth 3D noise field, of a junction.

*Connectivity.* Per slice, only the 4-connected component of an object that contains its core
is kept (other fragments become label 0), so every label is 2D-connected in each slice. Two
consecutive slices of an object are linked when the core centre of one lies in the core disc of
the other (they share a voxel). An object whose core is absent in a slice, or whose consecutive
cores are not linked, is split there into pieces with distinct labels; hence every label is one
6-connected 3D object. Pieces shorter than 3 slices that do not touch the first or last slice
are dropped (their pixels go to the neighbours). Labels are numbered 1..N over pieces in object
order.

*Raw* (uint8, dark = electron dense): per-object cytoplasm grey level with smooth texture, dark
membranes of 1-3 px at every label change in xy (including to extracellular space), dark
mitochondria (textured ellipses travelling with their neurite for several slices) and vesicle
dots inside objects, so darkness alone does not mark a boundary; xy Gaussian blur, signal
dependent Gaussian noise and per-slice brightness/contrast jitter. Optional defects: missing
sections (near-uniform slices; labels kept) and misaligned sections (raw shifted by 2-6 px).

*Style.* The appearance constants above are the ``base`` style. The ``wide`` style draws them per
volume from the seed (:func:`volume_style`), so that a set of volumes spans the look of real EM
rather than one look: wavy membranes (object boundaries displaced by a smooth 2D field of up to
6 px that vanishes on and next to the cores, so every guarantee above still holds), membranes of
2-6 px with darkness 0.35-0.75 varying along their length, cytoplasm texture 0.5-2x, blur
sigma 0.5-1.6 px, noise 0.5-2.5x, and a per-volume gamma 0.6-2.0, contrast 0.6-1.3 and
brightness -0.25 to +0.1.

Axis order is (z, y, x); random streams are seeded by ``(seed, stream, z)`` so that slices are
independent of which block asks for them.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import label as connected_components

__all__ = ["SynthError", "Style", "STYLES", "volume_style", "generate", "write_synthetic", "DEFAULT_VOXEL_SIZE", "DEFAULT_CHUNKS"]

#: Default voxel size (z, y, x) in nm: ssTEM/ATUM-SEM-like, z about 5x coarser than xy.
DEFAULT_VOXEL_SIZE = (30.0, 6.0, 6.0)
#: Storage chunk shape (clipped to the volume); also the z-slab the writer generates at once.
DEFAULT_CHUNKS = (32, 256, 256)

_AXON, _DENDRITE, _SOMA = 0, 1, 2
_AXON_AREA = 380.0  # px^2 of slice per axon present
_DENDRITE_AREA = 16000.0
_ECS_DISTANCE = 3.0  # px: extracellular pockets open only this far from every core
_SOMA_VOLUME = 9.0e6  # voxels per cell body
_MIN_PIECE = 3  # slices; shorter pieces not cut by the volume border are removed (flicker)
_MITO_PER_OBJECT_SLICE = {_AXON: 0.02, _DENDRITE: 0.12, _SOMA: 0.4}
# random stream ids, one per independent quantity
_S_OBJECTS, _S_TEXTURE, _S_NOISE, _S_VESICLE, _S_ECS, _S_THICK, _S_SLICE, _S_DEFECT = range(8)
_S_STYLE, _S_WARP_Y, _S_WARP_X, _S_MEMBRANE = range(8, 12)
#: Generator styles: ``base`` (one fixed look) and ``wide`` (appearance drawn per volume).
STYLES = ("base", "wide")


class SynthError(ValueError):
    """Invalid generator parameters; the message says which and how to fix them."""


@dataclass(frozen=True)
class Style:
    """Appearance of one volume; the defaults are the ``base`` style.

    Attributes
    ----------
    wave_amplitude, wave_spacing
        Largest displacement (px) of object boundaries by a smooth random field with lattice
        spacing ``wave_spacing`` px; the displacement is scaled by ``clip((d - 1) / 3, 0, 1)``
        with ``d`` the distance (px) to the nearest core, so cores never move. 0 = straight.
    membrane_dark, membrane_variation
        Darkness subtracted on membranes, multiplied by ``1 - membrane_variation * n`` with
        ``n`` a smooth noise field in [0, 1] (contrast varying along a membrane).
    thick_iterations, thick_threshold
        Membranes are thickened by ``thick_iterations`` px where a smooth noise field exceeds
        ``thick_threshold`` (membranes 2 px wide elsewhere).
    texture, blur, noise
        Cytoplasm texture amplitude (factor), xy Gaussian blur sigma (px), noise amplitude (factor).
    gamma, contrast, brightness
        Per-volume intensity transform ``((clip(I, 0, 1) ** gamma) - 0.6) * contrast + 0.6 + brightness``
        (gamma 1 leaves out the clip).
    """

    wave_amplitude: float = 0.0
    wave_spacing: float = 16.0
    membrane_dark: float = 0.6
    membrane_variation: float = 0.0
    thick_iterations: int = 1
    thick_threshold: float = 0.55
    texture: float = 1.0
    blur: float = 0.8
    noise: float = 1.0
    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0


def volume_style(style: str, seed: int) -> Style:
    """The :class:`Style` of a volume: fixed for ``base``, drawn from ``seed`` for ``wide``."""
    if style not in STYLES:
        raise SynthError(f"style {style!r} is not one of {', '.join(STYLES)}")
    if style == "base":
        return Style()
    rng = np.random.default_rng([seed, _S_STYLE])
    return Style(wave_amplitude=rng.uniform(0.0, 6.0), wave_spacing=rng.uniform(16.0, 40.0),
                 membrane_dark=rng.uniform(0.35, 0.75), membrane_variation=rng.uniform(0.0, 0.6),
                 thick_iterations=int(rng.integers(1, 3)), thick_threshold=rng.uniform(0.3, 0.8),
                 texture=float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))), blur=rng.uniform(0.5, 1.6),
                 noise=float(np.exp(rng.uniform(np.log(0.5), np.log(2.5)))),
                 gamma=float(np.exp(rng.uniform(np.log(0.6), np.log(2.0)))), contrast=rng.uniform(0.6, 1.3),
                 brightness=rng.uniform(-0.25, 0.1))


@dataclass(frozen=True)
class _Objects:
    """Per-object, per-slice geometry of the whole volume (n objects, Z slices)."""

    centers: np.ndarray  # (n, Z, 2) int64 rounded (y, x) core centres
    radius: np.ndarray  # (n, Z) float64 core radius after shrinking, < 0 where absent
    labels: np.ndarray  # (n, Z) uint64 piece label, 0 where absent
    grey: np.ndarray  # (n,) float32 cytoplasm intensity in [0, 1]
    vesicles: np.ndarray  # (n, Z) float32 vesicle density (boutons)
    mitos: np.ndarray  # (m, 8) float64: object, z0, z1, angle, rel. distance, a, b, orientation


def _validate(shape: Sequence[int], missing_sections: int, misalignment: int, seed: int) -> tuple[int, int, int]:
    if seed < 0:
        raise SynthError(f"--seed {seed} must be >= 0 (numpy seeds are non-negative)")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise SynthError(f"shape {shape} must be three positive integers (z, y, x), e.g. 64,512,512")
    if min(shape[1:]) < 16:
        raise SynthError(f"shape {shape} is too small in xy: use at least 16 px per side")
    for name, value in (("missing_sections", missing_sections), ("misalignment", misalignment)):
        if not 0 <= value <= shape[0]:
            raise SynthError(f"{name}={value} must be between 0 and the number of slices ({shape[0]})")
    return shape  # type: ignore[return-value]


def _smooth_walk(rng: np.random.Generator, n: int, z: int, step: float) -> np.ndarray:
    """(n, z) random walks with per-slice N(0, step) increments, starting at 0."""
    return np.cumsum(rng.normal(0.0, step, (n, z)), axis=1)


def _wave(rng: np.random.Generator, n: int, z: int, low: float, high: float) -> np.ndarray:
    """(n, z) sine of random period in [low, high] slices and random phase, in [-1, 1]."""
    period = rng.uniform(low, high, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    return np.sin(2 * np.pi * np.arange(z)[None] / period + phase)


def _neurites(rng: np.random.Generator, shape: tuple[int, int, int], count: int,
              kind: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (n, Z, 2), radii (n, Z) and presence (n, Z) of axons or dendrites."""
    depth, height, width = shape
    margin = 0.1 * np.array([height, width])
    start = rng.uniform(-margin, np.array([height, width]) + margin, (count, 2))
    if kind == _AXON:
        r0 = np.exp(rng.uniform(np.log(3.0), np.log(10.0), count))
        radius = r0[:, None] * (1 + 0.3 * np.clip(_wave(rng, count, depth, 5, 16), 0, None))
        oblique = rng.random(count) < 0.25
        speed = np.where(oblique, np.minimum(rng.uniform(0.8, 2.5, count), 0.8 * r0),
                         np.abs(rng.normal(0, 0.35, count)))
    else:
        r0 = rng.uniform(10.0, 25.0, count)
        radius = r0[:, None] * (1 + 0.12 * _wave(rng, count, depth, 8, 30))
        speed = np.abs(rng.normal(0, 0.5, count))
    angle = rng.uniform(0, 2 * np.pi, (count, 1)) + _smooth_walk(rng, count, depth, 0.08)
    step = speed[:, None] * (1 + 0.3 * _wave(rng, count, depth, 10, 40))
    velocity = np.stack([np.sin(angle), np.cos(angle)], axis=-1) * step[..., None]
    centers = start[:, None] + np.cumsum(velocity, axis=1) - velocity[:, :1]
    spans_all = rng.random(count) < 0.7
    z0 = np.where(spans_all, 0, rng.integers(-depth, depth, count))
    z1 = np.where(spans_all, depth, z0 + rng.integers(max(depth // 3, 1), 3 * depth + 1, count))
    zz = np.arange(depth)[None]
    present = (zz >= z0[:, None]) & (zz < z1[:, None])
    return centers, radius, present


def _somata(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres, radii and presence of ellipsoidal cell bodies."""
    depth, height, width = shape
    count = rng.poisson(depth * height * width / _SOMA_VOLUME)
    big = rng.uniform(50.0, 100.0, count)
    centre = rng.uniform((0, 0, 0), (depth, height, width), (count, 3))
    rz = np.maximum(0.3 * big, 1.0)
    dz = (np.arange(depth)[None] - centre[:, :1]) / rz[:, None]
    radius = big[:, None] * np.sqrt(np.clip(1 - dz ** 2, 0, None))
    centers = np.broadcast_to(centre[:, None, 1:], (count, depth, 2)).copy()
    return centers, radius, np.abs(dz) < 1


def _shrink(centers: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Shrink core radii of one slice so that no two discrete core discs share a pixel.

    For a pair (i, j) at distance d where j has priority (larger radius, then larger index),
    ``r_i <= d - r_j - 1``: then ``|p - c_i| + |p - c_j| >= d > r_i + r_j`` for every pixel p.
    Radii are floored to multiples of 0.5 (the disc cache key); negative means absent.
    """
    out = radius.copy()
    if len(radius) > 1:
        tree = cKDTree(centers)
        neighbours = tree.query_ball_point(centers, 2 * radius + 1.5)
        i = np.repeat(np.arange(len(radius)), [len(n) for n in neighbours])
        j = np.concatenate([np.asarray(n, dtype=np.int64) for n in neighbours])
        keep = (radius[j] < radius[i]) | ((radius[j] == radius[i]) & (j < i))
        low, high = j[keep], i[keep]
        distance = np.sqrt(((centers[low] - centers[high]) ** 2).sum(-1))
        np.minimum.at(out, low, distance - radius[high] - 1)
    return np.where(out >= 0, np.floor(out * 2) / 2, -1.0)


@functools.lru_cache(maxsize=4)
def _objects(shape: tuple[int, int, int], seed: int) -> _Objects:
    """All objects of a volume, their per-slice cores, pieces and appearance parameters."""
    depth, height, width = shape
    rng = np.random.default_rng([seed, _S_OBJECTS])
    area = height * width
    parts = [
        _neurites(rng, shape, int(np.ceil(area / _AXON_AREA * 1.25)), _AXON),
        _neurites(rng, shape, int(np.ceil(area / _DENDRITE_AREA * 1.25)), _DENDRITE),
        _somata(rng, shape),
    ]
    kind = np.concatenate([np.full(len(p[1]), k, np.int8) for k, p in enumerate(parts)])
    raw_centers = np.concatenate([p[0] for p in parts])
    centers = np.rint(raw_centers).astype(np.int64)
    radius = np.concatenate([p[1] for p in parts])
    inside = ((centers >= 0) & (centers < np.array([height, width]))).all(-1)
    present = np.concatenate([p[2] for p in parts]) & inside & (radius > 0)
    core = np.full(radius.shape, -1.0)
    for z in range(depth):
        idx = np.flatnonzero(present[:, z])
        core[idx, z] = _shrink(centers[idx, z].astype(np.float64), radius[idx, z])
    labels = _piece_labels(centers, core)
    pieces, first, length = np.unique(labels.ravel(), return_index=True, return_counts=True)
    first_z = first % depth
    short = pieces[(pieces > 0) & (length < _MIN_PIECE) & (first_z > 0) & (first_z + length < depth)]
    core[np.isin(labels, short)] = -1.0
    labels = _piece_labels(centers, core)
    n = len(kind)
    grey = np.select([kind == _AXON, kind == _DENDRITE],
                     [rng.uniform(0.72, 0.84, n), rng.uniform(0.64, 0.74, n)], rng.uniform(0.6, 0.68, n))
    bouton = (kind == _AXON)[:, None] * np.clip(_wave(rng, n, depth, 8, 24) - 0.4, 0, None)
    vesicles = (bouton * rng.uniform(0, 0.25, (n, 1)) * (rng.random((n, 1)) < 0.5)).astype(np.float32)
    return _Objects(centers, core, labels, grey.astype(np.float32), vesicles, _mitochondria(rng, kind, depth))


def _piece_labels(centers: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Label the 6-connected pieces of each object: a new piece starts where a core is absent
    or the cores of slices z-1 and z share no voxel (neither centre lies in the other's disc)."""
    present = core >= 0
    step2 = ((centers[:, 1:] - centers[:, :-1]) ** 2).sum(-1)
    linked = present[:, 1:] & present[:, :-1] & (
        (step2 <= core[:, 1:] ** 2) | (step2 <= core[:, :-1] ** 2))
    starts = present.copy()
    starts[:, 1:] &= ~linked
    piece = np.cumsum(starts.ravel()).reshape(present.shape)
    return np.where(present, piece, 0).astype(np.uint64)


def _mitochondria(rng: np.random.Generator, kind: np.ndarray, depth: int) -> np.ndarray:
    """Mitochondria as rows (object, z0, z1, angle, relative distance, a, b, orientation)."""
    rate = np.array([_MITO_PER_OBJECT_SLICE[k] for k in kind]) * depth
    owner = np.repeat(np.arange(len(kind)), rng.poisson(rate))
    m = len(owner)
    length = rng.integers(3, 14, m)
    z0 = rng.integers(-length, depth, m)
    big = kind[owner] == _SOMA
    a = np.where(big, rng.uniform(6, 14, m), rng.uniform(2.5, 7, m))
    b = a * rng.uniform(0.35, 0.8, m)
    return np.stack([owner, z0, z0 + length, rng.uniform(0, 2 * np.pi, m),
                     rng.uniform(0, 0.6, m), a, b, rng.uniform(0, np.pi, m)], axis=1)


@functools.lru_cache(maxsize=256)
def _disc(radius2: int) -> tuple[int, np.ndarray]:
    """Half width and boolean mask of the discrete disc ``dy^2 + dx^2 <= radius2``."""
    half = int(np.floor(np.sqrt(radius2)))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    return half, yy ** 2 + xx ** 2 <= radius2


def _stamp(target: np.ndarray, centre: Sequence[int], radius: float, value: int) -> None:
    """Set the pixels of a discrete disc (clipped to the image) to ``value``."""
    half, mask = _disc(int(np.floor(radius ** 2)))
    cy, cx = int(centre[0]), int(centre[1])
    y0, x0 = max(cy - half, 0), max(cx - half, 0)
    y1, x1 = min(cy + half + 1, target.shape[0]), min(cx + half + 1, target.shape[1])
    window = mask[y0 - cy + half:y1 - cy + half, x0 - cx + half:x1 - cx + half]
    target[y0:y1, x0:x1][window] = value


def _slice_rng(seed: int, stream: int, z: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, z])


def _lattice_noise(seed: int, stream: int, z: int, size: tuple[int, int], spacing: tuple[float, float]) -> np.ndarray:
    """Smooth value noise in [0, 1] at slice ``z``: random values on a lattice of ``spacing``
    (z slices, xy pixels), interpolated with smoothstep weights; continuous in z and xy."""
    sz, sxy = spacing
    grid = (int(size[0] / sxy) + 2, int(size[1] / sxy) + 2)
    kz = int(np.floor(z / sz))
    wz = z / sz - kz
    plane = [_slice_rng(seed, stream, k).random(grid, dtype=np.float32) for k in (kz, kz + 1)]
    coarse = plane[0] * (1 - wz) + plane[1] * wz
    for axis, n in enumerate(size):
        pos = np.arange(n) / sxy
        i = np.floor(pos).astype(np.int64)
        w = (pos - i).astype(np.float32)
        w = w * w * (3 - 2 * w)
        shape = (-1, 1) if axis == 0 else (1, -1)
        coarse = np.take(coarse, i, axis=axis) * (1 - w).reshape(shape) + np.take(coarse, i + 1, axis=axis) * w.reshape(shape)
    return coarse


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (both sides of every label change)."""
    edge = np.zeros(labels.shape, bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge


def _junctions(labels: np.ndarray) -> np.ndarray:
    """Pixels whose 2x2 neighbourhood holds three distinct labels (junctions of the tessellation)."""
    a, b, c = labels[:-1, :-1], labels[:-1, 1:], labels[1:, :-1]
    out = np.zeros(labels.shape, bool)
    out[:-1, :-1] = (a != b) & (a != c) & (b != c)
    return out


def _wavy(owner: np.ndarray, distance: np.ndarray, seed: int, z: int, style: Style) -> np.ndarray:
    """``owner`` resampled at positions displaced by the style's smooth field (nearest pixel);
    the displacement vanishes within 1 px of a core (``distance`` = px to the nearest core)."""
    size = owner.shape
    taper = np.clip((distance - 1.0) / 3.0, 0.0, 1.0) * 2.0 * style.wave_amplitude
    spacing = (3.0, style.wave_spacing)
    dy = (_lattice_noise(seed, _S_WARP_Y, z, size, spacing) - 0.5) * taper
    dx = (_lattice_noise(seed, _S_WARP_X, z, size, spacing) - 0.5) * taper
    yy = np.clip(np.rint(np.arange(size[0])[:, None] + dy), 0, size[0] - 1).astype(np.intp)
    xx = np.clip(np.rint(np.arange(size[1])[None, :] + dx), 0, size[1] - 1).astype(np.intp)
    return owner[yy, xx]


def _slice_labels(objects: _Objects, seed: int, z: int, size: tuple[int, int], style: Style) -> np.ndarray:
    """Object index + 1 per pixel of slice ``z`` (0 = extracellular space)."""
    cores = np.zeros(size, np.int32)
    for i in np.flatnonzero(objects.radius[:, z] >= 0):
        _stamp(cores, objects.centers[i, z], objects.radius[i, z], i + 1)
    if not cores.any():
        return cores
    distance, (iy, ix) = ndimage.distance_transform_edt(cores == 0, return_indices=True)
    owner = cores[iy, ix]
    if style.wave_amplitude > 0:
        owner = _wavy(owner, distance, seed, z, style)
    ecs = (distance > _ECS_DISTANCE) & (
        ndimage.distance_transform_edt(~_junctions(owner)) < 7 * _lattice_noise(seed, _S_ECS, z, size, (2.0, 16.0)) - 1)
    owner[ecs] = 0
    components = connected_components(owner, background=0, connectivity=1)
    owner[~np.isin(components, np.unique(components[cores > 0]))] = 0
    return owner


def _mito_mask(objects: _Objects, z: int, owner: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mitochondria of slice ``z``: boolean mask and a cristae texture in [0, 1]."""
    mask = np.zeros(owner.shape, bool)
    cristae = np.zeros(owner.shape, np.float32)
    rows = objects.mitos[(objects.mitos[:, 1] <= z) & (objects.mitos[:, 2] > z)]
    for obj, _, _, angle, rel, a, b, theta in rows:
        obj = int(obj)
        r = objects.radius[obj, z]
        if r < 0:
            continue
        cy, cx = objects.centers[obj, z] + rel * r * np.array([np.sin(angle), np.cos(angle)])
        half = int(np.ceil(a)) + 1
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, owner.shape[0])
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, owner.shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        u = (yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta)
        v = -(yy - cy) * np.cos(theta) + (xx - cx) * np.sin(theta)
        inside = ((u / a) ** 2 + (v / b) ** 2 <= 1) & (owner[y0:y1, x0:x1] == obj + 1) & inner[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= inside
        cristae[y0:y1, x0:x1] = np.where(inside, 0.5 + 0.5 * np.cos(u * 2.2), cristae[y0:y1, x0:x1])
    return mask, cristae


def _slice_raw(objects: _Objects, seed: int, z: int, owner: np.ndarray, style: Style) -> np.ndarray:
    """Float EM intensity of slice ``z`` in [0, 1] (before defects)."""
    size = owner.shape
    noise = _slice_rng(seed, _S_NOISE, z)
    grey = np.concatenate([[0.86], objects.grey])[owner]
    fine = ndimage.gaussian_filter(_slice_rng(seed, _S_TEXTURE, z).standard_normal(size, np.float32), 1.2)
    texture = style.texture * (0.09 * fine + 0.08 * (_lattice_noise(seed, _S_TEXTURE, z, size, (3.0, 14.0)) - 0.5))
    image = grey + np.where(owner > 0, texture, 0.3 * texture)
    edge = _boundary(owner)
    thick = (ndimage.binary_dilation(edge, iterations=style.thick_iterations)
             & (_lattice_noise(seed, _S_THICK, z, size, (2.0, 20.0)) > style.thick_threshold))
    membrane = ndimage.gaussian_filter((edge | thick).astype(np.float32), 0.7)
    darkness = style.membrane_dark
    if style.membrane_variation > 0:
        darkness = darkness * (1 - style.membrane_variation * _lattice_noise(seed, _S_MEMBRANE, z, size, (2.0, 24.0)))
    image -= darkness * np.clip(membrane * 1.6, 0, 1)
    inner = ~ndimage.binary_dilation(edge, iterations=2)
    mito, cristae = _mito_mask(objects, z, owner, inner)
    mito_edge = mito & ~ndimage.binary_erosion(mito)
    image = np.where(mito, 0.34 - 0.1 * cristae + 0.5 * texture, image) - 0.2 * mito_edge
    density = np.concatenate([[0.0], objects.vesicles[:, z]])[owner]
    dots = ndimage.gaussian_filter((_slice_rng(seed, _S_VESICLE, z).random(size, np.float32) < density * inner)
                                   .astype(np.float32), 1.0)
    image -= 3.0 * dots
    image = ndimage.gaussian_filter(image, style.blur)
    image += noise.standard_normal(size, np.float32) * (style.noise * (0.025 + 0.04 * np.sqrt(np.clip(image, 0, 1))))
    contrast, brightness = noise.normal(1.0, 0.07), noise.normal(0.0, 0.035)
    if style.gamma != 1.0:
        image = np.clip(image, 0, 1) ** style.gamma
    return (image - 0.6) * (contrast * style.contrast) + 0.6 + (brightness + style.brightness)


def _defects(shape: tuple[int, int, int], seed: int, missing_sections: int,
             misalignment: int) -> tuple[set[int], dict[int, tuple[int, int]]]:
    """Slices that are missing and per-slice (dy, dx) raw shifts of misaligned slices."""
    rng = np.random.default_rng([seed, _S_DEFECT])
    missing = set(rng.choice(shape[0], missing_sections, replace=False).tolist())
    shifted = rng.choice(shape[0], misalignment, replace=False)
    magnitude = rng.integers(2, 7, (misalignment, 2)) * rng.choice([-1, 1], (misalignment, 2))
    return missing, {int(z): tuple(int(v) for v in m) for z, m in zip(shifted, magnitude)}


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Image content moved by (dy, dx) px, edges replicated."""
    padded = np.pad(image, ((abs(dy), abs(dy)), (abs(dx), abs(dx))), mode="edge")
    return padded[abs(dy) - dy:abs(dy) - dy + image.shape[0], abs(dx) - dx:abs(dx) - dx + image.shape[1]]


def generate(
    shape: Sequence[int],
    *,
    seed: int,
    missing_sections: int = 0,
    misalignment: int = 0,
    style: str = "base",
    roi: tuple[slice, slice, slice] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a synthetic EM volume, or one region of it, in memory.

    Parameters
    ----------
    shape
        (z, y, x) shape of the whole volume; it sets the objects, so a region of a volume is
        generated with the whole volume's ``shape`` and a ``roi``.
    seed
        Random seed; equal arguments give identical output.
    missing_sections, misalignment
        Number of slices replaced by near-uniform grey (labels kept) and number of slices whose
        raw is shifted by 2-6 px in y and x.
    style
        ``base`` (one fixed look) or ``wide`` (appearance drawn per volume from ``seed``;
        :func:`volume_style`).
    roi
        Optional (z, y, x) slices (step 1) of the region to return; the result equals
        ``generate(shape, seed=...)[roi]``. Cost is that of the full xy slices it touches.

    Returns
    -------
    raw : (z, y, x) uint8, membranes and organelles dark
    labels : (z, y, x) uint64, 0 = extracellular space; each label is one 6-connected object
    """
    shape = _validate(shape, missing_sections, misalignment, seed)
    look = volume_style(style, int(seed))
    roi = roi or (slice(None),) * 3
    bounds = [s.indices(n) for s, n in zip(roi, shape)]
    if len(bounds) != 3 or any(step != 1 for *_, step in bounds):
        raise SynthError(f"roi {roi} must be three slices with step 1")
    (z0, z1, _), (y0, y1, _), (x0, x1, _) = bounds
    objects = _objects(shape, int(seed))
    missing, shifts = _defects(shape, int(seed), missing_sections, misalignment)
    size = shape[1:]
    raw = np.zeros((max(z1 - z0, 0), max(y1 - y0, 0), max(x1 - x0, 0)), np.uint8)
    labels = np.zeros(raw.shape, np.uint64)
    for k, z in enumerate(range(z0, z1)):
        owner = _slice_labels(objects, int(seed), z, size, look)
        pieces = np.concatenate([[0], objects.labels[:, z]]).astype(np.uint64)
        labels[k] = pieces[owner][y0:y1, x0:x1]
        if z in missing:
            noise = _slice_rng(int(seed), _S_SLICE, z).standard_normal(size, np.float32)
            image = 0.55 + 0.02 * ndimage.gaussian_filter(noise, 2.0)
        else:
            image = _slice_raw(objects, int(seed), z, owner, look)
            if z in shifts:
                image = _shift(image, *shifts[z])
        raw[k] = np.clip(np.rint(image[y0:y1, x0:x1] * 255), 0, 255).astype(np.uint8)
    return raw, labels


def write_synthetic(
    out_location: str,
    shape: Sequence[int],
    *,
    seed: int,
    missing_sections: int = 0,
    misalignment: int = 0,
    style: str = "base",
    voxel_size: Sequence[float] = DEFAULT_VOXEL_SIZE,
    chunks: Sequence[int] = DEFAULT_CHUNKS,
    overwrite: bool = False,
) -> tuple[str, str]:
    """Write a synthetic volume as ``OUT.zarr/raw`` (uint8) and ``OUT.zarr/labels`` (uint64).

    Slabs of ``chunks[0]`` slices are generated and written one at a time, so memory is bounded
    by one slab. Both datasets are removed again if generation fails part way.

    Parameters
    ----------
    out_location
        The zarr store, ``OUT.zarr``.
    shape, seed, missing_sections, misalignment, style
        As for :func:`generate`.
    voxel_size
        (z, y, x) voxel size in nm stored in the OME metadata.
    chunks
        Storage chunk shape, clipped to ``shape``.
    overwrite
        Replace existing ``raw``/``labels`` datasets.

    Returns
    -------
    The locations of the raw and label datasets.
    """
    from emcore.store import create_volume, split_location
    from emcore.writing import removed_on_error

    from .data import refuse_existing

    shape = _validate(shape, missing_sections, misalignment, seed)
    look = volume_style(style, int(seed))
    root, inner = split_location(out_location)
    if inner:
        raise SynthError(f"{out_location} names a dataset: pass the store (OUT.zarr); raw and labels are written inside it")
    chunks = tuple(min(int(c), s) for c, s in zip(chunks, shape))
    attrs = {"synthetic": {"seed": int(seed), "shape": list(shape), "missing_sections": missing_sections,
                           "misalignment": misalignment, "style": style, "appearance": asdict(look)}}
    locations = (f"{root}/raw", f"{root}/labels")
    if not overwrite:
        refuse_existing(locations)
    with removed_on_error(locations):
        raw = create_volume(locations[0], shape, np.uint8, chunks=chunks, voxel_size=voxel_size,
                            attrs=attrs, overwrite=overwrite)
        labels = create_volume(locations[1], shape, np.uint64, chunks=chunks, voxel_size=voxel_size,
                               attrs=attrs, overwrite=overwrite)
        for z0 in range(0, shape[0], chunks[0]):
            z = slice(z0, min(z0 + chunks[0], shape[0]))
            raw[z], labels[z] = generate(shape, seed=seed, missing_sections=missing_sections,
                                         misalignment=misalignment, style=style, roi=(z, slice(None), slice(None)))
    return locations


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` subcommand to ``python -m pipeline.data``."""
    from .data import parse_numbers

    parser = subparsers.add_parser("synth", help="write a synthetic EM volume (raw + labels)",
                                   description=write_synthetic.__doc__.split("\n")[0])
    parser.add_argument("out", help="output store, OUT.zarr (raw and labels are written inside)")
    parser.add_argument("--shape", type=parse_numbers(int, 3, "64,512,512"), default=(64, 512, 512),
                        help="z,y,x shape (default 64,512,512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--missing-sections", type=int, default=0, help="number of blank slices")
    parser.add_argument("--misalignment", type=int, default=0, help="number of slices shifted by 2-6 px")
    parser.add_argument("--style", choices=STYLES, default="base",
                        help="base: one fixed look; wide: membranes, texture, blur, noise and intensity drawn per "
                             "volume from the seed (train on several seeds; default base)")
    parser.add_argument("--voxel-size", type=parse_numbers(float, 3, "30,6,6"), default=DEFAULT_VOXEL_SIZE,
                        help="z,y,x voxel size in nm (default 30,6,6)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing raw/labels")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    raw, labels = write_synthetic(args.out, args.shape, seed=args.seed, missing_sections=args.missing_sections,
                                  misalignment=args.misalignment, style=args.style, voxel_size=args.voxel_size,
                                  overwrite=args.overwrite)
    print(f"wrote {raw} and {labels} {tuple(args.shape)}")
