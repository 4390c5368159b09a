"""Precomputed export: exact layers, viewer state, serving for Neuroglancer, and clean failures."""

import gzip
import json
import os
import threading
import urllib.parse
import urllib.request

import numpy as np
import pytest

from emcore.store import create_volume, open_volume
from pipeline.export import ExportError, export_precomputed, main, make_server


@pytest.fixture()
def store(tmp_path):
    rng = np.random.default_rng(1)
    seg = rng.integers(0, 50, (9, 70, 45)).astype(np.uint64) * np.uint64(2**40)  # ids above 2**32
    raw = rng.integers(0, 256, seg.shape).astype(np.uint8)
    for name, data in (("segmentation", seg), ("raw", raw)):
        create_volume(str(tmp_path / "v.zarr" / name), data.shape, data.dtype, chunks=(4, 32, 32),
                      voxel_size=(30, 6, 6), offset=(30, 0, 12))[:] = data
    return str(tmp_path / "v.zarr"), seg, raw


def test_layers_are_exact_and_state_points_at_the_local_server(tmp_path, store, capsys):
    root, seg, raw = store
    out = f"precomputed://file://{tmp_path}/ng"
    state_file = tmp_path / "state.json"
    assert main([f"{root}/segmentation", out, "--raw", f"{root}/raw", "--chunks", "4,32,32",
                 "--viewer-state", str(state_file)]) == 0
    exported = open_volume(f"{out}/segmentation")
    np.testing.assert_array_equal(exported[:], seg)
    np.testing.assert_array_equal(open_volume(f"{out}/raw")[:], raw)
    assert exported.voxel_size == (30.0, 6.0, 6.0) and exported.offset == (30.0, 0.0, 12.0)
    with open(tmp_path / "ng" / "segmentation" / "info") as handle:
        info = json.load(handle)
    assert info["type"] == "segmentation" and info["scales"][0]["encoding"] == "compressed_segmentation"
    with open(tmp_path / "ng" / "raw" / "info") as handle:
        assert json.load(handle)["type"] == "image"
    state = json.loads(state_file.read_text())
    sources = {layer["name"]: (layer["type"], layer["source"]) for layer in state["layers"]}
    assert sources == {"segmentation": ("segmentation", "precomputed://http://localhost:8000/segmentation"),
                       "raw": ("image", "precomputed://http://localhost:8000/raw")}
    assert state["dimensions"]["z"] == [pytest.approx(30e-9), "m"]
    assert state["position"] == [12 / 6 + 45 / 2, 70 / 2, 30 / 30 + 9 / 2]  # x, y, z voxels, centre
    printed = capsys.readouterr().out
    link = next(line for line in printed.splitlines() if line.startswith("open:")).split()[-1]
    assert json.loads(urllib.parse.unquote(link.split("#!", 1)[1])) == state
    assert f"python -m pipeline.export serve {out} --port 8000" in printed


@pytest.mark.parametrize("dtype, stored", [(np.uint16, np.uint32), (np.int64, np.uint64), (np.uint32, np.uint32)])
def test_segmentation_dtypes_map_to_precomputed_ids(tmp_path, dtype, stored):
    data = np.arange(4 * 8 * 8, dtype=dtype).reshape(4, 8, 8)
    create_volume(str(tmp_path / "v.zarr" / "labels"), data.shape, dtype, chunks=(4, 8, 8))[:] = data
    layers = export_precomputed(str(tmp_path / "v.zarr" / "labels"), f"precomputed://file://{tmp_path}/ng")
    exported = open_volume(layers["labels"])
    assert exported.dtype == stored
    np.testing.assert_array_equal(exported[:], data)


def test_bad_input_leaves_nothing(tmp_path, store, capsys):
    root, _, _ = store
    out = f"precomputed://file://{tmp_path}/ng"
    create_volume(f"{root}/probabilities", (2, 8, 8), np.float32, chunks=(2, 8, 8))
    assert main([f"{root}/probabilities", out]) == 2
    assert "integer ids" in capsys.readouterr().err and not os.path.exists(tmp_path / "ng" / "probabilities")
    negative = np.full((2, 8, 8), -3, np.int32)
    create_volume(f"{root}/signed", negative.shape, np.int32, chunks=(2, 8, 8))[:] = negative
    with pytest.raises(ExportError, match="negative ids"):
        export_precomputed(f"{root}/signed", out)
    assert not os.path.exists(tmp_path / "ng" / "signed")
    assert main([f"{root}/segmentation", out]) == 0
    before = sorted(os.listdir(tmp_path / "ng" / "segmentation"))
    assert main([f"{root}/segmentation", out]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "ng" / "segmentation")) == before
    assert main([f"{root}/segmentation", f"{out}/segmentation", "--overwrite"]) == 2  # a layer, not its folder
    assert f"is a precomputed layer: name the folder that holds the layers ({out})" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "ng" / "segmentation")) == before
    assert main([f"{root}/segmentation", str(tmp_path / "plain")]) == 2
    assert "precomputed://file:///" in capsys.readouterr().err


def test_server_sends_cors_and_decoded_chunks(tmp_path, store):
    root, _, _ = store
    out = f"precomputed://file://{tmp_path}/ng"
    export_precomputed(f"{root}/segmentation", out, chunks=(4, 32, 32))
    chunk = next(name for name in os.listdir(tmp_path / "ng" / "segmentation" / "6.0_6.0_30.0"))
    assert chunk.endswith(".gz")  # what cloud-volume stores; Neuroglancer asks for the name without .gz
    server = make_server(out, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://localhost:{server.server_address[1]}/segmentation"
        with urllib.request.urlopen(f"{base}/info", timeout=10) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            assert json.load(response)["type"] == "segmentation"
        with urllib.request.urlopen(f"{base}/6.0_6.0_30.0/{chunk[:-3]}", timeout=10) as response:
            body = response.read()
        with open(tmp_path / "ng" / "segmentation" / "6.0_6.0_30.0" / chunk, "rb") as handle:
            assert body == gzip.decompress(handle.read())
    finally:
        server.shutdown()
        server.server_close()
