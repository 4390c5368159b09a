"""``python -m pipeline.data fib25``: real FIB-SEM volumes with dense 3D labels, optionally thinned in z.

The FIB-25 medulla volumes (FlyEM, isotropic 10 nm voxels) are zarr groups with plain arrays
``raw`` (uint8, z,y,x) and ``labels`` (uint64, 0 = unlabelled) and a group attribute
``voxel_size`` ([z, y, x] nm). :func:`write_fib25` copies every such group of a source folder
into ``OUT.zarr/<name>/raw`` and ``OUT.zarr/<name>/labels`` (OME-Zarr datasets of this project)
keeping every ``z_step``-th slice from ``z_start``, so that ``z_step=3`` gives 30x10x10 nm, the
geometry of serial-section EM (30 nm sections); ``z_start`` 1 and 2 give the two other section
series of the same tissue (more training data at that geometry, same z extent). A missing ``voxel_size`` attribute is taken as 10x10x10 nm
(the source's stated resolution) and recorded as assumed.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np
import zarr

from emcore.store import create_volume, split_location
from emcore.writing import removed_on_error

from .data import DataError, refuse_existing

__all__ = ["FIB25_VOXEL_SIZE", "find_fib_volumes", "write_fib25", "register"]

#: Voxel size (z, y, x) in nm assumed where a source group does not state one.
FIB25_VOXEL_SIZE = (10.0, 10.0, 10.0)


def find_fib_volumes(source: str) -> list[str]:
    """Names of the zarr groups in ``source`` that hold both ``raw`` and ``labels`` arrays (sorted)."""
    if not os.path.isdir(source):
        raise DataError(f"{source} is not a folder: pass --source the folder holding the FIB *.zarr groups")
    names = sorted(name for name in os.listdir(source) if name.endswith(".zarr")
                   and all(os.path.exists(os.path.join(source, name, dataset)) for dataset in ("raw", "labels")))
    if not names:
        raise DataError(f"no *.zarr group with raw and labels arrays in {source}: check --source")
    return names


def write_fib25(source: str, out_location: str, *, z_step: int = 1, z_start: int = 0,
                names: Sequence[str] | None = None, overwrite: bool = False) -> list[str]:
    """Copy FIB volumes into ``OUT.zarr/<name>/{raw,labels}``, keeping slices ``z_start + k z_step``.

    Parameters
    ----------
    source
        Folder with zarr groups ``NAME.zarr`` holding ``raw`` and ``labels``.
    out_location
        The output store, ``OUT.zarr``.
    z_step
        Keep every ``z_step``-th slice; the written voxel size is ``(z_step * vz, vy, vx)``.
    z_start
        First slice kept, ``0 <= z_start < z_step``; written slice ``k`` is source slice
        ``z_start + k z_step``.
    names
        Group names to copy, without ``.zarr`` (default: all found).
    overwrite
        Replace existing datasets.

    Returns
    -------
    The written dataset locations, raw and labels per volume.
    """
    if z_step < 1:
        raise DataError(f"--z-step must be >= 1, got {z_step}")
    if not 0 <= z_start < z_step:
        raise DataError(f"--z-start must be in [0, --z-step), got {z_start} with --z-step {z_step}")
    root, inner = split_location(out_location)
    if inner:
        raise DataError(f"{out_location} names a dataset: pass the store (OUT.zarr); one group per volume is written inside it")
    available = {name[:-len(".zarr")]: name for name in find_fib_volumes(source)}
    chosen = list(available) if names is None else list(names)
    repeated = sorted({name for name in chosen if chosen.count(name) > 1})
    if repeated:
        raise DataError(f"--names lists {', '.join(repeated)} more than once: name each volume once")
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise DataError(f"no volume {unknown[0]!r} in {source}; available: {', '.join(available)}")
    for name in chosen:
        depth = zarr.open_array(os.path.join(source, available[name], "raw"), mode="r").shape[0]
        kept = len(range(z_start, depth, z_step))
        if kept < 2:
            fix = (f"a step of at most {depth - 1 - z_start}" if depth - 1 - z_start >= 1
                   else f"--z-start 0 and a step of at most {depth - 1}")
            raise DataError(f"--z-step {z_step} --z-start {z_start} keeps {kept} of the {depth} slices of {name}: "
                            f"keep at least 2 ({fix}), or leave {name} out with --names")
    locations = [f"{root}/{name}/{dataset}" for name in chosen for dataset in ("raw", "labels")]
    if not overwrite:
        refuse_existing(locations)
    with removed_on_error(locations):
        for name in chosen:
            group = zarr.open_group(os.path.join(source, available[name]), mode="r")
            stated = group.attrs.get("voxel_size")
            voxel_size = tuple(float(v) for v in (stated or FIB25_VOXEL_SIZE))
            raw, labels = np.asarray(group["raw"][z_start::z_step]), np.asarray(group["labels"][z_start::z_step])
            if raw.dtype != np.uint8 or raw.shape != labels.shape or raw.ndim != 3:
                raise DataError(f"{source}/{available[name]}: raw must be uint8 (z, y, x) and labels the same shape, "
                                f"got {raw.dtype} {raw.shape} and {labels.shape}")
            attrs = {"source": os.path.abspath(os.path.join(source, available[name])), "z_step": z_step,
                     "z_start": z_start, "voxel_size_assumed": stated is None}
            written = (voxel_size[0] * z_step,) + voxel_size[1:]
            for dataset, data in (("raw", raw), ("labels", labels.astype(np.uint64))):
                volume = create_volume(f"{root}/{name}/{dataset}", data.shape, data.dtype,
                                       chunks=tuple(min(s, c) for s, c in zip(data.shape, (32, 256, 256))),
                                       voxel_size=written, attrs=attrs, overwrite=overwrite)
                volume[:] = data
    return locations


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fib25`` subcommand to ``python -m pipeline.data``."""
    parser = subparsers.add_parser("fib25", help="copy real FIB-SEM volumes with 3D labels (optionally every k-th slice)",
                                   description=write_fib25.__doc__.split("\n")[0])
    parser.add_argument("out", help="output store, OUT.zarr (one group per volume: OUT.zarr/NAME/raw, labels)")
    parser.add_argument("--source", required=True, help="folder with NAME.zarr groups holding raw and labels")
    parser.add_argument("--z-step", type=int, default=1,
                        help="keep every k-th slice (3 turns 10 nm isotropic into 30x10x10 nm; default 1)")
    parser.add_argument("--z-start", type=int, default=0,
                        help="first slice kept, 0 <= k < --z-step (another section series of the same tissue; default 0)")
    parser.add_argument("--names", default=None,
                        help="comma-separated volume names without .zarr (default: all in --source)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing datasets")
    parser.set_defaults(run=lambda a: print("wrote", *write_fib25(
        a.source, a.out, z_step=a.z_step, z_start=a.z_start, names=a.names.split(",") if a.names else None, overwrite=a.overwrite)))
