"""FedAvg on the simulated network: the same data, model, seeds and message accounting."""

from __future__ import annotations

import pytest
import torch

from gossip.datasets import load_dataset
from gossip.errors import ConfigError
from gossip.learner import Learner, LocalData
from gossip.models import build_model_for
from gossip.partition import partition, partition_generator
from gossip.seeding import peer_torch_seed
from sim.config import SimConfig
from sim.fedavg import FedAvgRun
from sim.runner import SimResult, run_simulation

DIGITS = load_dataset("digits")
FED = SimConfig(
    algorithm="fedavg", peers=20, clients_per_round=5, local_steps=3, periods=12,
    eval_every=4, model="logreg", lr=0.3, delay="constant:0.01",
)  # fmt: skip


def _run(config: SimConfig) -> SimResult:
    return run_simulation(config, dataset=DIGITS)


def _global(result: SimResult) -> torch.Tensor:
    world = result.world
    assert isinstance(world, FedAvgRun) and world.server is not None
    return world.server.state.flat


def test_one_client_with_full_participation_is_centralized_sgd_on_the_same_batches() -> None:
    config = FED.replace(peers=1, clients_per_round=0, local_steps=4, periods=6)
    result = _run(config)
    # The same learner, data and batch order trained 6 rounds x 4 steps without a network.
    parts = partition(DIGITS.y_train.numpy(), 1, "iid", partition_generator(config.seed))
    learner = Learner(
        build_model_for(config.model, DIGITS, config.seed),
        LocalData(DIGITS.x_train, DIGITS.y_train, torch.as_tensor(parts[0])),
        config.learner_config(float(config.batch_size)),
        seed=peer_torch_seed(config.seed, 0),
    )
    learner.train(steps=24)
    assert torch.equal(_global(result), learner.state.flat)
    assert result.final["round"] == 6 and result.final["messages_sent"] == 12


def test_every_transfer_both_ways_is_counted_like_gossips() -> None:
    result = _run(FED)
    f = result.final
    # 12 rounds (periods 0..11), 5 clients each, a model down and a model up.
    assert f["round"] == 12 and f["messages_sent"] == f["messages_delivered"] == 12 * 5 * 2
    per_message = result.world.network._fp32_bytes
    assert f["bytes_sent"] == f["messages_sent"] * per_message
    assert result.summary["message_accounting_balanced"]
    assert f["merges"] == 12 * 5  # every reply averaged in


def test_a_real_codec_and_lost_messages_go_through_the_network_model() -> None:
    result = _run(FED.replace(loss=0.3, codec="int8"))
    f = result.final
    assert 0 < f["dropped_by_reason"]["loss"] < f["messages_sent"]
    assert f["merges"] < 12 * 5 and result.summary["message_accounting_balanced"]
    assert f["bytes_sent"] < f["messages_sent"] * result.world.network._fp32_bytes / 2


def test_late_replies_are_refused_as_stale() -> None:
    # Replies take 1.5 periods: every one misses its round's deadline.
    result = _run(FED.replace(delay="constant:0.75"))
    f = result.final
    assert f["merges"] == 0 and f["rejected_by_reason"].get("stale", 0) > 0
    assert result.summary["message_accounting_balanced"]


def test_offline_clients_are_not_chosen_and_lose_what_they_were_sent() -> None:
    result = _run(FED.replace(churn="crash:4.5:0.5", periods=20, clients_per_round=0))
    f = result.final
    assert f["peers_online"] == 10
    world = result.world
    assert isinstance(world, FedAvgRun)
    down = [c for c in world.clients if c.peer_id not in world.network.online]
    # Crashed at t=4.5: they trained in the rounds of t=0..4, never after.
    assert len(down) == 10 and all(c.counters.train_steps == 5 * 3 for c in down)
    assert all(c.counters.train_steps == 20 * 3 for c in world.clients if c not in down)


def test_fedavg_is_reproducible_and_learns() -> None:
    a, b = _run(FED), _run(FED)
    assert a.records == b.records and torch.equal(_global(a), _global(b))
    assert a.final["acc_mean"] > a.records[0]["acc_mean"] + 0.3
    assert a.final["acc_avgmodel"] == a.final["acc_mean"]


def test_fedprox_keeps_local_models_closer_to_the_global_one() -> None:
    plain = _run(FED.replace(partition="shards:2", local_steps=10))
    prox = _run(FED.replace(partition="shards:2", local_steps=10, prox_mu=1.0))
    assert prox.final["consensus"] < plain.final["consensus"]


@pytest.mark.parametrize(
    "kw",
    [{"algorithm": "fedsgd"}, {"clients_per_round": -1}, {"prox_mu": -1.0},
     {"prox_mu": 0.1, "optimizer": "adam"}],
)  # fmt: skip
def test_bad_fedavg_settings_are_one_line(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as e:
        FED.replace(**kw)
    assert "\n" not in str(e.value)


def test_attacks_are_for_gossip_only() -> None:
    with pytest.raises(ConfigError, match="gossip only"):
        _run(FED.replace(attack="sign-flip:0.1"))
