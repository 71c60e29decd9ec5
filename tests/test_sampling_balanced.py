"""The receive-rate balancing sampler and the time-varying one-peer exponential sampler."""

from __future__ import annotations

from collections import Counter

import networkx as nx
import numpy as np
import pytest

from gossip.errors import ConfigError
from sampling.balanced import (
    DEFAULT_MIX,
    OnePeerExponentialSampler,
    WeightedNeighbourSampler,
    balanced_push_matrix,
    is_time_varying,
    neighbour_push_matrix,
    one_peer_exponential_tau,
    parse_balanced,
    push_gap,
    rate_summary,
    receive_rates,
    sinkhorn_weights,
)
from sim.config import SimConfig
from sim.runner import receive_rate_summary, run_simulation


def _check_push_matrix(g: nx.Graph, p) -> None:
    dense = p.toarray()
    assert np.allclose(dense.sum(axis=1), 1.0, atol=1e-12)  # every peer pushes once
    assert np.all(np.diag(dense) == 0)  # never to itself
    adjacency = nx.to_numpy_array(g, nodelist=sorted(g.nodes), weight=None)
    assert np.all(dense[adjacency == 0] == 0)  # only along edges


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_weights_even_out_a_barabasi_albert_graph(seed: int) -> None:
    g = nx.barabasi_albert_graph(100, 3, seed=seed)
    plain = rate_summary(receive_rates(neighbour_push_matrix(g)))
    p = sinkhorn_weights(g)
    _check_push_matrix(g, p)
    balanced = rate_summary(receive_rates(p))
    assert plain["cv"] > 0.8 and plain["below_half"] > 0.25  # hubs get several, many < 0.5
    assert balanced["cv"] < plain["cv"] / 4 and balanced["below_half"] == 0.0
    assert balanced["mean"] == pytest.approx(1.0)


def test_a_regular_graph_is_already_balanced_and_stays_uniform() -> None:
    g = nx.random_regular_graph(4, 50, seed=0)
    p = sinkhorn_weights(g).toarray()
    assert np.allclose(p[p > 0], 0.25)


def test_a_star_cannot_be_balanced_and_keeps_its_only_choices() -> None:
    g = nx.star_graph(9)  # leaves can only push to the centre
    p = sinkhorn_weights(g)
    _check_push_matrix(g, p)
    rates = receive_rates(p)
    assert rates[0] == pytest.approx(9.0) and np.allclose(rates[1:], 1 / 9)


def test_neighbour_push_matrix_rates_are_sums_of_inverse_degrees() -> None:
    g = nx.path_graph(4)  # degrees 1 2 2 1
    rates = receive_rates(neighbour_push_matrix(g))
    assert rates.tolist() == pytest.approx([0.5, 1.5, 1.5, 0.5])


def test_rate_summary() -> None:
    s = rate_summary(np.array([0.25, 0.75, 1.0, 2.0]))
    assert s["mean"] == pytest.approx(1.0)
    assert s["cv"] == pytest.approx(np.std([0.25, 0.75, 1.0, 2.0]))
    assert s["below_half"] == 0.25 and (s["min"], s["max"]) == (0.25, 2.0)


def test_weighted_sampler_draws_in_proportion_and_only_its_peers() -> None:
    sampler = WeightedNeighbourSampler("a", ["b", "c", "d"], [0.6, 0.3, 0.1],
                                       np.random.default_rng(0))  # fmt: skip
    counts = Counter(sampler.select() for _ in range(20_000))
    assert set(counts) == {"b", "c", "d"}
    for peer, weight in zip("bcd", [0.6, 0.3, 0.1], strict=True):
        assert counts[peer] / 20_000 == pytest.approx(weight, abs=0.015)


def test_weighted_sampler_skips_a_failed_peer_for_its_backoff() -> None:
    sampler = WeightedNeighbourSampler("a", ["b", "c"], [0.5, 0.5], np.random.default_rng(1),
                                       failure_backoff=3)  # fmt: skip
    sampler.report_failure("b")
    assert [sampler.select() for _ in range(2)] == ["c", "c"]
    sampler.report_alive("b")
    assert "b" in {sampler.select() for _ in range(50)}


@pytest.mark.parametrize("n", [2, 5, 8, 13, 64])
def test_one_peer_exponential_is_a_permutation_every_round(n: int) -> None:
    ids = [f"p{i}" for i in range(n)]
    samplers = [OnePeerExponentialSampler(ids, i) for i in range(n)]
    tau = one_peer_exponential_tau(n)
    for k in range(2 * tau):
        targets = [s.select() for s in samplers]
        assert sorted(targets) == sorted(ids)  # each peer receives exactly one
        hop = 1 << (k % tau)
        assert targets == [ids[(i + hop) % n] for i in range(n)]
    assert len(samplers[0].known_peers()) == len({(1 << k) % n for k in range(tau)})


