"""``pipeline.view``: the local Neuroglancer viewer, checked in a real (headless) Chromium.

The store is hand-made, (z, y, x) = (8, 64, 64) at 30x6x6 nm with a world offset of (2, 2, 3)
voxels, so every expected value is known: GT objects 1 (y < 32), 2 (y >= 32, x < 32) and 3
(y >= 32, x >= 32); segments 5 and 6 split GT 1 at x = 32 and segment BIG merges GT 2 and 3.
The browser tests skip only where Chromium or chromedriver is not installed (``.ci/run`` installs
both as root); the screenshot is kept in ``tests/artifacts/``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import imageio.v3 as iio
import numpy as np
import pytest

from emcore.store import StoreError, create_volume
from pipeline.browser import BrowserError, find_chromium, headless_chromium
from pipeline.evaluate import EvaluateOptions, evaluate
from pipeline.export import export_precomputed
from pipeline.view import make_viewer, screenshot_png, start_server
from pipeline.viewlayers import ViewSources, open_sources
from pipeline.viewoffenders import evaluation_sources, offender_viewers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(REPO, "tests", "artifacts")
SHAPE = (8, 64, 64)
VOXEL_SIZE = (30.0, 6.0, 6.0)
OFFSET_VOXELS = (2, 2, 3)
BIG = 2**40 + 7  # a segment id beyond 32 bits
PEA_OFFSETS = [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-2, 0, 0], [0, -3, 0], [0, 0, -3],
               [-3, 0, 0], [0, -9, 0], [0, 0, -9], [-4, 0, 0], [0, -27, 0], [0, 0, -27]]
#: Voxels (z, y, x) probed in the browser: inside segment 5 / GT 1 and inside segment BIG / GT 3.
PROBES = ((3, 10, 10), (5, 50, 40))


def _arrays() -> dict[str, np.ndarray]:
    z, y, x = np.indices(SHAPE)
    labels = np.where(y < 32, 1, np.where(x < 32, 2, 3)).astype(np.uint64)
    segmentation = np.where(y < 32, np.where(x < 32, 5, 6), BIG).astype(np.uint64)
    raw = ((x * 4 + y * 2 + z * 16) % 200 + 40 * (segmentation == 6)).astype(np.uint8)
    affinities = np.zeros((12,) + SHAPE, np.uint8)
    for channel, (inside, outside) in enumerate(((90, 0), (150, 30), (210, 60))):
        affinities[channel] = np.where(y < 32, inside, outside)
    affinities[3:] = 7
    return {"raw": raw, "affinities": affinities, "segmentation": segmentation, "labels": labels}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """``view.zarr`` with raw, affinities, segmentation, labels and a finished segment run's state (4 blocks)."""
    path = str(tmp_path_factory.mktemp("view") / "view.zarr")
    offset = [o * v for o, v in zip(OFFSET_VOXELS, VOXEL_SIZE)]
    for name, data in _arrays().items():
        attrs = {"offsets": PEA_OFFSETS, "dtype_scale": 255} if name == "affinities" else None
        chunks = (12, 8, 32, 32) if data.ndim == 4 else (8, 32, 32)
        volume = create_volume(f"{path}/{name}", data.shape, data.dtype, chunks=chunks, voxel_size=VOXEL_SIZE,
                               offset=offset, attrs=attrs)
        volume[...] = data
    workdir = os.path.join(path, ".corrseg3d", "segment", "segmentation")
    os.makedirs(workdir)
    for name, content in (("config.json", {"options": {"block": [8, 32, 32]}}), ("complete.json", {})):
        with open(os.path.join(workdir, name), "w") as handle:
            json.dump(content, handle)
    return path


@pytest.fixture(scope="module")
def server() -> str:
    import neuroglancer

    url = start_server("127.0.0.1", 0)
    yield url
    neuroglancer.server.stop()


@pytest.fixture(scope="module")
def browser():
    try:
        find_chromium()
    except BrowserError as error:
        pytest.skip(f"no headless Chromium here ({error})")
    with headless_chromium(window_size=(800, 600)) as session:
        yield session


