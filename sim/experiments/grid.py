"""The plan of a sweep: a base configuration, a grid over its fields, and seeds.

On the command line a grid axis is ``--grid FIELD=V1,V2,...`` (values separated by ``;``
instead when a value itself holds commas, e.g. ``--grid "partitions=none;split:10:20"``),
converted to the field's type; in TOML it is a ``[sweep]`` table whose arrays are the axes
(``topology = ["ring", "complete"]``), next to ``seeds`` and ``target``, with the fixed
fields at top level or under ``[sim]``. Every cell of the grid runs once per seed: seeds are
``seed, seed + 1, ..., seed + K - 1`` of the base configuration.

Run directories are ``<out>/runs/<FIELD=VALUE__...>/seed-<S>``, with characters that are
unsafe in file names replaced by ``_``; two cells that would share a name are refused.
"""

from __future__ import annotations

import itertools
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossip.errors import ConfigError
from peers.config_file import config_values, read_toml, type_problem
from sim.config import SimConfig

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")
# Fields a grid may not vary: the seed is the sweep's own axis (--seeds).
_NOT_GRIDDABLE = {"seed"}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its grid cell, seed, configuration and directory (relative)."""

    cell: dict[str, Any]
    seed: int
    config: SimConfig
    path: str

    @property
    def label(self) -> str:
        """The cell as a short label: its values joined by commas."""
        return ", ".join(str(v) for v in self.cell.values()) or "base"


@dataclass(frozen=True)
class Plan:
    """A whole sweep: base configuration, grid axes (in order), seeds, and the target."""

    base: SimConfig
    grid: dict[str, list[Any]]
    seeds: list[int]
    target: float | None = None

    def runs(self) -> list[RunSpec]:
        names = list(self.grid)
        specs: list[RunSpec] = []
        seen: dict[str, dict[str, Any]] = {}
        for values in itertools.product(*(self.grid[n] for n in names)):
            cell = dict(zip(names, values, strict=True))
            cell_dir = "__".join(f"{n}={_safe(v)}" for n, v in cell.items()) or "base"
            if cell_dir in seen and seen[cell_dir] != cell:
                raise ConfigError(
                    f"grid cells {seen[cell_dir]} and {cell} would share the directory"
                    f" {cell_dir!r}; make the values differ in letters or digits"
                )
            seen[cell_dir] = cell
            for seed in self.seeds:
                try:
                    config = self.base.replace(**cell, seed=seed)
                except ConfigError as e:
                    raise ConfigError(f"grid cell {cell}: {e}") from None
                specs.append(RunSpec(cell, seed, config, f"runs/{cell_dir}/seed-{seed}"))
        return specs

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base.as_dict(),
            "grid": [[name, values] for name, values in self.grid.items()],  # axis order kept
            "seeds": self.seeds,
            "target": self.target,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Plan:
        grid = obj["grid"]
        axes = dict(grid.items() if isinstance(grid, dict) else map(tuple, grid))
        return cls(SimConfig(**obj["base"]), axes, obj["seeds"], obj.get("target"))


def _safe(value: Any) -> str:
    return _UNSAFE.sub("_", str(value))[:80]


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(SimConfig)


def _check_field(name: str) -> None:
    if name in _NOT_GRIDDABLE:
        raise ConfigError("the seed is not a grid axis; give --seeds K (and --seed for the first)")
    if name not in SimConfig.field_names():
        raise ConfigError(
            f"--grid {name}: not a simulation field; see `gossip-sim run --help` for the fields"
        )


def coerce(name: str, text: str) -> Any:
    """A grid value given as text, converted to the type of SimConfig field ``name``."""
    hint = _hints()[name]
    options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    text = text.strip()
    if type(None) in typing.get_args(hint) and text.lower() in ("none", ""):
        return None
    kind = options[0]
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}[kind]
        raise ConfigError(f"--grid {name}: {text!r} is not {expected}") from None
    return text


def parse_grid_option(option: str) -> tuple[str, list[Any]]:
    """``FIELD=V1,V2`` (or ``FIELD=V1;V2``) -> (field, typed values)."""
    name, sep, values = option.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not values.strip():
        raise ConfigError(f"--grid {option!r}: expected FIELD=V1,V2 (e.g. topology=ring,complete)")
    _check_field(name)
    parts = values.split(";") if ";" in values else values.split(",")
    typed = [coerce(name, p) for p in parts if p.strip()]
    if len(set(map(repr, typed))) != len(typed):
        raise ConfigError(f"--grid {name}: a value is given twice")
    return name, typed


def grid_from_options(options: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for option in options:
        name, values = parse_grid_option(option)
        if name in grid:
            raise ConfigError(f"--grid {name} is given twice; list all its values in one")
        grid[name] = values
    return grid


def sweep_file(path: str | Path) -> tuple[dict[str, Any], dict[str, list[Any]], dict[str, Any]]:
    """A sweep's TOML file: (fixed SimConfig values, grid axes, sweep options ``seeds`` and
    ``target``). The fixed fields are at top level or under ``[sim]``; the ``[sweep]`` table
    holds the axes (arrays) and the options."""
    raw = read_toml(path)
    sweep = raw.pop("sweep", {})
    if not isinstance(sweep, dict):
        raise ConfigError(f"config file {path}: sweep must be a table ([sweep])")
    table = raw.get("sim", raw)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: sim must be a table ([sim])")
    fixed = config_values(SimConfig, table, path)
    options = {k: sweep.pop(k) for k in ("seeds", "target") if k in sweep}
    hints = _hints()
    grid: dict[str, list[Any]] = {}
    for name, values in sweep.items():
        if name not in hints:
            raise ConfigError(f"config file {path}: [sweep] {name} is not a simulation field")
        _check_field(name)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"config file {path}: [sweep] {name} must be a non-empty array")
        for value in values:
            problem = type_problem(hints[name], value)
            if problem is not None:
                raise ConfigError(
                    f"config file {path}: [sweep] {name} items must be {problem}, got {value!r}"
                )
        grid[name] = [float(v) if hints[name] is float else v for v in values]
    return fixed, grid, options


def make_plan(
    base: SimConfig, grid: dict[str, list[Any]], seeds: int, target: float | None
) -> Plan:
    """The plan of ``seeds`` runs per cell; every cell's configuration is validated now, so
    that a bad value stops the sweep before any run (one line naming it)."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"--target is an accuracy in (0, 1], got {target}")
    plan = Plan(base, grid, [base.seed + k for k in range(seeds)], target)
    plan.runs()  # builds (validates) every configuration
    return plan
