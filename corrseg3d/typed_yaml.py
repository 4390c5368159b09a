"""YAML mappings read into typed dataclasses: strict keys, YAML 1.2 numbers, dotted overrides.

The machinery behind the training configuration (:mod:`corrseg3d.config`) and the run
configuration of ``pipeline.run``; the schemas themselves live with their users.

* An unknown key raises :class:`ConfigError` naming the key, its dotted path and the closest
  valid key (``difflib.get_close_matches``).
* A value of the wrong type raises :class:`ConfigError` naming the path, the expected type and
  the value (``int`` is accepted where ``float`` is expected, ``bool`` never counts as a number).
* Command-line overrides ``key.sub=value`` are parsed as YAML scalars (``train.iterations=10``,
  ``loss.ccm=false``, ``model.filters=[8,8,16,16,32]``); an integer path component indexes a list
  (``data.sources.0.weight=2``).
* Numbers follow YAML 1.2 in files and overrides (:class:`ConfigLoader`): ``1e-4`` is a float,
  ``010`` is ten, and ``1:00`` or ``1_000`` are not numbers (YAML 1.1, PyYAML's default, reads them
  as 60, 8 and 1000).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Sequence, Union

import yaml

INT_TAG, FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"

__all__ = ["ConfigError", "ConfigLoader", "build_dataclass", "to_dict", "apply_overrides", "read_yaml_mapping"]


class ConfigError(ValueError):
    """The configuration does not match the schema; the message names the offending path."""


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 (core schema) numbers instead of YAML 1.1's.

    Integers are ``[-+]?[0-9]+`` (decimal, leading zeros allowed), ``0o[0-7]+`` or
    ``0x[0-9a-fA-F]+``; floats are ``[-+]?(.[0-9]+|[0-9]+(.[0-9]*)?)([eE][-+]?[0-9]+)?``,
    ``.inf`` and ``.nan``. So ``1e-4`` is a float and ``010``, ``1:00`` and ``1_000`` are not
    YAML 1.1's octal, base-60 and underscored numbers. Booleans and null are unchanged.
    """

    yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag not in (INT_TAG, FLOAT_TAG)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0) if text.lstrip("+-")[:2].lower() in ("0o", "0x") else int(text, 10)


ConfigLoader.add_implicit_resolver(INT_TAG, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                   list("-+0123456789"))
ConfigLoader.add_implicit_resolver(
    FLOAT_TAG, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                          r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))
ConfigLoader.add_constructor(INT_TAG, _construct_int)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _numbers(text: str, path: str) -> list[int | float]:
    """``"16,128,128"`` -> [16, 128, 128] (ints where they parse as such, else floats)."""
    values: list[int | float] = []
    for part in text.split(","):
        try:
            values.append(int(part))
        except ValueError:
            try:
                values.append(float(part))
            except ValueError:
                raise ConfigError(f"{path}: expected comma-separated numbers or a list, got {text!r}") from None
    return values


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the type annotation ``tp`` and convert it (lists to tuples...); a
    tuple of numbers or of names may also be given as comma-separated text (``"16,128,128"``)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple and isinstance(value, str) and all(a in (int, float, Ellipsis) for a in args):
        value = _numbers(value, path)  # "16,128,128", as the command-line option is written
    if origin is tuple and isinstance(value, str) and args == (str, Ellipsis):
        value = [name.strip() for name in value.split(",") if name.strip()]  # "decoder.3,out"
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list ({_type_name(tp)}), got {value!r}")
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            items = [_convert(v, args[0], f"{path}.{i}") for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values ({_type_name(tp)}), got {value!r}")
            items = [_convert(v, a, f"{path}.{i}") for i, (v, a) in enumerate(zip(value, args))]
        return items if origin is list else tuple(items)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
            raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def build_dataclass(cls: type, values: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, converting and checking every value by its type hint.

    Unknown keys raise :class:`ConfigError` naming the dotted key (prefixed by ``path``) and the
    closest valid one; nested dataclasses, tuples, lists and literals are converted recursively. A
    string given for a field with a ``parse`` function in its metadata (a stage option read from text
    on the command line, e.g. ``ignore_gt: 0,5`` or ``none``) is parsed by it first.
    """
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in values.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {(path + '.' if path else '') + close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown key {where!r}{hint}")
        parse = fields[key].metadata.get("parse")
        if parse is not None and isinstance(value, str):  # a field read from text as on its command line
            try:
                value = parse(value)
            except ValueError as error:
                raise ConfigError(f"{where}: {error}") from None
        kwargs[key] = _convert(value, hints[key], where)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The configuration as plain YAML/JSON-serialisable data (tuples become lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping.

    Intermediate mappings are created as needed; integer components index lists. The result is
    validated later by :func:`from_dict`, so a misspelt key is reported there.
    """
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        *parents, last = key.split(".")
        node: Any = values
        for part in parents:
            if isinstance(node, list):
                node = node[_list_index(node, part, key)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise ConfigError(f"override {item!r}: {part!r} is inside a value that is not a mapping")
        value = yaml.load(text, Loader=ConfigLoader)
        if isinstance(node, list):
            node[_list_index(node, last, key)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {item!r}: {'.'.join(parents)} is not a mapping")
    return values


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {key!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def read_yaml_mapping(path: str | Path, example: str, *,
                      prepare: Callable[[yaml.Node], None] | None = None) -> dict[str, Any]:
    """The top-level mapping of a YAML file.

    Parameters
    ----------
    path
        The YAML file.
    example
        How to get such a file, ending the message when it is missing.
    prepare
        Called with the composed node tree before the values are built (to retag nodes).

    Raises
    ------
    ConfigError
        The file is missing, is not valid YAML (naming the line and column), or its top level is
        not a mapping of sections.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist: {example}")
    loader = None
    try:
        loader = ConfigLoader(path.read_text())
        node = loader.get_single_node()
        if node is not None and prepare is not None:
            prepare(node)
        values: Any = (loader.construct_document(node) if node is not None else None) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        hint = ("; put a value that contains ': ' or ends in ':' in quotes, e.g. roi: \"0:8,:,:\""
                if "mapping values are not allowed" in problem else "")
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}{hint}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return values
