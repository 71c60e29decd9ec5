"""The asyncio Peer on the virtual-time loop, over the simulated network (real codec)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from torch import nn

from gossip.age_guard import AgeGuard
from gossip.errors import ConfigError
from gossip.learner import Learner, LearnerConfig, LocalData
from peers.peer import Peer, PeerConfig
from peers.transport import ModelMessage
from sampling.uniform import UniformSampler
from sim.clock import run_virtual
from sim.network import NetworkConfig, SimNetwork

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long()


def _peers(
    n: int = 2,
    config: PeerConfig | None = None,
    net: NetworkConfig | None = None,
    data: list[torch.Tensor] | None = None,
) -> tuple[list[Peer], SimNetwork]:
    ids = [f"p{i}" for i in range(n)]
    peers: list[Peer] = []
    network = None
    for i in range(n):
        torch.manual_seed(0)
        rows = data[i] if data else torch.arange(i, 64, n)
        learner = Learner(
            nn.Linear(4, 2),
            LocalData(X, Y, rows),
            LearnerConfig(lr=0.1, batch_size=8, device="cpu"),
            seed=i,
        )
        if network is None:
            network = SimNetwork(
                net or NetworkConfig(delay="0.01", codec="fp32"),
                learner.state.schema,
                np.random.default_rng(0),
            )
        rng = np.random.default_rng(100 + i)
        peer = Peer(
            ids[i],
            learner,
            UniformSampler(ids[i], ids, rng),
            network.transport(ids[i]),
            config or PeerConfig(),
            rng,
        )
        peers.append(peer)
        network.online.add(ids[i])
    assert network is not None
    return peers, network


async def _run_for(peers: list[Peer], seconds: float) -> None:
    for p in peers:
        p.start()
    await asyncio.sleep(seconds)
    await asyncio.gather(*(p.stop() for p in peers))


def test_two_peers_exchange_and_both_ages_grow() -> None:
    peers, network = _peers()
    run_virtual(_run_for(peers, 10.0))
    for p in peers:
        assert p.counters.pushes >= 9
        assert p.counters.merges >= 8
        assert p.learner.state.age > 0
    assert network.stats.delivered == sum(p.counters.accepted for p in peers)
    assert network.stats.balanced()


def test_received_model_is_merged_by_age() -> None:
    # Merge arithmetic on a hand-set model: the distance screen (tested apart) is off.
    # No local steps give the age guard a burst of 10 samples: it is tested apart, so off.
    (peer,), _ = _peers(1, PeerConfig(local_steps=0, screen_distance=0, age_guard=AgeGuard("off")))
    peer.learner.state.flat.zero_()
    peer.learner.state.age = 10

    async def scenario() -> None:
        peer.start()
        assert (
            peer.offer(ModelMessage("p9", 30, torch.ones_like(peer.learner.state.flat), 100))
            is None
        )
        await asyncio.sleep(0)  # let the inbox worker run
        await asyncio.sleep(0)
        await peer.stop()

    run_virtual(scenario())
    assert torch.allclose(peer.learner.state.flat, torch.full_like(peer.learner.state.flat, 0.75))
    assert peer.learner.state.age == 30
    assert peer.published().age == 30  # the published snapshot follows the merge


def test_full_inbox_refuses_as_busy_and_offline_peer_refuses() -> None:
    (peer,), _ = _peers(1, PeerConfig(inbox_size=2))
    msg = ModelMessage("p9", 1, peer.learner.state.flat.clone(), 10)
    assert peer.offer(msg) == "offline"

    async def scenario() -> list[str | None]:
        peer.start()
        outcomes = [peer.offer(msg) for _ in range(4)]  # the worker has not run yet
        await peer.stop()
        return outcomes

    assert run_virtual(scenario()) == [None, None, "busy", "busy"]
    assert peer.counters.rejected == {"offline": 1, "busy": 2}


def test_stop_keeps_the_model_and_restart_resumes() -> None:
    peers, _ = _peers()
    run_virtual(_run_for(peers, 5.0))
    age, flat = peers[0].learner.state.age, peers[0].learner.state.flat.clone()
    assert not peers[0].running
    run_virtual(_run_for(peers, 5.0))
    assert peers[0].learner.state.age > age
    assert not torch.equal(peers[0].learner.state.flat, flat)


def test_sending_shares_the_published_snapshot_without_copying() -> None:
    peers, _ = _peers()
    snap = peers[0].published()
    assert snap.flat.data_ptr() != peers[0].learner.state.flat.data_ptr()  # immutable copy
    assert peers[0].published() is snap  # nothing changed: the same object is sent again


@pytest.mark.parametrize("mode", ["pull", "push-pull"])
def test_pull_modes_fetch_models(mode: str) -> None:
    peers, network = _peers(3, PeerConfig(mode=mode))
    run_virtual(_run_for(peers, 10.0))
    assert all(p.counters.pulls >= 9 for p in peers)
    assert all(p.counters.merges > 0 for p in peers)
    assert network.stats.balanced()


def test_timer_training_trains_without_receipts() -> None:
    # Alone in the network: nothing is ever received, yet it trains once per period.
    (peer,), _ = _peers(1, PeerConfig(train_on="timer", local_steps=2))
    run_virtual(_run_for([peer], 10.5))
    assert peer.counters.merges == 0
    assert peer.counters.train_steps == 2 * 10 and peer.learner.state.age == 2 * 10 * 8


def test_merge_none_trains_without_merging() -> None:
    peers, _ = _peers(2, PeerConfig(merge="none"))
    run_virtual(_run_for(peers, 10.0))
    for p in peers:
        assert p.counters.merges == 0
        assert p.counters.train_steps >= 8  # still trains on every receipt


def test_unreachable_peer_is_reported_to_the_sampler() -> None:
    peers, network = _peers(2, PeerConfig(mode="pull"))
    network.online.discard("p1")  # p1 never starts: pulls from it fail
    run_virtual(_run_for(peers[:1], 5.0))
    assert peers[0].counters.send_failed >= 4


@pytest.mark.parametrize(
    "kw",
    [
        {"period": 0},
        {"jitter": 1.0},
        {"mode": "gossip"},
        {"train_on": "never"},
        {"merge": "krum"},
        {"inbox_size": 0},
    ],
)
def test_bad_peer_config_is_one_line(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as e:
        PeerConfig(**kw)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)


def test_age_inflation_is_capped_or_refused() -> None:
    from gossip.age_guard import AgeGuard

    (peer,), _ = _peers(
        1,
        PeerConfig(
            local_steps=0, screen_distance=0, age_guard=AgeGuard("cap", rate=0.0, burst=100)
        ),
    )
    peer.learner.state.flat.zero_()
    peer.learner.state.age = 100
    liar = ModelMessage("p9", 10**12, torch.ones_like(peer.learner.state.flat), 10)

    async def scenario() -> None:
        peer.start()
        assert peer.offer(liar) is None
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await peer.stop()

    run_virtual(scenario())
    # Capped to 100 + a credit of 100: the liar gets weight 200 / 300, not ~1.
    assert torch.allclose(peer.learner.state.flat, torch.full_like(peer.learner.state.flat, 2 / 3))
    assert peer.counters.age_capped == 1 and peer.learner.state.age == 200

    (strict,), _ = _peers(1, PeerConfig(screen_distance=0, age_guard=AgeGuard("refuse")))

    async def refused() -> str | None:
        strict.start()
        reason = strict.offer(liar)
        await strict.stop()
        return reason

    assert run_virtual(refused()) == "age_inflation"
    assert strict.counters.rejected["age_inflation"] == 1


def test_a_float64_model_merges_float32_messages() -> None:
    x64, rng = X.double(), np.random.default_rng(0)
    learner = Learner(nn.Linear(4, 2).double(), LocalData(x64, Y), LearnerConfig(device="cpu"))
    network = SimNetwork(NetworkConfig(codec="fp32"), learner.state.schema, rng)
    peer = Peer(
        "p0",
        learner,
        UniformSampler("p0", ["p0"], rng),
        network.transport("p0"),
        PeerConfig(local_steps=1, screen_distance=0, train_on="receive"),
        rng,
    )
    learner.state.flat.zero_()
    learner.state.age = 10

    async def scenario() -> None:
        peer.start()
        peer.offer(ModelMessage("p1", 10, torch.ones(learner.state.flat.numel()), 10))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await peer.stop()

    run_virtual(scenario())
    assert learner.state.flat.dtype == torch.float64 and peer.counters.merges == 1
    assert peer.counters.train_steps == 1 and learner.state.age == max(10, 10) + 32


def _deliver(peer: Peer, *messages: ModelMessage) -> list[str | None]:
    """Offer messages to a started peer and let its worker merge them all."""

    async def scenario() -> list[str | None]:
        peer.start()
        reasons = [peer.offer(m) for m in messages]
        for _ in range(2 * len(messages) + 2):
            await asyncio.sleep(0)
        await peer.stop()
        return reasons

    return run_virtual(scenario())


def test_an_absurd_finite_model_never_kills_the_peer() -> None:
    """The reported attack: one push of 1e30s (any age, even 1) made a victim NaN for good."""
    (peer,), _ = _peers(1, PeerConfig(local_steps=1))
    flat = peer.published().flat
    huge = ModelMessage("mallory", 1, torch.full_like(flat, 1e30), 10)
    honest = ModelMessage("p1", 5, flat + 0.01, 10)
    assert _deliver(peer, huge, honest) == ["outlier", None]
    assert bool(torch.isfinite(peer.learner.state.flat).all())
    assert peer.counters.rejected["outlier"] == 1 and peer.counters.merges == 1


def test_without_screens_a_non_finite_result_is_rolled_back() -> None:
    (peer,), _ = _peers(
        1, PeerConfig(local_steps=1, screen=0, screen_distance=0, train_on="receive")
    )
    before = peer.published()
    # Finite in float32, but the merged model's logits overflow in the training step.
    huge = ModelMessage("mallory", 10**6, torch.full_like(before.flat, 3e38), 10)
    assert _deliver(peer, huge) == [None]
    assert peer.counters.rollbacks == 1
    assert torch.equal(peer.learner.state.flat, before.flat)
    assert peer.learner.state.age == before.age and peer.published().age == before.age
    # and it keeps learning from honest models afterwards
    assert _deliver(peer, ModelMessage("p1", 5, before.flat + 0.01, 10)) == [None]
    assert peer.counters.merges == 2 and bool(torch.isfinite(peer.learner.state.flat).all())


def test_training_on_the_timer_an_absurd_merge_is_rolled_back_at_the_next_step() -> None:
    """With --train-on timer a merge of finite but absurd values publishes a finite model
    that only the next training step turns non-finite: that step rolls back to the last
    model a step produced, not to the absurd one (which would fail every step after)."""
    (peer,), _ = _peers(1, PeerConfig(local_steps=1, screen=0, screen_distance=0))
    assert peer.config.train_on == "timer"
    peer._train_and_publish(0.0)  # a timer tick
    trained = peer.published()
    huge = ModelMessage("mallory", 10**6, torch.full_like(trained.flat, 3e38), 10)
    assert _deliver(peer, huge) == [None]
    assert peer.counters.merges == 1 and peer.counters.rollbacks == 0  # finite: published
    assert not torch.equal(peer.published().flat, trained.flat)
    peer._train_and_publish(0.0)  # the next tick: overflows, rolled back to the trained model
    assert peer.counters.rollbacks == 1
    assert torch.equal(peer.learner.state.flat, trained.flat)
    assert peer.published().age == trained.age == peer.learner.state.age
    for _ in range(3):  # not a dead model: every later step is finite and trains
        peer._train_and_publish(0.0)
    assert peer.counters.rollbacks == 1 and peer.counters.train_steps == 5
    assert bool(torch.isfinite(peer.learner.state.flat).all())


def test_forty_age_lies_do_not_ratchet_a_peer() -> None:
    (peer,), _ = _peers(1, PeerConfig(local_steps=0))
    flat = peer.published().flat
    lies = [ModelMessage(f"liar{i % 3}", 2**53 - 1, flat.clone(), 10) for i in range(40)]
    reasons: list[str | None] = []
    for start in range(0, 40, 8):  # in inbox-sized batches, all at the same instant
        reasons += _deliver(peer, *lies[start : start + 8])
    assert reasons == [None] * 40
    assert peer.learner.state.age <= peer.allowance.burst  # no time passed: no refill
    assert peer.counters.age_capped == 40


def test_an_attacker_publishes_poison_but_keeps_an_honest_model() -> None:
    (peer,), _ = _peers(1, PeerConfig(attack="sign-flip"))
    assert peer.attacker is not None
    assert torch.equal(peer.published().flat, -peer.learner.state.flat)
    _deliver(peer, ModelMessage("p1", 5, peer.learner.state.flat + 0.01, 10))
    assert torch.equal(peer.published().flat, -peer.learner.state.flat)