class Probe:
    """Asks the page for the value of every layer under the mouse at the centre of the first panel
    and for the mouse voxel (x, y, z): a key bound to a Python action of the viewer."""

    def __init__(self, viewer, browser):
        self.viewer, self.browser = viewer, browser
        self.replies: queue.Queue = queue.Queue()
        viewer.actions.add("probe", self.replies.put)
        with viewer.config_state.txn() as config:
            config.input_event_bindings.viewer["keyp"] = "probe"

    def __call__(self) -> tuple[dict, list[float]]:
        from selenium.webdriver.common.action_chains import ActionChains

        panel = self.browser.find_element("css selector", ".neuroglancer-rendered-data-panel")
        ActionChains(self.browser).move_to_element(panel).send_keys("p").perform()
        state = self.replies.get(timeout=30)
        values = {name: entry.get("value") for name, entry in state.selected_values.to_json().items()}
        return values, [float(v) for v in state.mouse_voxel_coordinates]

    def wait_for(self, names, timeout: float = 30.0) -> tuple[dict, list[float]]:
        """Probe until every layer in ``names`` reports a value (its chunk has loaded)."""
        deadline = time.monotonic() + timeout
        while True:
            values, mouse = self()
            if all(values.get(name) is not None for name in names) or time.monotonic() > deadline:
                return values, mouse
            time.sleep(0.2)


def test_layers_of_a_store(store):
    sources = open_sources(store)
    assert [(s.name, s.kind, s.visible) for s in sources.layers] == [
        ("raw", "image", True), ("affinities", "image", False), ("segmentation", "segmentation", True),
        ("labels", "segmentation", False), ("blocks", "annotation", False)]
    segmentation = sources.layer("segmentation").source
    assert segmentation.volume_type == "segmentation" and segmentation.data_type == "uint64"
    assert list(segmentation.voxel_offset) == list(OFFSET_VOXELS)
    dimensions = segmentation.dimensions
    assert list(dimensions.names) == ["z", "y", "x"] and list(dimensions.units) == ["m"] * 3
    np.testing.assert_allclose(dimensions.scales, [v * 1e-9 for v in VOXEL_SIZE])
    assert sources.layer("blocks").source == (((0, 0, 0), (8, 32, 32)), ((0, 0, 32), (8, 32, 64)),
                                              ((0, 32, 0), (8, 64, 32)), ((0, 32, 32), (8, 64, 64)))
    assert [s.name for s in open_sources(store, ["labels", "raw"]).layers] == ["labels", "raw"]


def test_layers_of_a_volume_group_in_a_multi_volume_store(tmp_path):
    """``pipeline.data fib25`` writes ``fib.zarr/NAME/{raw,labels}``: ``fib.zarr/NAME`` shows both."""
    for volume in ("a", "b"):
        for name, dtype in (("raw", np.uint8), ("labels", np.uint64)):
            create_volume(str(tmp_path / "fib.zarr" / volume / name), (4, 16, 16), dtype, chunks=(4, 16, 16))
    sources = open_sources(str(tmp_path / "fib.zarr" / "b"))
    assert [(s.name, s.kind) for s in sources.layers] == [("raw", "image"), ("labels", "segmentation")]
    assert open_sources(str(tmp_path / "fib.zarr" / "b" / "raw")).layers[0].name == "raw"


def test_layers_of_precomputed_exports(store, tmp_path):
    """An export folder shows its layers; one layer alone works too; voxel size and offset survive."""
    layers = export_precomputed(f"{store}/segmentation", f"precomputed://file://{tmp_path}/ng", raw=f"{store}/raw")
    folder = open_sources(f"precomputed://file://{tmp_path}/ng")
    assert [(s.name, s.kind) for s in folder.layers] == [("raw", "image"), ("segmentation", "segmentation")]
    single = open_sources(layers["segmentation"])
    assert [s.name for s in single.layers] == ["segmentation"]
    source = single.layer("segmentation").source
    assert list(source.voxel_offset) == list(OFFSET_VOXELS) and source.data_type == "uint64"
    box = (slice(0, 8), slice(20, 40), slice(25, 45))
    np.testing.assert_array_equal(source.data[box], _arrays()["segmentation"][box])


