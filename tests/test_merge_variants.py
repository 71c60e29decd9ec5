"""Merge/update variants: several received models merged at once, and train-then-merge."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gossip.age_guard import AgeGuard
from gossip.errors import ConfigError
from gossip.learner import Learner, LearnerConfig, LocalData
from gossip.robust.merger import Merger
from peers.peer import Peer, PeerConfig
from peers.transport import ModelMessage
from sampling.uniform import UniformSampler
from sim.clock import run_virtual
from sim.network import NetworkConfig, SimNetwork

g = torch.Generator().manual_seed(0)
X = torch.randn(64, 4, generator=g)
Y = (X[:, 0] > 0).long()


@given(
    ages=st.lists(st.integers(0, 10**6), min_size=2, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_age_weighted_batch_is_the_closed_form(ages: list[int], seed: int) -> None:
    rng = torch.Generator().manual_seed(seed)
    models = [torch.randn(7, generator=rng, dtype=torch.float64) for _ in ages]
    w = models[0].clone()
    received = [(m, t, f"s{i}") for i, (m, t) in enumerate(zip(models[1:], ages[1:], strict=True))]
    age = Merger("age-weighted").merge_many_(w, ages[0], received)
    total = sum(ages)
    expected = (
        sum(t * m for t, m in zip(ages, models, strict=True)) / total
        if total
        else sum(models) / len(models)
    )
    torch.testing.assert_close(w, expected)
    assert age == max(ages)


@pytest.mark.parametrize("rule", ["age-weighted", "average", "replace", "clipped", "median"])
def test_merging_copies_of_the_local_model_changes_nothing(rule: str) -> None:
    w = torch.linspace(-1, 1, 9)
    before = w.clone()
    Merger(rule).merge_many_(w, 5, [(before.clone(), 7, "a"), (before.clone(), 3, "b")])
    torch.testing.assert_close(w, before)


def test_the_batch_weight_handed_to_momentum_is_the_remote_share() -> None:
    merger = Merger("age-weighted")
    w = torch.zeros(3)
    merger.merge_many_(w, 10, [(torch.ones(3), 20, "a"), (torch.ones(3), 10, "b")])
    assert merger.last_weight == pytest.approx(0.75)
    torch.testing.assert_close(w, torch.full((3,), 0.75))
    replace = Merger("replace")
    merger_age = replace.merge_many_(
        w, 10, [(torch.ones(3), 5, "a"), (torch.full((3,), 2.0), 30, "b")]
    )
    assert merger_age == 30 and replace.last_weight == 1.0 and torch.equal(w, torch.full((3,), 2.0))


def _peer(config: PeerConfig) -> Peer:
    torch.manual_seed(0)
    learner = Learner(
        nn.Linear(4, 2), LocalData(X, Y), LearnerConfig(lr=0.1, batch_size=8, device="cpu"), seed=1
    )
    rng = np.random.default_rng(0)
    network = SimNetwork(NetworkConfig(delay="0.01"), learner.state.schema, rng)
    peer = Peer(
        "p0", learner, UniformSampler("p0", ["p0"], rng), network.transport("p0"), config, rng
    )
    network.online.add("p0")
    return peer


def _offer_all(peer: Peer, messages: list[ModelMessage], then: float = 0.0) -> None:
    async def scenario() -> None:
        peer.start()
        for m in messages:
            assert peer.offer(m) is None
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        await asyncio.sleep(then)
        await peer.stop()

    run_virtual(scenario())


def test_with_merge_k_models_wait_for_company_then_merge_in_one_average() -> None:
    peer = _peer(PeerConfig(merge_k=3, train_on="receive", local_steps=0, screen_distance=0,
                            period=100.0, age_guard=AgeGuard("off")))  # fmt: skip
    peer.learner.state.flat.zero_()
    peer.learner.state.age = 10
    ones = torch.ones_like(peer.learner.state.flat)
    msgs = [ModelMessage(f"s{i}", 10 * (i + 1), ones * (i + 1), 10) for i in range(2)]
    _offer_all(peer, msgs)
    assert peer.counters.merges == 0 and peer.learner.state.age == 10  # still waiting
    peer = _peer(PeerConfig(merge_k=3, train_on="receive", local_steps=0, screen_distance=0,
                            period=100.0, age_guard=AgeGuard("off")))  # fmt: skip
    peer.learner.state.flat.zero_()
    peer.learner.state.age = 10
    msgs = [ModelMessage(f"s{i}", 10 * (i + 1), ones * (i + 1), 10) for i in range(3)]
    _offer_all(peer, msgs)
    # (10*0 + 10*1 + 20*2 + 30*3) / 70 = 2
    assert peer.counters.merges == 3 and peer.learner.state.age == 30
    torch.testing.assert_close(peer.published().flat, ones * 2)
    assert len(peer.merge_latencies) == 3


def test_with_the_timer_waiting_models_are_merged_before_its_step() -> None:
    peer = _peer(PeerConfig(merge_k=8, local_steps=1, screen_distance=0, period=1.0, jitter=0.0))
    assert peer.config.train_on == "timer"
    flat = peer.learner.state.flat.clone()
    _offer_all(peer, [ModelMessage("s0", 50, flat + 0.1, 10)], then=1.0)
    assert peer.counters.merges == 1 and peer.counters.train_steps >= 1
    assert len(peer.merge_latencies) == 1


def test_train_then_merge_publishes_the_average_of_the_trained_and_received_model() -> None:
    # A zero model keeps the expected average simple: both screens would refuse it.
    config = PeerConfig(
        order="train-merge", train_on="receive", screen_distance=0, screen_low=0, period=100.0
    )
    peer = _peer(config)
    reference = _peer(config)  # the same learner: trains the same batch
    reference.learner.train(steps=1)
    trained, age = reference.learner.state.flat.clone(), reference.learner.state.age
    remote = torch.zeros_like(trained)
    _offer_all(peer, [ModelMessage("s0", age, remote, 10)])
    torch.testing.assert_close(peer.published().flat, (trained + remote) / 2)
    assert peer.counters.train_steps == 1


@pytest.mark.parametrize("kw", [{"order": "sideways"}, {"merge_k": 0}])
def test_bad_variant_settings_are_one_line(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as e:
        PeerConfig(**kw)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)
