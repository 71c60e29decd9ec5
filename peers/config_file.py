"""Configuration dataclasses from TOML files (shared by ``gossip-node`` and ``gossip-sim``)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from gossip.errors import ConfigError

C = TypeVar("C")


def config_from_toml(cls: type[C], path: str | Path, section: str, overrides: dict[str, Any]) -> C:
    """``cls`` built from the fields of a TOML file (at top level or under ``[section]``);
    ``overrides`` (the flags given on the command line) win. Errors are one line."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    table = raw.get(section, raw)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown field(s) {', '.join(unknown)}")
    return cls(**{**table, **overrides})
