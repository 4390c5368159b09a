"""pipeline.runconfig: a string-typed key keeps the text written, in the YAML file and with --set
(YAML 1.1 would read ``12:00:00`` as the base-60 number 43200 and ``0:99,:,:`` as a mapping); a file
that is not YAML is one error line naming the line and column."""

from __future__ import annotations

import os

import pytest
import yaml

from pipeline.run import main
from pipeline.runconfig import ConfigError, load_run_config, to_dict

BASE = "input: {raw: vol.zarr/raw}\n"


@pytest.mark.parametrize("time", ["12:00:00", "1-12:00:00", "90", "30:00", "04:00:00"])
def test_slurm_time_is_the_text_written_in_the_file_and_with_set(tmp_path, time):
    written = tmp_path / "written.yaml"
    written.write_text(f"{BASE}slurm:\n  time: {time}\n")
    config = load_run_config(written)
    assert config.slurm.time == time
    assert load_run_config(written, [f"slurm.time={time}"]).slurm.time == time
    saved = tmp_path / "saved.yaml"  # what pipeline.slurm submit writes for its array tasks
    saved.write_text(yaml.safe_dump(to_dict(config)))
    assert load_run_config(saved).slurm.time == time


def test_string_keys_keep_numbers_as_written_and_null_clears_an_optional_one(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"{BASE}slurm: {{account: 12345, partition: null, extra: [--qos=long, 1:00]}}\n"
                    "segment: {min_size: 500}\n")
    config = load_run_config(path)
    assert (config.slurm.account, config.slurm.partition, config.slurm.extra) == ("12345", None, ["--qos=long", "1:00"])
    assert config.segment.min_size == 500


def test_set_takes_a_string_value_as_given(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"{BASE}evaluate: {{gt: gt.zarr, mask: mask.zarr}}\nslurm: {{setup: [a, b]}}\n")
    config = load_run_config(path, ["evaluate.roi=0:99,:,:", "evaluate.mask=null", "slurm.account=007",
                                    "slurm.setup.1=sleep 1:00", "slurm.extra=[--qos=long]", "segment.min_size=5",
                                    "predict.block=[8,32,32]"])
    assert (config.evaluate.roi, config.evaluate.mask, config.slurm.account) == ("0:99,:,:", None, "007")
    assert (config.slurm.setup, config.slurm.extra) == (["a", "sleep 1:00"], ["--qos=long"])
    assert (config.segment.min_size, config.predict.block) == (5, (8, 32, 32))


def test_number_tuples_take_the_command_line_text_too(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"{BASE}segment:\n  block: 16,128,128\n")
    config = load_run_config(path, ["predict.block=8,32,32", "predict.voxel_size=30,6.5,6"])
    assert (config.segment.block, config.predict.block) == ((16, 128, 128), (8, 32, 32))
    assert config.predict.voxel_size == (30.0, 6.5, 6.0)
    with pytest.raises(ConfigError, match="predict.block: expected comma-separated numbers or a list, got '8,x,32'"):
        load_run_config(path, ["predict.block=8,x,32"])


@pytest.mark.parametrize("written, labels", [("none", ()), ("'0,5'", (0, 5)), ("[0, 5]", (0, 5)), ("[]", ())])
def test_ignore_labels_read_as_on_the_command_line_or_as_a_list(tmp_path, written, labels):
    """``evaluate.ignore_gt`` / ``ignore_seg`` take ``--ignore-gt``'s text (comma-separated or none) or a list."""
    path = tmp_path / "run.yaml"
    path.write_text(f"{BASE}evaluate: {{gt: gt.zarr, ignore_gt: {written}}}\n")
    assert load_run_config(path).evaluate.ignore_gt == labels
    assert load_run_config(path, [f"evaluate.ignore_seg={written}"]).evaluate.ignore_seg == labels


def test_null_for_a_required_string_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(BASE)
    with pytest.raises(ConfigError, match="slurm.time: expected str"):
        load_run_config(path, ["slurm.time=null"])


def test_unquoted_roi_is_one_error_naming_line_column_and_quotes(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(f"{BASE}evaluate:\n  gt: gt.zarr\n  roi: 0:8,:,:\n")
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "not valid YAML at line 4, column 14: mapping values are not allowed here" in err
    assert 'in quotes, e.g. roi: "0:8,:,:"' in err
    assert os.listdir(tmp_path) == ["run.yaml"]
    path.write_text(f'{BASE}evaluate:\n  gt: gt.zarr\n  roi: "0:8,:,:"\n')
    assert load_run_config(path).evaluate.roi == "0:8,:,:"


@pytest.mark.parametrize(("raw", "store"), [("vol.zarr/raw", "vol.zarr"), ("fib.zarr/gala-test/raw", "fib.zarr/gala-test"),
                                            ("fib.zarr", "fib.zarr/gala-test")])
def test_outputs_default_to_the_group_holding_the_raw_like_predict(tmp_path, raw, store):
    path = tmp_path / "run.yaml"
    path.write_text(f"input: {{raw: {raw}, dataset: gala-test/raw}}\n" if raw == "fib.zarr" else f"input: {{raw: {raw}}}\n")
    config = load_run_config(path)
    assert config.store == str(tmp_path / store)
    assert config.location("affinities") == str(tmp_path / store / "affinities")
    assert config.run_dir == str(tmp_path / store / ".corrseg3d" / "run")


def test_precomputed_input_needs_an_output_store(tmp_path):
    """Affinities, segmentation and run state live in zarr: a precomputed input without output.store
    is refused naming the key, not with advice about zarr input locations."""
    path = tmp_path / "run.yaml"
    path.write_text("input: {raw: 'precomputed://file:///data/ng/raw'}\n")
    with pytest.raises(ConfigError, match=r"precomputed layer.*set output.store"):
        load_run_config(path)
    path.write_text("input: {raw: 'precomputed://file:///data/ng/raw'}\noutput: {store: out.zarr}\n")
    assert load_run_config(path).store == str(tmp_path / "out.zarr")
