"""Overlay experiments: dynamic peer sampling (Cyclon, Newscast) on its own, cycle by cycle.

PeerSim's cycle-driven model: each cycle every live peer, in a fresh random order, starts one
view exchange; the request and the reply are each lost with probability ``loss``; a request
to a crashed peer fails and the initiator drops it from its view. After each cycle the
overlay (the directed graph of views among live peers) is measured: in-degree mean and
standard deviation, the share of view entries that point to crashed peers, the number of
weakly connected components, the clustering coefficient, and, with an attacker, the share
of entries that point to it.

The bootstrap views are the topology's neighbour lists (``ring`` gives every peer its two
ring neighbours). ``crash=F, crash_at=T`` crashes a random fraction F of the peers before
cycle T. ``attacker=True`` makes peer 0 a hub attacker: it answers every exchange with only
its own descriptor and starts every exchange with only its own descriptor.

A request that fails drops its target and the peer tries its next choice, up to
``attempts`` a cycle. ``pushes=K`` adds K gossip-learning pushes per cycle to uniform view
members, whose failures drop the target as well (what a node that gossips models over the
sampler does each period).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from gossip import seeding
from gossip.errors import ConfigError
from sampling.cyclon import ViewSampler, build_view_sampler, parse_sampler
from sampling.views import Descriptor, ViewExchange
from sim.topology import build_topology


def overlay_id(i: int) -> str:
    return f"p{i}"


def build_samplers(n: int, spec: str, bootstrap: nx.Graph, seed: int) -> list[ViewSampler]:
    """One sampler per peer, seeded from ``bootstrap``'s neighbour lists."""
    parse_sampler(spec)
    ids = [overlay_id(i) for i in range(n)]
    return [dynamic_sampler_for(spec, ids, bootstrap, i, seed) for i in range(n)]


def dynamic_sampler_for(
    spec: str, ids: list[str], graph: nx.Graph, i: int, seed: int
) -> ViewSampler:
    """Peer ``i``'s Cyclon/Newscast sampler: its first view is its neighbours in ``graph``
    (the bootstrap graph), its choices come from its own sampling stream."""
    rng = np.random.default_rng(seeding.stream(seed, seeding.SAMPLING_FIRST + i))
    seeds = [Descriptor(ids[j], age=1) for j in sorted(graph.neighbors(i))]
    return build_view_sampler(spec, Descriptor(ids[i]), seeds, rng)


@dataclass
class OverlayConfig:
    """One overlay experiment (see the module docstring for each field)."""

    peers: int = 1000
    sampler: str = "cyclon:20:5"
    bootstrap: str = "ring"
    cycles: int = 50
    seed: int = 0
    loss: float = 0.0
    crash: float = 0.0
    crash_at: int = 0
    attacker: bool = False
    attempts: int = 3
    pushes: int = 0

    def __post_init__(self) -> None:
        parse_sampler(self.sampler)
        if self.peers < 2:
            raise ConfigError(f"an overlay needs at least 2 peers, got {self.peers}")
        if self.cycles < 0 or self.attempts < 1 or self.pushes < 0:
            raise ConfigError("cycles and pushes must be >= 0 and attempts >= 1")
        if not 0 <= self.loss < 1 or not 0 <= self.crash < 1:
            raise ConfigError("loss and crash are fractions in [0, 1)")
        if self.crash > 0 and not 1 <= self.crash_at <= self.cycles:
            raise ConfigError(f"--crash-at must be a cycle in 1..{self.cycles}")


def overlay_metrics(
    samplers: list[ViewSampler],
    alive: np.ndarray,
    attacker: int | None = None,
    ids: list[str] | None = None,
) -> dict[str, Any]:
    """The overlay among live peers (see the module docstring); ``ids``: the peers' ids in
    index order (default ``p0``, ``p1``, ...)."""
    n = len(samplers)
    index = {(ids[i] if ids is not None else overlay_id(i)): i for i in range(n)}
    indeg = np.zeros(n, dtype=np.int64)
    entries = dead = to_attacker = 0
    graph = nx.DiGraph()
    live = np.nonzero(alive)[0].tolist()
    graph.add_nodes_from(live)
    for i in live:
        for peer in samplers[i].known_peers():
            j = index.get(peer)
            if j is None:
                continue
            entries += 1
            if not alive[j]:
                dead += 1
                continue
            indeg[j] += 1
            graph.add_edge(i, j)
            if attacker is not None and j == attacker:
                to_attacker += 1
    live_in = indeg[alive]
    undirected = graph.to_undirected()
    clustering = nx.average_clustering(undirected) if len(live) <= 20000 else float("nan")
    return {
        "peers_alive": len(live),
        "view_size_mean": entries / max(len(live), 1),
        "view_indegree_mean": float(live_in.mean()) if len(live) else math.nan,
        "view_indegree_std": float(live_in.std()) if len(live) else math.nan,
        "view_dead_links": dead / max(entries, 1),
        "overlay_components": nx.number_weakly_connected_components(graph) if live else 0,
        "overlay_clustering": float(clustering),
        "attacker_share": to_attacker / max(entries, 1) if attacker is not None else 0.0,
    }


