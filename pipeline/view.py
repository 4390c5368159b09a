"""``python -m pipeline.view vol.zarr``: look at a volume and its results in a local, offline Neuroglancer.

Serves the Neuroglancer viewer that the ``neuroglancer`` package ships (its static files come from
the package, nothing from the internet) from this Python process, with the datasets of the
location as layers (:mod:`pipeline.viewlayers`): raw as an image, segmentation, labels and
fragments as segmentation layers, affinities as the mean nearest-neighbour affinity, and the
block grid of the segmentation run as boxes. Every layer is read one requested chunk at a time,
so the size of the volume does not matter. Prints the URL and serves until Ctrl-C; binds to
127.0.0.1 unless ``--bind`` says otherwise (``--bind 0.0.0.0`` shares the viewer on the network:
anyone who can reach the port sees the data).

Examples
--------
::

    python -m pipeline.view demo/demo.zarr
    python -m pipeline.view demo/demo.zarr --layers raw,segmentation,labels --port 8080
    python -m pipeline.view precomputed://file:///abs/ng
    python -m pipeline.view demo/demo.zarr --screenshot docs/viewer_demo.png   # headless Chromium

``python -m pipeline.evaluate SEG GT --view`` serves the same viewer with one link per worst
split and merge (:mod:`pipeline.viewoffenders`). Coordinates: positions are voxel indices (z, y, x) of
the first layer; the viewer shows x, y, z axes with the voxel size of the data.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any, Mapping, NoReturn, Sequence

from corrseg3d.cli import ArgumentParser, entry_point

from .data import parse_numbers
from .viewlayers import (
    LayerSpec,
    ViewError,
    ViewSources,
    coordinate_space,
    neuroglancer_layer,
    open_sources,
    voxel_offset,
)

__all__ = ["DEFAULT_BIND", "LAYOUTS", "start_server", "make_viewer", "wait_until_interrupted", "screenshot_png",
           "save_screenshot", "main"]

DEFAULT_BIND = "127.0.0.1"
LAYOUTS = ("4panel", "xy", "xz", "yz", "xy-3d")
#: Seconds a screenshot may take (page load plus every visible chunk).
SCREENSHOT_TIMEOUT = 120.0
#: Seconds Ctrl-C waits for Neuroglancer's server to close; its close waits for every open
#: connection, and a connected browser's pending request can hold it open indefinitely.
STOP_TIMEOUT = 5.0


def start_server(bind: str = DEFAULT_BIND, port: int = 0) -> str:
    """Start the viewer server of this process on ``bind:port`` (0 = a free port); return its URL.

    Raises
    ------
    ViewError
        The port is in use or the address cannot be bound.
    """
    import neuroglancer

    neuroglancer.set_server_bind_address(bind, port)
    try:
        neuroglancer.server.start()
    except OSError as error:
        raise ViewError(f"cannot listen on {bind}:{port} ({error.strerror or error}): pass --port with a free port "
                        "(0 picks one) or another --bind address") from None
    return neuroglancer.server.get_server_url()


def make_viewer(sources: ViewSources, *, position: Sequence[float] | None = None,
                selected: Mapping[str, Sequence[int]] | None = None, zoom: float | None = None,
                layout: str = "4panel") -> Any:
    """A Neuroglancer viewer (served by :func:`start_server`) showing ``sources``.

    Parameters
    ----------
    sources
        The layers (:func:`pipeline.viewlayers.open_sources`).
    position
        Centre of the view in voxels (z, y, x) of the reference volume (default: the centre of
        its middle voxel); voxel ``i`` spans ``[i, i + 1)``, so ``i + 0.5`` is its centre. A
        position outside ``[0, shape]`` along any axis is a :class:`ViewError`.
    selected
        Segment ids to select per segmentation layer (those layers are made visible; the other
        segments of the layer are hidden).
    zoom
        Cross-section scale: voxels (x) per screen pixel (default: Neuroglancer's, 1).
    layout
        One of :data:`LAYOUTS`.
    """
    import neuroglancer

    reference = sources.reference
    shape = reference.spatial_shape
    if position is not None and not all(0 <= p <= n for p, n in zip(position, shape)):
        raise ViewError(f"position {','.join(f'{p:g}' for p in position)} lies outside the volume "
                        f"(z,y,x shape {','.join(map(str, shape))}): pass --position within 0..{shape[0]},"
                        f"0..{shape[1]},0..{shape[2]}")
    centre = position if position is not None else [n // 2 + 0.5 for n in shape]
    world = [o + c for o, c in zip(voxel_offset(reference), centre)]
    viewer = neuroglancer.Viewer()
    with viewer.txn() as state:
        state.dimensions = coordinate_space(reference, ("x", "y", "z"))
        state.position = list(reversed(world))
        for spec in sources.layers:
            state.layers.append(name=spec.name, layer=neuroglancer_layer(spec), visible=spec.visible)
        for name, ids in (selected or {}).items():
            state.layers[name].segments = [int(i) for i in ids]
            state.layers[name].visible = True
        if zoom is not None:
            state.cross_section_scale = zoom
        state.layout = layout
    return viewer


def wait_until_interrupted() -> NoReturn:
    """Serve until Ctrl-C (SIGINT, even if the process was started with it ignored), then stop the server, waiting at most :data:`STOP_TIMEOUT` seconds, and end
    the process with status 0 (``os._exit`` after flushing the output: threads still reading data
    for an open browser page cannot keep it alive, as interpreter shutdown would wait for them)."""
    import neuroglancer

    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (a background job)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        stopper = threading.Thread(target=neuroglancer.server.stop, daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def screenshot_png(viewer: Any, size: Sequence[int], *, timeout: float = SCREENSHOT_TIMEOUT) -> bytes:
    """PNG of ``viewer`` as its open browser page renders it at ``size`` (width, height) pixels,
    taken once every visible chunk has loaded (Neuroglancer's screenshot action); the page's
    size and controls are restored afterwards.

    Raises
    ------
    ViewError
        No page rendered the view within ``timeout`` seconds.
    """
    width, height = int(size[0]), int(size[1])
    prior = viewer.config_state.state
    with viewer.config_state.txn() as config:
        config.show_ui_controls = False
        config.show_panel_borders = False
        config.viewer_size = [width, height]
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            replies: list[Any] = []
            done = threading.Event()
            viewer.async_screenshot(lambda reply: (replies.append(reply), done.set()))
            if done.wait(max(0.0, deadline - time.monotonic())):
                shot = replies[0].screenshot
                if (shot.width, shot.height) == (width, height):  # the first reply may predate the resize
                    return shot.image
    finally:
        viewer.config_state.set_state(prior)
    raise ViewError(f"no browser rendered the viewer at {viewer.get_viewer_url()} within {timeout:.0f} s")


def save_screenshot(viewer: Any, png: str, *, size: Sequence[int] = (1280, 800)) -> str:
    """Open ``viewer`` in headless Chromium (:mod:`pipeline.browser`) and write its view to ``png``."""
    from .browser import headless_chromium

    with headless_chromium(window_size=(int(size[0]), int(size[1]))) as browser:
        browser.get(viewer.get_viewer_url())
        image = screenshot_png(viewer, size)
    with open(png, "wb") as handle:
        handle.write(image)
    return png


def _describe(spec: LayerSpec) -> str:
    if spec.kind == "annotation":
        return f"{spec.name} (block grid, {len(spec.source)} boxes)"
    detail = "mean nearest-neighbour affinity" if spec.volume.ndim == 4 else spec.kind
    return f"{spec.name} ({detail}{'' if spec.visible else ', hidden'})"


def _position(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} must be three comma-separated voxel coordinates z,y,x, e.g. 16,128,128")
    return values  # type: ignore[return-value]


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m pipeline.view", description=__doc__.split("\n\n")[0])
    parser.add_argument("location", help="vol.zarr or a group in it (every dataset), vol.zarr/NAME, or "
                                         "precomputed://file:///ABS/PATH (a layer or an export folder of layers)")
    parser.add_argument("--layers", help="comma-separated layers in order, e.g. raw,affinities,segmentation,labels,"
                                         "fragments,blocks (default: every dataset, then blocks)")
    parser.add_argument("--port", type=int, default=0, help="port to serve on (default 0: a free port)")
    parser.add_argument("--bind", default=DEFAULT_BIND, help=f"address to listen on (default {DEFAULT_BIND}, this "
                                                             "machine only; 0.0.0.0 = every interface)")
    parser.add_argument("--position", type=_position,
                        help="centre of the view, voxels z,y,x (default: the volume centre)")
    parser.add_argument("--zoom", type=float, help="voxels (x) per screen pixel in the cross sections (default 1)")
    parser.add_argument("--layout", choices=LAYOUTS, default="4panel", help="panel layout (default 4panel)")
    parser.add_argument("--screenshot", metavar="PNG", help="save a screenshot through headless Chromium and exit "
                                                            "(needs chromium, chromium-driver and selenium)")
    parser.add_argument("--screenshot-size", type=parse_numbers(int, 2, "1280,800"), default=(1280, 800),
                        help="screenshot width,height in pixels (default 1280,800)")
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m pipeline.view``; returns the exit status (2 with one ``error:`` line on bad input)."""
    args = _parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ViewError(f"--port {args.port} must be 0..65535 (0 picks a free port)")
    if args.zoom is not None and args.zoom <= 0:
        raise ViewError(f"--zoom {args.zoom} must be > 0 (voxels per screen pixel, e.g. 0.5)")
    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    sources = open_sources(args.location, names)
    start_server(args.bind, args.port)
    viewer = make_viewer(sources, position=args.position, zoom=args.zoom, layout=args.layout)
    if args.screenshot:
        save_screenshot(viewer, args.screenshot, size=args.screenshot_size)
        print(f"view: wrote {args.screenshot}")
        return 0
    print(f"view: {viewer.get_viewer_url()}", flush=True)
    print(f"      layers: {', '.join(map(_describe, sources.layers))}", flush=True)
    print("      read blockwise from the data on request; no internet needed; Ctrl-C stops", flush=True)
    wait_until_interrupted()


if __name__ == "__main__":
    sys.exit(main())
