"""LF-style YAML for the ``sfmed`` subcommands: a flat mapping of option -> value, validated against a dataclass,
with ``key=value`` command-line overrides as ``llamafactory-cli`` accepts them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A YAML config or override names an unknown option or gives a value of the wrong kind."""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value.")
        parsed[key] = yaml.safe_load(value)
    return parsed


def load_config(cls: type[T], path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> T:
    """Build dataclass ``cls`` from a YAML file plus overrides; errors name the file and the option."""
    values: dict[str, Any] = {}
    source = "command line"
    if path is not None:
        source = os.fspath(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{source}: cannot read YAML ({error}).") from error
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping of option: value at the top level.")
        values.update(loaded or {})
    values.update(parse_overrides(overrides or []))
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{source}: {error}") from error
