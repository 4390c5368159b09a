"""Voxel sizes: checkpoints record theirs, predict resamples other inputs to it and back (issue #17).

Models here are a 3x3x3 convolution (context radius 1: blockwise must equal a whole-volume pass
exactly) and a model whose affinities are a known function of the image (a grey-value
difference), so a segmentation can be compared across voxel sizes without a trained network.
"""

import os

import numpy as np
import pytest
import torch
from tiny_models import LocalConvModel

from corrseg3d.checkpoint import load_model, read_checkpoint, save_checkpoint
from corrseg3d.checkpoint import main as checkpoint_main
from corrseg3d.config import ConfigError, from_dict
from corrseg3d.model import ModelOutput, ResidualUNet3D
from corrseg3d.resample import Resampling, input_grid_offsets, needs_resampling
from corrseg3d.sampler import TrainingPatches
from corrseg3d.train import train, training_voxel_size
from corrseg3d.weights import default_checkpoint
from emcore.conventions import PEA_OFFSETS, finite_positive, validate_offsets
from emcore.metrics import segmentation_scores
from emcore.store import create_volume, open_volume
from pipeline.predict import PredictError, PredictOptions, main, predict
from pipeline.segment import SegmentOptions, segment
from pipeline.synth import generate

MODEL_VOXEL_SIZE = (30.0, 6.0, 6.0)
INPUT_VOXEL_SIZE = (10.0, 10.0, 10.0)
RATIO = (3.0, 0.6, 0.6)  # input voxels per model voxel


class GreyDifferenceModel(torch.nn.Module):
    """Affinity head: channel k at p is ``1 - min(1, |I(p) - I(p + o_k)| / 0.08)`` (0 where p + o_k
    leaves the patch): a known function of the image, the same at every voxel size."""

    def __init__(self, offsets) -> None:
        super().__init__()
        self.offsets = offsets
        self._config = {"head": "affinity", "filters": []}

    def forward(self, x: torch.Tensor) -> ModelOutput:
        channels = []
        for offset in self.offsets:
            partner = torch.zeros_like(x)
            valid = torch.zeros_like(x)
            dst = (Ellipsis,) + tuple(slice(-o, None) for o in offset)
            src = (Ellipsis,) + tuple(slice(0, n + o) for o, n in zip(offset, x.shape[-3:]))
            partner[dst] = x[src]
            valid[dst] = 1
            channels.append(valid * (1 - torch.clamp((x - partner).abs() / 0.08, max=1)))
        return ModelOutput(torch.cat(channels, dim=1), ())


def _use_model(monkeypatch, model, voxel_size=MODEL_VOXEL_SIZE, trained=()):
    """Make pipeline.predict load ``model`` (trained at ``voxel_size`` and ``trained``) for any checkpoint."""
    metadata = {"model_sha256": f"{type(model).__name__}-{voxel_size}", "voxel_size": voxel_size,
                "trained_voxel_sizes": (voxel_size, *trained)}
    monkeypatch.setattr("pipeline.predict._load_model", lambda checkpoint: (model, PEA_OFFSETS, metadata, "known"))


def _tissue(shape=(48, 96, 96), seed=4):
    """Synthetic labels read as a 10x10x10 nm volume, and raw = a grey level per label (7 levels)."""
    _, labels = generate(shape, seed=seed)
    return labels, _grey(labels)


