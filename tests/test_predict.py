"""pipeline.predict: tiling equals whole-volume inference, resume after SIGKILL, flips, bad input."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr
from tiny_models import LocalConvModel

from corrseg3d.checkpoint import save_checkpoint
from corrseg3d.inference import inference_model, pad_context, predict_patch, predict_volume, quantize_affinities
from corrseg3d.model import ResidualUNet3D
from corrseg3d.targets import label_affinities
from emcore.blocks import BlockGrid
from emcore.conventions import PEA_OFFSETS, affinities_as_uint8
from emcore.store import create_volume, open_volume
from pipeline.predict import PredictError, PredictOptions, _unflip_affinities, main, predict
from pipeline.segment import SegmentOptions, segment
from pipeline.synth import generate

CPU = torch.device("cpu")


@pytest.mark.parametrize("shape", [(9, 37, 50), (16, 64, 64), (5, 20, 97)])
def test_blockwise_equals_whole_volume_for_a_local_model(shape):
    torch.manual_seed(0)
    model = LocalConvModel().eval()
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    halo = (5, 28, 28)  # >= largest offset (4, 27, 27) + context radius 1
    whole = predict_volume(model, image, PEA_OFFSETS, block=shape, halo=halo, device=CPU)
    tiled = predict_volume(model, image, PEA_OFFSETS, block=(4, 16, 32), halo=halo, device=CPU)
    np.testing.assert_array_equal(tiled, whole)


def test_inference_model_equals_the_trained_network_with_batch_norms_folded():
    torch.manual_seed(3)
    model = ResidualUNet3D(filters=(4, 6, 6, 8, 8), embedding_dim=8)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    fused = inference_model(model)
    image = torch.rand(1, 1, 6, 32, 48)
    with torch.no_grad():
        expected, got = model(image), fused(image)
    torch.testing.assert_close(got.output, expected.output, rtol=1e-3, atol=2e-4)  # rounding only: outputs are O(1)
    assert got.pyramid == () and len(expected.pyramid) == 4
    norms = [m for m in fused.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(norms) == 4 + 5 + 4  # only the norms after a residual sum or skip addition stay
    assert sum(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules()) == 3 * 5 + 4 * 4  # model untouched


@pytest.mark.parametrize("device, dtype", [("cpu", torch.float64), ("meta", torch.float32)])
def test_inference_model_stays_on_the_trained_networks_device_and_dtype(device, dtype):
    """Validation during GPU training folds a model that lives on the GPU ("meta" stands in for it here)."""
    model = ResidualUNet3D(filters=(4, 6, 6, 8, 8), embedding_dim=8).to(device, dtype).eval()
    fused = inference_model(model)
    assert {(p.device.type, p.dtype) for p in fused.parameters()} == {(device, dtype)}
    if device == "cpu":
        image = torch.rand(1, 1, 6, 32, 48, dtype=dtype)
        with torch.no_grad():
            torch.testing.assert_close(fused(image).output, model(image).output)


def test_quantize_on_the_device_equals_the_stored_uint8_format():
    rng = np.random.default_rng(4)
    ties = (np.arange(256) + 0.5) / 255  # exactly between two levels: both round half to even
    values = np.concatenate([rng.uniform(-0.5, 1.5, 100_000), ties, [0.0, 1.0, -1e-9, 1 + 1e-9]]).astype(np.float32)
    np.testing.assert_array_equal(quantize_affinities(torch.from_numpy(values)).numpy(), affinities_as_uint8(values))


def test_predict_patch_crops_and_quantizes_like_the_host():
    model = _tiny_model(seed=2)
    images = np.random.default_rng(5).random((2, 6, 40, 52)).astype(np.float32)
    crop = (slice(1, 5), slice(8, 30), slice(3, 50))
    whole = predict_patch(model, images, PEA_OFFSETS, device=CPU)
    np.testing.assert_array_equal(predict_patch(model, images, PEA_OFFSETS, device=CPU, crop=crop),
                                  whole[(slice(None), slice(None)) + crop])
    quantized = predict_patch(model, images, PEA_OFFSETS, device=CPU, crop=crop, quantize=True)
    assert quantized.dtype == np.uint8
    np.testing.assert_array_equal(quantized, affinities_as_uint8(whole[(slice(None), slice(None)) + crop]))


def _tiny_model(seed):
    """A random full network, two channels wide: every pipeline path at a fraction of the cost of wider ones."""
    torch.manual_seed(seed)
    return ResidualUNet3D(filters=(2, 2, 2, 2, 2), embedding_dim=8).eval()


def _tiny_checkpoint(path, seed=0, offsets=PEA_OFFSETS):
    model = _tiny_model(seed)
    save_checkpoint(path, model=model, optimizer=None, iteration=0, offsets=offsets, config={}, voxel_size=(30, 6, 6))
    return model


@pytest.fixture()
def volume(tmp_path):
    raw, _ = generate((10, 48, 72), seed=3)
    location = str(tmp_path / "v.zarr" / "raw")
    create_volume(location, raw.shape, "uint8", chunks=(8, 32, 32), voxel_size=(30, 6, 6))[:] = raw
    return str(tmp_path / "v.zarr"), raw


@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_store_output_equals_in_memory_tiling(tmp_path, volume, dtype):
    """Cropped (and, for uint8, quantised) in predict_patch, the stored blocks equal the host-side conversion."""
    store, raw = volume
    model = _tiny_checkpoint(tmp_path / "m.pt")
    options = PredictOptions(checkpoint=str(tmp_path / "m.pt"), block=(4, 32, 32), halo=(4, 32, 32),
                             dtype=dtype, precision="fp32", device="cpu")
    predict(store, options=options, progress=False, scheduler="synchronous")
    stored = open_volume(store + "/affinities")
    assert stored.shape == (12, 10, 48, 72) and stored.dtype == np.dtype(dtype)
    assert stored.attrs["offsets"] == [list(o) for o in PEA_OFFSETS]
    assert stored.voxel_size == (30.0, 6.0, 6.0)
    expected = predict_volume(model, raw.astype(np.float32) / 255, PEA_OFFSETS, block=(4, 32, 32),
                              halo=(4, 32, 32), device=CPU, channels_last=True)
    np.testing.assert_array_equal(stored[:], expected.astype(np.float16) if dtype == "float16"
                                  else affinities_as_uint8(expected))
    batched = PredictOptions(**{**options.__dict__, "batch_size": 3})
    predict(store, out_location=store + "/batched", options=batched, progress=False)
    np.testing.assert_allclose(open_volume(store + "/batched")[:].astype(np.float32), stored[:].astype(np.float32),
                               atol=2e-3 if dtype == "float16" else 1)


@pytest.mark.slow
@pytest.mark.parametrize("tta_axes, flips", [
    ("zyx", [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]),
    ("yx", [(), (1,), (2,), (1, 2)]),
])
def test_tta_store_equals_the_mean_of_the_unflipped_predictions(tmp_path, volume, tta_axes, flips):
    """--tta, batches of 2 with edge blocks: each stored block is the mean of its context's flipped
    predictions (every flip of ``tta_axes``) mapped back to the original frame, cropped to the block."""
    store, raw = volume
    model = _tiny_checkpoint(tmp_path / "m.pt")
    block, halo = (8, 48, 48), (4, 32, 32)  # 2 x 1 x 2 blocks, three of them edge blocks of two shapes
    options = PredictOptions(checkpoint=str(tmp_path / "m.pt"), block=block, halo=halo, tta=True,
                             tta_axes=tta_axes, dtype="float16", precision="fp32", device="cpu", batch_size=2)
    predict(store, options=options, progress=False, scheduler="synchronous")
    image = raw.astype(np.float32) / 255
    fused = inference_model(model)
    expected = np.zeros((12,) + image.shape, np.float32)
    grid = BlockGrid(image.shape, block)
    for index in range(grid.n_blocks):
        begin, end = grid.block(index).begin, grid.block(index).end
        context = pad_context(image, begin, end, halo)
        total = np.zeros((12,) + context.shape, np.float32)
        for axes in flips:
            flipped = np.ascontiguousarray(np.flip(context, axes)) if axes else context
            total += _unflip_affinities(predict_patch(fused, flipped, PEA_OFFSETS, device=CPU), axes, PEA_OFFSETS)
        inner = tuple(slice(h, h + e - b) for h, b, e in zip(halo, begin, end))
        expected[(slice(None),) + grid.block(index).slices] = (total / len(flips))[(slice(None),) + inner]
    np.testing.assert_allclose(open_volume(store + "/affinities")[:].astype(np.float32), expected, atol=1e-3)


def test_uint8_output_and_task_split(tmp_path, volume):
    store, _ = volume
    _tiny_checkpoint(tmp_path / "m.pt")
    common = dict(checkpoint=str(tmp_path / "m.pt"), block=(8, 32, 32), halo=(4, 32, 32), device="cpu")
    for task in range(3):
        predict(store, out_location=store + "/split", options=PredictOptions(**common), task_index=task, num_tasks=3,
                progress=False)
    predict(store, out_location=store + "/single", options=PredictOptions(**common), progress=False)
    split, single = open_volume(store + "/split")[:], open_volume(store + "/single")[:]
    assert split.dtype == np.uint8
    np.testing.assert_array_equal(split, single)


def test_volumes_of_one_store_get_their_own_affinities_and_segmentation(tmp_path, volume):
    """``predict vol.zarr/NAME/raw`` writes its sibling ``vol.zarr/NAME/affinities``; ``segment vol.zarr/NAME`` reads it."""
    _, raw = volume
    _tiny_checkpoint(tmp_path / "m.pt")
    options = PredictOptions(checkpoint=str(tmp_path / "m.pt"), block=(8, 32, 32), halo=(4, 32, 32), device="cpu")
    for name, image in (("a", raw), ("b", raw[:, ::-1].copy())):
        create_volume(str(tmp_path / "m.zarr" / name / "raw"), image.shape, "uint8", chunks=(8, 32, 32),
                      voxel_size=(30, 6, 6))[:] = image
        predict(str(tmp_path / "m.zarr" / name / "raw"), options=options, progress=False)
        segment(str(tmp_path / "m.zarr" / name), SegmentOptions(block=(8, 32, 32)), progress=False)
    a, b = (open_volume(str(tmp_path / "m.zarr" / name / "affinities"))[:] for name in "ab")
    assert not np.array_equal(a, b)  # each predicted from its own raw
    assert not (tmp_path / "m.zarr" / "affinities").exists()
    assert all((tmp_path / "m.zarr" / name / "segmentation").is_dir() for name in "ab")


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 1, 2), (1, 2)])
def test_unflip_maps_flipped_affinities_back(axes):
    labels = np.kron(np.random.default_rng(0).integers(1, 9, (3, 4, 4)), np.ones((3, 9, 9), int))
    truth, valid = label_affinities(labels, PEA_OFFSETS)
    flipped, _ = label_affinities(np.ascontiguousarray(np.flip(labels, axes)), PEA_OFFSETS)
    restored = _unflip_affinities(flipped.astype(np.float32), axes, PEA_OFFSETS)
    np.testing.assert_array_equal(restored[valid], truth[valid])


def test_resume_after_sigkill_is_bitwise_equal_and_skips_done_blocks(tmp_path):
    raw, _ = generate((16, 64, 96), seed=5)
    for name in ("killed", "clean"):
        create_volume(str(tmp_path / f"{name}.zarr" / "raw"), raw.shape, "uint8", chunks=(4, 32, 32),
                      voxel_size=(30, 6, 6))[:] = raw
    _tiny_checkpoint(tmp_path / "m.pt")
    args = ["--checkpoint", str(tmp_path / "m.pt"), "--block", "4,32,32", "--halo", "4,32,32",
            "--workers", "1", "--no-progress", "--precision", "fp32"]
    command = [sys.executable, "-m", "pipeline.predict"]
    done = tmp_path / "killed.zarr" / ".corrseg3d" / "predict" / "affinities" / "done"
    process = subprocess.Popen(command + [str(tmp_path / "killed.zarr")] + args, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not done.exists() or len(os.listdir(done)) < 3):
        assert process.poll() is None, "the first run ended before it was killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in done.iterdir() if p.name.endswith(".done")}
    assert 3 <= len(finished) < 24, "the run should be killed mid-way"
    rerun = subprocess.run(command + [str(tmp_path / "killed.zarr")] + args, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(finished)} blocks already done" in rerun.stdout
    for name, mtime in finished.items():  # done blocks were not recomputed
        assert (done / name).stat().st_mtime_ns == mtime
    assert len(list(done.glob("*.done"))) == 24
    assert main([str(tmp_path / "clean.zarr")] + args) == 0
    np.testing.assert_array_equal(open_volume(str(tmp_path / "killed.zarr/affinities"))[:],
                                  open_volume(str(tmp_path / "clean.zarr/affinities"))[:])


def test_command_line_with_process_workers_equals_threads(tmp_path, volume):
    """``python -m pipeline.predict --scheduler processes``: its tasks pickle into worker processes."""
    store, _ = volume
    _tiny_checkpoint(tmp_path / "m.pt")
    args = ["--checkpoint", str(tmp_path / "m.pt"), "--block", "8,32,32", "--halo", "4,32,32", "--threads", "1",
            "--precision", "fp32", "--device", "cpu", "--no-progress"]
    for name, scheduler in (("threads", "threads"), ("processes", "processes")):
        result = subprocess.run([sys.executable, "-m", "pipeline.predict", store, "--out", f"{store}/{name}",
                                 "--scheduler", scheduler, "--workers", "2"] + args, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(open_volume(f"{store}/processes")[:], open_volume(f"{store}/threads")[:])


def test_bad_input_gives_one_line_errors_and_writes_nothing(tmp_path, volume, capsys):
    store, _ = volume
    _tiny_checkpoint(tmp_path / "m.pt")
    checkpoint = ["--checkpoint", str(tmp_path / "m.pt"), "--no-progress"]
    create_volume(store + "/flat", (1, 48, 72, 1), "uint8", chunks=(1, 48, 72, 1))
    create_volume(store + "/wide", (10, 48, 72), "uint16", chunks=(8, 32, 32))
    cases = {
        "flat": "3D (z, y, x) volume",
        "wide": "is uint16: predict reads uint8",
        "missing": "dataset 'missing' not found",
    }
    for dataset, message in cases.items():
        assert main([store, "--dataset", dataset] + checkpoint) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert not os.path.exists(os.path.join(store, "affinities"))
    assert main([store, "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([store, "--halo", "2,16,16"] + checkpoint) == 2
    assert "smaller than the largest offset" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(store, "affinities"))


def test_bf16_on_a_cpu_that_only_emulates_it_is_refused(tmp_path, volume, monkeypatch, capsys):
    store, _ = volume
    _tiny_checkpoint(tmp_path / "m.pt")
    monkeypatch.setattr("corrseg3d.inference.cpu_has_native_bf16", lambda: False)
    args = [store, "--checkpoint", str(tmp_path / "m.pt"), "--device", "cpu", "--no-progress", "--precision"]
    assert main(args + ["bf16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: precision bf16 is emulated on this CPU") and err.endswith(": use fp32 or auto\n")
    assert err.count("\n") == 1 and sorted(os.listdir(store)) == ["raw", "zarr.json"]


def test_checkpoint_with_other_offsets_is_refused(tmp_path, volume, capsys):
    store, _ = volume
    _tiny_checkpoint(tmp_path / "a.pt")
    other = list(PEA_OFFSETS[:9]) + [(-4, 0, 0), (0, -24, 0), (0, 0, -24)]
    _tiny_checkpoint(tmp_path / "b.pt", offsets=other)
    base = ["--block", "8,32,32", "--halo", "4,32,32", "--no-progress"]
    assert main([store, "--checkpoint", str(tmp_path / "a.pt")] + base) == 0
    before = open_volume(store + "/affinities")[:]
    assert main([store, "--checkpoint", str(tmp_path / "b.pt")] + base) == 2
    err = capsys.readouterr().err
    assert "model.offsets" in err and "--overwrite" in err
    np.testing.assert_array_equal(open_volume(store + "/affinities")[:], before)
    with pytest.raises(PredictError, match="uint8 or float16"):
        predict(store, options=PredictOptions(checkpoint=str(tmp_path / "a.pt"), dtype="int8"), progress=False)


def test_a_zarr_v2_store_gets_v2_outputs_equal_to_v3_ones(tmp_path, volume):
    """predict and segment write next to a zarr v2 input as v2 datasets, with the same values as in v3."""
    store, raw = volume
    _tiny_checkpoint(tmp_path / "m.pt")
    old = str(tmp_path / "old.zarr")
    array = zarr.open_group(old, mode="w", zarr_format=2).create_array("raw", shape=raw.shape, chunks=(8, 32, 32),
                                                                        dtype="uint8")
    array[:] = raw
    array.attrs.update({"voxel_size": [30, 6, 6], "offset": [0, 0, 0]})
    options = PredictOptions(checkpoint=str(tmp_path / "m.pt"), block=(8, 32, 32), halo=(4, 32, 32), device="cpu")
    for location in (store, old):
        predict(location, options=options, progress=False, scheduler="synchronous")
        segment(location, SegmentOptions(block=(8, 32, 32), min_size=20), progress=False, scheduler="synchronous")
    assert os.path.exists(os.path.join(old, "affinities", "s0", ".zarray"))
    assert not os.path.exists(os.path.join(old, "zarr.json"))
    for name in ("affinities", "segmentation"):
        written = open_volume(f"{old}/{name}")
        assert written.voxel_size == (30.0, 6.0, 6.0)
        np.testing.assert_array_equal(written[:], open_volume(f"{store}/{name}")[:])
