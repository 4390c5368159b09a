"""Storage layer: locations, OME-Zarr metadata, zarr v2 reading, precomputed, alignment checks."""

import json
import shlex
import subprocess
import sys

import numpy as np
import pytest
import zarr

from emcore.store import (StoreError, check_write_alignment, create_volume, is_dataset, member_names, open_volume,
                          parent_group, remove_volume, split_location)
from emcore.writing import being_written, check_whole, removed_on_error


def test_split_location():
    assert split_location("/a/b/vol.zarr/raw") == ("/a/b/vol.zarr", "raw")
    assert split_location("/a/vol.zarr/") == ("/a/vol.zarr", "")
    assert split_location("vol.zarr/ac4/train/raw") == ("vol.zarr", "ac4/train/raw")
    with pytest.raises(StoreError, match="not a zarr location"):
        split_location("/nonexistent/volume.h5")


def test_create_open_round_trip_with_ome_metadata(tmp_path):
    location = str(tmp_path / "vol.zarr" / "raw")
    volume = create_volume(location, (10, 40, 56), "uint8", chunks=(5, 32, 32),
                           voxel_size=(30, 6, 6), offset=(60, 12, 0), attrs={"note": "x"})
    data = np.random.default_rng(0).integers(0, 255, (10, 40, 56), dtype=np.uint8)
    volume[:] = data
    by_path = open_volume(location)
    by_dataset = open_volume(str(tmp_path / "vol.zarr"), dataset="raw")
    for opened in (by_path, by_dataset):
        np.testing.assert_array_equal(opened[:], data)
        assert opened.voxel_size == (30.0, 6.0, 6.0)
        assert opened.offset == (60.0, 12.0, 0.0)
        assert opened.axis_names == ("z", "y", "x")
        assert opened.attrs["note"] == "x"
    meta = json.loads((tmp_path / "vol.zarr" / "raw" / "zarr.json").read_text())["attributes"]["ome"]
    assert meta["version"] == "0.5"
    multiscale = meta["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert all(a["type"] == "space" and a["unit"] == "nanometer" for a in multiscale["axes"])
    assert multiscale["datasets"][0]["path"] == "s0"
    assert multiscale["datasets"][0]["coordinateTransformations"][0] == {"type": "scale", "scale": [30.0, 6.0, 6.0]}


def test_channel_axis_and_shards(tmp_path):
    location = str(tmp_path / "vol.zarr" / "affinities")
    volume = create_volume(location, (12, 8, 64, 64), "uint8", chunks=(12, 4, 32, 32), shards=(12, 8, 64, 64))
    assert volume.axis_names == ("c", "z", "y", "x")
    assert volume.write_granule == (12, 8, 64, 64)
    check_write_alignment(volume, (8, 64, 64))
    with pytest.raises(StoreError, match="not aligned"):
        check_write_alignment(volume, (4, 32, 32))


def test_alignment_allows_short_last_block(tmp_path):
    volume = create_volume(str(tmp_path / "v.zarr" / "seg"), (10, 40, 40), "uint64", chunks=(4, 16, 16))
    check_write_alignment(volume, (8, 32, 32))
    check_write_alignment(volume, (16, 48, 48))  # one block covers the whole axis
    with pytest.raises(StoreError):
        check_write_alignment(volume, (6, 32, 32))


def test_reads_plain_zarr_v2_array_with_funlib_attributes(tmp_path):
    path = str(tmp_path / "old.zarr")
    group = zarr.open_group(path, mode="w", zarr_format=2)
    array = group.create_array("raw", shape=(4, 8, 8), chunks=(2, 8, 8), dtype="uint8")
    array[:] = 3
    array.attrs.update({"voxel_size": [40, 4, 4], "offset": [0, 8, 8]})
    volume = open_volume(path + "/raw")
    assert volume.voxel_size == (40.0, 4.0, 4.0)
    assert volume.offset == (0.0, 8.0, 8.0)
    assert int(volume[0, 0, 0]) == 3


def test_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_volume(str(tmp_path / "missing.zarr/raw"))
    create_volume(str(tmp_path / "v.zarr" / "raw"), (2, 16, 16), "uint8", chunks=(2, 16, 16))
    with pytest.raises(StoreError, match=r"dataset 'labels' not found .*has: raw"):
        open_volume(str(tmp_path / "v.zarr"), dataset="labels")
    with pytest.raises(StoreError, match="is a group"):
        open_volume(str(tmp_path / "v.zarr"))
    with pytest.raises(StoreError, match="already exists"):
        create_volume(str(tmp_path / "v.zarr" / "raw"), (2, 16, 16), "uint8", chunks=(2, 16, 16))
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(StoreError, match="not a readable zarr store"):
        open_volume(str(tmp_path / "plain.zarr"), dataset="raw")
    with pytest.raises(StoreError, match=r"shape .* must be"):
        create_volume(str(tmp_path / "v.zarr" / "bad"), (16, 16), "uint8", chunks=(16, 16))
    flat = zarr.open_group(str(tmp_path / "v.zarr"), mode="a").create_array("flat", shape=(16, 16), dtype="uint8")
    flat.attrs["voxel_size"] = [30, 6, 6]
    with pytest.raises(StoreError, match=r"has shape \(16, 16\) but a \(z, y, x\) voxel size.*one slice of shape \(1, y, x\)"):
        open_volume(str(tmp_path / "v.zarr" / "flat"))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_an_array_without_a_root_group_is_refused_naming_the_line_that_adds_it(tmp_path, monkeypatch, zarr_format):
    """Arrays written straight to vol.zarr/raw by another tool: the error's one-line fix makes it readable."""
    monkeypatch.chdir(tmp_path)
    zarr.create_array("v.zarr/raw", shape=(2, 16, 16), dtype="uint8", chunks=(2, 16, 16), zarr_format=zarr_format)
    with pytest.raises(StoreError, match="has no root group metadata") as error:
        open_volume("v.zarr/raw")
    command = shlex.split(str(error.value).split("add it with ")[1])
    assert command[:2] == ["python", "-c"] and f"zarr_format={zarr_format}" in command[2]
    subprocess.run([sys.executable, "-c", command[2]], check=True)
    assert open_volume("v.zarr/raw").shape == (2, 16, 16)


@pytest.mark.parametrize(("voxel_size", "offset"), [((0, 6, 6), (0, 0, 0)), ((float("nan"), 6, 6), (0, 0, 0)),
                                                    ((30, float("inf"), 6), (0, 0, 0)), ((6, 6), (0, 0, 0)),
                                                    ((30, 6, 6), (float("nan"), 0, 0))])
def test_invalid_voxel_size_or_offset_is_refused_on_create_and_on_open(tmp_path, voxel_size, offset):
    """Neither a zarr attribute nor an OME-Zarr scale may state a size that is not finite and positive."""
    with pytest.raises(StoreError, match="cannot create .* with a"):
        create_volume(str(tmp_path / "v.zarr" / "raw"), (2, 16, 16), "uint8", chunks=(2, 16, 16),
                      voxel_size=voxel_size, offset=offset)
    assert not (tmp_path / "v.zarr").exists()
    plain = zarr.open_group(str(tmp_path / "p.zarr"), mode="w").create_array("raw", data=np.zeros((2, 16, 16), "u1"))
    plain.attrs.update({"voxel_size": list(voxel_size), "offset": list(offset)})
    ome = create_volume(str(tmp_path / "o.zarr" / "raw"), (2, 16, 16), "uint8", chunks=(2, 16, 16))
    group = zarr.open_group(str(tmp_path / "o.zarr" / "raw"), mode="r+")
    multiscales = group.attrs["ome"]["multiscales"]
    multiscales[0]["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": list(voxel_size)},
                                                                  {"type": "translation", "translation": list(offset)}]
    group.attrs["ome"] = {**group.attrs["ome"], "multiscales": multiscales}
    assert ome.voxel_size == (1.0, 1.0, 1.0)
    for location in (tmp_path / "p.zarr" / "raw", tmp_path / "o.zarr" / "raw"):
        with pytest.raises(StoreError, match=r"states an? .*(correct its voxel_size / offset attribute|entries)"):
            open_volume(str(location))


