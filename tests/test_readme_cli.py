"""The README documents every command-line option of every entry point (its subcommands included)."""

from __future__ import annotations

import argparse
import importlib
import os
import re
from typing import Iterator

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Modules whose ``_parser()`` builds the command line of ``python -m MODULE``.
ENTRY_POINTS = ("pipeline.data", "pipeline.predict", "pipeline.segment", "pipeline.evaluate", "pipeline.view",
                "pipeline.run", "pipeline.slurm", "pipeline.demo", "corrseg3d.train")


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
    with open(os.path.join(REPO, "README.md")) as handle:
        code = " ".join(re.findall(r"`[^`]*`", handle.read()))
    return set(re.findall(r"--[a-z0-9][a-z0-9-]*", code))


@pytest.mark.parametrize(("command", "parser"), list(_parsers()), ids=lambda value: getattr(value, "prog", value))
def test_every_option_is_in_the_readme(command, parser, documented):
    missing = [f"{where} {flag}" for where, flag in _long_options(parser, command) if flag not in documented]
    assert not missing, f"options missing from README.md: {', '.join(missing)}"


def test_options_are_found_in_subcommands():
    """The walk reaches subcommand options (so a subcommand cannot hide an undocumented one)."""
    options = dict(_parsers())
    assert ("pipeline.slurm submit", "--max-array") in set(_long_options(options["pipeline.slurm"], "pipeline.slurm"))