def random_out_graph_indegree_std(n: int, c: int, seed: int = 0) -> float:
    """The in-degree standard deviation of a random c-out graph on ``n`` peers (the ideal a
    sampling service approximates), by drawing one."""
    rng = np.random.default_rng(seed)
    indeg = np.zeros(n, dtype=np.int64)
    for i in range(n):
        picks = rng.choice(n - 1, size=min(c, n - 1), replace=False)
        picks = picks + (picks >= i)
        indeg[picks] += 1
    return float(indeg.std())


def run_overlay(
    config: OverlayConfig, progress: Callable[[int, dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    """Run the cycles; one metrics record per cycle (cycle 0: the bootstrap)."""
    n = config.peers
    graph = build_topology(config.bootstrap, n, seeding.generator(config.seed, seeding.TOPOLOGY))
    samplers = build_samplers(n, config.sampler, graph, config.seed)
    rng = seeding.generator(config.seed, seeding.NETWORK)
    alive = np.ones(n, dtype=bool)
    attacker = 0 if config.attacker else None
    index = {overlay_id(i): i for i in range(n)}
    records = [{"cycle": 0, **overlay_metrics(samplers, alive, attacker)}]
    refused = 0
    for cycle in range(1, config.cycles + 1):
        if config.crash > 0 and cycle == config.crash_at:
            candidates = np.arange(n) if attacker is None else np.arange(1, n)
            down = rng.choice(candidates, size=round(config.crash * n), replace=False)
            alive[down] = False
        for i in rng.permutation(n).tolist():
            if not alive[i]:
                continue
            s = samplers[i]
            if i == attacker:
                # The hub attacker pushes only itself to a random peer every cycle.
                target = int(rng.integers(n))
                if target != i and alive[target]:
                    samplers[target].handle_request(ViewExchange(s.me, (s.me,)), s.self_id)
                continue
            # A request that fails (crashed target, lost message) drops the target, and the
            # peer tries its next choice, up to ``attempts`` times a cycle (a real node
            # does the same after a timeout): dead descriptors leave views that much faster.
            started = None
            for _ in range(config.attempts):
                started = s.start_exchange()
                if started is None:
                    break
                target_id, request = started
                j = index[target_id]
                if alive[j] and rng.random() >= config.loss:
                    break
                s.report_failure(target_id)
                started = None
            for _ in range(config.pushes):
                # The gossip-learning push of the period, to a uniform view member: a push
                # that fails drops the target too.
                pick = s.select()
                if pick is not None and not alive[index[pick]]:
                    s.report_failure(pick)
            if started is None:
                continue
            if j == attacker:
                reply: ViewExchange | None = ViewExchange(samplers[j].me, (samplers[j].me,), True)
            else:
                reply = samplers[j].handle_request(request, s.self_id)
            if reply is None or rng.random() < config.loss:
                continue
            s.handle_reply(reply, target_id)
        refused = sum(sum(x.refused.values()) for x in samplers)
        record = {"cycle": cycle, **overlay_metrics(samplers, alive, attacker), "refused": refused}
        records.append(record)
        if progress is not None:
            progress(cycle, record)
    return records


def summarise_overlay(config: OverlayConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures a reader wants from a run: final state, the random c-out reference, and
    how long dead links took to fall below 1% after the crash."""
    _, c, _ = parse_sampler(config.sampler)
    final = records[-1]
    heal = None
    if config.crash > 0 and config.crash_at > 0:
        heal = next(
            (r["cycle"] - config.crash_at + 1 for r in records[config.crash_at :]
             if r["view_dead_links"] < 0.01),
            None,
        )  # fmt: skip
    return {
        "final": final,
        "random_out_indegree_std": random_out_graph_indegree_std(
            config.peers, min(c, config.peers - 1), config.seed
        ),
        "cycles_to_heal": heal,
    }


def write_overlay_run(
    config: OverlayConfig, records: list[dict[str, Any]], out: Path
) -> dict[str, Any]:
    """metrics.jsonl (a record per cycle), config.json and summary.json in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    (out / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    summary = summarise_overlay(config, records)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
