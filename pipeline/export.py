"""``python -m pipeline.export``: hand results to viewers and other tools.

Three forms:

* ``python -m pipeline.export vol.zarr/segmentation precomputed://file:///OUT [--raw vol.zarr/raw]
  [--viewer-state state.json] [--url-prefix http://localhost:8000]`` writes each volume as a
  Neuroglancer precomputed layer ``OUT/<dataset name>`` (the segmentation as a ``segmentation``
  layer with ``compressed_segmentation`` encoding, raw as an ``image`` layer), block by block, and
  prints a Neuroglancer link (and writes the viewer state JSON) for a local file server;
* ``python -m pipeline.export serve precomputed://file:///OUT [--port 8000]`` serves OUT the way
  Neuroglancer needs it (CORS headers, gzip chunks decoded) through cloud-volume's server;
* ``python -m pipeline.export pyramid vol.zarr/NAME --levels 3`` adds OME-Zarr levels
  (:mod:`pipeline.pyramid`).

A plain ``python -m http.server`` is not enough for a Neuroglancer page on another origin: it sends
no ``Access-Control-Allow-Origin`` header, and cloud-volume stores file:// chunks gzipped
(``0-64_0-64_0-32.gz``) while Neuroglancer asks for the name without ``.gz``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import urllib.parse
from typing import Any, Sequence

import numpy as np

from corrseg3d.cli import ArgumentParser, entry_point
from emcore.blocks import BlockGrid
from emcore.precomputed import check_location
from emcore.store import PRECOMPUTED_PREFIX, Volume, create_volume, open_volume, remove_volume

from .data import parse_numbers
from .runstate import require_finished

__all__ = ["ExportError", "export_precomputed", "main", "make_server", "viewer_link", "viewer_state"]

#: Precomputed chunk (z, y, x): 32 sections of 128 x 128 (anisotropic EM).
DEFAULT_CHUNKS = (32, 128, 128)
#: Write block, in chunks per axis.
BLOCK_CHUNKS = (1, 4, 4)
NEUROGLANCER = "https://neuroglancer-demo.appspot.com"
DEFAULT_URL_PREFIX = "http://localhost:8000"
SUBCOMMANDS = ("pyramid", "serve")
_UNIT_METRES = {"nanometer": 1e-9, "micrometer": 1e-6, "millimeter": 1e-3, "meter": 1.0}


class ExportError(ValueError):
    """A volume cannot be exported; the message says what and how to fix it."""


def _layer_name(location: str) -> str:
    return location.rstrip("/").split("/")[-1]


def _file_path(location: str) -> str | None:
    """Local folder of a ``precomputed://file://`` location, else None."""
    cloudpath = location[len(PRECOMPUTED_PREFIX):]
    return cloudpath[len("file://"):] if cloudpath.startswith("file://") else None


def _segmentation_dtype(dtype: np.dtype, location: str) -> np.dtype:
    if not np.issubdtype(dtype, np.integer):
        raise ExportError(f"{location} holds {dtype} values: a segmentation must hold integer ids")
    if dtype == np.uint64 or np.issubdtype(dtype, np.signedinteger):
        return np.dtype(np.uint64)
    return np.dtype(np.uint32)


def _copy_blockwise(source: Volume, target: Volume, chunks: Sequence[int]) -> None:
    block = tuple(c * n for c, n in zip(chunks, BLOCK_CHUNKS))
    grid = BlockGrid(source.spatial_shape, block)
    for index in range(grid.n_blocks):
        box = grid.block(index).slices
        data = np.asarray(source[box])
        if np.issubdtype(data.dtype, np.signedinteger) and data.size and data.min() < 0:
            raise ExportError(f"{source.location} holds negative ids (at block {box}): ids must be >= 0")
        target[box] = data.astype(target.dtype, copy=False)


