"""Typer options generated from a frozen config dataclass.

Both CLIs (``gossip-node`` and ``gossip-sim``) take one flag per field of their config
dataclass; generating them keeps flags, TOML files and saved configs one definition.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

F = typing.TypeVar("F", bound=Callable[..., Any])


def with_dataclass_options(
    cls: type, help_texts: Mapping[str, str], panel: str
) -> Callable[[F], F]:
    """Decorate a command taking ``**values``: add one keyword flag per field of ``cls``."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn)
        resolved = typing.get_type_hints(fn, include_extras=True)  # string annotations
        own = [
            p.replace(annotation=resolved.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        hints = typing.get_type_hints(cls)
        extra = [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=f.default,
                annotation=Annotated[
                    hints[f.name],
                    typer.Option(help=help_texts.get(f.name, ""), rich_help_panel=panel),
                ],
            )
            for f in fields(cls)
        ]
        fn.__signature__ = sig.replace(parameters=[*own, *extra])  # type: ignore[attr-defined]
        return fn

    return decorate


def given_on_command_line(ctx: typer.Context, values: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of ``values`` the user typed (not defaults): they win over a TOML file."""
    # Compared by name: typer ships its own copy of click, whose enum we do not import.
    return {
        k: v
        for k, v in values.items()
        if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"
    }


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML file with the same fields (flags win); a .json file, e.g. a run's config.json, is read as JSON",
    ),
]
