"""The ``python -m pipeline.data`` command line: synth, convert, isbi2012, preview."""

import os

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from emcore.store import create_volume, open_volume
from pipeline.data import main
from pipeline.synth import generate

ISBI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "isbi2012")


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    return status, capsys.readouterr().err


@pytest.fixture
def stack():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (5, 24, 30), dtype=np.uint8)


@pytest.mark.parametrize("style", ["base", "wide"])
def test_synth_writes_raw_and_labels_equal_to_generate(tmp_path, capsys, style):
    out = tmp_path / "s.zarr"
    status, _ = run(capsys, "synth", out, "--shape", "7,40,50", "--seed", "2", "--missing-sections", "1",
                    "--style", style)
    assert status == 0
    raw, labels = open_volume(f"{out}/raw"), open_volume(f"{out}/labels")
    expected = generate((7, 40, 50), seed=2, missing_sections=1, style=style)
    assert np.array_equal(raw[:], expected[0]) and np.array_equal(labels[:], expected[1])
    assert raw.dtype == np.uint8 and labels.dtype == np.uint64
    assert raw.voxel_size == (30.0, 6.0, 6.0)
    assert raw.attrs["synthetic"]["style"] == style and set(raw.attrs["synthetic"]["appearance"]) >= {"gamma", "blur"}


@pytest.mark.parametrize("argv, message", [
    (("synth", "{tmp}/plain", "--shape", "4,32,32"), "not a zarr location"),
    (("synth", "{tmp}/x.zarr/raw", "--shape", "4,32,32"), "names a dataset"),
    (("synth", "{tmp}/x.zarr", "--shape", "4,32,32", "--missing-sections", "9"), "missing_sections"),
])
def test_synth_errors_write_nothing(tmp_path, capsys, argv, message):
    status, err = run(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert status == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_bad_shape_string_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(tmp_path / "x.zarr"), "--shape", "4,32"])
    assert exit_info.value.code == 2 and "error: argument --shape" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_existing_output_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "s.zarr"
    assert run(capsys, "synth", out, "--shape", "3,32,32")[0] == 0
    status, err = run(capsys, "synth", out, "--shape", "3,32,40", "--seed", "1")
    assert status == 2 and "--overwrite" in err
    assert open_volume(f"{out}/raw").shape == (3, 32, 32)
    assert run(capsys, "synth", out, "--shape", "3,32,40", "--overwrite")[0] == 0
    assert open_volume(f"{out}/labels").shape == (3, 32, 40)
    for style in ("base", "wide"):  # a refused --overwrite keeps the existing volume
        status, err = run(capsys, "synth", out, "--shape", "3,32,32", "--seed", "-1", "--style", style, "--overwrite")
        assert status == 2 and "--seed -1 must be >= 0" in err
        assert open_volume(f"{out}/raw").shape == open_volume(f"{out}/labels").shape == (3, 32, 40)


def test_convert_png_folder(tmp_path, capsys, stack):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z, section in enumerate(stack):
        iio.imwrite(folder / f"s{z:03d}.png", section)
    status, _ = run(capsys, "convert", folder, f"{tmp_path}/o.zarr/raw", "--voxel-size", "40,5,5")
    assert status == 0
    volume = open_volume(f"{tmp_path}/o.zarr/raw")
    assert np.array_equal(volume[:], stack) and volume.voxel_size == (40.0, 5.0, 5.0)


def test_convert_png_folder_with_mismatched_slice(tmp_path, capsys, stack):
    folder = tmp_path / "slices"
    folder.mkdir()
    iio.imwrite(folder / "a.png", stack[0])
    iio.imwrite(folder / "b.png", stack[1, :20])
    status, err = run(capsys, "convert", folder, f"{tmp_path}/o.zarr/raw")
    assert status == 2 and "must match" in err and not (tmp_path / "o.zarr").exists()


def test_convert_multipage_tiff_rescales_uint16(tmp_path, capsys, stack):
    values = stack.astype(np.uint16) * 4 + 100
    tifffile.imwrite(tmp_path / "v.tif", values, photometric="minisblack")
    assert run(capsys, "convert", tmp_path / "v.tif", f"{tmp_path}/o.zarr/raw")[0] == 0
    out = open_volume(f"{tmp_path}/o.zarr/raw")[:]
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.array_equal(np.argsort(out.ravel(), kind="stable"), np.argsort(values.ravel(), kind="stable"))