@pytest.mark.parametrize(("location", "group"), [("vol.zarr/raw", "vol.zarr"), ("vol.zarr/g/raw", "vol.zarr/g"),
                                                ("vol.zarr/raw/s0", "vol.zarr"), ("vol.zarr/g/raw/s0", "vol.zarr/g")])
def test_parent_group_of_a_dataset_and_of_an_images_s0(location, group):
    assert parent_group(location) == group


def test_run_state_folder_is_listed_without_a_warning(tmp_path, recwarn):
    create_volume(str(tmp_path / "v.zarr" / "raw"), (2, 16, 16), "uint8", chunks=(2, 16, 16))
    (tmp_path / "v.zarr" / ".corrseg3d" / "predict" / "affinities").mkdir(parents=True)
    (tmp_path / "v.zarr" / ".corrseg3d" / "predict" / "affinities" / "config.json").write_text("{}")
    assert member_names(zarr.open_group(str(tmp_path / "v.zarr"), mode="r")) == ["raw"]
    for dataset in ("labels", ""):
        with pytest.raises(StoreError, match=r"has: raw\b"):
            open_volume(str(tmp_path / "v.zarr"), dataset=dataset or None)
    assert not [w for w in recwarn if "not recognized" in str(w.message)]


def test_a_dataset_inside_a_group_of_datasets(tmp_path):
    """``dataset`` names a dataset of the group the location names, the store root or ``vol.zarr/G``."""
    create_volume(str(tmp_path / "v.zarr" / "g" / "labels"), (2, 16, 16), "uint64", chunks=(2, 16, 16))[:] = 7
    for location in ("v.zarr", "v.zarr/g"):
        dataset = "g/labels" if location == "v.zarr" else "labels"
        volume = open_volume(str(tmp_path / location), dataset=dataset)
        assert volume.location == str(tmp_path / "v.zarr" / "g" / "labels") and int(volume[0, 0, 0]) == 7
    with pytest.raises(StoreError, match=r"dataset 'raw' not found in .*v.zarr/g \(has: labels\)"):
        open_volume(str(tmp_path / "v.zarr" / "g"), dataset="raw")
    with pytest.raises(StoreError, match="is a group, not an array"):
        open_volume(str(tmp_path / "v.zarr" / "g"))


