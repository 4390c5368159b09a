"""Stage options: one dataclass per stage is the YAML section, the command-line options and the Python API.

A stage's options class (:class:`pipeline.predict.PredictOptions`,
:class:`pipeline.segment.SegmentOptions`, :class:`pipeline.evaluate.EvaluateOptions`) declares
every field with :func:`option`: its default, help text and, for tuples, an example. From that
one declaration

* the run configuration (:mod:`pipeline.runconfig`) uses the class as its YAML section, so the key
  is the field name (``segment: {min_size: 300}``);
* :func:`add_options` adds one command-line option per field, named after the field with dashes
  (``--min-size``); a boolean that defaults to true is switched off with ``--no-NAME``;
* :func:`options_from_args` builds the options back from the parsed arguments.

Old spellings keep working for one release with a warning: :func:`deprecated_flag` on the
command line, :func:`rename_deprecated_keys` in YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
import warnings
from typing import Any, Callable, Literal, Mapping, TypeVar

from .data import parse_numbers

T = TypeVar("T")


def option(default: Any, help: str, *, example: str | None = None, metavar: str | None = None,
           parse: Callable[[str], Any] | None = None, show: Callable[[Any], str] | None = None) -> Any:
    """A dataclass field of a stage's options: ``default``, ``help`` text (the default is appended),
    ``example`` (``"32,256,256"``) shown when a tuple option does not parse; ``parse`` reads the
    command-line text where the type alone does not say how (``"0,5"`` or ``"none"`` for a label
    list) and ``show`` writes the default back in that form."""
    return dataclasses.field(default=default, metadata={"help": help, "example": example, "metavar": metavar,
                                                        "parse": parse, "show": show})


def flag_name(name: str) -> str:
    """The command-line option of field ``name``: ``min_size`` -> ``--min-size``."""
    return "--" + name.replace("_", "-")


def value_type(hint: Any) -> Any:
    """The type of a field without ``None`` (``int | None`` -> ``int``)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _usage_errors(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` with its ValueError message shown by argparse (instead of "invalid ... value")."""

    def checked(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return checked


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of the options dataclass ``cls`` to ``parser`` (see module docstring)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = value_type(hints[field.name])
        text = field.metadata["help"]
        if kind is bool:
            if field.default:
                parser.add_argument("--no-" + field.name.replace("_", "-"), dest=field.name, action="store_false",
                                    help=f"switch off (on by default): {text}")
            else:
                parser.add_argument(flag_name(field.name), dest=field.name, action="store_true", help=text)
            continue
        arguments: dict[str, Any] = {"dest": field.name, "default": field.default,
                                     "help": text + ("" if field.default is None else " (default %(default)s)")}
        if field.metadata["parse"] is not None:
            arguments["type"] = _usage_errors(field.metadata["parse"])
            arguments["metavar"] = field.metadata["metavar"]
            arguments["help"] = text + f" (default {field.metadata['show'](field.default)})"
        elif typing.get_origin(kind) is Literal:
            arguments["choices"] = typing.get_args(kind)
        elif typing.get_origin(kind) is tuple:
            items = typing.get_args(kind)
            arguments["type"] = parse_numbers(items[0], len(items), field.metadata["example"])
            arguments["metavar"] = field.metadata["metavar"] or "Z,Y,X"
            if field.default is not None:
                arguments["help"] = text + f" (default {','.join(f'{v:g}' for v in field.default)})"
        else:
            arguments["type"] = kind
            if field.metadata["metavar"]:
                arguments["metavar"] = field.metadata["metavar"]
        parser.add_argument(flag_name(field.name), **arguments)


def options_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The options dataclass ``cls`` from arguments parsed with :func:`add_options`."""
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def deprecated_flag(parser: argparse.ArgumentParser, old: str, new: str, **arguments: Any) -> None:
    """Accept the old option ``old`` as ``new`` (same destination) with a one-line warning; hidden from --help."""

    class Deprecated(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            warnings.warn(f"{old} is deprecated and will be removed in the next release: use {new}", FutureWarning,
                          stacklevel=2)
            setattr(namespace, self.dest, values)

    parser.add_argument(old, dest=new.lstrip("-").replace("-", "_"), action=Deprecated, help=argparse.SUPPRESS,
                        **arguments)


def rename_deprecated_keys(values: Mapping[str, Any], renames: Mapping[str, str], where: str) -> dict[str, Any]:
    """``values`` with the old keys of ``renames`` (old -> new) renamed, warning once per key.

    Raises
    ------
    ValueError
        When both the old and the new key are given. A new key set to null (as a default
        configuration written by ``--print-default-config`` has it) gives way to the old one.
    """
    result = dict(values)
    for old, new in renames.items():
        if old not in result:
            continue
        if result.get(new) is not None:
            raise ValueError(f"{where}.{old} and {where}.{new} are the same setting: keep only {where}.{new}")
        warnings.warn(f"{where}.{old} is deprecated and will be removed in the next release: use {where}.{new}",
                      FutureWarning, stacklevel=2)
        result[new] = result.pop(old)
    return result

