"""The batched engine's parts against their references: the bulk event pass against the
event-by-event heap replay, the emulated numpy draws against numpy, the dense-stack kernel
against ``vmap(grad(...))``, and the wave plan's invariants."""

from __future__ import annotations

import dataclasses
from typing import Any

import networkx as nx
import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from gossip import seeding
from gossip.errors import GossipError
from sim.config import SimConfig
from sim.engines.batched import levels, pcg, state
from sim.engines.batched import schedule as S
from sim.engines.batched.compute import StackedPeers
from sim.engines.batched.kernels import DenseStack
from sim.engines.batched.waves import plan_waves
from sim.runner import evaluation_times

BASE = SimConfig(peers=30, periods=15, eval_every=5, screen=0, screen_distance=0)


def _net(config: SimConfig, message_bytes: int = 1000) -> S._Net:
    return S._Net(
        S.DelayModel.parse(config.delay), config.loss,
        S.PartitionEvent.parse_schedule(config.partitions),
        message_bytes / config.bandwidth if config.bandwidth else 0.0,
    )  # fmt: skip


def _both_paths(config: SimConfig, neighbours: Any = None) -> tuple[S.Events | None, S.Events]:
    records = S.record_times(evaluation_times(config))
    bulk = S._events_bulk(config, neighbours, _net(config), records)
    heap = S._events_heap(config, neighbours, _net(config), records)
    return bulk, heap


def _assert_equal(a: S.Events, b: S.Events) -> None:
    for name in ("kind", "peer", "ref", "outcome", "time"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape, name
        assert np.array_equal(x, y), name


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"loss": 0.2},
        {"delay": "0.05"},
        {"delay": "exponential:0.05"},
        {"partitions": "split:3:8"},
        {"partitions": "split:3:8:3", "loss": 0.3},
        {"jitter": 0.0},
        {"peers": 2},
        {"bandwidth": 1e5},
        {"seed": 7, "peers": 200},
        {"delay": "uniform:0.5:3"},
        {"period": 0.3, "jitter": 0.5},
        {"eval_every": 1},
        {"loss": 0.9, "delay": "uniform:0:0.01"},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults",
)
def test_the_bulk_events_are_the_heap_replays(kw: dict[str, Any]) -> None:
    bulk, heap = _both_paths(dataclasses.replace(BASE, **kw))
    assert bulk is not None, "this configuration should take the bulk path"
    _assert_equal(bulk, heap)
    assert (heap.kind == S.DELIVER).sum() > 0


@pytest.mark.parametrize(
    "graph",
    [nx.cycle_graph(30), nx.star_graph(29), nx.gnp_random_graph(30, 0.05, seed=1)],
    ids=["ring", "star (29 views of one)", "sparse (empty views)"],
)
def test_the_bulk_events_follow_topology_views(graph: nx.Graph) -> None:
    views = [sorted(graph.neighbors(i)) for i in range(30)]
    bulk, heap = _both_paths(dataclasses.replace(BASE, sampler="neighbours"), views)
    assert bulk is not None
    _assert_equal(bulk, heap)


@pytest.mark.parametrize(
    "kw",
    [
        {"jitter": 0.0, "delay": "0"},  # a push lands at the instant of another's timer
        {"delay": "0", "loss": 0.5},
        {"delay": "exponential:0.05", "loss": 0.1},  # draws interleave two distributions
    ],
)
def test_where_the_bulk_path_cannot_be_exact_the_heap_runs(kw: dict[str, Any]) -> None:
    config = dataclasses.replace(BASE, **kw)
    bulk, _ = _both_paths(config)
    assert bulk is None
    ev = S.events(config, None, 1000, evaluation_times(config))
    assert ev.path == "heap"


@pytest.mark.parametrize("k", [0, 1, 2, 3, 7, 1000, 999_983, 2**31 + 5])
def test_the_emulated_peer_draws_are_numpys(k: int) -> None:
    # 2**31 + 5 rejects about half of its Lemire draws: those peers go through numpy itself.
    sizes = np.full(9, k, dtype=np.int64)
    draws = S._peer_draws(11, sizes, 25)
    assert draws is not None
    first, choice, jitter = draws
    for i in range(9):
        f, c, j = S._peer_draws_numpy(11, i, k, 25)
        assert first[i] == f
        assert np.array_equal(choice[i], c)
        assert np.array_equal(jitter[i], j)


