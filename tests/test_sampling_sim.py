"""Gossip learning over a dynamic sampler in the simulator: the view exchanges travel through
the simulated network, are counted apart from models, and the overlay is measured."""

from __future__ import annotations

from typing import Any

import pytest

from gossip.errors import ConfigError
from sampling.cyclon import CyclonSampler
from sim.config import SimConfig
from sim.engines.batched import unsupported
from sim.runner import run_simulation

SMALL: dict[str, Any] = dict(peers=30, periods=30, eval_every=10, model="logreg", seed=4)


def test_a_cyclon_run_measures_its_overlay_and_counts_view_traffic_apart() -> None:
    result = run_simulation(SimConfig(sampler="cyclon:8:3", topology="ring", **SMALL))
    first, last = result.records[0], result.records[-1]
    assert first["view_indegree_mean"] == 2.0  # the ring bootstrap
    assert last["view_indegree_mean"] == pytest.approx(8.0, abs=0.5)
    assert last["overlay_components"] == 1 and last["view_dead_links"] == 0.0
    # Every exchange is a request and a reply, counted in view_*, never as model messages.
    assert last["view_messages"] > 2 * 30 * 20 and last["view_bytes"] > 0
    peers = result.world.peers  # type: ignore[union-attr]
    assert last["messages_sent"] == sum(p.counters.pushes for p in peers)
    assert sum(p.counters.view_exchanges for p in peers) >= last["view_answered"]
    assert all(isinstance(p.sampler, CyclonSampler) for p in peers)
    assert last["acc_mean"] > 0.8


def test_gossip_over_cyclon_learns_like_gossip_over_uniform_sampling() -> None:
    cyclon = run_simulation(SimConfig(sampler="cyclon:10:3", **SMALL))
    uniform = run_simulation(SimConfig(sampler="uniform", **SMALL))
    assert cyclon.records[-1]["acc_mean"] == pytest.approx(
        uniform.records[-1]["acc_mean"], abs=0.04
    )


def test_views_lose_crashed_peers_under_churn() -> None:
    result = run_simulation(
        SimConfig(sampler="cyclon:8:3", churn="markov:0.7:10", **{**SMALL, "periods": 40})
    )
    dead = [r["view_dead_links"] for r in result.records]
    online = [r["peers_online"] for r in result.records]
    assert min(online) < 30  # peers did go offline
    assert max(dead) < 0.5  # offline peers do not pile up in the views


@pytest.mark.parametrize("sampler", ["cyclon:8:3", "newscast:8"])
def test_a_lossy_network_drops_view_messages_and_counts_why(sampler: str) -> None:
    result = run_simulation(SimConfig(sampler=sampler, loss=0.3, **SMALL))
    last = result.records[-1]
    assert last["view_dropped"]["loss"] > 0
    assert last["view_messages"] > last["view_answered"] > 0


def test_the_same_seed_gives_the_same_overlay() -> None:
    a = run_simulation(SimConfig(sampler="cyclon:8:3", **SMALL))
    b = run_simulation(SimConfig(sampler="cyclon:8:3", **SMALL))
    assert a.records == b.records


def test_dynamic_samplers_are_checked_and_named_where_unsupported() -> None:
    with pytest.raises(ConfigError, match="cyclon:C:L"):
        SimConfig(sampler="hyparview:5")
    with pytest.raises(ConfigError, match="1 <= L <= C"):
        SimConfig(sampler="cyclon:4:5")
    with pytest.raises(ConfigError, match="sample_period"):
        SimConfig(sampler="cyclon:4:2", sample_period=-1.0)
    config = SimConfig(sampler="cyclon:8:3", screen=0, screen_distance=0, model="logreg")
    assert unsupported(config) == "--sampler cyclon:8:3 (dynamic views)"


def test_a_slower_sample_period_exchanges_less() -> None:
    fast = run_simulation(SimConfig(sampler="cyclon:8:3", **SMALL))
    slow = run_simulation(SimConfig(sampler="cyclon:8:3", sample_period=3.0, **SMALL))
    assert slow.records[-1]["view_messages"] < 0.5 * fast.records[-1]["view_messages"]


def test_peers_that_join_later_enter_the_views_and_learn() -> None:
    result = run_simulation(
        SimConfig(sampler="cyclon:8:3", churn="join:15:5", **{**SMALL, "periods": 45})
    )
    online = {r["time"]: r["peers_online"] for r in result.records}
    assert online[10.0] == 25 and online[40.0] == 30
    peers = result.world.peers  # type: ignore[union-attr]
    joiners = {p.peer_id for p in peers[25:]}
    holders = [p for p in peers[:25] if joiners & set(p.sampler.known_peers())]
    assert len(holders) >= 10  # the newcomers are known well beyond their first contacts
    assert all(p.counters.merges > 0 for p in peers[25:])
    assert result.records[-1]["overlay_components"] == 1


def test_join_is_checked_in_one_line() -> None:
    with pytest.raises(ConfigError, match="COUNT a whole number"):
        SimConfig(churn="join:10:2.5")
    with pytest.raises(ConfigError, match="COUNT must be below"):
        run_simulation(SimConfig(churn="join:1:30", **SMALL))
