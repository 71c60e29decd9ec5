"""Real ``gossip-node`` processes on 127.0.0.1 that are each told only one seed.

Starts ``--nodes`` (20) processes with ``--sampler cyclon:C:L``; every peers file lists only
node 0 (node 0's lists only itself). Observed from outside through ``/v1/status``, once per
sample period, it measures:

1. **discovery**: sample periods until every node knows at least C peers (counted from the
   moment all of them answer ``/healthz``);
2. **join**: a node started later, told only the seed: periods until it knows C peers, and
   the share of the other views that hold it after 10 more periods (a random C-out graph
   holds each peer in C / (N - 1) of the views);
3. **healing**: ``--kill`` (5) nodes are killed; after 20 periods, the view entries of the
   survivors that still point to killed nodes (the target: none).

With ``--keys`` every node has its own Ed25519 key and the seeds file lists only node 0's
public key: the others' keys are learned on first use, and the table adds the models and view
exchanges refused for their keys (the target: none).

Writes ``discovery.json`` to ``--out``.

    python benchmarks/bench_discovery.py
    python benchmarks/bench_discovery.py --nodes 20 --view 10 --shuffle 4 --period 0.5
    python benchmarks/bench_discovery.py --keys
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def status(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=2) as r:
            out: dict[str, Any] = json.loads(r.read())
            return out
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--view", type=int, default=10)
    parser.add_argument("--shuffle", type=int, default=4)
    parser.add_argument("--period", type=float, default=0.5, help="gossip and sample period")
    parser.add_argument("--kill", type=int, default=5)
    parser.add_argument("--keys", action="store_true", help="an Ed25519 key per node")
    parser.add_argument("--out", default="runs/bench-discovery")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n, c = args.nodes, args.view
    ports = free_ports(n + 1)
    seed_file = out / "seeds.txt"
    key_args: dict[int, list[str]] = {}
    seed_key = ""
    if args.keys:
        from peers.auth import (
            format_private_key,
            format_public_key,
            generate_ed25519_keypair,
            write_key_file,
        )

        for i in range(n + 1):
            private, public = generate_ed25519_keypair()
            write_key_file(out / f"key{i}", format_private_key(private), overwrite=True)
            key_args[i] = ["--auth-key-file", str(out / f"key{i}")]
            seed_key = seed_key or " " + format_public_key(public)
    seed_file.write_text(f"127.0.0.1:{ports[0]} n0{seed_key}\n")
    script = Path(sys.executable).parent / "gossip-node"
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def launch(i: int) -> None:
        command = [
            str(script), "--peers", str(seed_file), "--host", "127.0.0.1",
            "--port", str(ports[i]), "--id", f"n{i}", "--node-index", str(i),
            "--num-nodes", str(n + 1), "--model", "logreg", "--period", str(args.period),
            "--sampler", f"cyclon:{c}:{args.shuffle}", "--eval-every", "0", "--threads", "1",
            *key_args.get(i, []),
        ]  # fmt: skip
        log = (out / f"n{i}.log").open("wb")
        procs[i] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def views(alive: list[int]) -> dict[int, list[str]]:
        got = {i: status(ports[i]) for i in alive}
        return {i: s["view"] for i, s in got.items() if s is not None}

    def wait(pred: Any, limit_periods: float, alive: list[int]) -> tuple[float | None, Any]:
        start = time.monotonic()
        while True:
            v = views(alive)
            if pred(v):
                return (time.monotonic() - start) / args.period, v
            if time.monotonic() - start > limit_periods * args.period:
                return None, v
            time.sleep(args.period / 2)

    result: dict[str, Any] = {"nodes": n, "view": c, "shuffle": args.shuffle,
                              "period": args.period}  # fmt: skip
    try:
        for i in range(n):
            launch(i)
        alive = list(range(n))
        deadline = time.monotonic() + 180
        while len(views(alive)) < n:  # every node answers (they import torch first)
            if time.monotonic() > deadline:
                raise SystemExit("bench_discovery: the nodes did not all start within 180 s")
            time.sleep(0.5)
        console.print(f"  {n} nodes up", style="dim")
        took, v = wait(lambda v: len(v) == n and all(len(x) >= c for x in v.values()), 60, alive)
        result["discovery_periods"] = took
        result["view_sizes"] = sorted(len(x) for x in v.values())
        console.print(f"  discovery: {took} periods", style="dim")
        launch(n)  # the latecomer
        deadline = time.monotonic() + 120
        while status(ports[n]) is None:
            if time.monotonic() > deadline:
                raise SystemExit("bench_discovery: the late node did not start")
            time.sleep(0.5)
        alive.append(n)
        joined, _ = wait(lambda v: len(v.get(n, [])) >= c, 60, [n])
        result["join_periods"] = joined
        time.sleep(10 * args.period)
        v = views(alive)
        holders = sum(1 for i, x in v.items() if i != n and f"n{n}" in x)
        result["join_share"] = holders / max(len(v) - 1, 1)
        result["random_share"] = c / n
        console.print(f"  join: {joined} periods, held by {holders} views", style="dim")
        killed = alive[1 : 1 + args.kill]  # not the seed
        for i in killed:
            procs[i].send_signal(signal.SIGKILL)
        alive = [i for i in alive if i not in killed]
        time.sleep(20 * args.period)
        v = views(alive)
        dead = {f"n{i}" for i in killed}
        entries = sum(len(x) for x in v.values())
        stale = sum(1 for x in v.values() for p in x if p in dead)
        result["dead_entries_after_20"] = stale
        result["entries"] = entries
        healed, _ = wait(lambda v: not any(p in dead for x in v.values() for p in x), 40, alive)
        result["periods_to_no_dead"] = None if healed is None else 20 + healed
        finals = [x for x in (status(ports[i]) for i in alive) if x is not None]
        key_reasons = {"bad_auth", "unknown_sender", "wrong_key"}
        result["models_refused_for_keys"] = sum(
            k for x in finals for r, k in x["rejected_by_reason"].items() if r in key_reasons
        )
        result["exchanges_refused_for_keys"] = sum(
            k for x in finals for r, k in x["sample_refused"].items() if r in key_reasons
        )
        result["models_merged"] = sum(x["merges"] for x in finals)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    (out / "discovery.json").write_text(json.dumps(result, indent=2) + "\n")
    keyed = ", an Ed25519 key each" if args.keys else ""
    table = Table(
        title=f"{n} gossip-node processes on loopback, each told one seed,"
        f" cyclon:{c}:{args.shuffle}{keyed}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("sample periods until every node knows >= C peers", result.get("discovery_periods")),
        ("late node: periods until it knows >= C peers", result.get("join_periods")),
        ("late node: share of views holding it 10 periods later", result.get("join_share")),
        ("  (random C-out graph: C / N)", result.get("random_share")),
        (f"dead entries {args.kill} kills + 20 periods later", result.get("dead_entries_after_20")),
        ("  of view entries", result.get("entries")),
        ("periods until no dead entry", result.get("periods_to_no_dead")),
        ("models merged (survivors)", result.get("models_merged")),
        ("models refused for their key", result.get("models_refused_for_keys")),
        ("view exchanges refused for their key", result.get("exchanges_refused_for_keys")),
    ]
    for name, value in rows:
        table.add_row(
            name,
            "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value),
        )
    console.print(table)
    console.print(f"results in {out / 'discovery.json'}")


if __name__ == "__main__":
    main()