def _grey(labels):
    return (40 + 25 * ((labels.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(7))).astype(np.uint8)


def _write(location, data, voxel_size, chunks):
    create_volume(location, data.shape, data.dtype, chunks=chunks, voxel_size=voxel_size)[:] = data


def _nearest(shape_from, shape_to, ratio):
    """Nearest-neighbour resampling index: voxel i of a ``shape_to`` grid reads voxel round(i * ratio)
    (clipped) of a ``shape_from`` array; ``ratio`` = ``from`` voxels per ``to`` voxel."""
    return np.ix_(*[np.minimum(np.floor(np.arange(n) * r + 0.5).astype(int), m - 1)
                    for n, r, m in zip(shape_to, ratio, shape_from)])


@pytest.mark.parametrize("values, valid", [
    ((30, 10, 10), True), ([30.0, 6.5, 6.5], True), (np.array([50, 4, 4]), True),
    ((30, 10), False), ((30, 10, 10, 10), False), ((0, 10, 10), False), ((30, -4, 4), False),
    ((float("nan"), 4, 4), False), ((30, float("inf"), 4), False), (("30", "10", "10"), False), ((True, 1, 1), False), (None, False),
])
def test_one_voxel_size_rule_for_stores_configs_checkpoints_and_options(values, valid):
    assert finite_positive(values, 3) is valid


def test_input_grid_offsets_rescale_long_range_and_keep_nearest_neighbours():
    offsets = input_grid_offsets(PEA_OFFSETS, RATIO)
    assert offsets == ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (-6, 0, 0), (0, -2, 0), (0, 0, -2),
                       (-9, 0, 0), (0, -5, 0), (0, 0, -5), (-12, 0, 0), (0, -16, 0), (0, 0, -16))
    assert validate_offsets(offsets) == offsets
    assert input_grid_offsets(PEA_OFFSETS, (1, 1, 1)) == PEA_OFFSETS
    assert input_grid_offsets(PEA_OFFSETS, (0.1, 0.1, 0.1))[3:6] == ((-1, 0, 0), (0, -1, 0), (0, 0, -1))
    assert not needs_resampling((34, 6.5, 5.2), MODEL_VOXEL_SIZE, 0.15)
    assert needs_resampling((36, 6, 6), MODEL_VOXEL_SIZE, 0.15)


def test_linear_fields_map_between_the_grids_exactly():
    """Input voxel i sits at model coordinate i / ratio; an affinity that is a linear function of
    its pair's midpoint comes back at the midpoint of the input pair (p, p + o')."""
    resampling = Resampling(RATIO, PEA_OFFSETS, (4, 27, 27))
    begin, end = (30, 70, 80), (42, 102, 96)
    lo, hi = resampling.model_box(begin, end)
    grid = np.meshgrid(*[np.arange(a, b, dtype=np.float64) for a, b in zip(lo, hi)], indexing="ij")
    slope = np.array([0.5, 0.25, 0.125])
    image = sum(s * g for s, g in zip(slope, np.indices((80, 200, 200), dtype=np.float32)))
    patch = resampling.model_patch(image, begin, end)  # inside the volume: no padding
    np.testing.assert_allclose(patch, sum(s * g * r for s, g, r in zip(slope, grid, RATIO)), rtol=1e-6)
    model = np.stack([sum(s * (g + o / 2) for s, g, o in zip(slope, grid, offset)) for offset in PEA_OFFSETS])
    result = resampling.to_input(model.astype(np.float32), begin, end)
    points = np.meshgrid(*[np.arange(a, b, dtype=np.float64) for a, b in zip(begin, end)], indexing="ij")
    for channel, offset in enumerate(resampling.offsets):  # midpoint of (p, p + o'), in model voxels
        expected = sum(s * (p + o / 2) / r for s, p, o, r in zip(slope, points, offset, RATIO))
        np.testing.assert_allclose(result[channel], expected, rtol=1e-5, atol=1e-4)
    assert all(a % m == 0 for a, m in zip(lo[1:] + hi[1:], (16,) * 4))  # pooling-aligned in y, x


