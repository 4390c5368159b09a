"""Each stage's options class is its YAML section and its command line: every field, one name."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from pipeline import evaluate, predict, segment
from pipeline.evaluate import EvaluateOptions
from pipeline.options import value_type, flag_name, options_from_args
from pipeline.predict import PredictOptions
from pipeline.runconfig import ConfigError, default_config_yaml, load_run_config
from pipeline.segment import SegmentOptions

#: (YAML section, options class, command-line parser, positional arguments)
STAGES = [("predict", PredictOptions, predict._parser, ["vol.zarr"]),
          ("segment", SegmentOptions, segment._parser, ["vol.zarr"]),
          ("evaluate", EvaluateOptions, evaluate._parser, ["seg.zarr", "gt.zarr"])]
#: Example values of string options where any text will not do (paths are made absolute by the run config).
STRINGS = {"checkpoint": "/data/weights.pt", "mask": "/data/mask.zarr", "roi": "0:4,:,:", "device": "cpu"}


def other_value(field: dataclasses.Field, hint: typing.Any) -> typing.Any:
    """A valid value of ``field`` different from its default."""
    kind = value_type(hint)
    if kind is bool:
        return not field.default
    if typing.get_origin(kind) is typing.Literal:
        return next(choice for choice in typing.get_args(kind) if choice != field.default)
    if typing.get_origin(kind) is tuple:
        return tuple(typing.get_args(kind)[0](v) for v in (3, 5, 7))
    if kind is str:
        return STRINGS.get(field.name, "other")
    if kind is int:
        return 2 if field.default != 2 else 3
    if kind is float:
        return 0.75
    raise AssertionError(f"no example value for {field.name}: {hint}")


def command_line(field: dataclasses.Field, value: typing.Any) -> list[str]:
    if isinstance(value, bool):
        return [flag_name(field.name) if value else "--no-" + field.name.replace("_", "-")]
    if isinstance(value, tuple):
        return [flag_name(field.name), ",".join(f"{v:g}" for v in value)]
    return [flag_name(field.name), str(value)]


CASES = [(stage, cls, parser, positional, field) for stage, cls, parser, positional in STAGES
         for field in dataclasses.fields(cls)]


@pytest.mark.parametrize("stage,cls,parser,positional,field", CASES, ids=[f"{c[0]}.{c[4].name}" for c in CASES])
def test_every_option_reachable_from_cli_and_yaml_by_one_name(stage, cls, parser, positional, field, tmp_path):
    value = other_value(field, typing.get_type_hints(cls)[field.name])
    expected = dataclasses.replace(cls(), **{field.name: value})
    assert expected != cls()

    args = parser().parse_args(positional + command_line(field, value))
    assert options_from_args(cls, args) == expected

    config = tmp_path / "run.yaml"
    plain = list(value) if isinstance(value, tuple) else value
    config.write_text(yaml.safe_dump({"input": {"raw": "/data/vol.zarr"}, stage: {field.name: plain}}))
    loaded = getattr(load_run_config(config), stage)
    assert {f.name: getattr(loaded, f.name) for f in dataclasses.fields(cls)} == dataclasses.asdict(expected)


def test_defaults_agree_between_cli_yaml_and_python(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"input": {"raw": "/data/vol.zarr"}}))
    loaded = load_run_config(config)
    for stage, cls, parser, positional in STAGES:
        args = parser().parse_args(positional)
        from_yaml = getattr(loaded, stage)
        assert options_from_args(cls, args) == cls()
        assert {f.name: getattr(from_yaml, f.name) for f in dataclasses.fields(cls)} == dataclasses.asdict(cls())


def test_old_spellings_still_work_with_a_warning(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"input": {"raw": "/data/vol.zarr"}, "segment": {"randomize_seed": 4}}))
    with pytest.warns(FutureWarning, match="segment.randomize_seed is deprecated.*segment.randomize_strides"):
        assert load_run_config(config).segment.randomize_strides == 4
    config.write_text(yaml.safe_dump({"input": {"raw": "/data/vol.zarr"},
                                      "segment": {"randomize_seed": 4, "randomize_strides": 5}}))
    with pytest.raises(ConfigError, match="same setting"):
        load_run_config(config)
    config.write_text(default_config_yaml())
    with pytest.warns(FutureWarning, match="segment.randomize_seed is deprecated"):
        loaded = load_run_config(config, ["input.raw=/data/vol.zarr", "segment.randomize_seed=4"])
    assert loaded.segment.randomize_strides == 4

    with pytest.warns(FutureWarning) as record:
        args = segment._parser().parse_args(["vol.zarr", "--block-shape", "8,64,64", "--num-workers", "3"])
    assert (args.block, args.workers) == ((8, 64, 64), 3)
    assert sorted(str(warning.message).split(" is deprecated")[0] for warning in record) == ["--block-shape",
                                                                                            "--num-workers"]
    assert all(str(warning.message).endswith(("use --block", "use --workers")) for warning in record)
    with pytest.warns(FutureWarning, match="--block-shape is deprecated.*use --block"):
        assert evaluate._parser().parse_args(["s.zarr", "g.zarr", "--block-shape", "8,64,64"]).block == (8, 64, 64)


def test_deprecated_flag_prints_one_warning_line(tmp_path, capsys):
    assert segment.main([str(tmp_path / "missing.zarr"), "--block-shape", "8,64,64", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "warning: --block-shape is deprecated and will be removed in the next release: use --block"
    assert len(err) == 2 and err[1].startswith("error: ")
