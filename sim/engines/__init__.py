"""Simulation engines: ``asyncio`` (the reference: every peer a real asyncio program on the
virtual-time loop) and ``batched`` (the same simulation over stacked parameters, see
:mod:`sim.engines.batched`). ``auto`` picks batched when it supports the configuration."""

from __future__ import annotations

from sim.config import SimConfig

ENGINES = ("auto", "asyncio", "batched")


def choose_engine(config: SimConfig) -> tuple[str, str | None]:
    """(the engine that runs ``config``, why batched was not chosen or None)."""
    from sim.engines.batched import unsupported

    if config.engine == "asyncio":
        return "asyncio", None
    reason = unsupported(config)
    if config.engine == "batched" or reason is None:
        return "batched", None
    return "asyncio", reason
