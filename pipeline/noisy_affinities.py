"""Synthetic noisy affinities from instance labels, for tests and benchmarks (docs/conventions.md §5).

Per channel ``c`` with offset ``o`` (affinity at p links p and p + o, 1 = same object)::

    a = clip(1 - 2.6 * blur_{0.5,1,1}(1 - true_c) + shared + per_channel, 0, 1)

with ``true_c`` from :func:`corrseg3d.targets.label_affinities`, ``shared`` a smooth noise field
common to all channels (std ``0.5 * noise``), ``per_channel`` white noise of std ``noise`` (0.14),
then two structured errors: *membrane gaps* (``gaps_per_mvox`` ellipsoids where every affinity is
pulled 70 % towards 1) and *false boundaries* (``mitos_per_mvox`` ellipsoids whose surface
links are halved). Stored as uint8 ``round(255 a)``. Deterministic for a given seed.

CLI::

    python -m pipeline.noisy_affinities vol.zarr --seed 0      # vol.zarr/labels -> vol.zarr/affinities
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from corrseg3d.cli import ArgumentParser, entry_point
from corrseg3d.targets import label_affinities
from emcore.conventions import PEA_OFFSETS, affinities_as_uint8, validate_offsets
from emcore.store import create_volume, open_volume
from emcore.writing import removed_on_error

__all__ = ["noisy_affinities", "main"]


def noisy_affinities(labels: np.ndarray, offsets: Sequence[Sequence[int]] = PEA_OFFSETS, *, seed: int = 0,
                     noise: float = 0.14, gaps_per_mvox: float = 25.0, mitos_per_mvox: float = 12.0) -> np.ndarray:
    """Noisy (C, z, y, x) uint8 affinities of (z, y, x) ``labels`` (see module docstring)."""
    offsets = validate_offsets(offsets)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (z, y, x), got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    mvox = labels.size / 1e6
    shared = gaussian_filter(rng.standard_normal(labels.shape, dtype=np.float32), (1, 4, 4))
    shared *= np.float32(0.5 * noise / max(float(shared.std()), 1e-6))
    gaps = _ellipsoids(labels.shape, int(round(gaps_per_mvox * mvox)), rng, (1, 3), (3, 8)) > 0
    mitos = _ellipsoids(labels.shape, int(round(mitos_per_mvox * mvox)), rng, (1, 3), (4, 10))
    true, _ = label_affinities(labels, offsets)
    same_mito, _ = label_affinities(mitos + 1, offsets)
    result = np.empty(true.shape, dtype=np.uint8)
    for channel in range(len(offsets)):
        boundary = gaussian_filter(1.0 - true[channel].astype(np.float32), (0.5, 1, 1))
        aff = 1.0 - 2.6 * boundary + shared + rng.standard_normal(labels.shape, dtype=np.float32) * np.float32(noise)
        np.clip(aff, 0.0, 1.0, out=aff)
        aff[gaps] += 0.7 * (1.0 - aff[gaps])
        aff[same_mito[channel] == 0] *= 0.5
        result[channel] = affinities_as_uint8(aff)
    return result


def _ellipsoids(shape: tuple[int, ...], count: int, rng: np.random.Generator, z_radius: tuple[int, int],
                xy_radius: tuple[int, int]) -> np.ndarray:
    """uint64 volume with ``count`` random axis-aligned ellipsoids labelled 1..count (later ones on top)."""
    volume = np.zeros(shape, dtype=np.uint64)
    for label in range(1, count + 1):
        centre = [int(rng.integers(0, s)) for s in shape]
        radii = [int(rng.integers(z_radius[0], z_radius[1] + 1))] + [int(rng.integers(xy_radius[0], xy_radius[1] + 1))] * 2
        box = tuple(slice(max(c - r, 0), min(c + r + 1, s)) for c, r, s in zip(centre, radii, shape))
        grid = np.ogrid[box]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
        volume[box][inside] = label
    return volume


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m pipeline.noisy_affinities", description=__doc__.split("\n")[0])
    parser.add_argument("store", help="zarr store holding the labels, e.g. vol.zarr")
    parser.add_argument("--labels", default="labels", help="labels dataset (default: labels)")
    parser.add_argument("--output", default="affinities", help="affinity dataset to write (default: affinities)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.14, help="per-channel noise std (default 0.14)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing affinity dataset")
    args = parser.parse_args(argv)
    target = f"{args.store}/{args.output}"
    labels_volume = open_volume(f"{args.store}/{args.labels}")
    affs = noisy_affinities(labels_volume[...], seed=args.seed, noise=args.noise)
    chunks = (1,) + tuple(min(c, s) for c, s in zip((32, 256, 256), affs.shape[1:]))
    volume = create_volume(target, affs.shape, np.uint8, chunks=chunks, voxel_size=labels_volume.voxel_size,
                           offset=labels_volume.offset, overwrite=args.overwrite,
                           attrs={"offsets": [list(o) for o in PEA_OFFSETS], "noise_seed": args.seed})
    with removed_on_error([target]):
        volume[...] = affs
    print(f"wrote {target} {affs.shape} uint8", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
