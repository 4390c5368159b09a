"""Block grid, task splitting, done records and the shared block runner."""

from __future__ import annotations

import os
from functools import partial

import distributed
import numpy as np
import pytest

from emcore.blocks import BlockGrid, BlockRunError, DoneRecords, format_rate, map_reduce_blocks, run_blocks, task_blocks


@pytest.mark.parametrize("shape,block", [((10, 33, 17), (4, 16, 16)), ((5, 5, 5), (5, 5, 5)), ((7, 9, 11), (1, 2, 3))])
def test_blocks_partition_the_volume(shape, block):
    grid = BlockGrid(shape, block)
    cover = np.zeros(shape, np.int64)
    for index in range(grid.n_blocks):
        b = grid.block(index)
        assert b.index == index and grid.index_of(b.position) == index
        cover[b.slices] += 1
        begin, end = grid.outer(b, (1, 2, 3))
        assert all(0 <= o <= i for o, i in zip(begin, b.begin)) and all(e <= s for e, s in zip(end, shape))
    assert (cover == 1).all()


def test_neighbours_are_face_adjacent():
    grid = BlockGrid((8, 8, 8), (4, 4, 4))
    block = grid.block(0)
    assert grid.neighbour(block, 2, -1) is None
    upper = grid.block(grid.neighbour(block, 2, 1))
    assert upper.begin == (0, 0, 4) and grid.neighbour(upper, 2, -1) == 0


@pytest.mark.parametrize("n_blocks,num_tasks", [(10, 3), (2, 5), (7, 1)])
def test_tasks_split_blocks_disjointly(n_blocks, num_tasks):
    parts = [task_blocks(n_blocks, i, num_tasks) for i in range(num_tasks)]
    flat = sorted(i for part in parts for i in part)
    assert flat == list(range(n_blocks))
    assert task_blocks(n_blocks, None, None) == list(range(n_blocks))


@pytest.mark.parametrize("task_index,num_tasks", [(3, 3), (-1, 2), (0, None), (None, 2), (0, 0)])
def test_bad_task_split_is_refused(task_index, num_tasks):
    with pytest.raises(BlockRunError):
        task_blocks(5, task_index, num_tasks)


def _write_square(folder: str, index: int) -> None:
    np.save(os.path.join(folder, f"{index}.npy"), np.array(index * index))


@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "processes"])
def test_runner_runs_every_block_once_and_resumes(tmp_path, scheduler):
    records = DoneRecords(str(tmp_path / "done"))
    func = partial(_write_square, str(tmp_path))
    summary = run_blocks(func, range(6), records=records, scheduler=scheduler, num_workers=2,
                         voxels=lambda i: 10, progress=False)
    assert summary["blocks"] == 6 and summary["skipped"] == 0
    assert [int(np.load(tmp_path / f"{i}.npy")) for i in range(6)] == [i * i for i in range(6)]
    os.remove(tmp_path / "2.npy")
    os.remove(records.path(2))
    again = run_blocks(func, range(6), records=records, scheduler=scheduler, progress=False)
    assert again["blocks"] == 1 and again["skipped"] == 5 and (tmp_path / "2.npy").exists()


def _write_group(folder: str, group: tuple[int, ...]) -> None:
    assert isinstance(group, tuple)
    np.save(os.path.join(folder, f"group-{group[0]}.npy"), np.array(group))


def test_runner_hands_out_groups_and_marks_each_block(tmp_path):
    records = DoneRecords(str(tmp_path / "done"))
    os.makedirs(records.folder, exist_ok=True)
    records.mark_done(1)
    summary = run_blocks(partial(_write_group, str(tmp_path)), range(7), records=records, batch_size=3,
                         scheduler="threads", num_workers=2, voxels=lambda i: 5, progress=False)
    groups = sorted(tuple(np.load(path)) for path in tmp_path.glob("group-*.npy"))
    assert groups == [(0, 2, 3), (4, 5, 6)]  # done block 1 skipped, the rest in order, groups of 3
    assert summary["blocks"] == 6 and summary["skipped"] == 1 and summary["voxels_per_second"] > 0
    assert records.done(range(7)) == list(range(7))


def _sum_region(values: np.ndarray, region: tuple[slice, ...]) -> int:
    return int(values[region].sum())


@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "processes"])
def test_map_reduce_equals_the_whole_sum_over_a_roi(scheduler):
    values = np.arange(9 * 20 * 30).reshape(9, 20, 30)
    roi = (slice(1, 8), slice(3, 20), slice(0, 29))
    grid = BlockGrid(values.shape, (4, 6, 7))
    total = map_reduce_blocks(_sum_region, grid.regions(roi), sum, shared=(values,), scheduler=scheduler, fan_in=3)
    assert total == int(values[roi].sum())
    assert map_reduce_blocks(_sum_region, [], sum, shared=(values,)) is None


def test_runner_on_distributed_address(tmp_path):
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        run_blocks(partial(_write_square, str(tmp_path)), range(3), scheduler=cluster.scheduler_address, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["0.npy", "1.npy", "2.npy"]


def _fail_on_three(index: int) -> None:
    if index == 3:
        raise RuntimeError("boom")


def test_failed_block_is_not_marked_done(tmp_path):
    records = DoneRecords(str(tmp_path))
    with pytest.raises(RuntimeError):
        run_blocks(_fail_on_three, range(5), records=records, scheduler="synchronous", progress=False)
    assert 3 not in records.done(range(5)) and not list(tmp_path.glob("*.tmp*"))


def test_unknown_scheduler_is_refused():
    with pytest.raises(BlockRunError, match="scheduler"):
        run_blocks(print, [0], scheduler="gpu", progress=False)


@pytest.mark.parametrize("voxels_per_second, shown", [
    (5e3, "0.005 Mvoxel/s"), (1.2e5, "0.12 Mvoxel/s"), (4.56e7, "45.6 Mvoxel/s"), (1.234e9, "1234 Mvoxel/s")])
def test_throughput_keeps_small_rates_visible_and_large_ones_plain(voxels_per_second, shown):
    assert format_rate(voxels_per_second) == shown