def test_a_wrong_emulation_is_caught_at_run_time() -> None:
    sizes = np.full(5, 10, dtype=np.int64)
    first, choice, jitter = S._peer_draws(0, sizes, 8)  # type: ignore[misc]
    assert S._agrees_with_numpy(0, sizes, first, choice, jitter)
    choice[0, 3] = (choice[0, 3] + 1) % 10
    assert not S._agrees_with_numpy(0, sizes, first, choice, jitter)


def _stack(module: nn.Module) -> DenseStack | None:
    return DenseStack.of(module, [name for name, _ in module.named_parameters()])


@pytest.mark.parametrize("hidden", [0, 1, 2])
def test_the_dense_kernel_is_vmap_grad(hidden: int) -> None:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten()]
    width = 12
    for _ in range(hidden):
        layers += [nn.Linear(width, 9), nn.ReLU()]
        width = 9
    module = nn.Sequential(*layers, nn.Linear(width, 5))
    stack = _stack(module)
    assert stack is not None
    specs = [(n, p.shape, p.numel()) for n, p in module.named_parameters()]
    b, t = 7, 6
    w = torch.randn(b, stack.numel) * 0.5
    x = torch.randn(b, t, 3, 4)
    y = torch.randint(0, 5, (b, t))
    m = torch.ones(b, t)
    m[2, 4:] = 0.0  # a padded peer

    def params(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, o = {}, 0
        for name, shape, numel in specs:
            out[name] = flat[:, o : o + numel].view(flat.shape[0], *shape)
            o += numel
        return out

    def loss(
        p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor
    ) -> torch.Tensor:
        ce = nn.functional.cross_entropy(functional_call(module, p, (xb,)), yb, reduction="none")
        return (ce * mb).sum() / mb.sum()

    want = vmap(grad(loss))(params(w), x, y, m)
    flat = torch.cat([want[n].reshape(b, -1) for n, _, _ in specs], dim=1)
    got = stack.grad(w, x.reshape(b, t, -1), y, m)
    assert torch.allclose(got, flat, atol=1e-6, rtol=1e-5)
    logits = stack.logits(w, x[0].reshape(t, -1))
    ref = vmap(lambda p: functional_call(module, p, (x[0],)))(params(w))
    assert torch.allclose(logits, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "module",
    [
        nn.Sequential(nn.Flatten(), nn.Conv2d(1, 2, 3)),
        nn.Sequential(nn.ReLU(), nn.Linear(4, 2)),
        nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)),
        nn.Sequential(nn.Linear(4, 3), nn.Flatten(), nn.Linear(3, 2)),
        nn.Sequential(nn.Flatten()),
        nn.Linear(4, 2),
    ],
)
def test_only_dense_stacks_get_the_kernel(module: nn.Module) -> None:
    assert _stack(module) is None


def test_a_linear_without_bias_is_a_dense_stack() -> None:
    module = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2))
    stack = _stack(module)
    assert stack is not None and stack.numel == 12 + 6 + 2


def test_nonfinite_peers_finds_nan_and_inf_but_not_a_large_finite_row() -> None:
    class Rows:
        W = torch.randn(6, 5)

    Rows.W[1, 2] = float("nan")
    Rows.W[3, 0] = float("-inf")
    Rows.W[4, :] = 3e38  # its sum overflows; every entry is finite
    assert StackedPeers.nonfinite_peers(Rows()) == [1, 3]  # type: ignore[arg-type]


