"""Blockwise evaluation over zarr: equals in-memory scores, ROI, mask, boxes, schedulers, CLI errors."""

import json

import distributed
import numpy as np
import pytest
import zarr

from emcore.blocks import BlockGrid
from emcore.contingency import (
    BoundingBoxes,
    EvaluationError,
    count_volumes,
    default_block_shape,
)
from emcore.metrics import SCORE_KEYS, segmentation_scores
from emcore.store import StoreError, create_volume
from pipeline.evaluate import EvaluateOptions, evaluate, main, parse_roi
from pipeline.synth import generate

SHAPE = (13, 70, 58)
CHUNKS = (4, 32, 24)


def _pair(seed=0):
    _, gt = generate(SHAPE, seed=seed)
    gt = np.where(gt > 0, gt + np.uint64(2**36), 0).astype(np.uint64)
    rng = np.random.default_rng(seed)
    seg = (gt % np.uint64(17)) * np.uint64(2**40)
    seg[:, :, SHAPE[2] // 3:] += np.uint64(5)
    seg[rng.random(SHAPE) < 0.01] = 0
    return seg, gt


def _write(tmp_path, name, data, chunks=CHUNKS, store="data.zarr"):
    volume = create_volume(str(tmp_path / store / name), data.shape, data.dtype, chunks=chunks)
    volume[:] = data
    return str(tmp_path / store / name)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("evaluate")
    seg, gt = _pair()
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:11, 5:60, 3:50] = 1
    _write(tmp_path, "segmentation", seg)
    _write(tmp_path, "labels", gt, chunks=(5, 16, 40))
    _write(tmp_path, "mask", mask)
    return tmp_path / "data.zarr", seg, gt, mask


def _assert_scores_equal(report_scores, expected):
    for key in SCORE_KEYS:
        assert report_scores[key] == pytest.approx(expected[key], abs=1e-9), key


def test_blockwise_equals_in_memory_with_uneven_chunks(stored):
    root, seg, gt, _ = stored
    report = evaluate(str(root), str(root), EvaluateOptions(top_k=3))
    _assert_scores_equal(report["scores"], segmentation_scores(seg, gt))
    assert report["n_voxels"] == int((gt != 0).sum())
    for block_shape in [(3, 17, 11), (13, 70, 58)]:
        other = evaluate(str(root / "segmentation"), str(root / "labels"), EvaluateOptions(top_k=0), block=block_shape)
        assert other["scores"] == pytest.approx(report["scores"], abs=1e-12)


def test_roi_equals_cropped_in_memory_and_boxes_stay_absolute(stored):
    root, seg, gt, _ = stored
    roi = "3:12,10:61,:"
    crop = parse_roi(roi, SHAPE)
    report = evaluate(str(root), str(root), EvaluateOptions(roi=roi, top_k=5))
    _assert_scores_equal(report["scores"], segmentation_scores(seg[crop], gt[crop]))
    for row in report["worst_splits"]:
        where = np.argwhere((gt[crop] == row["id"]))
        assert row["size"] == len(where)
        assert row["bbox_lo"] == list(where.min(0) + [3, 10, 0])
        assert row["bbox_hi"] == list(where.max(0) + [4, 11, 1])


def test_mask_equals_in_memory_selection(stored):
    root, seg, gt, mask = stored
    report = evaluate(str(root), str(root), EvaluateOptions(mask=str(root / "mask"), top_k=2))
    keep = mask > 0
    _assert_scores_equal(report["scores"], segmentation_scores(seg[keep], gt[keep]))


def test_worst_offenders_are_ranked_with_exact_sizes_and_boxes(stored):
    root, seg, gt, _ = stored
    report = evaluate(str(root), str(root), EvaluateOptions(top_k=4))
    merges = report["worst_merges"]
    assert [r["voi_merge"] for r in merges] == sorted((r["voi_merge"] for r in merges), reverse=True)
    for row in merges:
        where = np.argwhere((seg == row["id"]) & (gt != 0))
        assert row["size"] == len(where)
        assert row["overlaps"] == len(np.unique(gt[(seg == row["id"]) & (gt != 0)]))
        assert (row["bbox_lo"], row["bbox_hi"]) == (list(where.min(0)), list(where.max(0) + 1))


@pytest.mark.parametrize("scheduler", ["synchronous", "processes"])
def test_schedulers_agree(stored, scheduler):
    root, seg, gt, _ = stored
    ours = count_volumes(seg, gt, block_shape=(5, 40, 40), scheduler=scheduler, with_boxes=True)
    reference = count_volumes(seg, gt, block_shape=(13, 70, 58), with_boxes=True)
    for field in ("gt", "seg", "counts"):
        np.testing.assert_array_equal(getattr(ours.table, field), getattr(reference.table, field))
    for boxes, expected in ((ours.gt_boxes, reference.gt_boxes), (ours.seg_boxes, reference.seg_boxes)):
        for field in ("ids", "lo", "hi"):
            np.testing.assert_array_equal(getattr(boxes, field), getattr(expected, field))


def test_distributed_scheduler_address():
    seg, gt = _pair(1)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        ours = count_volumes(seg, gt, block_shape=(7, 35, 29), scheduler=cluster.scheduler_address)
    assert ours.table.n_voxels == int((gt != 0).sum())
    np.testing.assert_array_equal(ours.table.counts, count_volumes(seg, gt).table.counts)


