"""The README's reference is complete: every command-line option of every entry point (its
subcommands included) and every key of the training configuration."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
from typing import Iterator

import pytest

from corrseg3d.config import Config, SourceConfig, ValidVolumeConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Modules whose ``_parser()`` builds the command line of ``python -m MODULE``.
ENTRY_POINTS = ("pipeline.data", "pipeline.predict", "pipeline.segment", "pipeline.evaluate", "pipeline.view",
                "pipeline.run", "pipeline.slurm", "pipeline.demo", "corrseg3d.train")


def _readme() -> str:
    with open(os.path.join(REPO, "README.md")) as handle:
        return handle.read()


def _long_options(parser: argparse.ArgumentParser, command: str) -> Iterator[tuple[str, str]]:
    """(command, ``--option``) of every visible long option, walking into subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from _long_options(subparser, f"{command} {name}")
        elif action.help != argparse.SUPPRESS:
            yield from ((command, flag) for flag in action.option_strings if flag.startswith("--") and flag != "--help")


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for module in ENTRY_POINTS:
        yield module, importlib.import_module(module)._parser()
    export = importlib.import_module("pipeline.export")
    yield "pipeline.export", export._precomputed_parser()
    yield "pipeline.export", export._subcommand_parser()


@pytest.fixture(scope="module")
def documented() -> set[str]:
    """Every ``--option`` written inside a code span or block of the README."""
    code = " ".join(re.findall(r"`[^`]*`", _readme()))
    return set(re.findall(r"--[a-z0-9][a-z0-9-]*", code))


@pytest.mark.parametrize(("command", "parser"), list(_parsers()), ids=lambda value: getattr(value, "prog", value))
def test_every_option_is_in_the_readme(command, parser, documented):
    missing = [f"{where} {flag}" for where, flag in _long_options(parser, command) if flag not in documented]
    assert not missing, f"options missing from README.md: {', '.join(missing)}"


def test_options_are_found_in_subcommands():
    """The walk reaches subcommand options (so a subcommand cannot hide an undocumented one)."""
    slurm = importlib.import_module("pipeline.slurm")._parser()
    assert ("pipeline.slurm submit", "--max-array") in set(_long_options(slurm, "pipeline.slurm"))


def _config_sections() -> Iterator[tuple[str, type]]:
    """(README table row, dataclass) of every section of :class:`corrseg3d.config.Config` and of the
    list entries that the ``data`` and ``validation`` rows describe."""
    defaults = Config()
    for field in dataclasses.fields(Config):
        yield field.name, type(getattr(defaults, field.name))
    yield "data", SourceConfig
    yield "validation", ValidVolumeConfig


def _row_keys(row: str) -> set[str]:
    """Keys a config table row names: the first word of each code span (`` `patch [18,160,160]` ``)
    and each entry of a ``{key, key [start, stop]}`` list."""
    spans = re.findall(r"`([^`]*)`", row)
    keys = {re.split(r"[ (]", span, maxsplit=1)[0] for span in spans}
    return keys | {entry.split()[0] for span in spans for entry in re.findall(r"[{,] *([^,{}]+)", span)}


@pytest.mark.parametrize(("section", "cls"), list(_config_sections()),
                         ids=lambda value: getattr(value, "__name__", value))
def test_every_config_key_is_in_the_readme(section, cls):
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \|$", _readme(), re.M))
    assert section in rows, f"README.md has no config table row for {section}"
    missing = [field.name for field in dataclasses.fields(cls) if field.name not in _row_keys(rows[section])]
    assert not missing, f"README.md config row {section} lacks {', '.join(missing)}"
