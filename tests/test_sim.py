"""The simulator: reproducible bit for bit, balanced accounting, and the expected directions.

Scenarios are small (digits, tens of peers, tens of periods) so that the whole file runs in
well under a minute; the convergence checks that need 100 peers are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gossip.datasets import Dataset, load_dataset
from gossip.errors import GossipError
from sim.centralized import train_centralized
from sim.config import SimConfig
from sim.runner import Diverged, SimResult, build_world, run_simulation, run_world

DIGITS = load_dataset("digits")
# The classic protocol (push, one local step), so that the network's effects are plain to see.
SMALL = SimConfig(
    peers=16, periods=20, eval_every=5, model="logreg", lr=0.5, topology="regular:4",
    mode="push", local_steps=1,
)  # fmt: skip


def _run(config: SimConfig, out: Path | None = None, dataset: Dataset = DIGITS) -> SimResult:
    return run_simulation(config, out, dataset=dataset)


def _balanced(result: SimResult) -> bool:
    f = result.final
    return f["messages_sent"] == (
        f["messages_delivered"]
        + f["messages_dropped"]
        + f["messages_rejected"]
        + f["messages_in_flight"]
    )


def test_same_seed_gives_byte_identical_metrics_and_parameters(tmp_path: Path) -> None:
    config = SMALL.replace(loss=0.1, churn="markov:0.8:5", delay="exponential:0.2")
    a, b = _run(config, tmp_path / "a"), _run(config, tmp_path / "b")
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() == (
        tmp_path / "b" / "metrics.jsonl"
    ).read_bytes()
    hashes_a = [p.learner.state.param_hash() for p in a.world.peers]
    assert hashes_a == [p.learner.state.param_hash() for p in b.world.peers]
    c = _run(config.replace(seed=1))
    assert [p.learner.state.param_hash() for p in c.world.peers] != hashes_a


def test_outputs_are_written(tmp_path: Path) -> None:
    _run(SMALL, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["period"] for r in records] == [0, 5, 10, 15, 20]
    for key in (
        "time",
        "acc_mean",
        "acc_min",
        "acc_max",
        "consensus",
        "messages_sent",
        "bytes_sent",
    ):
        assert key in records[-1]
    config = json.loads((tmp_path / "config.json").read_text())
    assert SimConfig(**config) == SMALL  # enough to rerun
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["wall_s"] > 0 and summary["graph"]["nodes"] == 16
    for png in ("accuracy.png", "consensus.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_happens() -> None:
    result = _run(SMALL)
    first, last = result.records[0], result.final
    assert first["acc_mean"] < 0.2 and last["acc_mean"] > 0.7
    assert last["age_min"] > 0 and last["merges"] > 0


@pytest.mark.parametrize(
    "changes",
    [
        {"loss": 0.3},
        {"churn": "markov:0.6:4"},
        {"churn": "crash:5:0.25"},
        {"churn": "crash-recover:5:0.5:5"},
        {"partitions": "split:3:12:3"},
        {"mode": "push-pull", "loss": 0.2},
        {"codec": "int8", "loss": 0.1},
        {"delay": "exponential:2.0"},
    ],
)
def test_message_accounting_balances(changes: dict[str, object]) -> None:
    result = _run(SMALL.replace(**changes))
    assert _balanced(result)
    assert result.summary["message_accounting_balanced"]
    assert result.final["messages_sent"] > 0


def test_loss_drops_messages_and_slows_learning() -> None:
    base, lossy = _run(SMALL), _run(SMALL.replace(loss=0.5))
    assert lossy.final["dropped_by_reason"]["loss"] > 0.4 * lossy.final["messages_sent"]
    assert lossy.final["age_mean"] < base.final["age_mean"]  # fewer receipts, fewer updates
    assert lossy.records[2]["acc_mean"] < base.records[2]["acc_mean"]


def test_delay_leaves_messages_in_flight_and_slows_learning() -> None:
    base, slow = _run(SMALL), _run(SMALL.replace(delay="constant:3.0"))
    assert slow.final["messages_in_flight"] > base.final["messages_in_flight"]
    assert slow.records[1]["acc_mean"] < base.records[1]["acc_mean"]


def test_partition_drops_cross_messages_and_slows_consensus() -> None:
    config = SMALL.replace(topology="complete", periods=20)
    base, split = _run(config), _run(config.replace(partitions="split:0:20:2"))
    assert split.final["dropped_by_reason"]["partition"] > 0
    assert split.final["consensus"] > base.final["consensus"]


def test_churn_takes_peers_offline_and_slows_learning() -> None:
    base, churny = _run(SMALL), _run(SMALL.replace(churn="markov:0.5:3"))
    assert churny.final["dropped_by_reason"].get("offline", 0) > 0
    assert min(r["peers_online"] for r in churny.records) < SMALL.peers
    assert churny.final["age_mean"] < base.final["age_mean"]


def test_crash_stop_keeps_peers_down_and_crash_recover_brings_them_back() -> None:
    crash = _run(SMALL.replace(churn="crash:5:0.25"))
    assert crash.final["peers_online"] == 12
    recover = _run(SMALL.replace(churn="crash-recover:5:0.25:3"))
    assert recover.records[-1]["peers_online"] == 16


def test_real_fp32_codec_changes_nothing_but_bytes() -> None:
    off, fp32 = _run(SMALL), _run(SMALL.replace(codec="fp32"))
    assert [r["acc_mean"] for r in off.records] == [r["acc_mean"] for r in fp32.records]
    assert [p.learner.state.param_hash() for p in off.world.peers] == [
        p.learner.state.param_hash() for p in fp32.world.peers
    ]
    assert fp32.final["bytes_sent"] > 0
    assert fp32.final["rejected_by_reason"] == off.final["rejected_by_reason"]


def test_int8_codec_sends_about_a_quarter_of_the_bytes() -> None:
    fp32, int8 = _run(SMALL.replace(codec="fp32")), _run(SMALL.replace(codec="int8"))
    ratio = (
        int8.final["bytes_sent"]
        / int8.final["messages_sent"]
        / (fp32.final["bytes_sent"] / fp32.final["messages_sent"])
    )
    # A quarter of the tensor bytes, plus a header that is a visible share for a 650-value model.
    assert 0.25 < ratio < 0.4
    assert int8.final["acc_mean"] > 0.6


def test_consensus_shrinks_faster_on_complete_than_ring() -> None:
    config = SMALL.replace(peers=32, periods=20, lr=0.5)
    complete, ring = (
        _run(config.replace(topology="complete")),
        _run(config.replace(topology="ring")),
    )
    assert complete.final["consensus"] < 0.5 * ring.final["consensus"]
    assert complete.summary["graph"]["spectral_gap"] > ring.summary["graph"]["spectral_gap"]


def test_eval_peers_samples_a_fixed_subset() -> None:
    result = _run(SMALL.replace(eval_peers=5))
    assert result.final["peers_evaluated"] == 5


@pytest.mark.slow
def test_iid_gossip_comes_within_five_points_of_centralized() -> None:
    config = SimConfig(
        peers=100,
        topology="regular:4",
        model="mlp",
        partition="iid",
        periods=300,
        lr=0.5,
        eval_every=100,
        eval_peers=0,
    )
    gossip = _run(config)
    central = train_centralized(config, dataset=DIGITS)
    assert gossip.final["acc_mean"] >= central.accuracy - 0.05, (
        gossip.final["acc_mean"],
        central.accuracy,
    )


@pytest.mark.slow
def test_gossip_beats_training_alone_on_label_skew() -> None:
    config = SimConfig(
        peers=50,
        topology="regular:4",
        model="logreg",
        partition="dirichlet:0.1",
        periods=60,
        eval_every=30,
        lr=0.5,
    )
    gossip, alone = _run(config), _run(config.replace(merge="none"))
    assert gossip.final["acc_mean"] > alone.final["acc_mean"] + 0.3, (
        gossip.final["acc_mean"],
        alone.final["acc_mean"],
    )


def test_the_average_model_is_evaluated_and_beats_the_mean_peer_early() -> None:
    result = _run(SMALL.replace(periods=10))
    f = result.final
    assert 0 <= f["acc_avgmodel"] <= 1 and f["loss_avgmodel"] > 0
    # Early on, the peers' models are noisy around their average: the average is better.
    assert f["acc_avgmodel"] > f["acc_mean"]


def test_with_one_peer_the_average_model_is_that_peer() -> None:
    result = _run(SMALL.replace(peers=2, topology="complete", merge="none", periods=5))
    # Two peers training alone: the average is not either of them, but with identical
    # shards' figures bounded by the two; check the one-model identity on a sampled peer.
    world = result.world
    world.observer.attackers = frozenset({1})  # only peer 0 counts as honest
    acc, loss = world.observer.average_model_accuracy()
    own = world.peers[0].learner.evaluate(world.observer.x_test, world.observer.y_test)
    assert (acc, loss) == pytest.approx((own.accuracy, own.loss))


def test_eval_samples_evaluates_on_a_fixed_subset_of_the_test_split() -> None:
    config = SMALL.replace(periods=5, eval_samples=50)
    a, b = _run(config), _run(config)
    assert len(a.world.observer.y_test) == 50
    assert a.records == b.records  # the same subset from the seed
    full = _run(SMALL.replace(periods=5))
    # Evaluating is observation only: the models are the same, the figures differ.
    assert a.final["consensus"] == full.final["consensus"]
    assert a.final["acc_mean"] != full.final["acc_mean"]
    with pytest.raises(GossipError):
        SimConfig(eval_samples=-1)


def test_a_run_whose_loss_is_not_finite_says_so_in_one_line_and_stops(tmp_path: Path) -> None:
    # Whatever the cause (peers roll non-finite models back, but a loss can still overflow),
    # a non-finite test loss ends the run at that evaluation.
    config = SMALL.replace(periods=20, eval_every=5)
    world = build_world(config, DIGITS)
    for p in world.peers:
        p.learner.state.flat.fill_(float("nan"))
    with pytest.raises(Diverged) as e:
        run_world(world, tmp_path / "out")
    message = str(e.value)
    assert "\n" not in message and "diverged at period 0" in message and "--lr" in message
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["loss_mean"] is None


def test_a_bare_cosine_schedule_ends_at_the_runs_final_age() -> None:
    config = SMALL.replace(lr_schedule="cosine")
    # 16 peers share 1,437 digits: 89 or 90 samples each, so a step sees the batch of 32.
    result = _run(config)
    schedule = result.world.peers[0].learner.schedule
    assert schedule.kind == "cosine"
    # The peers' mean age at the end (replayed by the schedule pass), about twice the
    # samples one peer trains on (final_age): merges take the larger age.
    assert schedule.scale == pytest.approx(result.final["age_mean"], rel=0.02)
    assert schedule.scale > 1.5 * config.final_age(32) == 1.5 * 32 * 20
    # push-pull receives twice per period; both trains on each receipt and on the timer.
    both = SMALL.replace(train_on="both", mode="push-pull", local_steps=2)
    assert both.final_age(10) == 3 * 2 * 10 * 20


def test_one_peer_whose_loss_overflows_is_counted_not_fatal() -> None:
    world = build_world(SMALL.replace(periods=5), DIGITS)
    world.peers[3].learner.state.flat.fill_(float("nan"))
    record = world.observer.record(0.0, 0)
    assert record["loss_nonfinite"] == 1 and record["loss_mean"] is not None
    assert json.loads(json.dumps(record, allow_nan=False)) == record  # valid JSON


def test_diverged_survives_a_process_pool() -> None:
    import pickle

    e = pickle.loads(pickle.dumps(Diverged("training diverged at period 3", [{"period": 3}])))
    assert str(e) == "training diverged at period 3" and e.records == [{"period": 3}]


def _grouped_npz(tmp_path: Path) -> Path:
    """8 groups whose labels follow opposite rules: group g labels x by sign(x0) flipped for
    odd g. A peer holding one group can be right on its own test samples and wrong on half of
    everybody's."""
    rng = np.random.default_rng(0)

    def split(n_per: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = rng.normal(size=(8 * n_per, 4)).astype(np.float32)
        g = np.repeat(np.arange(8), n_per)
        y = ((x[:, 0] > 0) ^ (g % 2 == 1)).astype(np.int64)
        return x, y, g

    x, y, g = split(40)
    xt, yt, gt = split(10)
    path = tmp_path / "grouped.npz"
    np.savez(path, x=x, y=y, groups=g, x_test=xt, y_test=yt, groups_test=gt)
    return path


def test_natural_partitions_report_each_peers_accuracy_on_its_own_groups(tmp_path: Path) -> None:
    path = _grouped_npz(tmp_path)
    config = SimConfig(
        dataset=f"npz:{path}", partition="natural", peers=8, topology="ring", model="logreg",
        merge="none", periods=30, eval_every=10, lr=0.5, mode="push", local_steps=1,
    )  # fmt: skip
    result = run_simulation(config)
    f = result.final
    # Alone on one group each, peers learn their own rule: right locally, at chance globally.
    assert f["acc_local_mean"] > 0.85 and f["acc_local_min"] > 0.6
    assert f["acc_mean"] < 0.65
    observer = result.world.observer
    assert sorted(observer.local_tests) == list(range(8))
    assert all(len(y) == 10 for _, y in observer.local_tests.values())
    # Without groups in the test split, or for other partitions, there is nothing to report.
    iid = run_simulation(config.replace(partition="iid", periods=5)).final
    assert iid["acc_local_mean"] is None


def test_groups_test_must_match_the_test_split(tmp_path: Path) -> None:
    path = _grouped_npz(tmp_path)
    arrays = dict(np.load(path))
    arrays["groups_test"] = arrays["groups_test"][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(GossipError, match="groups_test"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