def export_precomputed(segmentation: str, destination: str, *, raw: str | None = None,
                       chunks: Sequence[int] = DEFAULT_CHUNKS, overwrite: bool = False,
                       allow_incomplete: bool = False) -> dict[str, str]:
    """Write volumes as Neuroglancer precomputed layers below ``destination``, block by block.

    Parameters
    ----------
    segmentation
        Integer segmentation (``vol.zarr/segmentation`` or any location :func:`open_volume` reads);
        written as layer ``<destination>/<its dataset name>``, type ``segmentation``,
        ``compressed_segmentation`` encoding, uint32 (uint64 for uint64 and signed input).
    destination
        ``precomputed://file:///OUT`` (or ``gs://``/``s3://`` through cloud-volume): the folder
        holding the layers.
    raw
        Optional grey-value volume, written as an ``image`` layer ``<destination>/<its name>``.
    chunks
        Precomputed chunk shape (z, y, x).
    overwrite
        Replace existing layers.
    allow_incomplete
        Export volumes whose pipeline stage has not finished (experts; refused by default).

    Returns
    -------
    Layer name -> precomputed location. A failed export removes the file:// layers it created.
    """
    if not destination.startswith(PRECOMPUTED_PREFIX):
        raise ExportError(f"destination {destination!r} must be precomputed://file:///ABS/PATH (or gs://, s3://)")
    check_location(destination)
    folder = _file_path(destination)
    if folder is not None and os.path.isfile(os.path.join(folder, "info")):
        raise ExportError(f"destination {destination} is a precomputed layer: name the folder that holds the layers "
                          f"(precomputed://file://{os.path.dirname(folder.rstrip('/'))})")
    sources = {"segmentation": open_volume(segmentation)}
    if raw is not None:
        sources["image"] = open_volume(raw)
    for volume in sources.values():
        require_finished(volume.location, allow_incomplete=allow_incomplete)
    names = {kind: _layer_name(volume.location) for kind, volume in sources.items()}
    if len(set(names.values())) != len(names):
        raise ExportError(f"the segmentation and raw datasets are both named {names['segmentation']!r}: "
                          "export them to different destinations")
    for kind, volume in sources.items():
        if volume.ndim != 3:
            raise ExportError(f"{volume.location} has shape {volume.shape}: only (z, y, x) volumes can be exported")
    base = destination.rstrip("/")
    layers = {names[kind]: f"{base}/{names[kind]}" for kind in sources}
    created: list[str] = []
    try:
        for kind, volume in sources.items():
            location = layers[names[kind]]
            path = _file_path(location)
            if path and os.path.exists(path):
                if not overwrite:
                    raise ExportError(f"{location} already exists: pass --overwrite to replace it")
                shutil.rmtree(path)
            dtype = _segmentation_dtype(volume.dtype, volume.location) if kind == "segmentation" else volume.dtype
            layer_chunks = tuple(min(c, s) for c, s in zip(chunks, volume.spatial_shape))
            created.append(location)
            target = create_volume(location, volume.spatial_shape, dtype, chunks=layer_chunks,
                                   voxel_size=volume.voxel_size, offset=volume.offset,
                                   attrs={"source": volume.location}, overwrite=overwrite)
            _copy_blockwise(volume, target, layer_chunks)
    except BaseException:
        for location in created:
            remove_volume(location)
        raise
    return layers


def _source_url(location: str, url_prefix: str | None) -> str:
    path = _file_path(location)
    if path is None and url_prefix is None:
        return location
    name = _layer_name(location)
    return f"{PRECOMPUTED_PREFIX}{(url_prefix or DEFAULT_URL_PREFIX).rstrip('/')}/{name}"


def viewer_state(layers: dict[str, str], *, url_prefix: str | None = None) -> dict[str, Any]:
    """Neuroglancer viewer state showing exported ``layers`` (name -> precomputed location).

    file:// layers are addressed through ``url_prefix`` (default ``http://localhost:8000``, where
    ``python -m pipeline.export serve`` serves the destination folder); gs:// and s3:// layers
    are addressed directly unless ``url_prefix`` is given. The view is centred on the volume.
    """
    entries = []
    first = None
    for name, location in layers.items():
        volume = open_volume(location)
        first = first or volume
        kind = "segmentation" if volume.dtype in (np.uint32, np.uint64) else "image"
        entries.append({"type": kind, "source": _source_url(location, url_prefix), "name": name})
    if first is None:
        raise ExportError("viewer_state needs at least one layer")
    units = [_UNIT_METRES.get(u, 1e-9) for u in first.units]
    dimensions = {axis: [size * unit, "m"] for axis, size, unit in zip("zyx", first.voxel_size, units)}
    centre = [o / v + n / 2 for o, v, n in zip(first.offset, first.voxel_size, first.spatial_shape)]
    return {
        "dimensions": {axis: dimensions[axis] for axis in "xyz"},
        "position": list(reversed(centre)),
        "crossSectionScale": 1,
        "layers": sorted(entries, key=lambda e: e["type"] == "segmentation"),
        "selectedLayer": {"layer": entries[0]["name"], "visible": True},
        "layout": "4panel",
    }