def test_a_bad_precomputed_location_names_its_own_problem(store, tmp_path):
    """A relative file:// path, an unknown scheme or a corrupt layer give their own error, not "holds no
    volume"; a corrupt layer inside an export folder is left out with a warning."""
    export_precomputed(f"{store}/segmentation", f"precomputed://file://{tmp_path}/ng", raw=f"{store}/raw")
    (tmp_path / "ng" / "raw" / "info").write_text("{not json")
    cases = [("precomputed://file://ng/raw", "must be absolute"), ("precomputed://ftp://host/raw", "scheme 'ftp'"),
             ("precomputed://ng/raw", "names no scheme"), (f"precomputed://file://{tmp_path}/ng/raw", "JSONDecodeError")]
    for location, message in cases:
        with pytest.raises(StoreError, match=message):
            open_sources(location)
    with pytest.warns(UserWarning, match="layer 'raw' left out: .*JSONDecodeError"):
        folder = open_sources(f"precomputed://file://{tmp_path}/ng")
    assert [s.name for s in folder.layers] == ["segmentation"]


def test_layers_read_only_the_requested_box(store):
    """Neuroglancer's chunk request reads that box from storage, nothing more; the affinity
    layer is the mean of the three nearest-neighbour channels."""
    sources = open_sources(store, ["segmentation", "affinities"])
    reads = []
    for spec in sources.layers:
        array = spec.volume.array

        class Recording:
            shape, dtype, chunks, attrs = array.shape, array.dtype, array.chunks, array.attrs

            def __getitem__(self, key, array=array):
                reads.append(key)
                return array[key]

        spec.volume.array = Recording()
    box = (slice(2, 6), slice(8, 24), slice(40, 56))
    expected = _arrays()
    np.testing.assert_array_equal(sources.layer("segmentation").source.data[box], expected["segmentation"][box])
    mean = np.rint(expected["affinities"][:3].astype(np.float32).mean(0))
    np.testing.assert_array_equal(sources.layer("affinities").source.data[box], mean[box])
    assert reads == [box, (slice(0, 3),) + box]
    sources.layer("segmentation").source.get_encoded_subvolume("npz", np.array([0, 0, 0]), np.array([4, 16, 16]), "1,1,1")
    assert reads[-1] == (slice(0, 4), slice(0, 16), slice(0, 16))


def test_viewer_in_chromium_shows_segment_ids_and_renders(store, server, browser):
    """The acceptance test: the page loads every layer from this process only, the screenshot is
    not blank, and the page reports the stored ids and values at two known voxels."""
    base = open_sources(store)
    sources = ViewSources(base.location, tuple(dataclasses.replace(s, visible=True) for s in base.layers))
    expected = _arrays()
    viewer = make_viewer(sources, layout="xy", zoom=0.25)
    browser.get(viewer.get_viewer_url())
    image = screenshot_png(viewer, (640, 480), timeout=90)
    os.makedirs(ARTIFACTS, exist_ok=True)
    artifact = os.path.join(ARTIFACTS, "view_screenshot.png")
    with open(artifact, "wb") as handle:
        handle.write(image)
    print(f"screenshot: {artifact}")
    pixels = iio.imread(io.BytesIO(image))[..., :3].astype(np.int32)
    drawn = np.abs(pixels - pixels[0, 0]).sum(-1) > 30  # differs from the background colour
    assert pixels.shape[:2] == (480, 640) and pixels.std() > 10 and drawn.mean() > 0.2, "the screenshot is blank"
    assert len(np.unique(pixels[drawn].reshape(-1, 3), axis=0)) > 50, "the data are not drawn"
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(url.startswith(server) for url in resources), resources

    probe = Probe(viewer, browser)
    for voxel in PROBES:
        with viewer.txn() as state:
            state.position = [OFFSET_VOXELS[a] + voxel[a] + 0.5 for a in (2, 1, 0)]
            state.cross_section_scale = 0.1  # 10 pixels per voxel: the panel centre is inside the voxel
        values, mouse = probe.wait_for(["raw", "affinities", "segmentation", "labels"])
        z, y, x = (int(np.floor(m)) - o for m, o in zip(reversed(mouse), OFFSET_VOXELS))
        assert (z, y, x) == voxel
        assert int(values["segmentation"]) == expected["segmentation"][voxel]
        assert int(values["labels"]) == expected["labels"][voxel]
        assert int(values["raw"]) == expected["raw"][voxel]
        assert int(values["affinities"]) == round(expected["affinities"][(slice(0, 3),) + voxel].mean())


