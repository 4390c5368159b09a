"""OME-Zarr pyramids: downsampling rules, blockwise == whole volume, and spec-valid metadata."""

import json
import os

import numpy as np
import pytest
import zarr

from emcore.store import create_volume, open_volume
from pipeline.export import main as export_main
from pipeline.pyramid import PyramidError, build_pyramid, default_method, downsample_xy, max_levels

SPACE_UNITS = {"angstrom", "nanometer", "micrometer", "millimeter", "centimeter", "meter", "picometer"}
AXIS_TYPES = {"space", "time", "channel"}


def validate_ome_zarr_05(image_path: str) -> list[str]:
    """Problems with the OME-Zarr 0.5 multiscales metadata of an image group (empty = valid).

    Checks the spec's required fields: ``ome.version``; ``multiscales[0].axes`` (2-5 unique
    names, known types, 2 or 3 space axes last, units for space axes); ``datasets`` naming existing
    arrays of matching rank; per dataset ``coordinateTransformations`` = a scale then an optional
    translation, each with one entry per axis; scales coarsening (non-decreasing) level by level.
    """
    with open(os.path.join(image_path, "zarr.json")) as handle:
        meta = json.load(handle)
    ome = meta.get("attributes", {}).get("ome", {})
    problems = []
    if ome.get("version") != "0.5":
        problems.append(f"ome.version is {ome.get('version')!r}, not '0.5'")
    multiscales = ome.get("multiscales") or [{}]
    axes = multiscales[0].get("axes", [])
    if not 2 <= len(axes) <= 5:
        problems.append(f"{len(axes)} axes (need 2-5)")
    if len({a.get("name") for a in axes}) != len(axes):
        problems.append("axis names are not unique")
    types = [a.get("type") for a in axes]
    if any(t not in AXIS_TYPES for t in types):
        problems.append(f"unknown axis types {types}")
    n_space = types.count("space")
    if n_space not in (2, 3) or types[-n_space:] != ["space"] * n_space:
        problems.append(f"space axes must be 2 or 3 and last, got {types}")
    if any(a.get("unit") not in SPACE_UNITS for a in axes if a.get("type") == "space"):
        problems.append("a space axis has no valid unit")
    datasets = multiscales[0].get("datasets", [])
    if not datasets:
        problems.append("no datasets")
    previous = None
    for dataset in datasets:
        array_json = os.path.join(image_path, dataset.get("path", ""), "zarr.json")
        if not os.path.exists(array_json):
            problems.append(f"dataset {dataset.get('path')!r} is not an array")
            continue
        with open(array_json) as handle:
            array_meta = json.load(handle)
        if array_meta.get("node_type") != "array" or len(array_meta["shape"]) != len(axes):
            problems.append(f"dataset {dataset['path']} rank differs from the axes")
        transforms = dataset.get("coordinateTransformations", [])
        kinds = [t.get("type") for t in transforms]
        if kinds not in (["scale"], ["scale", "translation"]):
            problems.append(f"{dataset['path']}: transformations {kinds}, need scale then optional translation")
            continue
        if any(len(t.get(t["type"], [])) != len(axes) for t in transforms):
            problems.append(f"{dataset['path']}: transformation length differs from the number of axes")
        scale = transforms[0]["scale"]
        if previous is not None and any(s < p for s, p in zip(scale, previous)):
            problems.append(f"{dataset['path']}: scale {scale} is finer than the previous level {previous}")
        previous = scale
    return problems


def test_downsample_rules_on_hand_made_windows():
    labels = np.array([[[1, 1, 2, 3, 7],
                        [5, 1, 2, 3, 7],
                        [4, 4, 9, 9, 8]]], np.uint64)
    np.testing.assert_array_equal(downsample_xy(labels, "mode"), [[[1, 2, 7], [4, 9, 8]]])
    np.testing.assert_array_equal(downsample_xy(labels, "nearest"), [[[1, 2, 7], [4, 9, 8]]])
    tie = np.array([[[3, 5], [5, 3]]], np.uint32)  # 2-2 tie: the value met first in (y, x) order
    assert downsample_xy(tie, "mode")[0, 0, 0] == 3
    grey = np.array([[[0, 10, 255], [20, 31, 255], [100, 100, 0]]], np.uint8)
    np.testing.assert_array_equal(downsample_xy(grey, "mean"), [[[15, 255], [100, 0]]])  # partial windows: valid voxels only


def test_default_method_separates_labels_from_grey_values():
    assert default_method("raw", np.uint8) == "mean"
    assert default_method("affinities", np.float16) == "mean"
    assert default_method("segmentation", np.uint8) == "mode"
    assert default_method("anything", np.uint64) == "mode"


def _whole_pyramid(data, method, levels):
    out = [data]
    for _ in range(levels):
        out.append(downsample_xy(out[-1], method))
    return out


