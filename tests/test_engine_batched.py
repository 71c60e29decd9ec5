"""The batched engine runs the asyncio engine's simulation: the same events, the same numbers.

For each scenario both engines run the same configuration and seed. Message accounting,
drops by reason, merges, training steps, age caps and every peer's age are compared exactly
at every evaluation point; parameters to float tolerance (the engines sum gradients in a
different order): max |w_batched - w_asyncio| <= 1e-5 * max |w_asyncio| after the run; then
accuracy and consensus follow.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from gossip.errors import ConfigError, GossipError
from sim.config import SimConfig
from sim.engines import choose_engine
from sim.engines.batched import unsupported
from sim.runner import SimResult, run_simulation

BASE: dict[str, Any] = dict(
    peers=12, periods=12, eval_every=4, model="logreg", screen=0, screen_distance=0, seed=3
)
FLOAT_KEYS = {
    "acc_mean", "acc_min", "acc_max", "acc_p10", "acc_p50", "acc_p90", "loss_mean",
    "acc_honest_mean", "acc_honest_min", "acc_avgmodel", "loss_avgmodel", "consensus",
    "consensus_honest",
}  # fmt: skip


def _both(**kw: Any) -> tuple[SimResult, SimResult]:
    fields = {**BASE, **kw}
    a = run_simulation(SimConfig(engine="asyncio", **fields))
    b = run_simulation(SimConfig(engine="batched", **fields))
    assert a.summary["engine"] == "asyncio" and b.summary["engine"] == "batched"
    return a, b


def _assert_same(a: SimResult, b: SimResult, rel: float = 1e-5) -> None:
    assert len(a.records) == len(b.records)
    for ra, rb in zip(a.records, b.records, strict=True):
        exact = {k: v for k, v in ra.items() if k not in FLOAT_KEYS}
        assert exact == {k: rb[k] for k in exact}, f"period {ra['period']}"
        # One test sample more or less right moves an accuracy by 1/len(test).
        for key in ("acc_mean", "acc_avgmodel"):
            assert rb[key] == pytest.approx(ra[key], abs=2 / 360)
        assert rb["consensus"] == pytest.approx(ra["consensus"], rel=1e-3, abs=1e-9)
    wa = torch.stack([p.learner.state.flat for p in a.world.peers])  # type: ignore[union-attr]
    wb = b.world.peers_state.W  # type: ignore[union-attr]
    scale = float(wa.abs().max())
    assert float((wa - wb).abs().max()) <= rel * scale
    ages = [p.learner.state.age for p in a.world.peers]  # type: ignore[union-attr]
    assert ages == b.world.schedule.evals[-1].ages.tolist()  # type: ignore[union-attr]
    assert a.summary["message_accounting_balanced"] and b.summary["message_accounting_balanced"]


def test_the_plain_scenario_matches_exactly() -> None:
    a, b = _both()
    _assert_same(a, b)
    assert b.records[-1]["merges"] > 0 and b.records[-1]["train_steps"] > 0


@pytest.mark.parametrize(
    "kw",
    [
        {"loss": 0.2, "sampler": "uniform", "topology": "complete"},
        {"partitions": "split:3:7", "delay": "exponential:0.2"},
        {"delay": "constant:0.3", "bandwidth": 20_000.0},
        {"merge": "average"},
        {"merge": "replace"},
        {"merge": "none"},
        {"age_guard": "refuse", "lr_schedule": "inverse:200"},
        {"age_guard": "off", "weight_decay": 0.01, "local_steps": 3},
        {"partition": "dirichlet:0.3", "topology": "ring"},
        {"eval_peers": 5, "eval_samples": 100},
        # Timers and pushes at the same instants: the heap replay orders them, not the sort.
        {"jitter": 0.0, "delay": "0"},
        {"sampler": "neighbours", "topology": "erdos-renyi:0.15", "allow_disconnected": True},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_scenarios_match(kw: dict[str, Any]) -> None:
    a, b = _both(**kw)
    _assert_same(a, b)


def test_age_caps_match() -> None:
    """Skewed shard sizes age peers unevenly: the age guard caps merges, on exactly the same
    merges in the schedule pass as in the asyncio peers (no other scenario here caps any)."""
    a, b = _both(partition="dirichlet:0.1")
    assert a.records[-1]["age_capped"] > 0
    _assert_same(a, b)


def test_minibatches_smaller_than_the_shard_are_the_same_batches() -> None:
    # 3 peers hold ~480 samples each: batches of 32 are drawn from each peer's generator.
    a, b = _both(peers=3, topology="complete", batch_size=32, local_steps=2)
    _assert_same(a, b)


def test_mlp_matches() -> None:
    a, b = _both(model="mlp", lr=0.2)
    _assert_same(a, b, rel=1e-4)


def test_a_model_that_is_not_a_dense_stack_takes_vmap_and_matches() -> None:
    a, b = _both(model="cnn", peers=6, periods=6, eval_every=3, lr=0.1)
    assert b.world.peers_state.dense is None  # type: ignore[union-attr]
    _assert_same(a, b, rel=1e-4)


def test_unsupported_options_are_named_in_one_line() -> None:
    assert unsupported(SimConfig()) == "the norm screen (pass --screen 0)"
    assert unsupported(SimConfig(**BASE)) is None
    for kw, word in [
        ({"mode": "push-pull"}, "--mode push-pull"),
        ({"train_on": "receive"}, "--train-on receive"),
        ({"merge": "clipped"}, "--merge clipped"),
        ({"attack": "sign-flip:0.1"}, "--attack"),
        ({"churn": "markov:0.9:20"}, "--churn"),
        ({"codec": "int8"}, "--codec int8"),
        ({"momentum": 0.9}, "--momentum"),
        ({"merge_k": 2}, "--merge-k 2"),
        ({"model": "charlstm:hidden=8", "dataset": "shakespeare"}, "--model charlstm"),
    ]:
        config = SimConfig(**{**BASE, **kw})
        assert word in (unsupported(config) or "")
        if "dataset" in kw:  # (refused before its data would be read)
            continue
        with pytest.raises(GossipError) as info:
            run_simulation(SimConfig(**{**BASE, **kw, "engine": "batched"}))
        assert "\n" not in str(info.value) and "--engine asyncio" in str(info.value)


def test_auto_picks_batched_when_supported_and_says_why_not_otherwise() -> None:
    assert choose_engine(SimConfig(**BASE, engine="auto")) == ("batched", None)
    assert choose_engine(SimConfig(engine="auto")) == (
        "asyncio",
        "the norm screen (pass --screen 0)",
    )
    result = run_simulation(SimConfig(engine="auto", peers=6, periods=2, eval_every=2))
    assert result.summary["engine"] == "asyncio"
    assert result.summary["batched_unsupported"] == "the norm screen (pass --screen 0)"
    with pytest.raises(ConfigError, match="unknown engine 'fast'"):
        SimConfig(engine="fast")


def test_the_cli_runs_the_engine_it_is_asked_for(tmp_path: Any) -> None:
    import json

    from typer.testing import CliRunner

    from sim.cli import app

    small = ["--peers", "8", "--periods", "4", "--eval-every", "2", "--model", "logreg"]
    runner = CliRunner()
    result = runner.invoke(
        app, ["run", *small, "--engine", "batched", "--screen", "0", "--screen-distance", "0",
              "--out", str(tmp_path / "b")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["engine"] == "batched"
    refused = runner.invoke(app, ["run", *small, "--engine", "batched", "--out", str(tmp_path)])
    assert refused.exit_code != 0
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert lines == [
        "error: the batched engine does not support the norm screen (pass --screen 0) yet; use "
        "--engine asyncio"
    ]


def test_the_peer_layout_of_the_data_gives_the_same_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards laid out by peer (a wave gathers one row a peer) or gathered sample by sample
    (data too large for the copy): the same parameters bit for bit, with peers that take
    their whole shard and peers that draw minibatches in one run, over several steps."""
    from sim.engines.batched import compute

    kw = {**BASE, "partition": "dirichlet:0.3", "batch_size": 100, "local_steps": 2}
    laid = run_simulation(SimConfig(engine="batched", **kw))
    stacked = laid.world.peers_state  # type: ignore[union-attr]
    assert stacked.x_peer is not None
    assert stacked.minibatch.any() and not stacked.minibatch.all()
    monkeypatch.setattr(compute, "PEER_LAYOUT_BYTES", 0)
    gathered = run_simulation(SimConfig(engine="batched", **kw))
    assert gathered.world.peers_state.x_peer is None  # type: ignore[union-attr]
    assert torch.equal(stacked.W, gathered.world.peers_state.W)  # type: ignore[union-attr]
    reference = run_simulation(SimConfig(engine="asyncio", **kw))
    _assert_same(reference, laid)


@pytest.mark.parametrize("walker", ["levels", "compiled"])
def test_every_state_walker_runs_the_engine_as_the_asyncio_one(
    walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine with its state pass forced to the level walk (which these 12 peers are too
    narrow for by default) or to numba's matches the asyncio engine, records and ages exactly,
    parameters to float tolerance: the walkers are held to the Python walk elsewhere, this
    holds the engine that consumes them (the age guard caps here, so credits matter)."""
    from sim.engines.batched import levels, state

    monkeypatch.setattr(state, "pick_walker", lambda size: walker)
    monkeypatch.setattr(levels, "MIN_WIDTH", 0)
    a, b = _both(partition="dirichlet:0.1", loss=0.1)
    assert a.records[-1]["age_capped"] > 0
    _assert_same(a, b)
