"""Training sampler: crops, targets after augmentation, CCM view, 2D-label masking, seeding."""

import numpy as np
import pytest
import torch

from corrseg3d.config import AugmentConfig, SourceConfig
from corrseg3d.sampler import TrainingPatches, collate, make_loader, sample_rng
from corrseg3d.targets import label_affinities, widen_borders
from emcore.conventions import PEA_OFFSETS
from emcore.store import create_volume

PATCH = (6, 32, 32)
NO_AUGMENT = AugmentConfig(chain=0.0)


def _write(root, raw, labels, **label_attrs):
    create_volume(f"{root}/raw", raw.shape, raw.dtype, chunks=(4, 32, 32)).array[...] = raw
    create_volume(f"{root}/labels", labels.shape, labels.dtype, chunks=(4, 32, 32), attrs=label_attrs).array[...] = labels


@pytest.fixture
def blocks(tmp_path):
    """Labels of 8x8 squares (ids 1..200, varying per slice pair); raw = the id (uint8)."""
    rng = np.random.default_rng(0)
    grid = rng.integers(1, 201, size=(10, 8, 8))
    labels = np.repeat(np.repeat(np.repeat(grid, 2, axis=0)[:10], 8, axis=1), 8, axis=2).astype(np.uint64)
    _write(tmp_path / "b.zarr", labels.astype(np.uint8), labels)
    return str(tmp_path / "b.zarr")


def _dataset(root, *, augment=NO_AUGMENT, context=(0, 0, 0), labels_2d=None, with_view=True, slices=(0, 8)):
    source = SourceConfig(raw=f"{root}/raw", labels=f"{root}/labels", slices=slices, labels_2d=labels_2d)
    return TrainingPatches([source], patch=PATCH, context=context, offsets=PEA_OFFSETS,
                           augment_config=augment, seed=3, with_view=with_view)


def test_sample_shapes_and_pyramid(blocks):
    sample = _dataset(blocks)[0]
    assert sample["image"].shape == (1, *PATCH) and sample["image"].dtype == np.float32
    assert sample["view"].shape == (1, *PATCH)
    for key in ("affinities", "weights", "valid"):
        assert sample[key].shape == (12, *PATCH)
    assert sample["channel_mask"].all()
    assert [level["affinities"].shape for level in sample["pyramid"]] == [(3, 6, 2, 2), (3, 6, 4, 4), (3, 6, 8, 8), (3, 6, 16, 16)]
    assert len(sample["rule"]) == 4


def test_targets_are_built_from_the_widened_patch_labels(blocks):
    sample = _dataset(blocks)[5]
    labels = np.rint(sample["image"][0] * 255).astype(np.uint64)  # raw encodes the label id
    expected, valid = label_affinities(widen_borders(labels), PEA_OFFSETS)
    assert np.array_equal(sample["affinities"], expected) and np.array_equal(sample["valid"], valid)
    assert (sample["weights"][valid] > 0).all() and (sample["weights"][~valid] == 0).all()


def test_targets_follow_the_augmented_geometry(blocks):
    # Exact (non-interpolating) geometric ops, so the image still encodes the label ids exactly.
    augment = AugmentConfig(chain=1.0, flip=1.0, rotate=0.0, elastic=0.0, intensity=0.0, misalignment=1.0,
                            misalignment_max_shift=3)
    dataset = _dataset(blocks, augment=augment, context=(0, 8, 8))
    for index in range(4):
        sample = dataset[index]
        labels = np.rint(sample["image"][0] * 255).astype(np.uint64)
        expected, _ = label_affinities(widen_borders(labels), PEA_OFFSETS)
        assert np.array_equal(sample["affinities"], expected)


def test_samples_are_seeded_by_index(blocks):
    dataset = _dataset(blocks, augment=AugmentConfig(chain=1.0))
    a, b, c = dataset[7], dataset[7], dataset[8]
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["view"], b["view"]) and a["rule"] == b["rule"]
    assert not np.array_equal(a["image"], c["image"])
    assert sample_rng(3, 7).random() == sample_rng(3, 7).random() != sample_rng(3, 8).random()


def test_loader_batches_do_not_depend_on_workers_or_start(blocks):
    dataset = _dataset(blocks, augment=AugmentConfig(chain=1.0))
    serial = list(make_loader(dataset, batch_size=2, start_iteration=0, stop_iteration=3, num_workers=0))
    parallel = list(make_loader(dataset, batch_size=2, start_iteration=1, stop_iteration=3, num_workers=2))
    assert len(serial) == 3 and len(parallel) == 2
    for one, other in zip(serial[1:], parallel):
        assert torch.equal(one["image"], other["image"]) and torch.equal(one["affinities"], other["affinities"])
        assert one["rule"] == other["rule"]
    assert serial[0]["image"].shape == (2, 1, *PATCH) and serial[0]["pyramid"][0]["weights"].shape == (2, 3, 6, 2, 2)


@pytest.mark.parametrize("declared", [None, True])
def test_2d_labels_mask_the_z_channels(tmp_path, declared):
    labels = np.ones((8, 32, 32), np.uint64)
    _write(tmp_path / "isbi.zarr", np.zeros((8, 32, 32), np.uint8), labels, labels_2d=True)
    sample = _dataset(str(tmp_path / "isbi.zarr"), labels_2d=declared, with_view=False)[0]
    assert sample["channel_mask"].tolist() == [o[0] == 0 for o in PEA_OFFSETS]
    assert "view" not in sample
    batch = collate([sample, sample])
    assert batch["channel_mask"].shape == (2, 12) and "rule" not in batch


def test_sources_are_weighted_and_checked(blocks, tmp_path):
    other = tmp_path / "o.zarr"
    _write(other, np.full((8, 32, 32), 250, np.uint8), np.full((8, 32, 32), 9, np.uint64))
    sources = [SourceConfig(raw=f"{blocks}/raw", labels=f"{blocks}/labels", weight=0.0),
               SourceConfig(raw=f"{other}/raw", labels=f"{other}/labels", weight=1.0)]
    dataset = TrainingPatches(sources, patch=PATCH, context=(0, 0, 0), offsets=PEA_OFFSETS,
                              augment_config=NO_AUGMENT, seed=0, with_view=False)
    assert all(np.allclose(dataset[i]["image"], 250 / 255) for i in range(4))
    with pytest.raises(ValueError, match="smaller than patch"):
        _dataset(blocks, context=(0, 20, 20))[0]
    with pytest.raises(ValueError, match=r"data.sources.0.slices \[8, 8\] is empty"):
        _ = _dataset(blocks, slices=(8, 8)).sources
    assert [(s.start, s.stop) for s in _dataset(blocks, slices=(-6, None)).sources] == [(4, 10)]
