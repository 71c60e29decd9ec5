"""Conformance: one 8-peer scenario run in the simulator and as 8 real HTTP nodes.

The simulator drives the very Peer class a real node runs, so the same scenario (8 peers,
complete graph with uniform sampling, logreg on digits, IID shards, same period, learning
rate, batch size, local steps and seed) must behave alike both ways: messages are accounted
for on both sides, each peer sends about one model per period, and the peers learn about
as well. The real run is 8 ``peers.node.Node`` objects on one asyncio loop talking HTTP over
127.0.0.1; it runs for a fixed stretch of real time (that is the scenario, not a wait for
something to happen).

Both cut the same shards (``gossip.partition.partition_generator(seed)``), so real node i
holds exactly simulated peer i's data. What still differs by construction: the batch order
(a real node seeds it with ``seed * 7919 + node_index``, the simulator from its per-peer
``SeedSequence`` stream), real time and loopback latency; so the numbers are compared
within tolerances, the accounting exactly where it can be.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from netutil import free_ports

from gossip.datasets import load_dataset
from peers.node import Node, local_data
from peers.node_config import NodeConfig
from sim.config import SimConfig
from sim.runner import build_world, run_world

PEERS = 8
PERIOD = 0.1
PERIODS = 30
SEED = 0
MODEL, LR, BATCH_SIZE, LOCAL_STEPS = "logreg", 0.5, 32, 1

SIM = SimConfig(
    peers=PEERS,
    topology="complete",
    sampler="uniform",
    dataset="digits",
    partition="iid",
    periods=PERIODS,
    period=PERIOD,
    jitter=0.1,
    delay="uniform:0.001:0.005",  # about what 127.0.0.1 gives a small HTTP push
    eval_every=PERIODS,
    seed=SEED,
    model=MODEL,
    lr=LR,
    batch_size=BATCH_SIZE,
    local_steps=LOCAL_STEPS,
    mode="push",  # both sides explicit: the simulator's default job uses push-pull
)


def node_configs(tmp_path: Path) -> list[NodeConfig]:
    ports = free_ports(PEERS)
    peers_file = tmp_path / "peers.txt"
    peers_file.write_text("".join(f"127.0.0.1:{p} p{i}\n" for i, p in enumerate(ports)))
    return [
        NodeConfig(
            peers=str(peers_file),
            host="127.0.0.1",
            port=port,
            id=f"p{i}",
            dataset="digits",
            partition="iid",
            node_index=i,
            num_nodes=PEERS,
            period=PERIOD,
            jitter=SIM.jitter,
            eval_every=0,  # evaluated once at the end, like the simulator's last record
            device="cpu",
            checkpoint_dir=None,
            status_every=3600.0,
            seed=SEED,
            model=MODEL,
            lr=LR,
            batch_size=BATCH_SIZE,
            local_steps=LOCAL_STEPS,
        )
        for i, port in enumerate(ports)
    ]


@dataclass
class RealRun:
    nodes: list[Node]
    elapsed: float  # loop seconds from the last node's start to the gossip stopping
    accuracies: list[float]


async def run_real(configs: list[NodeConfig]) -> RealRun:
    nodes = [Node(c) for c in configs]  # loads data and models before anyone gossips
    loop = asyncio.get_running_loop()
    started: list[Node] = []
    try:
        for node in nodes:
            await node.start()
            started.append(node)
        t0 = loop.time()
        await asyncio.sleep(PERIODS * PERIOD)  # the scenario: gossip for PERIODS periods
        # Stop every gossip loop first, so that no push is under way while servers close:
        # at most one push per peer is cut off in flight.
        await asyncio.gather(*(n.peer.stop() for n in nodes))
        elapsed = loop.time() - t0
    finally:
        for node in started:
            await node.stop()
    accuracies = [n.learner.evaluate(n.dataset.x_test, n.dataset.y_test).accuracy for n in nodes]
    return RealRun(nodes, elapsed, accuracies)


def real_shards(tmp_path: Path) -> list[np.ndarray]:
    shards = [local_data(c)[1] for c in node_configs(tmp_path)]
    return [s for s in shards if s is not None]


def test_real_node_i_holds_exactly_simulated_peer_is_shard(tmp_path: Path) -> None:
    real = real_shards(tmp_path)
    world = build_world(SIM)
    assert len(real) == len(world.parts) == PEERS
    for node_shard, sim_shard in zip(real, world.parts, strict=True):
        assert np.array_equal(node_shard, sim_shard)
    n = len(load_dataset("digits", seed=SEED).y_train)
    assert np.array_equal(np.sort(np.concatenate(real)), np.arange(n))  # each row once


@pytest.mark.slow
def test_same_scenario_in_simulation_and_over_http(tmp_path: Path) -> None:
    sim = run_world(build_world(SIM))
    real = asyncio.run(run_real(node_configs(tmp_path)))
    counters = [n.peer.counters for n in real.nodes]

    # --- simulator: every message is accounted for, exactly.
    stats = sim.world.network.stats
    final = sim.final
    assert stats.balanced()
    assert final["messages_sent"] == (
        final["messages_delivered"]
        + final["messages_dropped"]
        + final["messages_rejected"]
        + final["messages_in_flight"]
    )
    assert final["messages_sent"] == sum(p.counters.pushes for p in sim.world.peers)

    # --- real run. Sender side: a push is attempted (pushes), then fails at the connection
    # level (send_failed), is refused by the receiver (send_rejected, HTTP 4xx) or accepted
    # (HTTP 202). Receiver side: every push that reached a server is either accepted or
    # rejected by reason (a codec/auth refusal by the server, a busy/offline refusal by the
    # peer). The only slack is pushes cut off in flight when the gossip loops were stopped:
    # at most one per peer.
    attempted = sum(c.pushes for c in counters)
    failed = sum(c.send_failed for c in counters)
    refused = sum(c.send_rejected for c in counters)
    reached = attempted - failed
    accepted = sum(c.accepted for c in counters)
    rejected = sum(sum(c.rejected.values()) for c in counters)
    assert attempted > 0
    assert accepted + rejected <= reached <= accepted + rejected + PEERS
    assert refused <= rejected <= refused + PEERS
    for c in counters:  # received: decoded models offered to the peer, accepted or not
        assert c.accepted <= c.received <= c.accepted + sum(c.rejected.values())
    # Only pushes to a node not yet listening (they start one after another) can fail.
    assert failed <= 2 * PEERS

    # --- about one message per peer per period both ways.
    sim_rate = final["messages_sent"] / (PEERS * PERIODS)
    real_rate = attempted / (PEERS * real.elapsed / PERIOD)
    assert 0.7 <= real_rate / sim_rate <= 1.3, (real_rate, sim_rate)

    # --- and they learn about as well, far above chance (0.1).
    sim_acc = float(final["acc_mean"])
    real_acc = float(np.mean(real.accuracies))
    assert sim_acc > 0.6 and real_acc > 0.6, (sim_acc, real_acc)
    assert abs(sim_acc - real_acc) <= 0.15, (sim_acc, real_acc)