@pytest.mark.parametrize("name, dtype, shape, method", [
    ("labels", np.uint64, (5, 37, 50), "mode"),
    ("raw", np.uint8, (5, 37, 50), "mean"),
    ("affinities", np.float16, (3, 4, 37, 50), "mean"),
])
def test_blockwise_levels_equal_whole_volume_and_metadata_validates(tmp_path, name, dtype, shape, method):
    rng = np.random.default_rng(0)
    data = (rng.integers(0, 6, shape) if dtype != np.float16 else rng.random(shape)).astype(dtype)
    location = str(tmp_path / "v.zarr" / name)
    chunks = (2, 16, 16) if len(shape) == 3 else (3, 2, 16, 16)
    create_volume(location, shape, dtype, chunks=chunks, voxel_size=(30, 6, 6), offset=(60, 12, 18))[:] = data
    assert build_pyramid(location, levels=3) == ["s1", "s2", "s3"]
    expected = _whole_pyramid(data, method, 3)
    image = tmp_path / "v.zarr" / name
    group = zarr.open_group(str(image), mode="r")
    for level in range(1, 4):
        np.testing.assert_array_equal(group[f"s{level}"][:], expected[level])
    assert validate_ome_zarr_05(str(image)) == []
    multiscale = dict(group.attrs)["ome"]["multiscales"][0]
    assert multiscale["type"] == method
    s2 = multiscale["datasets"][2]["coordinateTransformations"]
    lead = [1.0] * (len(shape) - 3)
    assert s2[0]["scale"] == lead + [30.0, 24.0, 24.0]
    assert s2[1]["translation"] == [0.0] * len(lead) + [60.0, 12 + 1.5 * 6, 18 + 1.5 * 6]  # (4 - 1) / 2 s0 voxels
    assert open_volume(location).voxel_size == (30.0, 6.0, 6.0)  # s0 stays the full-resolution level


def test_nearest_keeps_translation_and_validator_catches_errors(tmp_path):
    location = str(tmp_path / "v.zarr" / "segmentation")
    create_volume(location, (2, 8, 8), np.uint32, chunks=(2, 8, 8), voxel_size=(30, 6, 6), offset=(0, 6, 6))
    build_pyramid(location, levels=1, method="nearest")
    group = zarr.open_group(location, mode="r+")
    ome = dict(group.attrs)["ome"]
    assert ome["multiscales"][0]["datasets"][1]["coordinateTransformations"][1]["translation"] == [0.0, 6.0, 6.0]
    ome["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"] = [30.0, 3.0]
    group.attrs["ome"] = ome
    problems = validate_ome_zarr_05(location)
    assert any("length" in p for p in problems) and any("finer" in p for p in problems)


@pytest.mark.parametrize(("shape", "expected"), [((2, 1, 1), 0), ((2, 1, 2), 1), ((2, 8, 8), 3), ((2, 9, 3), 4),
                                                 ((3, 2, 100, 64), 7)])
def test_max_levels_stops_at_one_by_one_sections(shape, expected):
    assert max_levels(shape) == expected
    if expected:
        n = max(shape[-2:])
        assert -(-n // 2 ** expected) == 1 < -(-n // 2 ** (expected - 1))


def test_existing_levels_and_bad_input_are_refused(tmp_path, capsys):
    location = str(tmp_path / "v.zarr" / "raw")
    create_volume(location, (2, 8, 8), np.uint8, chunks=(2, 8, 8))
    assert export_main(["pyramid", location, "--levels", "2"]) == 0
    assert export_main(["pyramid", location, "--levels", "1"]) == 2
    assert "already has levels s1, s2" in capsys.readouterr().err
    assert export_main(["pyramid", location, "--levels", "1", "--overwrite"]) == 0
    assert sorted(n for n, _ in zarr.open_group(location, mode="r").arrays()) == ["s0", "s1"]
    assert validate_ome_zarr_05(location) == []
    with pytest.raises(PyramidError, match="unknown method"):
        build_pyramid(location, method="median", overwrite=True)
    with pytest.raises(SystemExit):
        export_main(["pyramid", location, "--levels", "0"])
    with pytest.raises(PyramidError, match="more than the 3 levels .* pass --levels 3 or fewer"):
        build_pyramid(location, levels=4, overwrite=True)
    create_volume(str(tmp_path / "v.zarr" / "dot"), (2, 1, 1), np.uint8, chunks=(2, 1, 1))
    with pytest.raises(PyramidError, match="1x1 in y and x: there is nothing to downsample"):
        build_pyramid(str(tmp_path / "v.zarr" / "dot"), levels=1)
    assert sorted(n for n, _ in zarr.open_group(location, mode="r").arrays()) == ["s0", "s1"]
    zarr.open_group(str(tmp_path / "v.zarr"), mode="a").create_array("plain", shape=(2, 8, 8), dtype="uint8")
    with pytest.raises(PyramidError, match="no OME-Zarr 0.5 multiscales"):
        build_pyramid(str(tmp_path / "v.zarr" / "plain"))
