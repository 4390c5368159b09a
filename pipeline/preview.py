"""PNG preview of a volume: a few z-slices of raw, and raw with labels overlaid.

Label colours are a fixed function of the label id (so previews of one volume agree); label 0
is left uncoloured. Rendering uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from emcore.store import open_volume, split_location

from .data import DataError

__all__ = ["label_colours", "write_preview", "register"]


def label_colours(labels: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """RGBA image (..., 4) float with a pseudo-random colour per label id; label 0 transparent.

    The colour of id ``l`` comes from a multiplicative hash of ``l``, so it does not depend on
    which other labels are present.
    """
    ids = labels.astype(np.uint64)
    hashed = (ids * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    rgb = np.stack([(hashed >> np.uint64(s)) & np.uint64(255) for s in (0, 8, 16)], -1).astype(np.float32) / 255
    rgba = np.concatenate([0.15 + 0.85 * rgb, np.full(labels.shape + (1,), alpha, np.float32)], -1)
    rgba[labels == 0, 3] = 0
    return rgba


def write_preview(store: str, png: str, *, slices: Sequence[int] | None = None, raw: str = "raw",
                  labels: str = "labels", dpi: int = 100) -> str:
    """Write a PNG with raw slices (top row) and raw with labels overlaid (bottom row).

    Parameters
    ----------
    store
        ``OUT.zarr`` holding ``raw`` and optionally ``labels`` datasets.
    png
        Output PNG path.
    slices
        z indices to show; default: first, middle and last slice.
    raw, labels
        Dataset names inside the store; the label row is omitted if ``labels`` is absent.
    dpi
        Output resolution; each panel is shown at about its pixel size.
    """
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = split_location(store)[0]
    folder = os.path.dirname(os.path.abspath(png))
    if not os.path.isdir(folder):
        raise DataError(f"folder {folder} of --png {png} does not exist: create it or write the PNG elsewhere")
    image = open_volume(f"{root}/{raw}")
    depth = image.shape[0]
    slices = list(slices) if slices is not None else sorted({0, depth // 2, depth - 1})
    bad = [z for z in slices if not 0 <= z < depth]
    if bad:
        raise DataError(f"slices {bad} are outside the volume (0..{depth - 1}): pick --slices within it")
    segmentation = open_volume(f"{root}/{labels}") if os.path.exists(os.path.join(root, labels)) else None
    rows = 2 if segmentation is not None else 1
    height, width = image.shape[-2:]
    fig, axes = plt.subplots(rows, len(slices), squeeze=False,
                             figsize=(len(slices) * width / dpi, rows * height / dpi + 0.3), dpi=dpi)
    for column, z in enumerate(slices):
        section = image[z]
        for row in range(rows):
            axis = axes[row, column]
            axis.imshow(section, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            if row == 1:
                axis.imshow(label_colours(np.asarray(segmentation[z])), interpolation="nearest")
            axis.set_axis_off()
        axes[0, column].set_title(f"z = {z}", fontsize=9)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.3 / (rows * height / dpi + 0.3), wspace=0.01, hspace=0.01)
    fig.savefig(png, dpi=dpi)
    plt.close(fig)
    return png


def _parse_slice_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated slice indices, e.g. 0,16,32") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``preview`` subcommand to ``python -m pipeline.data``."""
    parser = subparsers.add_parser("preview", help="write a PNG of a few slices with labels overlaid",
                                   description=write_preview.__doc__.split("\n")[0])
    parser.add_argument("store", help="OUT.zarr with raw (and labels)")
    parser.add_argument("--png", required=True, help="output PNG path")
    parser.add_argument("--slices", type=_parse_slice_list, default=None, help="z indices, e.g. 0,16,32")
    parser.set_defaults(run=lambda a: print("wrote", write_preview(a.store, a.png, slices=a.slices)))
