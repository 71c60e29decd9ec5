"""Receive-to-merge latency of real nodes gossiping over HTTP on loopback.

Starts ``--nodes`` real ``peers.node.Node`` objects (aiohttp server, HTTP transport, Peer with
a worker thread) on 127.0.0.1 with one shared peers file, each on its shard of ``digits``
(``node_index``/``num_nodes``), pushing every ``--period`` seconds. After ``--warmup``
seconds it measures for ``--duration`` seconds:

- merge latency: each Peer's ``merge_latencies`` (seconds from ``offer()``, when the server
  queues the decoded model, to the end of merge + one local training step in the worker);
- push latency: ``HttpTransport.push`` as the sending Peer sees it (encode + POST until the
  answer), timed by a wrapper around each node's transport;
- event-loop lag: how late a 50 ms sleep wakes up, a gauge of how much running all nodes in
  one process (``--mode inprocess``, default: one event loop, one GIL) distorts the result.
  ``--mode processes`` runs one node per subprocess instead (each with its own loop).

Evaluation and checkpoints are off (``eval_every=0``, ``checkpoint_dir=None``) unless asked.

    python benchmarks/bench_latency.py                          # 16 nodes, logreg, 30 s
    python benchmarks/bench_latency.py --models logreg,mlp --duration 20
    python benchmarks/bench_latency.py --mode processes
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peers.node import Node
from peers.node_config import NodeConfig
from peers.transport import ModelSnapshot, SendOutcome

LAG_TICK = 0.05


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def write_peers_file(directory: Path, ports: list[int]) -> Path:
    path = directory / "peers.txt"
    path.write_text("".join(f"127.0.0.1:{p} n{i}\n" for i, p in enumerate(ports)))
    return path


def node_config(args: argparse.Namespace, peers: Path, ports: list[int], i: int) -> NodeConfig:
    return NodeConfig(
        peers=str(peers),
        host="127.0.0.1",
        port=ports[i],
        id=f"n{i}",
        dataset="digits",
        node_index=i,
        num_nodes=len(ports),
        model=args.model,
        period=args.period,
        codec=args.codec,
        lr=0.1,
        eval_every=args.eval_every,
        device="cpu",
        checkpoint_dir=None,
        status_every=3600.0,
        seed=args.seed,
    )


# --------------------------------------------------------------------------- probes


@dataclass
class Probe:
    """What one process records: push times and outcomes, event-loop lags."""

    push_s: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    lag_s: list[float] = field(default_factory=list)
    recording: bool = False

    def wrap_push(self, node: Node) -> None:
        inner = node.transport.push

        async def timed_push(dest: str, snapshot: ModelSnapshot) -> SendOutcome:
            start = time.perf_counter()
            outcome = await inner(dest, snapshot)
            if self.recording:
                self.push_s.append(time.perf_counter() - start)
                self.outcomes[outcome.value] = self.outcomes.get(outcome.value, 0) + 1
            return outcome

        node.transport.push = timed_push  # type: ignore[method-assign]

    async def watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_TICK)
            if self.recording:
                self.lag_s.append(loop.time() - start - LAG_TICK)


def merge_latencies(nodes: list[Node], skip: list[int]) -> list[float]:
    """Latencies recorded after the warm-up (``skip``: how many each node had then)."""
    out: list[float] = []
    for node, n in zip(nodes, skip, strict=True):
        out += list(node.peer.merge_latencies)[n:]
    return out


async def run_nodes(
    nodes: list[Node],
    args: argparse.Namespace,
    before_stop: Callable[[dict[str, Any]], Awaitable[None]],
) -> dict[str, Any]:
    """Start ``nodes`` here, warm up, measure, hand the result to ``before_stop``, stop."""
    probe = Probe()
    for node in nodes:
        probe.wrap_push(node)
    watcher = asyncio.create_task(probe.watch_loop())
    for node in nodes:
        await node.start()
    await asyncio.sleep(args.warmup)
    skip = [len(node.peer.merge_latencies) for node in nodes]
    merges0 = sum(node.peer.counters.merges for node in nodes)
    probe.recording = True
    await asyncio.sleep(args.duration)
    probe.recording = False
    result = {
        "merge_s": merge_latencies(nodes, skip),
        "merges": sum(node.peer.counters.merges for node in nodes) - merges0,
        "push_s": probe.push_s,
        "outcomes": probe.outcomes,
        "lag_s": probe.lag_s,
        "rejected": sum(sum(node.peer.counters.rejected.values()) for node in nodes),
    }
    await before_stop(result)
    watcher.cancel()
    for node in nodes:
        await node.stop()
    return result


# --------------------------------------------------------------------------- the two modes


async def run_inprocess(args: argparse.Namespace, peers: Path, ports: list[int]) -> dict[str, Any]:
    nodes = [Node(node_config(args, peers, ports, i)) for i in range(len(ports))]

    async def nothing(result: dict[str, Any]) -> None:
        pass

    return await run_nodes(nodes, args, nothing)


async def worker(args: argparse.Namespace) -> None:
    """``--worker I``: one node; READY when built, waits for GO, prints its result as JSON
    after the measurement, then waits for STOP (so that no peer stops while others measure)."""
    ports = [int(p) for p in args.ports.split(",")]
    node = Node(node_config(args, Path(args.peers_file), ports, args.worker))
    loop = asyncio.get_running_loop()
    print("READY", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # GO

    async def report_then_wait(result: dict[str, Any]) -> None:
        print(json.dumps(result), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # STOP (or end of input)

    await run_nodes([node], args, report_then_wait)


async def run_processes(args: argparse.Namespace, peers: Path, ports: list[int]) -> dict[str, Any]:
    base = [sys.executable, __file__, "--peers-file", str(peers)]
    base += ["--ports", ",".join(map(str, ports)), "--model", args.model, "--codec", args.codec]
    base += ["--period", str(args.period), "--warmup", str(args.warmup)]
    base += ["--duration", str(args.duration), "--eval-every", str(args.eval_every)]
    base += ["--seed", str(args.seed), "--torch-threads", str(args.torch_threads)]
    procs = [
        subprocess.Popen(
            [*base, "--worker", str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for i in range(len(ports))
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "READY":
                raise RuntimeError("a worker process failed to start")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        results = []
        for p in procs:
            assert p.stdout is not None
            line = await asyncio.to_thread(p.stdout.readline)
            results.append(json.loads(line))
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            p.wait(timeout=60)
    outcomes: dict[str, int] = {}
    for r in results:
        for k, v in r["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + v
    return {
        "merge_s": [x for r in results for x in r["merge_s"]],
        "merges": sum(r["merges"] for r in results),
        "push_s": [x for r in results for x in r["push_s"]],
        "outcomes": outcomes,
        "lag_s": [x for r in results for x in r["lag_s"]],
        "rejected": sum(r["rejected"] for r in results),
    }


# --------------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


HEADER = (
    f"{'model':<7} {'mode':<10} {'nodes':>5} {'merges':>7} {'merges/s':>8}"
    f" {'merge p50':>9} {'p99':>7} {'max':>7} {'push p50':>8} {'p99':>7}"
    f" {'lag p50':>7} {'p99':>7}  push outcomes"
)


def print_row(model: str, args: argparse.Namespace, nodes: int, r: dict[str, Any]) -> None:
    m, p, lag = r["merge_s"], r["push_s"], r["lag_s"]
    outcomes = " ".join(f"{k}={v}" for k, v in sorted(r["outcomes"].items()))
    max_ms = max(m) * 1e3 if m else float("nan")
    print(
        f"{model:<7} {args.mode:<10} {nodes:>5} {r['merges']:>7} {r['merges'] / args.duration:>8.1f}"
        f" {pct(m, 50):>9.2f} {pct(m, 99):>7.2f} {max_ms:>7.1f} {pct(p, 50):>8.2f}"
        f" {pct(p, 99):>7.2f} {pct(lag, 50):>7.2f} {pct(lag, 99):>7.2f}  {outcomes}"
        f" refused={r['rejected']}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", type=int, default=16, help="number of nodes (default 16)")
    parser.add_argument(
        "--models",
        type=lambda s: s.split(","),
        default=["logreg"],
        help="models, comma-separated, one run each (default logreg; e.g. logreg,mlp)",
    )
    parser.add_argument("--period", type=float, default=0.5, help="gossip period in seconds")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--codec", default="fp32", help="wire codec: fp32, fp16 or int8")
    parser.add_argument(
        "--eval-every", type=int, default=0, help="evaluate every this many periods (0: never)"
    )
    parser.add_argument(
        "--mode",
        choices=("inprocess", "processes"),
        default="inprocess",
        help="all nodes on one event loop (default) or one subprocess per node",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    # Internal: one node of --mode processes.
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peers-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ports", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default="logreg", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    if args.worker is not None:
        asyncio.run(worker(args))
        return
    print(
        f"{args.nodes} nodes on 127.0.0.1, period {args.period:g} s, codec {args.codec},"
        f" warm-up {args.warmup:g} s, measured {args.duration:g} s, torch threads"
        f" {torch.get_num_threads()}, cpus {os.cpu_count()}; latencies in ms"
    )
    print("merge = offer() to end of merge + train; push = HttpTransport.push at the sender")
    print(HEADER)
    for model in args.models:
        args.model = model
        with tempfile.TemporaryDirectory() as tmp:
            ports = free_ports(args.nodes)
            peers = write_peers_file(Path(tmp), ports)
            run = run_inprocess if args.mode == "inprocess" else run_processes
            result = asyncio.run(run(args, peers, ports))
        print_row(model, args, args.nodes, result)


if __name__ == "__main__":
    main()