def viewer_link(state: dict[str, Any], *, viewer: str = NEUROGLANCER) -> str:
    """A Neuroglancer URL that opens ``state``."""
    return f"{viewer}/#!" + urllib.parse.quote(json.dumps(state, separators=(",", ":")), safe="")


def make_server(destination: str, *, host: str = "localhost", port: int = 8000) -> Any:
    """An HTTP server (not yet serving) for the layers below a precomputed ``destination``.

    It is cloud-volume's viewer server: CORS headers, HTTP range requests, and chunks read
    through CloudFiles so gzipped file:// chunks are served decoded.
    """
    from http.server import HTTPServer

    from cloudvolume.server import ViewerServerHandler

    if not destination.startswith(PRECOMPUTED_PREFIX):
        raise ExportError(f"{destination!r} must be the export destination, precomputed://file:///ABS/PATH")
    cloudpath = check_location(destination)
    return HTTPServer((host, port), lambda *args: ViewerServerHandler(cloudpath, *args))


def _precomputed_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="python -m pipeline.export",
        description="Export a segmentation (and raw) as Neuroglancer precomputed layers; "
                    "`python -m pipeline.export pyramid|serve -h` for the other forms.")
    parser.add_argument("segmentation", help="segmentation location, e.g. vol.zarr/segmentation")
    parser.add_argument("destination", help="folder of the layers, precomputed://file:///ABS/OUT (or gs://, s3://)")
    parser.add_argument("--raw", help="also export this grey-value volume as an image layer, e.g. vol.zarr/raw")
    parser.add_argument("--chunks", type=parse_numbers(int, 3, "32,128,128"), default=DEFAULT_CHUNKS,
                        help="precomputed chunk z,y,x (default 32,128,128)")
    parser.add_argument("--viewer-state", metavar="FILE", help="write the Neuroglancer viewer state JSON here")
    parser.add_argument("--url-prefix", help=f"where the layers are served (default {DEFAULT_URL_PREFIX} for file://)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing layers")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="experts: export a volume whose pipeline stage has not finished")
    parser.set_defaults(run=_run_precomputed)
    return parser


def _run_precomputed(args: argparse.Namespace) -> None:
    if args.viewer_state and os.path.exists(args.viewer_state) and not args.overwrite:
        raise ExportError(f"{args.viewer_state} already exists: pass --overwrite to replace it")
    folder = os.path.dirname(args.viewer_state or "") or "."
    if args.viewer_state and not os.path.isdir(folder):
        raise ExportError(f"folder {folder} of --viewer-state {args.viewer_state} does not exist: create it or write "
                          "the state elsewhere")
    layers = export_precomputed(args.segmentation, args.destination, raw=args.raw, chunks=args.chunks,
                                overwrite=args.overwrite, allow_incomplete=args.allow_incomplete)
    state = viewer_state(layers, url_prefix=args.url_prefix)
    if args.viewer_state:
        with open(args.viewer_state, "w") as handle:
            json.dump(state, handle, indent=2)
    for location in layers.values():
        print(f"export: wrote {location}")
    if _file_path(args.destination):
        port = urllib.parse.urlsplit(args.url_prefix or DEFAULT_URL_PREFIX).port or 8000
        print(f"serve:  python -m pipeline.export serve {args.destination} --port {port}   "
              "(CORS + decoded gzip chunks; plain `python -m http.server` does neither)")
    print(f"open:   {viewer_link(state)}")


def _subcommand_parser() -> ArgumentParser:
    from . import pyramid

    parser = ArgumentParser(prog="python -m pipeline.export")
    subparsers = parser.add_subparsers(dest="command", required=True)
    pyramid.register(subparsers)
    serve = subparsers.add_parser("serve", help="serve exported layers to Neuroglancer (CORS, gzip decoded)",
                                  description="Serve the layers below a precomputed destination to Neuroglancer (CORS, range requests, "
                                              "gzip decoded) until Ctrl-C.")
    serve.add_argument("destination", help="the export destination, precomputed://file:///ABS/OUT")
    serve.add_argument("--host", default="localhost", help="interface to listen on (default localhost)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.set_defaults(run=_run_serve)
    return parser


def _run_serve(args: argparse.Namespace) -> None:
    server = make_server(args.destination, host=args.host, port=args.port)
    print(f"serve: {args.destination} at http://{args.host}:{args.port} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m pipeline.export``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _subcommand_parser() if argv and argv[0] in SUBCOMMANDS else _precomputed_parser()
    args = parser.parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
