"""Helpers shared by the tests that run real servers on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peers.node import Node
    from peers.node_config import NodeConfig

NodeFactory = Callable[..., Awaitable["Node"]]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports the OS considers free now (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def lone_node_config(tmp_path: Path, **kw: Any) -> NodeConfig:
    """A node on a free port whose only peer is down and whose gossip period is an hour:
    nothing changes its model but a push. ``kw`` overrides any field."""
    from peers.node_config import NodeConfig

    port, dead = free_ports(2)
    peers = tmp_path / f"peers-{port}.txt"
    peers.write_text(f"127.0.0.1:{port} n{port}\n127.0.0.1:{dead} dead\n")
    fields: dict[str, Any] = dict(
        peers=str(peers), host="127.0.0.1", port=port, id=f"n{port}", dataset="digits",
        node_index=0, num_nodes=2, model="logreg", period=3600.0, device="cpu", eval_every=0,
    )  # fmt: skip
    fields.update(kw)
    return NodeConfig(**fields)