def test_resampled_blockwise_equals_whole_volume_and_resumes(tmp_path, monkeypatch):
    torch.manual_seed(0)
    _use_model(monkeypatch, LocalConvModel().eval())
    raw = np.random.default_rng(1).integers(0, 256, (12, 32, 40), dtype=np.uint8)
    store = str(tmp_path / "v.zarr")
    _write(f"{store}/raw", raw, INPUT_VOXEL_SIZE, (4, 16, 16))
    common = dict(halo=(5, 28, 28), dtype="float16", precision="fp32", device="cpu", threads=1)
    predict(store, out_location=f"{store}/whole", options=PredictOptions(block=raw.shape, **common),
            progress=False, scheduler="synchronous")
    blockwise = PredictOptions(block=(4, 16, 16), **common)
    predict(store, out_location=f"{store}/blocks", options=blockwise, task_index=0, num_tasks=2, progress=False)
    resumed = predict(store, out_location=f"{store}/blocks", options=blockwise, progress=False)  # the other half
    assert resumed["skipped"] == 9
    whole, blocks = open_volume(f"{store}/whole"), open_volume(f"{store}/blocks")
    assert whole.attrs["resampled"] is True and whole.shape == (12,) + raw.shape
    np.testing.assert_array_equal(blocks[:], whole[:])