def test_removed_on_error_marks_the_datasets_while_it_writes(tmp_path):
    """A marker per dataset while the body runs; gone after success and after a failure, so only a
    process killed outright leaves one (tests/test_bad_input.py kills one)."""
    locations = [str(tmp_path / "v.zarr" / "raw"), str(tmp_path / "v.zarr" / "g" / "labels")]
    with removed_on_error(locations):
        assert all(map(being_written, locations))
        with pytest.raises(StoreError, match="is incomplete: the command writing it is still running or was killed"):
            check_whole(locations[1])
        for location in locations:
            create_volume(location, (2, 16, 16), "uint8", chunks=(2, 16, 16))
    assert not any(map(being_written, locations)) and not (tmp_path / "v.zarr" / ".corrseg3d").exists()
    for location in locations:
        check_whole(location)
    with pytest.raises(RuntimeError), removed_on_error([str(tmp_path / "w.zarr" / "raw")]):
        create_volume(str(tmp_path / "w.zarr" / "raw"), (2, 16, 16), "uint8", chunks=(2, 16, 16))
        raise RuntimeError("generation failed")
    assert not (tmp_path / "w.zarr").exists()
    sloppy = str(tmp_path / "v.zarr") + "//./extra"  # a typed path with empty parts keeps its marker in the store
    with removed_on_error([sloppy]):
        assert (tmp_path / "v.zarr" / ".corrseg3d" / "writing" / "extra").exists() and being_written(sloppy)


