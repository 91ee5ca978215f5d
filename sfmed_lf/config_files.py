"""LF-style YAML for the ``sfmed`` steps: a flat mapping of option -> value, validated against a config dataclass,
with ``key=value`` command-line overrides as ``llamafactory-cli`` accepts them.

Every value is checked against the field's type before the config is built (an int where a float is expected is the
one conversion; a string is never a number, a number never a string, a scalar never a list). Unknown keys are errors;
a key a config class lists in ``renamed_options`` is refused with a message naming its replacement.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A YAML config or override names an unknown option or gives a value of the wrong kind."""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value.")
        if key in parsed:
            raise ConfigError(f"override {key} is given twice.")
        try:
            parsed[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem}).") from None
    return parsed


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{source}: cannot read ({error}).") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML ({problem}).") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{source}: expected a mapping of option: value at the top level.")
    return loaded or {}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def type_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` is not of type ``annotation`` (None when it is). Lists, tuples (a JSON or YAML list; fixed
    length unless ``tuple[X, ...]``) and mappings are checked item by item."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        problems = [type_problem(value, arg) for arg in typing.get_args(annotation)]
        return None if None in problems else f"{_shown(value)} is not {field_type_name(annotation)}"
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return None if value in choices else f"{_shown(value)} is not one of {', '.join(map(repr, choices))}"
    if annotation is type(None):
        return None if value is None else "not null"
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return f"{_shown(value)} is not a list"
        item_types = typing.get_args(annotation) or (Any,)
        fixed = origin is tuple and item_types[-1] is not Ellipsis  # tuple[X, Y]: one type per item
        if fixed and len(value) != len(item_types):
            return f"{_shown(value)} is not a list of {len(item_types)}"
        for index, item in enumerate(value):
            problem = type_problem(item, item_types[index] if fixed else item_types[0])
            if problem:
                return f"item {index}: {problem}"
        return None
    if origin is dict:
        if not isinstance(value, dict):
            return f"{_shown(value)} is not a mapping"
        key_type, item_type = typing.get_args(annotation) or (Any, Any)
        for key, item in value.items():
            problem = type_problem(key, key_type) or type_problem(item, item_type)
            if problem:
                return f"item {_shown(key)}: {problem}"
        return None
    if annotation is bool:
        return None if isinstance(value, bool) else f"{_shown(value)} is not true or false"
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{_shown(value)} is not an integer"
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"{_shown(value)} is not a number"
    if annotation is str:
        return None if isinstance(value, str) else f"{_shown(value)} is not text"
    if isinstance(annotation, type) and not isinstance(value, annotation):
        return f"{_shown(value)} is not {annotation.__name__}"
    return None


def field_type_name(annotation: Any) -> str:
    """A short type for help text: ``int``, ``float | None``, ``list[str]``."""
    if isinstance(annotation, str):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(field_type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join("..." if arg is Ellipsis else field_type_name(arg) for arg in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def build_config(cls: type[T], values: dict[str, Any], source: str) -> T:
    """``cls(**values)`` with unknown, renamed and mistyped options refused (errors name ``source`` and the key)."""
    renamed: dict[str, str] = getattr(cls, "renamed_options", {})
    for key in values:
        if key in renamed:
            raise ConfigError(f"{source}: option {key!r} is no longer used: {renamed[key]}")
    fields = {item.name: item for item in dataclasses.fields(cls) if item.init and not item.metadata.get("internal")}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}.")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        problem = type_problem(value, hints.get(key, Any))
        if problem:
            raise ConfigError(f"{source}: option {key}: {problem} (expected {field_type_name(hints[key])}).")
    missing = [
        name
        for name, item in fields.items()
        if name not in values and item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing option(s) {', '.join(missing)}.")
    try:
        config = cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from error
    unused = config.unused_options() if hasattr(config, "unused_options") else {}
    for key, why in unused.items():
        item = fields[key]
        default = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        if key in values and values[key] != default:
            raise ConfigError(f"{source}: option {key} does nothing here: {why}; remove it.")
    return config


def load_config(cls: type[T], path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> T:
    """Build dataclass ``cls`` from a YAML file plus overrides; errors name the file and the option."""
    values: dict[str, Any] = read_yaml(path) if path is not None else {}
    values.update(parse_overrides(overrides or []))
    return build_config(cls, values, os.fspath(path) if path is not None else "command line")