def test_same_tissue_at_two_voxel_sizes_gives_the_same_segmentation(tmp_path, monkeypatch):
    """Bound: the 10 nm segmentation and the model-resolution one (nearest-neighbour mapped to the
    10 nm grid) differ by ARAND < 0.04 and VOI < 0.5 bits (measured: 0.025 and 0.35; keeping the
    model's offsets on the 10 nm grid instead of rescaling them gives 0.051 and 0.66, a 2-voxel
    shift of the affinities 0.65 and 2.6); against its own ground truth each scores within 0.05
    ARAND of the other (measured 0.122 and 0.087)."""
    _use_model(monkeypatch, GreyDifferenceModel(PEA_OFFSETS))
    labels, raw = _tissue()
    model_shape = tuple(int((n - 1) // r) + 1 for n, r in zip(labels.shape, RATIO))
    labels_model = labels[_nearest(labels.shape, model_shape, RATIO)]
    fine, coarse = str(tmp_path / "fine.zarr"), str(tmp_path / "coarse.zarr")
    _write(f"{fine}/raw", raw, INPUT_VOXEL_SIZE, (16, 48, 48))
    _write(f"{coarse}/raw", _grey(labels_model), MODEL_VOXEL_SIZE, (16, 80, 80))
    options = dict(halo=(4, 32, 32), precision="fp32", device="cpu", threads=1)
    predict(fine, options=PredictOptions(block=(16, 48, 48), **options), progress=False)
    predict(coarse, options=PredictOptions(block=(16, 80, 80), **options), progress=False)
    affinities = open_volume(f"{fine}/affinities")
    assert affinities.attrs["resampled"] is True and open_volume(f"{coarse}/affinities").attrs["resampled"] is False
    for store in (fine, coarse):  # mutex watershed: the method that reads the rescaled long-range offsets
        segment(store, SegmentOptions(method="mws", min_size=10), progress=False)
    seg_fine = open_volume(f"{fine}/segmentation")[:]
    seg_coarse = open_volume(f"{coarse}/segmentation")[:]
    mapped = seg_coarse[_nearest(seg_coarse.shape, labels.shape, [1 / r for r in RATIO])]
    between = segmentation_scores(seg_fine, mapped)
    fine_vs_gt = segmentation_scores(seg_fine, labels)
    coarse_vs_gt = segmentation_scores(seg_coarse, labels_model)
    assert between["arand"] < 0.04 and between["voi"] < 0.5
    assert abs(fine_vs_gt["arand"] - coarse_vs_gt["arand"]) < 0.05
    assert affinities.attrs["offsets"] == [list(o) for o in input_grid_offsets(PEA_OFFSETS, RATIO)]


def test_unknown_voxel_size_is_one_error_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """A plain zarr array without voxel size metadata, predicted with the shipped weights."""
    import zarr

    store = tmp_path / "v.zarr"
    zarr.open_group(str(store), mode="w").create_array("raw", data=np.zeros((8, 32, 32), np.uint8))
    assert main([str(store), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "has no voxel size" in err and "--voxel-size Z,Y,X" in err and "30x10x10 nm" in err
    assert sorted(os.listdir(store)) == ["raw", "zarr.json"]
    _use_model(monkeypatch, LocalConvModel().eval())
    args = [str(store), "--no-progress", "--block", "8,32,32", "--halo", "5,28,28", "--precision", "fp32"]
    assert main(args + ["--voxel-size", "10,10,10"]) == 0
    out = open_volume(str(store / "affinities"))
    assert out.voxel_size == INPUT_VOXEL_SIZE and out.voxel_size_stated
    assert out.attrs["input_voxel_size"] == list(INPUT_VOXEL_SIZE) and out.attrs["resampled"] is True
    for voxel_size in ((0, 10, 10), (float("nan"), 10, 10), (float("inf"), 10, 10)):
        with pytest.raises(PredictError, match="must be finite and positive"):
            predict(str(store), options=PredictOptions(voxel_size=voxel_size), progress=False)


def test_output_attributes_record_what_was_done(tmp_path, monkeypatch):
    _use_model(monkeypatch, LocalConvModel().eval())
    raw = np.random.default_rng(2).integers(0, 256, (8, 32, 32), dtype=np.uint8)
    store = str(tmp_path / "v.zarr")
    _write(f"{store}/raw", raw, (32.0, 6.5, 5.5), (8, 32, 32))  # within 15 % of 30x6x6
    common = dict(block=(8, 32, 32), halo=(5, 28, 28), precision="fp32", device="cpu")
    model_offsets = [list(o) for o in PEA_OFFSETS]
    predict(store, out_location=f"{store}/near", options=PredictOptions(**common), progress=False)
    predict(store, out_location=f"{store}/far", progress=False,
            options=PredictOptions(voxel_size_tolerance=0.05, **common))
    predict(store, out_location=f"{store}/asis", progress=False,
            options=PredictOptions(voxel_size=INPUT_VOXEL_SIZE, resample=False, **common))
    near, far, asis = (open_volume(f"{store}/{name}").attrs for name in ("near", "far", "asis"))
    assert near["resampled"] is False and near["offsets"] == model_offsets == near["model_offsets"]
    assert near["input_voxel_size"] == [32.0, 6.5, 5.5] and near["model_voxel_size"] == list(MODEL_VOXEL_SIZE)
    assert far["resampled"] is True and far["model_offsets"] == model_offsets
    assert far["offsets"] == [list(o) for o in input_grid_offsets(PEA_OFFSETS, (30 / 32, 6 / 6.5, 6 / 5.5))]
    assert asis["resampled"] is False and asis["offsets"] == model_offsets
    assert asis["input_voxel_size"] == list(INPUT_VOXEL_SIZE) and open_volume(f"{store}/asis").voxel_size == INPUT_VOXEL_SIZE


def test_inputs_near_any_training_voxel_size_are_not_resampled(tmp_path, monkeypatch):
    _use_model(monkeypatch, LocalConvModel().eval(), trained=((30.0, 10.0, 10.0),))
    raw = np.random.default_rng(5).integers(0, 256, (8, 32, 32), dtype=np.uint8)
    common = dict(block=(8, 32, 32), halo=(5, 28, 28), precision="fp32", device="cpu")
    for name, voxel_size, resampled in (("fib", (30.0, 9.5, 9.5), False), ("synthetic", (30.0, 6.0, 6.0), False),
                                        ("iso", INPUT_VOXEL_SIZE, True)):
        store = str(tmp_path / f"{name}.zarr")
        _write(f"{store}/raw", raw, voxel_size, (8, 32, 32))
        predict(store, options=PredictOptions(**common), progress=False)
        attrs = open_volume(f"{store}/affinities").attrs
        assert attrs["resampled"] is resampled and attrs["model_voxel_size"] == list(MODEL_VOXEL_SIZE)
    store = str(tmp_path / "placeholder.zarr")
    _write(f"{store}/raw", raw, (1.0, 1.0, 1.0), (8, 32, 32))
    with pytest.raises(PredictError, match="placeholder.zarr/raw states a voxel size of 1x1x1 nm, more than 8x off "
                                           "the model's 30x6x6 nm"):
        predict(store, options=PredictOptions(**common), progress=False)
    with pytest.raises(PredictError, match=r"^--voxel-size \(predict.voxel_size\) is 1x1x1 nm, more than 8x off"):  # the flag, not the store
        predict(f"{tmp_path}/fib.zarr", options=PredictOptions(voxel_size=(1.0, 1.0, 1.0), **common),
                out_location=f"{tmp_path}/fib.zarr/other", progress=False)
    assert not os.path.exists(f"{store}/affinities")
    predict(store, options=PredictOptions(resample=False, **common), progress=False)


def test_checkpoint_without_voxel_size_predicts_on_the_input_grid_with_a_warning(tmp_path):
    raw = np.random.default_rng(3).integers(0, 256, (4, 32, 32), dtype=np.uint8)
    store = str(tmp_path / "v.zarr")
    _write(f"{store}/raw", raw, INPUT_VOXEL_SIZE, (4, 32, 32))
    torch.manual_seed(0)
    model = ResidualUNet3D(filters=(2, 2, 2, 2, 2), embedding_dim=4)
    save_checkpoint(tmp_path / "old.pt", model=model, optimizer=None, iteration=0, offsets=PEA_OFFSETS, config={})
    options = PredictOptions(checkpoint=str(tmp_path / "old.pt"), block=(4, 32, 32), halo=(4, 32, 32),
                             precision="fp32", device="cpu")
    with pytest.warns(UserWarning, match="records no training voxel size"):
        predict(store, options=options, progress=False)
    attrs = open_volume(f"{store}/affinities").attrs
    assert attrs["resampled"] is False and attrs["model_voxel_size"] is None
    before = read_checkpoint(tmp_path / "old.pt")
    assert checkpoint_main(["set-voxel-size", str(tmp_path / "old.pt"), "30", "6", "6"]) == 0
    after = read_checkpoint(tmp_path / "old.pt")
    assert after["voxel_size"] == list(MODEL_VOXEL_SIZE) and after["model_sha256"] == before["model_sha256"]
    assert after["trained_voxel_sizes"] == [list(MODEL_VOXEL_SIZE)]
    assert checkpoint_main(["set-voxel-size", str(tmp_path / "old.pt"), "30", "10", "10", "--trained", "30,6,6",
                            "--trained", "50,4,4"]) == 0
    assert load_model(tmp_path / "old.pt")[2]["trained_voxel_sizes"] == ((30.0, 10.0, 10.0), MODEL_VOXEL_SIZE, (50.0, 4.0, 4.0))
    assert checkpoint_main(["set-voxel-size", str(tmp_path / "old.pt"), "30", "6", "6"]) == 0
    assert all(torch.equal(after["model_state"][k], v) for k, v in before["model_state"].items())
    assert load_model(tmp_path / "old.pt")[2]["voxel_size"] == MODEL_VOXEL_SIZE
    shipped = load_model(default_checkpoint())[2]  # trained on FIB-SEM, synthetic volumes and ISBI slices
    assert shipped["voxel_size"] == (30.0, 10.0, 10.0)
    assert shipped["trained_voxel_sizes"] == ((30.0, 10.0, 10.0), MODEL_VOXEL_SIZE, (50.0, 4.0, 4.0))


def test_precomputed_input_is_resampled_by_its_info_resolution(tmp_path, monkeypatch):
    _use_model(monkeypatch, LocalConvModel().eval())
    raw = np.random.default_rng(4).integers(0, 256, (8, 32, 32), dtype=np.uint8)
    layer = f"precomputed://file://{tmp_path}/raw"
    _write(layer, raw, INPUT_VOXEL_SIZE, (8, 32, 32))
    predict(layer, out_location=str(tmp_path / "out.zarr" / "affinities"), progress=False,
            options=PredictOptions(block=(8, 32, 32), halo=(5, 28, 28), precision="fp32", device="cpu"))
    attrs = open_volume(str(tmp_path / "out.zarr" / "affinities")).attrs
    assert attrs["resampled"] is True and attrs["input_voxel_size"] == list(INPUT_VOXEL_SIZE)


def test_training_records_the_voxel_size_with_the_highest_summed_weight(tmp_path):
    import zarr

    _, labels = generate((6, 32, 32), seed=0)
    for name, voxel_size in (("a", (40, 4, 4)), ("b", (10, 10, 10))):
        _write(str(tmp_path / f"{name}.zarr" / "raw"), _grey(labels), voxel_size, (6, 32, 32))
        _write(str(tmp_path / f"{name}.zarr" / "labels"), labels, voxel_size, (6, 32, 32))
    plain = zarr.open_group(str(tmp_path / "c.zarr"), mode="w")  # no voxel size metadata
    plain.create_array("raw", data=_grey(labels))
    plain.create_array("labels", data=labels)

    def config(weights, names="ab", voxel_sizes=None, native=(True, True), **data):
        sources = [{"raw": str(tmp_path / f"{n}.zarr/raw"), "labels": str(tmp_path / f"{n}.zarr/labels"), "weight": w,
                    "voxel_size": v, "predict_natively": p}
                   for n, w, v, p in zip(names, weights, voxel_sizes or [None] * len(names), native)]
        return from_dict({"model": {"filters": [2, 2, 2, 2, 2], "embedding_dim": 4},
                          "data": {"sources": sources, "patch": [2, 16, 16], "context": [0, 0, 0], **data},
                          "train": {"iterations": 1, "batch_size": 1, "num_workers": 0, "precision": "fp32"}})

    def rule(settings):
        return training_voxel_size(settings, TrainingPatches(settings.data.sources, patch=(2, 16, 16), context=(0, 0, 0),
                                                             offsets=PEA_OFFSETS, augment_config=settings.augment, seed=0))

    train(config([0.3, 0.7]), tmp_path / "run", progress=False)
    assert read_checkpoint(tmp_path / "run" / "last.pt")["voxel_size"] == [10.0, 10.0, 10.0]
    assert read_checkpoint(tmp_path / "run" / "last.pt")["trained_voxel_sizes"] == [[10.0, 10.0, 10.0], [40.0, 4.0, 4.0]]
    train(config([0.3, 0.7], native=(True, False)), tmp_path / "resampled", progress=False)
    recorded = read_checkpoint(tmp_path / "resampled" / "last.pt")
    assert recorded["voxel_size"] == [10.0, 10.0, 10.0]  # still the model's voxel size: it has the higher weight
    assert recorded["trained_voxel_sizes"] == [[10.0, 10.0, 10.0], [40.0, 4.0, 4.0]]  # the model's own size is always in
    train(config([0.7, 0.3], native=(True, False)), tmp_path / "opted-out", progress=False)
    assert read_checkpoint(tmp_path / "opted-out" / "last.pt")["trained_voxel_sizes"] == [[40.0, 4.0, 4.0]]
    assert rule(config([0.5, 0.5])) == (40.0, 4.0, 4.0)  # the first of equal weights
    assert rule(config([0.3, 0.3, 0.4], "aab")) == (40.0, 4.0, 4.0)  # one geometry split over two sources counts once
    assert rule(config([0.2, 0.2, 0.3], "aac", voxel_sizes=(None, None, [8, 8, 8]))) == (40.0, 4.0, 4.0)
    assert rule(config([0.5, 0.5], voxel_size=[30, 8, 8])) == (30.0, 8.0, 8.0)
    assert rule(config([0.7, 0.3], "ca", voxel_sizes=([8, 8, 8], None))) == (8.0, 8.0, 8.0)
    with pytest.raises(ConfigError, match=r"c.zarr/raw has no voxel size .* set data.sources.0.voxel_size"):
        train(config([0.7, 0.3], "ca"), tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ConfigError, match="data.sources.1.voxel_size must be three finite positive numbers"):
        config([0.7, 0.3], voxel_sizes=(None, [0, 1, 1]))