def test_block_regions_tile_the_roi_exactly():
    roi = (slice(1, 12), slice(5, 70), slice(0, 9))
    cover = np.zeros(SHAPE, np.int64)
    for region in BlockGrid(SHAPE, (4, 32, 5)).regions(roi):
        cover[region] += 1
    expected = np.zeros(SHAPE, np.int64)
    expected[roi] = 1
    np.testing.assert_array_equal(cover, expected)


def test_boxes_merge_takes_union():
    a = BoundingBoxes(np.array([3, 9], np.uint64), np.array([[0, 0], [5, 5]]), np.array([[2, 2], [6, 6]]))
    b = BoundingBoxes(np.array([9], np.uint64), np.array([[1, 7]]), np.array([[9, 8]]))
    merged = BoundingBoxes.merge([a, b])
    np.testing.assert_array_equal(merged.ids, [3, 9])
    np.testing.assert_array_equal(merged.lo, [[0, 0], [1, 5]])
    np.testing.assert_array_equal(merged.hi, [[2, 2], [9, 8]])


def test_cli_prints_table_and_writes_json(stored, tmp_path, capsys):
    root, seg, gt, _ = stored
    out = tmp_path / "scores.json"
    assert main([str(root / "segmentation"), str(root / "labels"), "--top-k", "2", "--json", str(out),
                 "--ignore-gt", "none", "--scheduler", "synchronous"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    _assert_scores_equal(report["scores"], segmentation_scores(seg, gt, ignore_gt=()))
    assert len(report["worst_splits"]) == 2 and "worst merges" in printed and "voi_split" in printed
    assert report["conventions"]["ignore_gt"] == []


def _bad_input_cases(tmp_path, root):
    seg, gt = _pair()
    small = _write(tmp_path, "small", gt[:5], store="other.zarr")
    floats = _write(tmp_path, "floats", gt.astype(np.float32), store="other.zarr")
    negative = gt.astype(np.int64)
    negative[-1, -1, -1] = -3
    negative = _write(tmp_path, "negative", negative, store="other.zarr")
    (tmp_path / "plain").mkdir()
    return [
        ([str(root), small], "shape mismatch"),
        ([floats, str(root)], "labels must be integers"),
        ([negative, str(root / "labels")], "negative labels"),
        ([str(root / "nope"), str(root)], "not found"),
        ([str(tmp_path / "missing.zarr"), str(root)], "does not exist"),
        ([str(tmp_path / "plain"), str(root)], "not a zarr location"),
        ([str(root), str(root), "--roi", "0:5,0:5"], "ROI"),
        ([str(root), str(root), "--ignore-gt", "a"], "cannot read labels"),
        ([str(root), str(root), "--scheduler", "mpi"], "unknown scheduler"),
        ([str(root), str(root), "--roi", "0:1,0:1,0:1", "--mask", str(root / "mask")], "no voxel left"),
    ]


def test_cli_bad_inputs_exit_2_with_one_line_and_write_nothing(stored, tmp_path, capsys):
    root = stored[0]
    for argv, message in _bad_input_cases(tmp_path, root):
        out = tmp_path / "never.json"
        try:
            code = main(argv + ["--json", str(out)])
        except SystemExit as usage_error:  # argparse's usage errors (e.g. --ignore-gt a) leave as in a process
            code = usage_error.code
        assert code == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, (argv, err)
        assert not out.exists()


def test_api_errors_are_value_errors(stored):
    root = stored[0]
    with pytest.raises(StoreError):
        evaluate(str(root / "nope"), str(root))
    with pytest.raises(EvaluationError, match="top-k"):
        evaluate(str(root), str(root), EvaluateOptions(top_k=-1))


def test_count_volumes_refuses_rois_outside_the_volume():
    seg, gt = _pair()
    for roi in [(slice(0, 5),), (slice(0, 5), slice(0, 99), slice(0, 5)), (slice(3, 3), slice(0, 5), slice(0, 5))]:
        with pytest.raises(EvaluationError, match="ROI"):
            count_volumes(seg, gt, roi=roi)


def test_perfect_segmentation_lists_no_offenders(tmp_path):
    _, gt = _pair(2)
    _write(tmp_path, "labels", gt)
    _write(tmp_path, "segmentation", gt * np.uint64(3))
    report = evaluate(str(tmp_path / "data.zarr"), str(tmp_path / "data.zarr"))
    assert report["scores"]["voi"] == pytest.approx(0.0, abs=1e-12)
    assert report["worst_splits"] == [] and report["worst_merges"] == []


def test_default_block_shape_follows_storage_chunks():
    seg = np.zeros((10, 64, 64), np.uint64)
    refined = zarr.create_array(zarr.storage.MemoryStore(), shape=seg.shape, chunks=(5, 32, 64), dtype=np.uint64)
    coarse = zarr.create_array(zarr.storage.MemoryStore(), shape=seg.shape, chunks=(10, 16, 64), dtype=np.uint64)
    skewed = zarr.create_array(zarr.storage.MemoryStore(), shape=seg.shape, chunks=(3, 32, 64), dtype=np.uint64)
    assert default_block_shape(refined, coarse) == (10, 32, 64)
    assert default_block_shape(skewed, coarse) == (10, 16, 64)
    assert default_block_shape(seg, seg)[1:] == (64, 64)