def test_convert_zarr_uint16_that_predict_refuses(tmp_path, capsys, stack):
    """A zarr dataset predict refuses (uint16) converts to uint8 like a TIFF, keeping its voxel size."""
    values = stack.astype(np.uint16) * 4 + 100
    create_volume(f"{tmp_path}/in.zarr/raw16", values.shape, np.uint16, chunks=values.shape,
                  voxel_size=(30, 8, 8))[:] = values
    tifffile.imwrite(tmp_path / "v.tif", values, photometric="minisblack")
    assert run(capsys, "convert", f"{tmp_path}/in.zarr/raw16", f"{tmp_path}/in.zarr/raw")[0] == 0
    assert run(capsys, "convert", tmp_path / "v.tif", f"{tmp_path}/t.zarr/raw")[0] == 0
    out = open_volume(f"{tmp_path}/in.zarr/raw")
    assert out.voxel_size == (30.0, 8.0, 8.0)
    np.testing.assert_array_equal(out[:], open_volume(f"{tmp_path}/t.zarr/raw")[:])
    status, err = run(capsys, "convert", f"{tmp_path}/in.zarr/raw16", f"{tmp_path}/in.zarr/raw16", "--overwrite")
    assert status == 2 and "would overwrite the input stack" in err
    assert open_volume(f"{tmp_path}/in.zarr/raw16").dtype == np.uint16
    floats = values.astype(np.float32)
    floats[1, 2, 3] = np.nan
    create_volume(f"{tmp_path}/in.zarr/nan", floats.shape, np.float32, chunks=floats.shape)[:] = floats
    status, err = run(capsys, "convert", f"{tmp_path}/in.zarr/nan", f"{tmp_path}/in.zarr/fromnan")
    assert status == 2 and "holds NaN or infinite values in slices 0-" in err
    assert not (tmp_path / "in.zarr" / "fromnan").exists()
    floats[1, 2, 3] = np.inf  # one infinity would scale every other voxel to 0
    tifffile.imwrite(tmp_path / "inf.tif", floats, photometric="minisblack")
    status, err = run(capsys, "convert", tmp_path / "inf.tif", f"{tmp_path}/in.zarr/frominf")
    assert status == 2 and "holds NaN or infinite values" in err and not (tmp_path / "in.zarr" / "frominf").exists()
    tifffile.imwrite(tmp_path / "blank.tif", np.full((3, 8, 8), 700, np.uint16), photometric="minisblack")
    status, err = run(capsys, "convert", tmp_path / "blank.tif", f"{tmp_path}/in.zarr/fromblank")
    assert status == 2 and "holds the single value 700 everywhere" in err
    assert not (tmp_path / "in.zarr" / "fromblank").exists()


def test_convert_reads_a_precomputed_layer_and_refuses_to_write_one(tmp_path, capsys, stack):
    """A precomputed layer converts to zarr with its voxel size; a precomputed output is refused naming export."""
    values = stack.astype(np.uint16) * 4 + 100
    layer = f"precomputed://file://{tmp_path}/ng/raw16"
    create_volume(layer, values.shape, np.uint16, chunks=values.shape, voxel_size=(30, 8, 8))[:] = values
    create_volume(f"{tmp_path}/in.zarr/raw16", values.shape, np.uint16, chunks=values.shape,
                  voxel_size=(30, 8, 8))[:] = values
    assert run(capsys, "convert", layer, f"{tmp_path}/o.zarr/raw")[0] == 0
    assert run(capsys, "convert", f"{tmp_path}/in.zarr/raw16", f"{tmp_path}/z.zarr/raw")[0] == 0
    out = open_volume(f"{tmp_path}/o.zarr/raw")
    assert out.voxel_size == (30.0, 8.0, 8.0) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:], open_volume(f"{tmp_path}/z.zarr/raw")[:])
    status, err = run(capsys, "convert", f"{tmp_path}/in.zarr/raw16", f"precomputed://file://{tmp_path}/ng/raw")
    assert status == 2 and "convert writes zarr" in err and "pipeline.export" in err
    assert not (tmp_path / "ng" / "raw").exists()


@pytest.mark.parametrize("depth", [1, 3, 4, 10])
def test_convert_tiff_of_any_depth_equals_its_pages(tmp_path, capsys, depth):
    """tifffile writes 3 or 4 slices as one page of samples, more as one page per slice: both read alike."""
    values = np.random.default_rng(depth).integers(0, 256, (depth, 40, 50), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "v.tif", values[0] if depth == 1 else values, photometric="minisblack")
    assert run(capsys, "convert", tmp_path / "v.tif", f"{tmp_path}/o.zarr/raw")[0] == 0
    np.testing.assert_array_equal(open_volume(f"{tmp_path}/o.zarr/raw")[:], values)


def test_convert_hdf5_labels_and_errors(tmp_path, capsys):
    labels = np.arange(5 * 24 * 30, dtype=np.uint64).reshape(5, 24, 30) * 1000
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["volumes/labels"] = labels
        f["prob"] = labels.astype(np.float32)
    status, err = run(capsys, "convert", tmp_path / "v.h5", f"{tmp_path}/o.zarr/l", "--labels")
    assert status == 2 and "volumes/labels" in err and "prob" in err
    status, err = run(capsys, "convert", tmp_path / "v.h5", f"{tmp_path}/o.zarr/l", "--labels", "--dataset", "prob")
    assert status == 2 and "integers" in err
    assert run(capsys, "convert", tmp_path / "v.h5", f"{tmp_path}/o.zarr/l", "--labels",
               "--dataset", "volumes/labels")[0] == 0
    out = open_volume(f"{tmp_path}/o.zarr/l")
    assert out.dtype == np.uint64 and np.array_equal(out[:], labels)
    status, err = run(capsys, "convert", tmp_path / "missing", f"{tmp_path}/o.zarr/m")
    assert status == 2 and "does not exist" in err