def test_a_clean_up_cut_short_keeps_the_marker(tmp_path, monkeypatch):
    """A second Ctrl-C during the clean-up of a failed write: the dataset stays marked incomplete."""
    location = str(tmp_path / "v.zarr" / "raw")
    create_volume(str(tmp_path / "v.zarr" / "labels"), (2, 16, 16), "uint8", chunks=(2, 16, 16))

    def interrupted(paths):
        raise KeyboardInterrupt

    monkeypatch.setattr("emcore.writing._removed_for_good", interrupted)
    with pytest.raises(KeyboardInterrupt), removed_on_error([location]):
        create_volume(location, (2, 16, 16), "uint8", chunks=(2, 16, 16))
        raise RuntimeError("generation failed")
    assert being_written(location)


def test_overwrite_and_remove(tmp_path):
    location = str(tmp_path / "v.zarr" / "seg")
    create_volume(location, (2, 16, 16), "uint64", chunks=(2, 16, 16))[:] = 5
    fresh = create_volume(location, (2, 16, 16), "uint64", chunks=(2, 16, 16), overwrite=True)
    assert int(fresh[:].max()) == 0
    remove_volume(location)
    with pytest.raises(StoreError):
        open_volume(location)


def test_precomputed_round_trip_matches_zarr_indexing(tmp_path):
    labels = np.random.default_rng(1).integers(0, 2**40, (6, 24, 40), dtype=np.uint64)
    location = f"precomputed://file://{tmp_path}/seg"
    volume = create_volume(location, labels.shape, "uint64", chunks=(3, 8, 8), voxel_size=(30, 6, 6),
                           offset=(30, 12, 6))
    volume[:] = labels
    opened = open_volume(location)
    assert opened.shape == labels.shape
    assert opened.voxel_size == (30.0, 6.0, 6.0)
    assert opened.offset == (30.0, 12.0, 6.0)
    np.testing.assert_array_equal(opened[:], labels)
    np.testing.assert_array_equal(opened[1:4, 5:20, 3:33], labels[1:4, 5:20, 3:33])
    with pytest.raises(StoreError, match="already exists"):
        create_volume(location, labels.shape, "uint64", chunks=(3, 8, 8))


def test_precomputed_multichannel_image(tmp_path):
    affinities = np.random.default_rng(2).integers(0, 255, (3, 4, 16, 16), dtype=np.uint8)
    location = f"precomputed://file://{tmp_path}/affs"
    volume = create_volume(location, affinities.shape, "uint8", chunks=(3, 4, 16, 16))
    volume[:] = affinities
    np.testing.assert_array_equal(open_volume(location)[:], affinities)
    assert open_volume(location).axis_names == ("c", "z", "y", "x")


def test_to_dask_matches_storage_chunks(tmp_path):
    volume = create_volume(str(tmp_path / "v.zarr" / "raw"), (6, 40, 40), "uint8", chunks=(3, 16, 16))
    volume[:] = 1
    array = volume.to_dask()
    assert array.chunks[0] == (3, 3)
    assert int(array.sum().compute()) == 6 * 40 * 40


def test_is_dataset_reads_only_the_node_type(tmp_path):
    root = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
    root.create_array("plain", shape=(2, 2, 2), dtype="uint8")
    bad = root.create_array("bad_voxel_size", shape=(2, 2, 2), dtype="uint8")
    bad.attrs["voxel_size"] = [0, 1, 1]  # open_volume refuses it; it is a dataset all the same
    root.create_group("image").attrs["multiscales"] = [{"datasets": []}]  # malformed OME: still an image
    root.create_group("group")
    found = {name: is_dataset(str(tmp_path / "v.zarr" / name))
             for name in ("plain", "bad_voxel_size", "image", "group", "missing")}
    assert found == {"plain": True, "bad_voxel_size": True, "image": True, "group": False, "missing": False}
    assert not is_dataset(str(tmp_path / "none.zarr" / "x"))
