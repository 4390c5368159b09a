"""AC3/AC4 ingest from look-alike release files (HDF5 and package zip), download with resume."""

import hashlib
import http.server
import io
import os
import socket
import threading
import warnings
import zipfile

import h5py
import imageio.v3 as iio
import numpy as np
import pytest

from emcore.store import open_volume
from emcore.supervoxels import REFERENCE_SETTINGS
from pipeline import ac3ac4
from pipeline.ac3ac4 import download, ingest, sha256_of
from pipeline.data import DataError, main
from pipeline.runconfig import load_run_config

pytestmark = [pytest.mark.filterwarnings("ignore:AC[34] has shape"), pytest.mark.filterwarnings("ignore:no known SHA-256")]

SHAPES = {"AC3": (256, 6, 5), "AC4": (100, 6, 5)}


def _volume(name):
    """Raw slice z is filled with z (uint8); label ids encode volume and slice."""
    z, y, x = SHAPES[name]
    raw = np.broadcast_to(np.arange(z, dtype=np.uint8)[:, None, None], (z, y, x)).copy()
    labels = np.arange(z * y * x, dtype=np.uint32).reshape(z, y, x) % 7 + 10 * np.arange(z, dtype=np.uint32)[:, None, None]
    return raw, labels


def _write_hdf5(folder, *, label_dtype=None, key="main", label_shape=None):
    folder.mkdir(exist_ok=True)
    for name in ("AC3", "AC4"):
        raw, labels = _volume(name)
        if label_shape and name == "AC4":
            labels = labels[:, :label_shape[1], :label_shape[2]]
        with h5py.File(folder / f"{name}_inputs.h5", "w") as f:
            f[key] = raw
        with h5py.File(folder / f"{name}_labels.h5", "w") as f:
            f["main"] = labels.astype(label_dtype or labels.dtype)
    return str(folder)


def _check_splits(out, *, packed_labels=False):
    expected = {"ac4/train": ("AC4", 0, 80), "ac4/valid": ("AC4", 80, 100), "ac3/test": ("AC3", 156, 256)}
    for group, (name, start, stop) in expected.items():
        raw = open_volume(f"{out}/{group}/raw")
        labels = open_volume(f"{out}/{group}/labels")
        want_raw, want_labels = _volume(name)
        np.testing.assert_array_equal(raw[:], want_raw[start:stop])
        np.testing.assert_array_equal(labels[:], want_labels[start:stop])
        assert raw.voxel_size == (30.0, 6.0, 6.0) and raw.dtype == np.uint8
        assert raw.attrs["source_slices"] == [start, stop] and raw.attrs["source_volume"] == name


def test_hdf5_release_gives_the_paper_splits(tmp_path):
    source = _write_hdf5(tmp_path / "AC3-AC4")
    with pytest.warns(UserWarning) as caught:
        written = ingest(source, str(tmp_path / "out.zarr"))
    assert len(written) == 6
    messages = " ".join(str(w.message) for w in caught)
    assert "no known SHA-256 for AC3_inputs.h5" in messages and "public release (256, 1024, 1024)" in messages
    _check_splits(str(tmp_path / "out.zarr"))
    hashes = open_volume(f"{tmp_path}/out.zarr/ac3/test/labels").attrs["source_sha256"]
    assert hashes["AC4_labels.h5"] == sha256_of(os.path.join(source, "AC4_labels.h5"))