def test_one_peer_exponential_averaging_is_exact_after_tau_rounds_on_a_power_of_two() -> None:
    n = 16
    x = np.random.default_rng(0).standard_normal(n)
    mean = x.mean()
    ids = list(range(n))
    samplers = [OnePeerExponentialSampler([str(i) for i in ids], i) for i in ids]
    for _ in range(one_peer_exponential_tau(n)):
        targets = [int(s.select()) for s in samplers]
        received = np.empty(n)
        received[targets] = x  # peer targets[i] receives x[i]
        x = (x + received) / 2
    assert np.allclose(x, mean, atol=1e-12)


def test_is_time_varying() -> None:
    assert is_time_varying("one-peer-exponential") and not is_time_varying("exponential")


def test_a_simulation_over_the_balanced_sampler_runs_and_reports_its_rates() -> None:
    config = SimConfig(peers=30, topology="barabasi-albert:2", sampler="neighbours-balanced",
                       model="logreg", periods=6, eval_every=3)  # fmt: skip
    result = run_simulation(config)
    rates = result.summary["receive_rate"]
    plain = receive_rate_summary(config.replace(sampler="neighbours"), result.world.graph)
    assert plain is not None and rates["cv"] < plain["cv"]
    assert result.final["messages_sent"] > 0 and result.final["merges"] > 0
    assert receive_rate_summary(config.replace(sampler="cyclon:5:2"), result.world.graph) is None


def test_the_mix_spec_is_parsed_and_checked() -> None:
    assert parse_balanced("neighbours") is None
    assert parse_balanced("neighbours-balanced") == DEFAULT_MIX
    assert parse_balanced("neighbours-balanced:0") == 0.0
    assert parse_balanced("neighbours-balanced:1") == 1.0
    for bad in ("neighbours-balanced:1.5", "neighbours-balanced:-0.1", "neighbours-balanced:x"):
        with pytest.raises(ConfigError, match="MIX must be a number in"):
            parse_balanced(bad)
    with pytest.raises(ConfigError, match="MIX must be"):
        SimConfig(sampler="neighbours-balanced:2")


def test_the_mix_keeps_every_edge_in_use() -> None:
    g = nx.barabasi_albert_graph(100, 2, seed=0)
    for mix in (0.1, 0.3):
        p = balanced_push_matrix(g, mix)
        _check_push_matrix(g, p)
        deg = np.array([g.degree(v) for v in sorted(g.nodes)])
        rows, cols = p.nonzero()
        assert len(rows) == 2 * g.number_of_edges()  # every edge, both ways
        assert np.all(p.toarray()[rows, cols] >= mix / deg[rows] - 1e-15)
    assert np.allclose(balanced_push_matrix(g, 1.0).toarray(), neighbour_push_matrix(g).toarray())


def test_push_gap_of_a_ring_and_a_complete_graph_in_closed_form() -> None:
    n = 12
    ring = push_gap(neighbour_push_matrix(nx.cycle_graph(n)))
    assert ring == pytest.approx((1 - np.cos(2 * np.pi / n)) / 2, abs=1e-12)
    complete = push_gap(neighbour_push_matrix(nx.complete_graph(n)))
    assert complete == pytest.approx(n / (2 * (n - 1)), abs=1e-12)
    assert push_gap(neighbour_push_matrix(nx.complete_graph(3)), dense_limit=2) is None


def test_full_balancing_can_cut_a_skewed_graph_and_the_mix_reconnects_it() -> None:
    # Barabasi-Albert with m = 2 has no doubly stochastic pattern: Sinkhorn starves edges
    # until the push dynamics fall apart (push gap ~ 0); the default mix keeps them joined.
    g = nx.barabasi_albert_graph(100, 2, seed=0)
    assert push_gap(balanced_push_matrix(g, 0.0)) < 1e-4
    assert push_gap(balanced_push_matrix(g, DEFAULT_MIX)) > 1e-3


def test_a_simulation_over_the_one_peer_exponential_graph() -> None:
    from sim.engines.batched import unsupported

    config = SimConfig(peers=16, topology="one-peer-exponential", model="logreg", periods=8,
                       eval_every=4)  # fmt: skip
    result = run_simulation(config)
    assert result.summary["receive_rate"]["cv"] == 0.0  # a permutation every round
    assert result.summary["graph"]["degree_min"] == result.summary["graph"]["degree_max"] == 7
    assert result.final["merges"] > 0
    assert "time-varying" in (unsupported(config.replace(screen=0, screen_distance=0)) or "")


def test_the_balanced_push_matrix_is_computed_once_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import sim.runner

    calls = []
    real = sim.runner.balanced_push_matrix

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sim.runner, "balanced_push_matrix", counted)
    config = SimConfig(peers=20, topology="barabasi-albert:2", sampler="neighbours-balanced",
                       model="logreg", periods=2, eval_every=2)  # fmt: skip
    result = run_simulation(config)
    assert len(calls) == 1 and result.summary["receive_rate"]["cv"] >= 0
