"""Configuration dataclasses from TOML files (shared by ``gossip-node`` and ``gossip-sim``).

A file's values are checked against the dataclass's field types before the dataclass is
built, generically from its type hints: ``int`` (not a bool), ``float`` (an int is fine),
``str``, ``bool``, ``X | None`` (TOML has no null, so: an ``X``), ``Literal[...]``, and
``list[X]`` / ``tuple[X, ...]``. A wrong type is one line naming the file, the field, what
was expected and what was found; ranges and names are the dataclass's own ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from gossip.errors import ConfigError

C = TypeVar("C")
_MAX_SHOWN = 60  # characters of a wrong value shown in an error


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; every problem (missing, not UTF-8, bad TOML) is one line.
    A ``.json`` file is read as JSON (a run's config.json is a valid config file)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        if Path(path).suffix.lower() == ".json":
            try:
                obj = json.loads(text)
            except ValueError as e:
                raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
            if not isinstance(obj, dict):
                raise ConfigError(f"config file {path}: expected a JSON object")
            return {k: v for k, v in obj.items() if v is not None}  # TOML has no null either
        return tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; pass a TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def config_values(cls: type[C], table: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The fields of ``cls`` that ``table`` (read from ``path``) sets, type-checked."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown field(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in table.items():
        problem = type_problem(hints[name], value)
        if problem is not None:
            raise ConfigError(f"config file {path}: {name} must be {problem}, got {_shown(value)}")
        values[name] = _as_float(value) if _is_float_field(hints[name]) else value
    return values


def config_from_toml(cls: type[C], path: str | Path, section: str, overrides: dict[str, Any]) -> C:
    """``cls`` built from the fields of a TOML file (at top level or under ``[section]``);
    ``overrides`` (the flags given on the command line) win. Errors are one line."""
    raw = read_toml(path)
    table = raw.get(section, raw)
    if not isinstance(table, dict):
        raise ConfigError(
            f"config file {path}: {section} must be a table ([{section}]), got {_shown(table)}"
        )
    return cls(**{**config_values(cls, table, path), **overrides})


def type_problem(hint: Any, value: object) -> str | None:
    """None if ``value`` fits the type ``hint``, else what was expected ("an integer", ...).
    Types this does not know are not checked here (the dataclass checks them)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        problems = [type_problem(a, value) for a in options]
        if any(p is None for p in problems):
            return None
        return " or ".join(p for p in problems if p is not None)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        return None if value in choices else "one of " + ", ".join(map(repr, choices))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not isinstance(value, list):
            return "an array"
        if len(args) == 1:
            for item in value:
                problem = type_problem(args[0], item)
                if problem is not None:
                    return f"an array of which every item is {problem}"
        return None
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    return None


def _is_float_field(hint: Any) -> bool:
    """``float`` or ``float | None``: an integer given for it is stored as a float."""
    args = typing.get_args(hint)
    return hint is float or (
        typing.get_origin(hint) in (typing.Union, types.UnionType)
        and float in args
        and all(a in (float, type(None)) for a in args)
    )


def _as_float(value: object) -> object:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."
