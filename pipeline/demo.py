"""``python -m pipeline.demo`` (``make demo``): synthetic EM -> affinities -> segmentation -> scores, in minutes.

Writes into ``--out`` (default ``demo``): ``demo.zarr`` (raw, labels, affinities, fragments,
segmentation; OME-Zarr, so napari-ome-zarr opens it), ``run.yaml`` (the run config, rerunnable
with ``python -m pipeline.run``), ``overview.png`` (raw, mean nearest-neighbour affinity,
segmentation and ground truth for a few slices) and ``neuroglancer.json`` (a viewer state that
expects ``--out`` served at ``http://localhost:8000``). Uses the shipped weights unless
``--checkpoint`` is given. Rerunning resumes: finished blocks are not recomputed. A rerun with
another ``--shape`` or ``--seed`` (or after the volume's generation was killed) writes the volume
anew and starts the chain again; other changed options are refused unless ``--restart STAGE``
discards that stage's results. Look at the result with ``python -m pipeline.view OUT/demo.zarr``
(a local Neuroglancer, :mod:`pipeline.view`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import numpy as np
import yaml

from corrseg3d.cli import ArgumentParser, entry_point
from emcore.metrics import SCORE_KEYS
from emcore.store import open_volume
from emcore.writing import being_written

from .data import parse_numbers
from .preview import label_colours
from .run import STAGES, run
from .runconfig import load_run_config
from .synth import write_synthetic

__all__ = ["DemoError", "run_demo", "write_overview", "neuroglancer_state", "main"]

SERVE_URL = "http://localhost:8000"


class DemoError(ValueError):
    """The demo cannot start (e.g. no weights); the message says what to pass."""


def _nearest_neighbour_channels(offsets: Sequence[Sequence[int]]) -> list[int]:
    return [k for k, offset in enumerate(offsets) if sum(abs(int(v)) for v in offset) == 1]


def write_overview(store: str, png: str, *, n_slices: int = 3) -> str:
    """PNG with one row per slice: raw, mean NN affinity, segmentation over raw, GT over raw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = open_volume(f"{store}/raw")
    affinities = open_volume(f"{store}/affinities")
    segmentation, labels = open_volume(f"{store}/segmentation"), open_volume(f"{store}/labels")
    channels = _nearest_neighbour_channels(affinities.attrs["offsets"])
    scale = float(affinities.attrs.get("dtype_scale", 1))
    depth = raw.shape[0]
    slices = sorted({depth * (i + 1) // (n_slices + 1) for i in range(n_slices)})
    titles = ("raw", "mean NN affinity", "segmentation", "ground truth")
    fig, axes = plt.subplots(len(slices), 4, squeeze=False, figsize=(12, 3 * len(slices)), dpi=100)
    for row, z in enumerate(slices):
        section = raw[z]
        nn = np.asarray(affinities[(channels, z)], np.float32).mean(0) / scale
        panels = [(section, "gray", None), (nn, "viridis", None), (section, "gray", segmentation[z]),
                  (section, "gray", labels[z])]
        for column, (image, cmap, overlay) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(image, cmap=cmap, interpolation="nearest", vmin=0, vmax=255 if cmap == "gray" else 1)
            if overlay is not None:
                axis.imshow(label_colours(np.asarray(overlay), alpha=0.6), interpolation="nearest")
            axis.set_axis_off()
            axis.set_title(f"{titles[column]}, z = {z}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def neuroglancer_state(store_name: str, *, url: str = SERVE_URL) -> dict:
    """Neuroglancer state with raw (image), segmentation and GT layers of ``url/store_name``."""
    def source(name: str) -> str:
        return f"zarr3://{url}/{store_name}/{name}/"

    return {"layers": [{"type": "image", "name": "raw", "source": source("raw")},
                       {"type": "segmentation", "name": "segmentation", "source": source("segmentation")},
                       {"type": "segmentation", "name": "ground truth", "source": source("labels"),
                        "visible": False}],
            "layout": "4panel"}


def _holds_volume(store: str, shape: Sequence[int], seed: int) -> bool:
    """Whether ``store`` holds the whole synthetic volume of this ``shape`` and ``seed``."""
    locations = (f"{store}/raw", f"{store}/labels")
    if not all(os.path.exists(location) for location in locations) or any(map(being_written, locations)):
        return False
    recorded = open_volume(locations[1]).attrs.get("synthetic", {})
    return recorded.get("seed") == seed and recorded.get("shape") == [int(n) for n in shape]


def run_demo(out: str, *, checkpoint: str | None = None, shape: Sequence[int] = (32, 256, 256), seed: int = 1000,
             scheduler: str = "threads", progress: bool = True, restart: str | None = None) -> dict:
    """Generate the volume (once per shape and seed), run the whole chain, write the figures; return the scores.

    ``restart`` (a stage of :data:`pipeline.run.STAGES`) discards that stage's results and the later
    ones first; a newly written volume restarts from ``predict``.
    """
    from corrseg3d.weights import default_checkpoint

    weights = os.path.abspath(checkpoint or default_checkpoint())
    if not os.path.isfile(weights):
        shipped = "the shipped weights" if checkpoint is None else "checkpoint"
        raise DemoError(f"{shipped} {weights} not found: pass --checkpoint PATH of a corrseg3d checkpoint "
                        "(train one with `python -m corrseg3d.train`)")
    os.makedirs(out, exist_ok=True)
    store = os.path.join(os.path.abspath(out), "demo.zarr")
    if not _holds_volume(store, shape, seed):
        write_synthetic(store, shape, seed=seed, overwrite=True)
        restart = "predict"  # every result in the folder was made from another volume
    block = tuple(min(b, s) for b, s in zip((16, 128, 128), shape))  # several blocks: shows the stitching
    values = {"input": {"raw": "demo.zarr/raw"},
              "predict": {"checkpoint": weights, "block": list(block)},
              "segment": {"block": list(block)},
              "evaluate": {"gt": "demo.zarr/labels"},
              "execution": {"scheduler": scheduler}}
    config_path = os.path.join(out, "run.yaml")
    with open(config_path, "w") as handle:
        yaml.safe_dump(values, handle, sort_keys=False)
    report = run(load_run_config(config_path), progress=progress, restart=restart)["evaluate"]
    write_overview(store, os.path.join(out, "overview.png"))
    with open(os.path.join(out, "neuroglancer.json"), "w") as handle:
        json.dump(neuroglancer_state("demo.zarr"), handle, indent=2)
    return report


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m pipeline.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo", help="output folder (default demo)")
    parser.add_argument("--checkpoint", help="corrseg3d checkpoint (default: the shipped weights)")
    parser.add_argument("--shape", type=parse_numbers(int, 3, "32,256,256"), default=(32, 256, 256),
                        help="z,y,x shape of the synthetic volume (default 32,256,256)")
    parser.add_argument("--seed", type=int, default=1000,
                        help="synthetic volume seed (default 1000, a seed the shipped weights never saw)")
    parser.add_argument("--scheduler", default="threads", help="threads (default), processes, synchronous, tcp://...")
    parser.add_argument("--restart", choices=tuple(STAGES),
                        help="discard the results of this stage and the later ones first (after changing "
                             "--checkpoint: predict)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    report = run_demo(args.out, checkpoint=args.checkpoint, shape=args.shape, seed=args.seed,
                      scheduler=args.scheduler, progress=not args.no_progress, restart=args.restart)
    print(f"\n{'metric':<12} {'value':>10}   ({report['n_gt_objects']} GT objects, {report['n_segments']} segments)")
    print("\n".join(f"{key:<12} {report['scores'][key]:>10.4f}" for key in SCORE_KEYS))
    print(f"\nwrote {os.path.join(args.out, 'overview.png')} and {os.path.join(args.out, 'neuroglancer.json')}")
    print(f"napari:       napari --plugin napari-ome-zarr {os.path.join(args.out, 'demo.zarr', 'segmentation')}")
    store = os.path.join(args.out, "demo.zarr")
    print(f"neuroglancer: python -m pipeline.view {store}   (local viewer, works offline; prints its URL)")
    print(f"errors:       python -m pipeline.evaluate {store}/segmentation {store}/labels --view   "
          "(one viewer link per worst split and merge)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