def test_the_wave_plan_keeps_every_dependency() -> None:
    config = dataclasses.replace(BASE, peers=40, loss=0.1, delay="uniform:0.01:2")
    parts = [np.arange(i * 4, i * 4 + 4) for i in range(40)]
    sched = S.build_schedule(
        config, parts, None, S.LRSchedule.parse("constant"), 1000, evaluation_times(config)
    )
    plan = plan_waves(sched, 40)
    ev = sched.events
    # A merge runs in a later wave than the snapshot it reads.
    merges = np.nonzero(sched.merge_wave >= 0)[0]
    assert len(merges) > 0
    assert np.all(sched.merge_wave[merges] > sched.send_wave[ev.ref[merges]])
    # Each peer's operations keep their order (wave, phase merge < train < send).
    for p in range(40):
        ops = []
        for e in np.nonzero(ev.peer == p)[0]:
            for wave, phase in ((sched.merge_wave[e], 0), (sched.train_wave[e], 1),
                                (sched.send_wave[e], 2)):  # fmt: skip
                if wave >= 0:
                    ops.append((int(wave), phase))
        assert ops == sorted(ops) and len(set(ops)) == len(ops)
    # At most one operation of a kind per peer per wave; slots never shared while in flight.
    live: dict[int, int] = {}
    for w, wave in enumerate(plan.waves):
        for kind in (wave.merge_peer, wave.train_peer, wave.send_peer):
            assert len(set(kind.tolist())) == len(kind)
        # Snapshots first: a slot merged in this wave is not free again until the next
        # (a later chunk of the wave may still read it).
        for slot in wave.send_slot.tolist():
            assert slot not in live
            live[slot] = w
        for slot in wave.merge_slot.tolist():
            assert live.pop(slot) < w
        # The phases are runs of the wave's rows, each row a distinct peer.
        assert len(set(wave.peer.tolist())) == len(wave.peer)
        assert 0 <= wave.train_start <= wave.merge_end <= wave.train_end <= len(wave.peer)
        assert np.all(np.diff(wave.send_pos) > 0)
    assert not live  # every used snapshot was merged
    assert plan.pool_size <= int(sched.used.sum())


@pytest.mark.parametrize(
    ("n", "batch", "draws", "seed"),
    [(16, 8, 20, 0), (17, 5, 13, 3), (9, 9, 4, 1), (30, 7, 1, 2**40 + 7), (12, 20, 5, 4),
     (5, 2, 9, 11)],
)  # fmt: skip
def test_a_peers_minibatches_are_the_learners(n: int, batch: int, draws: int, seed: int) -> None:
    """All of a peer's batches drawn at once are the rows its real learner draws one step at
    a time: one permutation per epoch, the epoch's remainder skipped, through its indices."""
    from gossip.learner import Learner, LearnerConfig, LocalData

    indices = torch.randperm(100, generator=torch.Generator().manual_seed(5))[:n]
    learner = Learner(
        nn.Linear(2, 2), LocalData(torch.zeros(100, 2), torch.zeros(100, dtype=torch.long),
                                   indices),
        LearnerConfig(batch_size=batch, device="cpu"), seed=seed,
    )  # fmt: skip
    want = torch.stack([learner._next_rows() for _ in range(draws)])
    got = S.peer_batches(indices, batch, seed, draws)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert S.peer_batches(indices, batch, seed, 0).shape == (0, min(batch, n))


def _reference_plan(sched: S.Schedule) -> list[dict[str, Any]]:
    """The wave plan by its definition, one operation at a time in Python: a wave's rows are
    the peers with an operation in it, ordered by phase group (merge only, merge and train,
    train only, snapshot only), then by peer; its snapshots sorted by their rows' positions."""
    from sim.engines.batched.waves import assign_slots

    slot, _ = assign_slots(sched)
    ev = sched.events
    waves: list[dict[str, Any]] = [{"m": {}, "t": {}, "s": {}} for _ in range(sched.waves)]
    for e in range(len(ev.kind)):
        p = int(ev.peer[e])
        if sched.merge_wave[e] >= 0:
            waves[sched.merge_wave[e]]["m"][p] = e
        if sched.train_wave[e] >= 0:
            waves[sched.train_wave[e]]["t"][p] = e
        if sched.used[e]:
            waves[sched.send_wave[e]]["s"][p] = e
    out = []
    for w in waves:
        peers = set(w["m"]) | set(w["t"]) | set(w["s"])

        def group(p: int, w: dict[str, Any] = w) -> int:
            if p in w["m"]:
                return 1 if p in w["t"] else 0
            return 2 if p in w["t"] else 3

        rows = sorted(peers, key=lambda p: (group(p), p))
        merging = [p for p in rows if group(p) <= 1]
        training = [p for p in rows if group(p) in (1, 2)]
        sends = sorted((rows.index(p), p) for p in w["s"])
        out.append({
            "peer": rows, "merge_end": len(merging),
            "merge_slot": [int(slot[ev.ref[w["m"][p]]]) for p in merging],
            "merge_weight": [float(sched.merge_weight[w["m"][p]]) for p in merging],
            "train_start": sum(group(p) == 0 for p in rows),
            "train_end": sum(group(p) == 0 for p in rows) + len(training),
            "train_event": [w["t"][p] for p in training],
            "send_pos": [pos for pos, _ in sends],
            "send_slot": [int(slot[w["s"][p]]) for _, p in sends],
        })  # fmt: skip
    return out


