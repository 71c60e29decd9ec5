"""``gossip-node``: run one real gossip learning peer (one per machine).

    gossip-node --peers peers.txt --port 8000 --dataset digits --node-index 0 --num-nodes 3
    gossip-node keygen ed25519 node0.key      # prints the public key for peers.txt
    gossip-node keygen shared cluster.key

Heavy imports (torch, aiohttp) happen inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import typing
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from gossip.errors import ConfigError, GossipError
from gossip.memory import enable_huge_pages
from peers.cli_options import ConfigOpt, given_on_command_line, with_dataclass_options
from peers.node_config import NODE_HELP, NodeConfig

app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    help="Run one gossip learning peer: it trains on local data and gossips its model over HTTP.",
    pretty_exceptions_enable=False,
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and a status dict if given."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        status = getattr(record, "status", None)
        if status is not None:
            out["status"] = status
        return json.dumps(out)


def setup_logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("gossip")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    from peers.log_guard import install

    install(handler=handler)  # bounded, rate-limited lines: on our tree, aiohttp's and asyncio's


def _fail(e: Exception) -> typing.NoReturn:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2)


async def serve(config: NodeConfig) -> None:
    """Run a node until SIGINT/SIGTERM, then shut it down cleanly."""
    from peers.node import Node

    node = Node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    await stop.wait()
    logging.getLogger("gossip.node").info("signal received: shutting down")
    await node.stop()


def run_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """Run ``main`` on the chosen event loop. uvloop (libuv) moves a 45 MB push's body about
    3x faster into the server than asyncio's selector loop (benchmarks/bench_http.py), so
    ``auto`` takes it when it is installed."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise ConfigError(
                    "--event-loop uvloop needs uvloop: pip install 'gossip-learning[fast]'"
                ) from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


@app.callback()
@with_dataclass_options(NodeConfig, NODE_HELP, "Node")
def main_command(ctx: typer.Context, config_file: ConfigOpt = None, **values: Any) -> None:
    """Run the node (with no subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        given = given_on_command_line(ctx, values)
        config = NodeConfig.from_toml(config_file, **given) if config_file else NodeConfig(**values)
        setup_logging(config.log_format)
        run_loop(serve(config), config.event_loop)
    except GossipError as e:
        _fail(e)


@app.command()
def keygen(
    kind: Annotated[
        str, typer.Argument(help="ed25519 (a node's key pair) or shared (one HMAC key for all)")
    ],
    path: Annotated[Path, typer.Argument(help="key file to create (mode 0600)")],
    overwrite: Annotated[bool, typer.Option(help="replace an existing file")] = False,
) -> None:
    """Create a key file for --auth-key-file; for ed25519, print the public key for peers.txt."""
    from peers import auth

    try:
        if kind == "ed25519":
            seed, public = auth.generate_ed25519_keypair()
            auth.write_key_file(path, auth.format_private_key(seed) + "\n", overwrite=overwrite)
            typer.echo(auth.format_public_key(public))
        elif kind == "shared":
            auth.write_key_file(
                path, auth.format_shared_key(auth.generate_shared_key()) + "\n", overwrite=overwrite
            )
            typer.echo(f"wrote {path}: give the same file to every node with --auth-key-file")
        else:
            raise GossipError(f"unknown key kind {kind!r}; use ed25519 or shared")
    except GossipError as e:
        _fail(e)


def main() -> None:
    # Before torch is imported (it reads the setting once): huge pages for the decoded models
    # a node allocates per push (gossip.memory).
    enable_huge_pages()
    app()