@pytest.mark.skipif(not os.path.isdir(ISBI), reason=f"ISBI 2012 slices not found in {ISBI}")
def test_isbi2012(tmp_path, capsys):
    out = tmp_path / "isbi.zarr"
    assert run(capsys, "isbi2012", "--source", ISBI, out, "--slices", "0-2")[0] == 0
    raw, labels = open_volume(f"{out}/raw"), open_volume(f"{out}/labels")
    assert raw.shape == labels.shape == (3, 512, 512) and raw.voxel_size == (50.0, 4.0, 4.0)
    assert labels.attrs["labels_2d"] is True
    seg = labels[:]
    truth = np.stack([iio.imread(f"{ISBI}/label/{z:02d}.png") for z in range(3)])
    assert np.array_equal(seg > 0, truth == 255)
    assert np.array_equal(raw[:], np.stack([iio.imread(f"{ISBI}/image/{z:02d}.png") for z in range(3)]))
    ids = [set(np.unique(s[s > 0]).tolist()) for s in seg]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])
    assert len(set().union(*ids)) == seg.max()  # consecutive ids


def _fib_source(folder, voxel_size=(10, 10, 10)):
    """A folder of two FIB-style groups: plain raw (uint8) and labels (uint64) arrays."""
    rng = np.random.default_rng(5)
    for name, shape in (("a", (10, 16, 24)), ("b", (7, 8, 8))):
        group = zarr.open_group(str(folder / f"{name}.zarr"), mode="w")
        if voxel_size:
            group.attrs["voxel_size"] = list(voxel_size)
        group.create_array("raw", data=rng.integers(0, 256, shape, dtype=np.uint8))
        group.create_array("labels", data=rng.integers(0, 5, shape).astype(np.uint64))
    return folder


@pytest.mark.parametrize("z_step, z_start", [(1, 0), (3, 0), (3, 2)])
def test_fib25_keeps_every_kth_slice_and_scales_voxel_size(tmp_path, capsys, z_step, z_start):
    source = _fib_source(tmp_path / "src")
    out = tmp_path / "fib.zarr"
    assert run(capsys, "fib25", out, "--source", source, "--z-step", z_step, "--z-start", z_start)[0] == 0
    for name in ("a", "b"):
        group = zarr.open_group(str(source / f"{name}.zarr"), mode="r")
        for dataset in ("raw", "labels"):
            volume = open_volume(f"{out}/{name}/{dataset}")
            np.testing.assert_array_equal(volume[:], group[dataset][z_start::z_step])
            assert volume.voxel_size == (10.0 * z_step, 10.0, 10.0)
            assert volume.attrs["z_step"] == z_step and volume.attrs["z_start"] == z_start
            assert volume.attrs["voxel_size_assumed"] is False


def test_fib25_errors_write_nothing(tmp_path, capsys):
    source = _fib_source(tmp_path / "src", voxel_size=None)
    out = tmp_path / "fib.zarr"
    status, err = run(capsys, "fib25", out, "--source", tmp_path / "nowhere")
    assert status == 2 and "not a folder" in err
    status, err = run(capsys, "fib25", out, "--source", source, "--names", "a,zzz")
    assert status == 2 and "no volume 'zzz'" in err and not out.exists()
    status, err = run(capsys, "fib25", out, "--source", source, "--names", "a,b,a")
    assert status == 2 and "--names lists a more than once" in err and not out.exists()
    status, err = run(capsys, "fib25", out, "--source", source, "--z-step", "3", "--z-start", "3")
    assert status == 2 and "--z-start must be in [0, --z-step)" in err and not out.exists()
    status, err = run(capsys, "fib25", out, "--source", source, "--z-step", "7")
    assert status == 2 and "keeps 1 of the 7 slices of b" in err and "at most 6" in err and not out.exists()
    status, err = run(capsys, "fib25", out, "--source", source, "--names", "b", "--z-step", "8", "--z-start", "6")
    assert status == 2 and "keeps 1 of the 7 slices of b" in err and "--z-start 0 and a step of at most 6" in err
    assert not out.exists()
    assert run(capsys, "fib25", out, "--source", source, "--names", "b")[0] == 0
    labels = open_volume(f"{out}/b/labels")
    assert labels.voxel_size == (10.0, 10.0, 10.0) and labels.attrs["voxel_size_assumed"] is True
    status, err = run(capsys, "fib25", out, "--source", source, "--names", "b")
    assert status == 2 and "--overwrite" in err


def test_preview_png(tmp_path, capsys):
    out = tmp_path / "s.zarr"
    assert run(capsys, "synth", out, "--shape", "4,48,64")[0] == 0
    assert run(capsys, "preview", out, "--png", tmp_path / "p.png", "--slices", "0,3")[0] == 0
    image = iio.imread(tmp_path / "p.png")
    assert image.ndim == 3 and image.shape[1] >= 2 * 64 and image.shape[0] >= 2 * 48
    status, err = run(capsys, "preview", out, "--png", tmp_path / "q.png", "--slices", "9")
    assert status == 2 and "outside the volume" in err and not (tmp_path / "q.png").exists()
