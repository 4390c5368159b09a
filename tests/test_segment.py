"""End-to-end blockwise segmentation: quality vs whole volume, faces, size merging, resume, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from emcore.conventions import PEA_OFFSETS
from emcore.metrics import segmentation_scores
from emcore.mws import mutex_watershed
from emcore.store import create_volume, open_volume
from pipeline.fragments import sample_mutex_edges
from pipeline.noisy_affinities import noisy_affinities
from pipeline.segment import SegmentError, SegmentOptions, main, segment
from pipeline.synth import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFSETS = [list(o) for o in PEA_OFFSETS]


def _write_store(path, labels, affs, *, attrs=None):
    create_volume(f"{path}/labels", labels.shape, labels.dtype, chunks=(16, 128, 128))[...] = labels
    volume = create_volume(f"{path}/affinities", affs.shape, affs.dtype, chunks=(1, 16, 128, 128),
                           attrs={"offsets": OFFSETS} if attrs is None else attrs)
    volume[...] = affs
    return str(path)


@pytest.fixture(scope="module")
def data():
    _, labels = generate((32, 256, 256), seed=1)
    return labels, noisy_affinities(labels, seed=1)


@pytest.fixture(scope="module")
def blockwise(data, tmp_path_factory):
    labels, affs = data
    store = _write_store(tmp_path_factory.mktemp("seg") / "vol.zarr", labels, affs)
    segment(store, SegmentOptions(method="mws", block=(16, 128, 128), min_size=0), progress=False)
    seg = open_volume(f"{store}/segmentation")[...]
    fragments = open_volume(f"{store}/fragments")[...]
    return store, seg, fragments, mutex_watershed(affs, OFFSETS)


def test_blockwise_matches_whole_volume_quality(data, blockwise):
    labels, _ = data
    _, seg, _, whole = blockwise
    ours, ref = segmentation_scores(seg, labels), segmentation_scores(whole, labels)
    assert abs(ours["voi"] - ref["voi"]) <= 0.03
    assert abs(ours["arand"] - ref["arand"]) <= 0.01


def _face_cuts(seg, gt, axis, plane, min_area=100):
    """Segment pairs split by ``plane`` over >= min_area voxels where GT is continuous across it."""
    lower = np.take(seg, plane - 1, axis=axis).ravel()
    upper = np.take(seg, plane, axis=axis).ravel()
    g0, g1 = np.take(gt, plane - 1, axis=axis).ravel(), np.take(gt, plane, axis=axis).ravel()
    cut = (g0 == g1) & (g0 > 0) & (lower != upper)
    _, counts = np.unique(np.stack([lower[cut], upper[cut]]), axis=1, return_counts=True)
    return int((counts >= min_area).sum())


@pytest.mark.parametrize("axis,plane", [(0, 16), (1, 128), (2, 128)])
def test_no_object_is_cut_along_block_faces(data, blockwise, axis, plane):
    labels, _ = data
    _, seg, fragments, whole = blockwise
    assert _face_cuts(seg, labels, axis, plane) <= _face_cuts(whole, labels, axis, plane) + 1
    assert _face_cuts(fragments, labels, axis, plane) >= 3  # the check sees cuts where there are some


def test_labels_only_in_a_halo_are_never_joined(blockwise):
    store, _, fragments, _ = blockwise
    workdir = f"{store}/.corrseg3d/segment/segmentation"
    present = set(np.unique(fragments).tolist()) - {0}
    merges = np.concatenate([np.load(os.path.join(workdir, "faces", name))["merges"]
                             for name in sorted(os.listdir(os.path.join(workdir, "faces")))])
    n_halo_only = sum(int((np.load(os.path.join(workdir, "tables", name))["sizes"][1:] == 0).sum())
                      for name in os.listdir(os.path.join(workdir, "tables")))
    assert len(merges) > 0 and n_halo_only > 0  # the check has joins and halo-only labels to look at
    assert set(merges.ravel().tolist()) <= present


def test_single_block_equals_plain_mutex_watershed(data, blockwise, tmp_path):
    labels, affs = data
    store = _write_store(tmp_path / "one.zarr", labels[:16, :128], affs[:, :16, :128])
    segment(store, SegmentOptions(method="mws", block=(16, 128, 256), min_size=0), progress=False)
    seg = open_volume(f"{store}/segmentation")[...]
    plain = mutex_watershed(affs[:, :16, :128], OFFSETS)
    pairs = np.unique(np.stack([seg.ravel(), plain.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(seg)) == len(np.unique(plain))


def _adjacency_means(seg, affs):
    keys, weights = [], []
    for axis in range(3):
        here = [slice(None)] * 3
        there = [slice(None)] * 3
        here[axis], there[axis] = slice(1, None), slice(None, -1)
        u, v = seg[tuple(here)].ravel(), seg[tuple(there)].ravel()
        keep = u != v
        keys.append(np.stack([np.minimum(u, v)[keep], np.maximum(u, v)[keep]]))
        weights.append(affs[axis][tuple(here)].ravel()[keep] / 255.0)
    pairs, inverse = np.unique(np.concatenate(keys, 1), axis=1, return_inverse=True)
    return pairs, np.bincount(inverse.ravel(), np.concatenate(weights)) / np.bincount(inverse.ravel())


def test_size_merging_removes_small_segments_with_a_qualifying_neighbour(data, blockwise):
    labels, affs = data
    store, unmerged, _, _ = blockwise
    min_size, floor = 300, 0.2
    segment(store, SegmentOptions(method="mws", block=(16, 128, 128), min_size=min_size, merge_floor=floor),
            output_name="merged", fragments_name="merged_fragments", progress=False)
    seg = open_volume(f"{store}/merged")[...]
    ids, sizes = np.unique(seg, return_counts=True)
    small = set(ids[sizes < min_size].tolist())
    pairs, means = _adjacency_means(seg, affs)
    qualifying = means > floor
    assert small and not any(int(u) in small or int(v) in small for u, v in pairs[:, qualifying].T)
    assert segmentation_scores(seg, labels)["voi_split"] < segmentation_scores(unmerged, labels)["voi_split"]


def test_task_split_phases_equal_one_run(data, blockwise, tmp_path):
    labels, affs = data
    store = _write_store(tmp_path / "tasks.zarr", labels, affs)
    options = SegmentOptions(method="mws", block=(16, 128, 128), min_size=0)
    for early in ("stitch", "relabel"):
        with pytest.raises(SegmentError, match="first"):
            segment(store, options, phase=early, progress=False)
    for phase in ("fragments", "stitch", "relabel"):
        for task in range(3):
            segment(store, options, phase=phase, task_index=task, num_tasks=3, scheduler="synchronous", progress=False)
    np.testing.assert_array_equal(open_volume(f"{store}/segmentation")[...], blockwise[1])


def test_task_split_multicut_equals_one_run(data, tmp_path):
    """The global multicut runs once, in whichever stitch task completes the set of blocks."""
    labels, affs = data
    crop = (slice(None), slice(0, 16), slice(0, 128), slice(0, 128))
    options = SegmentOptions(method="multicut", block=(8, 64, 64), min_size=50)
    one = _write_store(tmp_path / "one.zarr", labels[crop[1:]], affs[crop])
    split = _write_store(tmp_path / "split.zarr", labels[crop[1:]], affs[crop])
    segment(one, options, progress=False)
    for phase in ("fragments", "stitch", "relabel"):
        for task in range(3):
            segment(split, options, phase=phase, task_index=task, num_tasks=3, scheduler="synchronous", progress=False)
    np.testing.assert_array_equal(open_volume(f"{split}/segmentation")[...], open_volume(f"{one}/segmentation")[...])


def test_seeded_random_strides_do_not_depend_on_the_block(data):
    _, affs = data
    floats = affs[:, :8, :64, :64].astype(np.float32) / 255
    whole = sample_mutex_edges(floats, (1, 4, 4), 7, (0, 0, 0))
    crop = sample_mutex_edges(floats[:, 2:, 10:, 5:], (1, 4, 4), 7, (2, 10, 5))
    np.testing.assert_array_equal(whole[:, 2:, 10:, 5:], crop)
    assert 0.03 < (whole[3:] != floats[3:]).mean() < 1.0 and not np.array_equal(whole, sample_mutex_edges(floats, (1, 4, 4), 8, (0, 0, 0)))


@pytest.mark.parametrize("method", ["waterz", "multicut"])
def test_other_methods_blockwise_match_the_whole_volume(data, tmp_path, method):
    """The region-graph step (waterz's agglomeration continued, or the multicut) sees every block's
    fragments at once, so 8 blocks segment as well as one."""
    labels, affs = data
    crop = (slice(None), slice(0, 16), slice(0, 128), slice(0, 128))
    store = _write_store(tmp_path / "m.zarr", labels[crop[1:]], affs[crop])
    scores = {}
    for block in ((16, 128, 128), (8, 64, 64)):
        segment(store, SegmentOptions(method=method, block=block, consecutive=True, min_size=50), overwrite=True,
                progress=False)
        seg = open_volume(f"{store}/segmentation")[...]
        assert seg.min() >= 1 and seg.max() == len(np.unique(seg))
        scores[block] = segmentation_scores(seg, labels[crop[1:]])
    whole, tiled = scores.values()
    assert whole["arand"] < 0.3
    assert abs(tiled["voi"] - whole["voi"]) <= 0.02 and abs(tiled["arand"] - whole["arand"]) <= 0.01, scores


def _cli(store, *extra):
    return [sys.executable, "-m", "pipeline.segment", store, "--block", "4,64,64", "--scheduler",
            "synchronous", "--min-size", "100", "--no-progress", *extra]


def test_resume_after_sigkill_equals_a_clean_run(data, tmp_path):
    labels, affs = data
    crop = (slice(None), slice(0, 16), slice(0, 128))
    killed = _write_store(tmp_path / "killed.zarr", labels[crop[1:]], affs[crop])
    clean = _write_store(tmp_path / "clean.zarr", labels[crop[1:]], affs[crop])
    records = os.path.join(killed, ".corrseg3d", "segment", "segmentation", "done", "fragments")
    process = subprocess.Popen(_cli(killed), cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not os.path.isdir(records) or len([n for n in os.listdir(records) if n.endswith(".done")]) < 4):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = sorted(int(name.split(".")[0]) for name in os.listdir(records) if name.endswith(".done"))
    assert 4 <= len(done) < 32, "the run must be killed mid-way"
    tables = os.path.join(killed, ".corrseg3d", "segment", "segmentation", "tables")
    stamps = {i: os.stat(os.path.join(tables, f"{i}.npz")).st_mtime_ns for i in done}
    rerun = subprocess.run(_cli(killed), cwd=REPO, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done)} already done" in rerun.stderr
    assert stamps == {i: os.stat(os.path.join(tables, f"{i}.npz")).st_mtime_ns for i in done}
    assert subprocess.run(_cli(clean), cwd=REPO, capture_output=True).returncode == 0
    for name in ("fragments", "segmentation"):
        np.testing.assert_array_equal(open_volume(f"{killed}/{name}")[...], open_volume(f"{clean}/{name}")[...])
    changed = subprocess.run(_cli(killed, "--min-size", "5"), cwd=REPO, capture_output=True, text=True)
    assert changed.returncode == 2 and "different config" in changed.stderr


@pytest.mark.parametrize("case,message", [
    ("no_offsets", "no 'offsets' attribute"),
    ("channels", "one channel per offset"),
    ("nan", "NaN"),
    ("float_output", "dtype"),
])
def test_bad_input_is_refused_without_writing(data, tmp_path, capsys, case, message):
    labels, affs = data
    small = affs[:, :8, :64, :64]
    if case == "nan":
        small = small.astype(np.float32) / 255
        small[3, 2, 2, 2] = np.nan
    store = _write_store(tmp_path / "bad.zarr", labels[:8, :64, :64], small[:11] if case == "channels" else small,
                         attrs={} if case == "no_offsets" else None)
    extra = ["--dtype", "float32"] if case == "float_output" else []
    try:
        code = main([store, "--no-progress", *extra])
    except SystemExit as usage_error:  # argparse refuses a value outside --dtype's choices
        code = usage_error.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(os.path.join(store, "segmentation")) and not os.path.exists(os.path.join(store, ".corrseg3d"))


def test_out_of_range_values_outside_the_sampled_chunks_stop_their_block(data, tmp_path, capsys):
    """The up-front check reads only SAMPLE_CHUNKS chunks; a bad value elsewhere is caught in its block."""
    labels, affs = data
    small = affs[:, :8, :64, :64].astype(np.float32) / 255
    small[4, 0, 5, 20] = 2.0  # chunk 1 of 128: not among the sampled ones
    store = str(tmp_path / "late.zarr")
    create_volume(f"{store}/affinities", small.shape, small.dtype, chunks=(12, 1, 16, 16),
                  attrs={"offsets": OFFSETS})[...] = small
    assert main([store, "--block", "8,64,64", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "late.zarr/affinities (block 0) holds affinities in [0, 2]" in err and err.count("\n") == 1
