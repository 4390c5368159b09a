"""``python -m pipeline.data``: make and ingest input volumes.

Subcommands (each lives in its own module, which provides ``register(subparsers)`` adding a
parser whose ``run`` default takes the parsed arguments):

* ``synth`` -- synthetic EM with dense labels (:mod:`pipeline.synth`);
* ``convert``, ``isbi2012`` -- image stacks and the ISBI 2012 slices (:mod:`pipeline.imagestack`);
* ``fib25`` -- real FIB-SEM volumes with dense 3D labels, optionally every k-th slice (:mod:`pipeline.fib25`);
* ``ac3ac4`` -- the AC3/AC4 release as the paper's train/valid/test splits (:mod:`pipeline.ac3ac4`);
* ``preview`` -- PNG of a few slices with labels overlaid (:mod:`pipeline.preview`).

Add a subcommand by appending its module to :data:`SUBCOMMANDS`. Library errors are
``ValueError`` subclasses; the CLI prints them as ``error: <message>`` and exits with status 2
(:func:`corrseg3d.cli.entry_point`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable, Sequence

from corrseg3d.cli import ArgumentParser, entry_point
from emcore.conventions import finite_positive

__all__ = ["SUBCOMMANDS", "main", "parse_numbers", "refuse_existing", "DataError"]

#: Modules that register a subcommand, in help order.
SUBCOMMANDS = ("pipeline.synth", "pipeline.imagestack", "pipeline.fib25", "pipeline.ac3ac4", "pipeline.preview")


class DataError(ValueError):
    """An output exists or an input cannot be ingested; the message says how to fix it."""


def parse_numbers(kind: Callable[[str], float], count: int, example: str) -> Callable[[str], tuple]:
    """An argparse ``type`` parsing ``count`` comma-separated numbers, e.g. ``64,512,512``."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            values = ()
        if not finite_positive(values, count):
            raise argparse.ArgumentTypeError(f"{text!r} must be {count} finite positive comma-separated numbers, "
                                             f"e.g. {example}")
        return values

    return parse


def refuse_existing(locations: Sequence[str]) -> None:
    """Raise :class:`DataError` if any zarr dataset location already exists (or was left half-written)."""
    from emcore.store import split_location
    from emcore.writing import being_written

    for location in locations:
        root, inner = split_location(location)
        if being_written(location):
            raise DataError(f"{location} is incomplete (the command writing it is still running or was killed): "
                            "pass --overwrite to write it again")
        if os.path.exists(os.path.join(root, inner)):
            raise DataError(f"{location} already exists: pass --overwrite to replace it")


def _parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m pipeline.data", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pipeline.data`` command line; returns the exit status."""
    args = _parser().parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