def _rgb(ids):
    return np.stack([(ids >> 16) & 255, (ids >> 8) & 255, ids & 255], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_package_zip_pairs_inverted_label_numbering(tmp_path, suffix):
    package = tmp_path / "AC3AC4Package.zip"
    layout = {"AC3": ("ac3_EM/Thousand_highmag_256slices_2kcenter_1k_inv_{:04d}", 0, "ac3_dbseg_images/ac3_daniel_s{:04d}"),
              "AC4": ("ac4_EM/affinecropped4_inv_{:04d}", 1, "ac4_seg_daniel/ac4_daniel_s{:04d}")}
    with zipfile.ZipFile(package, "w") as archive:
        for name, (em, first, seg) in layout.items():
            raw, labels = _volume(name)
            n = len(raw)
            for z in range(n):
                for member, image in ((em.format(z + first), raw[z]), (seg.format(n - z), _rgb(labels[z]))):
                    buffer = io.BytesIO()
                    iio.imwrite(buffer, image, extension=suffix)
                    archive.writestr(f"AC3AC4Package/{name}/{member}{suffix}", buffer.getvalue())
    out = str(tmp_path / "out.zarr")
    assert main(["ac3ac4", "--source", str(tmp_path), out]) == 0  # the folder holding the zip
    _check_splits(out)
    assert open_volume(f"{out}/ac3/test/labels").dtype == np.uint32


@pytest.mark.parametrize("kwargs, message", [
    ({"key": "volume"}, "has no dataset 'main' (datasets: volume)"),
    ({"label_shape": (100, 6, 4)}, "AC4 raw has shape (100, 6, 5) but labels (100, 6, 4)"),
    ({"label_dtype": np.float32}, "AC3 labels are stored as float32"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, kwargs, message):
    source = _write_hdf5(tmp_path / "src", **kwargs)
    assert main(["ac3ac4", "--source", source, str(tmp_path / "out.zarr")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "out.zarr")


def test_existing_outputs_and_known_checksum_mismatch(tmp_path, monkeypatch):
    source = _write_hdf5(tmp_path / "src")
    out = str(tmp_path / "out.zarr")
    monkeypatch.setattr(ac3ac4, "KNOWN_SHA256", {"AC4_inputs.h5": "0" * 64})
    with pytest.warns(UserWarning, match="not the known 0000"):
        ingest(source, out)
    with pytest.raises(DataError, match="already exists: pass --overwrite"):
        ingest(source, out)
    monkeypatch.setattr(ac3ac4, "KNOWN_SHA256", {name: sha256_of(os.path.join(source, name))
                                                 for name in os.listdir(source)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ingest(source, out, overwrite=True)
    assert not [w for w in caught if "SHA-256" in str(w.message)]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_offline_message_names_the_target(tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}/AC3AC4Package.zip"  # nothing listens there
    assert main(["ac3ac4", "--source", str(tmp_path), "--download", "--url", url, str(tmp_path / "o.zarr")]) == 2
    err = capsys.readouterr().err
    assert f"put it at {tmp_path}/AC3AC4Package.zip" in err and err.count("\n") == 1


def test_download_resumes_with_range_and_checks_sha(tmp_path):
    payload = bytes(range(256)) * 1000
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Range"))
            start = int(self.headers["Range"][6:-1]) if self.headers.get("Range") else 0
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(payload) - start))
            self.end_headers()
            self.wfile.write(payload[start:])

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/pkg.zip"
    try:
        target = tmp_path / "pkg.zip"
        (tmp_path / "pkg.zip.part").write_bytes(payload[:1000])
        download(url, str(target), sha256=hashlib.sha256(payload).hexdigest())
        assert target.read_bytes() == payload and seen == ["bytes=1000-"]
        assert not (tmp_path / "pkg.zip.part").exists()
        with pytest.raises(DataError, match="does not match SHA-256"):
            download(url, str(tmp_path / "other.zip"), sha256="f" * 64)
        assert not (tmp_path / "other.zip").exists()
    finally:
        server.shutdown()
        server.server_close()


def test_eval_config_reads_what_ingest_writes(tmp_path):
    config = load_run_config(os.path.join(os.path.dirname(__file__), "..", "configs", "ac3ac4-eval.yaml"))
    written = ingest(_write_hdf5(tmp_path / "src"), str(tmp_path / "ac3ac4.zarr"))
    relative = {location.split("ac3ac4.zarr/")[1] for location in written}
    assert config.input.raw.split("ac3ac4.zarr/")[1] in relative
    assert config.evaluate.gt.split("ac3ac4.zarr/")[1] in relative
    assert config.segment.method == "multicut" and config.evaluate.ignore_gt == (0,) and config.evaluate.roi is None
    # the reference's LMC: multicut bias 0.5 on elf's distance-transform watershed with its defaults
    assert config.segment.beta == 0.5 and config.segment.supervoxels == REFERENCE_SETTINGS
