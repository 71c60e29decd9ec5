"""Test-wide settings.

Hypothesis: no per-example deadline (a 2-core CI machine under load makes wall-clock limits
flaky, and speed is measured by benchmarks/, not tests). Under CI (``CI=true``) examples are
derandomized so that a run is reproducible; locally they are random to keep exploring.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from netutil import NodeFactory, lone_node_config

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
async def start_node(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[NodeFactory]:
    """Start lone nodes (see :func:`netutil.lone_node_config`), stopped after the test. A test
    module's ``NODE_DEFAULTS`` dict holds its own defaults; keyword arguments win."""
    from peers.node import Node

    defaults = getattr(request.module, "NODE_DEFAULTS", {})
    nodes: list[Node] = []

    async def start(**kw: Any) -> Node:
        node = Node(lone_node_config(tmp_path, **{**defaults, **kw}))
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()