def test_evaluate_links_centre_each_error_with_its_segments_selected(store, server, browser):
    report = evaluate(f"{store}/segmentation", f"{store}/labels", EvaluateOptions(top_k=3))
    split, merge = report["worst_splits"][0], report["worst_merges"][0]
    assert (split["id"], sorted(split["partners"])) == (1, [5, 6])
    assert (merge["id"], sorted(merge["partners"])) == (BIG, [2, 3])
    viewers = offender_viewers(report, evaluation_sources(report["segmentation"], report["ground_truth"]),
                               layout="xy")
    described = dict(viewers)
    split_viewer = next(v for d, v in viewers if d.startswith("split GT object 1 "))
    merge_viewer = next(v for d, v in viewers if d.startswith(f"merge segment {BIG} "))
    assert len(described) == len(report["worst_splits"]) + len(report["worst_merges"])
    state = split_viewer.state
    assert sorted(state.layers["ground truth"].segments) == [1]
    assert sorted(state.layers["segmentation"].segments) == [5, 6]
    assert [layer.name for layer in state.layers] == ["raw", "ground truth", "segmentation"]
    assert sorted(merge_viewer.state.layers["segmentation"].segments) == [BIG]
    assert sorted(merge_viewer.state.layers["ground truth"].segments) == [2, 3]

    with merge_viewer.txn() as state:
        state.cross_section_scale = 0.1
    browser.get(merge_viewer.get_viewer_url())
    values, _ = Probe(merge_viewer, browser).wait_for(["segmentation", "ground truth"])
    assert int(values["segmentation"]) == BIG and int(values["ground truth"]) in (2, 3)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_cli_serves_offline_until_interrupted(store, browser):
    process = subprocess.Popen([sys.executable, "-m", "pipeline.view", store, "--position", "3.5,10.5,10.5",
                                "--layout", "xy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        first = process.stdout.readline()
        assert first.startswith("view: http://127.0.0.1:"), first + process.stderr.read()
        url = first.split()[1]
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200 and b"<script" in page.read()
        browser.get(url)
        deadline = time.monotonic() + 30
        shown = {}
        while time.monotonic() < deadline and shown.get("segmentation") != "5":
            panel = browser.find_element("css selector", ".neuroglancer-rendered-data-panel")
            from selenium.webdriver.common.action_chains import ActionChains

            ActionChains(browser).move_to_element(panel).perform()
            shown = browser.execute_script(
                "const items = document.querySelectorAll('.neuroglancer-layer-item');"
                "return Object.fromEntries(Array.from(items).map(item => ["
                "item.querySelector('.neuroglancer-layer-item-label').textContent,"
                "item.querySelector('.neuroglancer-layer-item-value').textContent]));")
            time.sleep(0.2)
        assert shown.get("segmentation") == "5", shown
        assert set(shown) >= {"raw", "affinities", "segmentation", "labels", "blocks"}
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        process.stdout.close()
        process.stderr.close()


def test_ctrl_c_stops_a_viewer_started_with_sigint_ignored(store):
    """A background job of a non-interactive shell starts with SIGINT ignored; Ctrl-C (SIGINT) still stops it."""
    process = subprocess.Popen([sys.executable, "-m", "pipeline.view", store], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPO,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert process.stdout.readline().startswith("view: http://127.0.0.1:")
        assert "Ctrl-C stops" in process.stdout.readline() + process.stdout.readline()
        time.sleep(1)  # the serving loop has begun
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        process.stdout.close()
        process.stderr.close()


def test_bad_input_is_one_error_line(store, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a volume")
    (tmp_path / "empty.zarr").mkdir()
    assert "not a zarr location" in _one_error_line(_run("pipeline.view", str(text)))
    assert "not a zarr store" in _one_error_line(_run("pipeline.view", str(tmp_path / "empty.zarr")))
    assert "has no layer 'nothing'" in _one_error_line(_run("pipeline.view", store, "--layers", "raw,nothing"))
    assert "lies outside the volume" in _one_error_line(_run("pipeline.view", store, "--position", "3,10,-1"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert "in use" in _one_error_line(_run("pipeline.view", store, "--port", port))
        assert "in use" in _one_error_line(_run("pipeline.evaluate", f"{store}/segmentation", f"{store}/labels",
                                                "--view", "--port", port))
