"""Properties of the synthetic EM generator (pipeline.synth)."""

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as connected_components

from corrseg3d.targets import label_affinities
from emcore.conventions import PEA_OFFSETS
from emcore.mws import mutex_watershed
from pipeline.synth import STYLES, Style, SynthError, generate, volume_style

SHAPE = (12, 160, 176)


@pytest.fixture(scope="module", params=STYLES)
def volume(request):
    return generate(SHAPE, seed=3, style=request.param)


def test_types_and_shape(volume):
    raw, labels = volume
    assert raw.shape == labels.shape == SHAPE
    assert raw.dtype == np.uint8 and labels.dtype == np.uint64


@pytest.mark.parametrize("style", STYLES)
def test_deterministic_per_seed(style):
    volume = generate(SHAPE, seed=3, style=style)
    raw, labels = generate(SHAPE, seed=3, style=style)
    assert np.array_equal(raw, volume[0]) and np.array_equal(labels, volume[1])
    other_raw, other_labels = generate(SHAPE, seed=4, style=style)
    assert not np.array_equal(other_labels, labels) and not np.array_equal(other_raw, raw)


def test_wide_style_varies_the_look_per_volume_and_keeps_the_base_unchanged():
    assert volume_style("base", 9) == Style()
    looks = [volume_style("wide", seed) for seed in range(8)]
    assert len(set(looks)) == 8 and sum(look.wave_amplitude > 1 for look in looks) >= 4
    base_raw, base_labels = generate((4, 96, 96), seed=2)
    wide_raw, wide_labels = generate((4, 96, 96), seed=2, style="wide")
    assert not np.array_equal(wide_raw, base_raw)
    moved = np.mean(wide_labels != base_labels)
    assert 0.005 < moved < 0.3  # wavy boundaries move pixels between neighbours, cores stay
    means = [generate((2, 64, 64), seed=seed, style="wide")[0].mean() for seed in range(4)]
    assert np.ptp(means) > 15  # per-volume intensity transform


@pytest.mark.parametrize("shape", [(8, 40, 56), (5, 33, 71), (1, 16, 16)])
def test_small_odd_shapes(shape):
    raw, labels = generate(shape, seed=0, missing_sections=1, misalignment=1)
    assert raw.shape == labels.shape == shape
    assert labels.max() > 0


@pytest.mark.parametrize("style", STYLES)
def test_blocks_assemble_to_whole_volume(style):
    shape = (9, 48, 60)
    kwargs = dict(seed=7, missing_sections=2, misalignment=2, style=style)
    raw, labels = generate(shape, **kwargs)
    blocks_raw, blocks_labels = np.zeros_like(raw), np.zeros_like(labels)
    for z in (slice(0, 4), slice(4, 9)):
        for y in (slice(0, 17), slice(17, 48)):
            for x in (slice(0, 31), slice(31, 60)):
                roi = (z, y, x)
                blocks_raw[roi], blocks_labels[roi] = generate(shape, roi=roi, **kwargs)
    assert np.array_equal(blocks_raw, raw)
    assert np.array_equal(blocks_labels, labels)


def test_extracellular_fraction_and_object_count(volume):
    _, labels = volume
    assert 0.02 <= np.mean(labels == 0) <= 0.08
    per_slice = np.mean([len(np.unique(s)) - 1 for s in labels])
    area_um2 = SHAPE[1] * SHAPE[2] * 0.006 ** 2  # 6 nm pixels
    assert 30 <= per_slice / area_um2 <= 150  # neurite profiles per square micron (cortex: ~50-100)


def test_every_label_is_one_connected_object(volume):
    _, labels = volume
    components = connected_components(labels, background=0, connectivity=1)
    assert components.max() == len(np.unique(labels[labels > 0]))


def test_objects_span_several_slices(volume):
    _, labels = volume
    slices = ndimage.find_objects(connected_components(labels, background=0, connectivity=1))
    depth = np.array([s[0].stop - s[0].start for s in slices if s is not None])
    assert np.median(depth) >= SHAPE[0] / 2


def test_membranes_darker_than_cytoplasm_but_not_only_dark(volume):
    raw, labels = volume
    boundary = np.zeros(labels.shape, bool)
    boundary[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    boundary[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    interior = ~ndimage.binary_dilation(boundary, np.ones((1, 7, 7))) & (labels > 0)
    assert raw[boundary].mean() < raw[interior].mean() - 40
    dark = np.percentile(raw[boundary], 50)
    assert np.mean(raw[interior] < dark) > 0.001  # organelles are as dark as membranes


def test_ground_truth_affinities_give_back_labels(volume):
    _, labels = volume
    affinities, _ = label_affinities(labels, PEA_OFFSETS)
    segmentation = mutex_watershed(affinities.astype(np.float32), PEA_OFFSETS, strides=(1, 1, 1))  # targets are {0, 1}
    foreground = labels > 0
    pairs = np.unique(np.stack([labels[foreground], segmentation[foreground]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1]  # no label is split
    assert len(np.unique(pairs[1])) == pairs.shape[1]  # no two labels are merged


def test_defects_touch_raw_only():
    clean_raw, clean_labels = generate((10, 64, 64), seed=1)
    raw, labels = generate((10, 64, 64), seed=1, missing_sections=2, misalignment=2)
    assert np.array_equal(labels, clean_labels)
    changed = [z for z in range(10) if not np.array_equal(raw[z], clean_raw[z])]
    assert 3 <= len(changed) <= 4
    flat = [z for z in changed if raw[z].std() < 6]
    assert len(flat) == 2


@pytest.mark.parametrize("kwargs", [dict(shape=(4, 8, 64)), dict(shape=(4, 64)), dict(shape=(4, 64, 64), missing_sections=5),
                                    dict(shape=(4, 64, 64), style="glossy")])
def test_bad_parameters(kwargs):
    shape = kwargs.pop("shape")
    with pytest.raises(SynthError):
        generate(shape, seed=0, **kwargs)