@pytest.mark.parametrize(
    "kw",
    [
        {"loss": 0.1, "delay": "uniform:0.01:2"},
        {"local_steps": 0},
        {"merge": "none"},
        {"partitions": "split:3:7", "delay": "exponential:0.4"},
        {"peers": 2},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_the_wave_plan_is_its_definition(kw: dict[str, Any]) -> None:
    """The plan built for all waves at once by sorting equals the per-operation definition,
    field by field. Some shards are empty, so some peers never train (snapshot-only rows)."""
    config = dataclasses.replace(BASE, peers=kw.get("peers", 40), **{k: v for k, v in kw.items()
                                 if k != "peers"})  # fmt: skip
    n = config.peers
    parts = [np.arange(i * 4, i * 4 + (0 if i % 7 == 3 else 4)) for i in range(n)]
    sched = _schedule(config, parts)
    plan = plan_waves(sched, n)
    want = _reference_plan(sched)
    assert len(plan.waves) == len(want) == sched.waves
    for wave, ref in zip(plan.waves, want, strict=True):
        for name, value in ref.items():
            got = getattr(wave, name)
            assert (got.tolist() if isinstance(got, np.ndarray) else got) == value, name
    evals = sorted(i for w in plan.waves for i in w.evals_before) + plan.evals_after
    assert evals == list(range(len(sched.evals)))


def _schedule(
    config: SimConfig, parts: list[np.ndarray], walker: str | None = None, neighbours: Any = None
) -> S.Schedule:
    return S.build_schedule(
        config, parts, neighbours, S.LRSchedule.parse("constant"), 1000,
        evaluation_times(config), walker,
    )  # fmt: skip


def _assert_same_state(a: S.Schedule, b: S.Schedule) -> None:
    """Every output of the state pass, floats bit for bit."""
    for name in ("train_wave", "age_before", "send_wave", "used", "merge_wave", "merge_weight",
                 "eval_wave"):  # fmt: skip
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    assert a.waves == b.waves
    assert len(a.evals) == len(b.evals)
    for x, y in zip(a.evals, b.evals, strict=True):
        assert x.ages.tolist() == y.ages.tolist()
        assert (x.network, x.merges, x.age_capped, x.train_steps) == (
            y.network, y.merges, y.age_capped, y.train_steps,
        )  # fmt: skip


STATE_SCENARIOS = [
    {"loss": 0.1, "age_guard": "refuse"},
    {"age_guard": "cap", "delay": "uniform:0.01:2"},
    {"age_guard": "off", "partitions": "split:3:7", "merge": "replace"},
    {"merge": "none", "loss": 0.3},
    {"merge": "average", "local_steps": 0},
    {"merge": "none", "age_guard": "refuse", "eval_every": 1},
    {"delay": "0", "peers": 2, "periods": 30},
    {"age_guard": "refuse", "merge": "replace", "delay": "exponential:0.4", "seed": 9},
]


def _uneven(n: int) -> list[np.ndarray]:
    """Shards of 1 to 12 samples (the age guard caps and refuses), every ninth one empty
    (that peer never trains)."""
    return [np.arange(i * 13, i * 13 + (0 if i % 9 == 4 else 1 + (i * 7) % 12)) for i in range(n)]


@pytest.mark.parametrize("walker", ["compiled", "levels"])
@pytest.mark.parametrize(
    "kw", STATE_SCENARIOS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items())
)
def test_every_state_pass_is_the_python_walk(
    kw: dict[str, Any], walker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Numba's loop over arrays and the level walk over numpy arrays agree with the walk run
    by Python over lists on every output, floats bit for bit: no fused multiply-add, no
    integer overflow, no other rounding, and (levels) no dependency missed. The level walk
    runs even where it would decline these narrow runs (MIN_WIDTH 0), and a spy checks it
    did."""
    monkeypatch.setattr(levels, "MIN_WIDTH", 0)
    ran: list[bool] = []
    real = levels.level_walk

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        ran.append(out is not None)
        return out

    monkeypatch.setattr(levels, "level_walk", spy)
    config = dataclasses.replace(BASE, peers=kw.get("peers", 25),
                                 **{k: v for k, v in kw.items() if k != "peers"})  # fmt: skip
    parts = _uneven(config.peers)
    other = _schedule(config, parts, walker)
    python = _schedule(config, parts, "python")
    _assert_same_state(other, python)
    assert ran == ([True] if walker == "levels" else [])
    if kw.get("age_guard") == "refuse" and kw.get("merge") != "none":
        assert python.evals[-1].network.rejected["age_inflation"] > 0
    if kw.get("age_guard") == "cap":
        assert python.evals[-1].age_capped > 0


@pytest.mark.parametrize(
    "topology,kw",
    [
        ("ring", {}),
        ("regular:4", {"loss": 0.2, "age_guard": "refuse"}),
        ("watts-strogatz:6:0.1", {"partitions": "split:1:2", "merge": "replace"}),
        ("star", {"delay": "uniform:0.01:2"}),
    ],
)
def test_the_level_walk_at_its_own_width_is_the_python_walk(
    topology: str, kw: dict[str, Any]
) -> None:
    """1,000 peers gossiping along a topology's edges: the level walk as it runs in the
    engine, without forcing it, equals the Python walk. (A star's hub, which every peer
    pushes to, makes its events one long chain of narrow levels: there the level walk
    declines and Python walks.)"""
    from sim.topology import build_topology

    config = dataclasses.replace(BASE, peers=1000, periods=4, eval_every=2, sampler="neighbours",
                                 topology=topology, **kw)  # fmt: skip
    graph = build_topology(config.topology, config.peers, np.random.default_rng(config.seed))
    neighbours = [sorted(graph.neighbors(i)) for i in range(config.peers)]
    parts = _uneven(config.peers)
    _assert_same_state(
        _schedule(config, parts, "levels", neighbours),
        _schedule(config, parts, "python", neighbours),
    )


def test_the_level_walk_declines_narrow_runs() -> None:
    """Two peers over 40 periods: levels of one or two events, where Python's walk is
    faster; the level walk returns None and the state pass walks in Python instead."""
    config = dataclasses.replace(BASE, peers=2, periods=40)
    parts = [np.arange(4), np.arange(4, 8)]
    ev = S.events(config, None, 1000, evaluation_times(config))
    assert levels.plan_levels(ev.kind, ev.peer, ev.ref) is None
    assert levels.plan_levels(ev.kind, ev.peer, ev.ref, min_width=0) is not None
    _assert_same_state(_schedule(config, parts, "levels"), _schedule(config, parts, "python"))


def test_an_unknown_walker_is_refused() -> None:
    config = dataclasses.replace(BASE, peers=3)
    with pytest.raises(ValueError, match="unknown walker 'fast'; choose one of python"):
        _schedule(config, [np.arange(4)] * 3, "fast")


def test_ages_beyond_exact_floats_are_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    config = dataclasses.replace(BASE, peers=10)
    parts = [np.arange(i * 4, i * 4 + 4) for i in range(10)]
    monkeypatch.setattr(state, "EXACT_AGE", 8)
    with pytest.raises(GossipError, match="beyond what the batched engine computes exactly"):
        _schedule(config, parts)


def test_the_size_of_a_run_picks_the_state_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small runs stay in Python (no numba import), larger ones walk by levels, the largest
    compile; the same results."""
    config = dataclasses.replace(BASE, peers=10)
    parts = [np.arange(i * 4, i * 4 + 4) for i in range(10)]
    calls: list[str] = []
    real = state._compiled_walk
    monkeypatch.setattr(state, "_compiled_walk", lambda: calls.append("compiled") or real())
    real_levels = levels.level_walk
    monkeypatch.setattr(levels, "level_walk",
                        lambda *a, **k: calls.append("levels") or real_levels(*a, **k))  # fmt: skip
    monkeypatch.setattr(state, "_warm", [])  # as in a fresh process
    size = len(S.events(config, None, 1000, evaluation_times(config)).kind)
    assert state.pick_walker(size) == "python"
    small = _schedule(config, parts)
    assert calls == []
    monkeypatch.setattr(state, "LEVELS_ABOVE", 10)
    assert state.pick_walker(size) == "levels"
    middle = _schedule(config, parts)
    assert calls == ["levels"]  # (it declined: 10 peers are too narrow, Python walked)
    monkeypatch.setattr(state, "COMPILE_ABOVE", 10)
    assert state.pick_walker(size) == "compiled"
    large = _schedule(config, parts)
    assert calls == ["levels", "compiled"]
    _assert_same_state(small, middle)
    _assert_same_state(small, large)


def test_once_compiled_the_walk_serves_smaller_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the compiled walk has run in the process, a run above COMPILE_WARM_ABOVE
    events takes it although it is below COMPILE_ABOVE; before, Python walks it."""
    config = dataclasses.replace(BASE, peers=10)
    parts = [np.arange(i * 4, i * 4 + 4) for i in range(10)]
    calls: list[str] = []
    real = state._compiled_walk
    monkeypatch.setattr(state, "_compiled_walk", lambda: calls.append("compiled") or real())
    monkeypatch.setattr(state, "COMPILE_WARM_ABOVE", 10)
    monkeypatch.setattr(state, "_warm", [])
    _schedule(config, parts)
    assert calls == []
    monkeypatch.setattr(state, "_warm", [True])
    _schedule(config, parts)
    assert calls == ["compiled"]


@pytest.mark.parametrize("seed", [0, 1, 3, 2**32 - 1, 2**32, 2**40 + 7, 2**130 + 11])
def test_the_vectorised_pcg64_is_numpys(seed: int) -> None:
    """Every peer's raw outputs, from the seed sequence's hash through PCG64's seeding and
    output function, equal those of numpy's own generators (seeds of 1 to 5 words)."""
    n, count = 257, 13
    got = pcg.raw_outputs(seed, seeding.peer_key(0), n, count)
    want = np.stack([np.random.PCG64(seeding.peer_stream(seed, i)).random_raw(count)
                     for i in range(n)])  # fmt: skip
    assert got.dtype == np.uint64 and np.array_equal(got, want)
    keys = np.array([0, 1, 5, 2**31, 2**32 - 1])
    states = pcg.seed_states(seed, keys, 3)
    for key, row in zip(keys.tolist(), states, strict=True):
        ref = np.random.SeedSequence(seed, spawn_key=(key,)).generate_state(3, np.uint64)
        assert np.array_equal(row, ref)


@pytest.mark.parametrize("spec", ["constant", "inverse:200", "sqrt:50", "cosine:3000", "cosine:7"])
def test_the_learning_rate_factors_are_the_schedules_bit_for_bit(spec: str) -> None:
    """Vectorised over a wave's ages, the factors are LRSchedule.factor's, float for float
    (ages from 0 to past the cosine's horizon and near 2**53)."""
    from sim.engines.batched import lr_factors

    schedule = S.LRSchedule.parse(spec)
    rng = np.random.default_rng(4)
    ages = np.concatenate([np.arange(0, 40), rng.integers(0, 10_000, 200),
                           [2**52, 2**53 - 1]]).reshape(-1, 2)  # fmt: skip
    got = lr_factors(schedule, ages)
    want = np.array([[schedule.factor(a) for a in row] for row in ages.tolist()])
    assert got.shape == ages.shape and got.dtype == np.float64
    assert np.array_equal(got, want)


def test_a_cosine_schedule_without_horizon_is_refused_in_one_line() -> None:
    from sim.engines.batched import lr_factors

    with pytest.raises(GossipError, match="needs a horizon"):
        lr_factors(S.LRSchedule.parse("cosine"), np.zeros((2, 1), dtype=np.int64))


def test_minibatch_rows_with_no_training_event_are_empty() -> None:
    """Minibatch peers that never train before the run ends draw no batch (no crash)."""
    config = dataclasses.replace(BASE, peers=4, batch_size=2)
    parts = [np.arange(i * 4, i * 4 + 4) for i in range(4)]
    sched = _schedule(config, parts)
    assert sched.batch_rows is not None and sched.batch_at is not None
    assert sched.batch_rows.shape[1:] == (config.local_steps, 2)
    idle = dataclasses.replace(sched, train_wave=np.full_like(sched.train_wave, -1))
    rows, at = S._minibatch_rows(config, parts, idle, np.ones(4, dtype=bool))
    assert rows.shape == (0, config.local_steps, 2) and not (at >= 0).any()


@pytest.mark.parametrize("count", [1, 43, 2**15 - 1, 2**15, 10**6])
def test_the_wave_order_is_a_stable_sort(count: int) -> None:
    """The radix path (waves that fit 16 bits) and the plain one give numpy's stable
    order: equal waves keep their operations' event order, so slots are assigned alike."""
    from sim.engines.batched.waves import _stable_order

    waves = np.random.default_rng(count).integers(0, count, 5000)
    assert np.array_equal(_stable_order(waves, count), np.argsort(waves, kind="stable"))
