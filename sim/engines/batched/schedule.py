"""The schedule pass of the batched engine: the asyncio engine's events, without asyncio or
tensors.

In gossip learning *when* things happen never depends on the model values (DESIGN.md,
"Batched engine"): who pushes to whom and when, delays, losses, partitions, and (with the
screens off) every merge weight and age follow from the seed alone. This pass replays the
asyncio engine's virtual-time event order exactly, in two steps.

**Events** (:func:`events`): the order in which rounds (a peer's timer: train, choose a
target, push), deliveries and evaluation records happen, and what each random number drawn
for them is. The asyncio engine orders its loop by ``(when, sequence)``, computes times with
the same float arithmetic (``now + delay``) and draws every random number from fixed streams
in a fixed order:

* per peer, from its ``peer_stream`` generator: the first wait ``period * U``, then per round
  the sampler's choice and the jitter of the next wait;
* from the network stream, per push that is not partitioned: the loss draw (when loss > 0),
  then the delay;
* per peer, from its CPU torch generator: the minibatch permutation once per local epoch.

None of that depends on ages or models, so the events are computed first, and in bulk:
every peer's draws at once from its raw PCG64 outputs (numpy's ``random()`` and its 32-bit
Lemire ``integers()`` written out, checked against numpy itself at run time), every round's
time by a cumulative sum, one sort of all events by time, the network's draws in the sorted
order. Where that cannot reproduce the loop exactly (two events at the same instant, whose
order the loop's sequence numbers decide; a rejected Lemire draw; a numpy whose streams
differ), :func:`_events_heap` replays the loop itself, one event at a time.

**State** (:func:`build_schedule`): one pass over the events in order tracks what the peers'
counters and the network's accounting would say, the ages and the age guard's credit
(:class:`~gossip.age_guard.AgeAllowance`'s arithmetic over arrays), every merge weight, and
the wave of each operation (see :mod:`.waves`); compiled with numba for large runs (:mod:`.state`).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gossip import seeding
from gossip.age_guard import AgeAllowance, AgeGuard
from gossip.errors import GossipError
from gossip.schedule import LRSchedule
from gossip.seeding import peer_stream, peer_torch_seed
from sim.config import SimConfig
from sim.engines.batched import pcg
from sim.network import DelayModel, NetworkStats, PartitionEvent

# Event kinds, and what a round's push became.
ROUND, DELIVER, RECORD = 0, 1, 2
NO_TARGET, IN_FLIGHT, PARTITIONED, LOST = 0, 1, 2, 3
_TO_DOUBLE = 1.0 / 9007199254740992.0  # numpy's next_double: (raw >> 11) * 2**-53


@dataclass
class Snapshot:
    """The counters an evaluation record reports, as of one evaluation point."""

    time: float
    period: int
    ages: np.ndarray
    network: NetworkStats
    merges: int
    age_capped: int
    train_steps: int


@dataclass
class Events:
    """The run's events in processing order (parallel arrays).

    kind: ROUND / DELIVER / RECORD. peer: the peer (RECORD: -1). ref: ROUND: its target
    (-1: none); DELIVER: the index of the round that sent it; RECORD: the evaluation's index.
    outcome: ROUND: NO_TARGET / IN_FLIGHT / PARTITIONED / LOST. time: when it happens.
    ``path`` says which path computed them: "bulk" or "heap".
    """

    kind: np.ndarray
    peer: np.ndarray
    ref: np.ndarray
    outcome: np.ndarray
    time: np.ndarray
    path: str


@dataclass
class Schedule:
    """What the compute pass needs, per operation (each array indexed by event).

    A round that trains is a TRAIN in ``train_wave[e]`` (-1: none) with the age before it in
    ``age_before[e]``; a round whose push is in flight takes a snapshot in ``send_wave[e]``
    (read only when ``used[e]``); a delivery that merges is a MERGE in ``merge_wave[e]`` of
    the round ``events.ref[e]``'s snapshot with ``merge_weight[e]``. ``eval_wave[k]``: the
    wave evaluation ``k`` runs before.
    """

    events: Events
    evals: list[Snapshot]
    steps: int
    train_wave: np.ndarray
    age_before: np.ndarray
    send_wave: np.ndarray
    used: np.ndarray
    merge_wave: np.ndarray
    merge_weight: np.ndarray
    eval_wave: np.ndarray
    waves: int
    # Minibatch peers' dataset rows: TRAIN event e draws batch_rows[batch_at[e]]
    # ([steps, batch_size]); batch_at[e] is -1 for a peer whose whole shard is its batch.
    batch_rows: torch.Tensor | None = None
    batch_at: np.ndarray | None = None


def peer_batches(indices: torch.Tensor, batch_size: int, seed: int, draws: int) -> torch.Tensor:
    """``[draws, b]``: a peer's first ``draws`` minibatches (dataset rows), exactly as
    :meth:`gossip.learner.Learner._next_rows` draws them: once per epoch a permutation of the
    local rows from the peer's generator, cut into ``n // b`` batches (the rest of an epoch
    is skipped). One ``randperm`` per epoch and one gather for all of them, instead of a
    Python call per batch (1.2 s of a 10-period run of 10,000 peers with 2 batches each)."""
    n = len(indices)
    b = min(batch_size, n)
    if draws <= 0 or b <= 0:
        return torch.empty(0, max(b, 0), dtype=torch.long)
    per_epoch = n // b
    epochs = -(-draws // per_epoch)
    generator = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(epochs)])
    order = perms[:, : per_epoch * b].reshape(epochs * per_epoch, b)[:draws]
    return indices[order]


def training_rate(config: SimConfig, n: int) -> tuple[float, float]:
    """:meth:`peers.peer.Peer._training_rate` for a peer holding ``n`` samples."""
    batch = min(config.batch_size, n) if n else config.batch_size
    per_update = float(config.local_steps * batch)
    updates = (2.0 if config.mode == "push-pull" else 1.0) + (config.train_on != "receive")
    return updates * max(per_update, 1.0) / config.period, max(per_update, 1.0)


def record_times(eval_times: Sequence[tuple[float, int]]) -> list[float]:
    """When the evaluation coroutine records: at 0, then each ``now + max(0, t - now)``."""
    out = [0.0]
    for t, _ in eval_times[1:]:
        now = out[-1]
        out.append(now + max(0.0, t - now))
    return out


# ---------------------------------------------------------------------------------- events


@dataclass
class _Net:
    """The network's part of the replay: delay model, loss, partitions, per-message extra."""

    delay: DelayModel
    loss: float
    partitions: tuple[PartitionEvent, ...]
    extra: float


def events(
    config: SimConfig,
    neighbours: Sequence[Sequence[int]] | None,
    message_bytes: int,
    eval_times: Sequence[tuple[float, int]],
) -> Events:
    """The run's events; the bulk path where it is exact, else the heap replay."""
    net = _Net(
        DelayModel.parse(config.delay), config.loss,
        PartitionEvent.parse_schedule(config.partitions),
        message_bytes / config.bandwidth if config.bandwidth else 0.0,
    )  # fmt: skip
    records = record_times(eval_times)
    fast = _events_bulk(config, neighbours, net, records)
    if fast is not None:
        return fast
    return _events_heap(config, neighbours, net, records)


def _view_sizes(n: int, neighbours: Sequence[Sequence[int]] | None) -> np.ndarray:
    if neighbours is None:
        return np.full(n, n - 1, dtype=np.int64)
    return np.array([len(v) for v in neighbours], dtype=np.int64)


def _peer_draws(
    seed: int, sizes: np.ndarray, rounds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per peer: the first-wait uniform ``[N]``, the sampler's index ``[N, rounds]`` (into
    the view; -1 where the view is empty) and the jitter uniform ``[N, rounds]``.

    numpy's ``Generator.random()`` is ``(raw >> 11) * 2**-53`` of one 64-bit output;
    ``integers(k)`` for ``2 <= k < 2**32`` is Lemire's method on one 32-bit half, and PCG64
    hands out the low half of a fresh output first and keeps the high half for the next
    32-bit request (``random()`` leaves it there). With per round one of each, a peer's
    outputs are: first wait; then per two rounds ``[int halves, jitter, jitter]``. ``k == 1``
    draws nothing (the answer is 0), nor does an empty view. A draw that Lemire rejects
    (probability below ``k / 2**32``) sends that peer to numpy itself."""
    n = len(sizes)
    if n and int(sizes.max()) >= 2**32:
        return None
    pairs = -(-rounds // 2)
    width = 1 + 3 * pairs
    raw = pcg.raw_outputs(seed, seeding.peer_key(0), n, max(width, 1 + rounds))
    first = (raw[:, 0] >> np.uint64(11)).astype(np.float64) * _TO_DOUBLE
    r = np.arange(rounds)
    int_col = 1 + 3 * (r // 2)
    jit_col = 2 + 3 * (r // 2) + (r % 2)
    choice = np.zeros((n, rounds), dtype=np.int64)
    jitter_raw = np.empty((n, rounds), dtype=np.uint64)
    draws = sizes >= 2
    if draws.any():
        rows = np.nonzero(draws)[0]
        src = raw[np.ix_(rows, int_col)]
        half = np.where(r % 2 == 0, src & np.uint64(0xFFFFFFFF), src >> np.uint64(32))
        span = sizes[rows].astype(np.uint64)[:, None]
        m = half * span  # < 2**64: half < 2**32 and span < 2**32
        leftover = m & np.uint64(0xFFFFFFFF)
        threshold = (np.uint64(2**32) - span) % span
        rejected = (leftover < threshold).any(axis=1)
        choice[rows] = (m >> np.uint64(32)).astype(np.int64)
        jitter_raw[rows] = raw[np.ix_(rows, jit_col)]
    else:
        rejected = np.zeros(0, dtype=bool)
        rows = np.zeros(0, dtype=np.int64)
    quiet = np.nonzero(~draws)[0]
    if len(quiet):
        jitter_raw[quiet] = raw[quiet, 1 : 1 + rounds]
        choice[quiet[sizes[quiet] == 0]] = -1
    jitter = (jitter_raw >> np.uint64(11)).astype(np.float64) * _TO_DOUBLE
    for i in rows[rejected].tolist():
        first[i], choice[i], jitter[i] = _peer_draws_numpy(seed, i, int(sizes[i]), rounds)
    if not _agrees_with_numpy(seed, sizes, first, choice, jitter):
        return None
    return first, choice, jitter


def _peer_draws_numpy(
    seed: int, index: int, k: int, rounds: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """Peer ``index``'s draws through numpy's own calls, as the asyncio engine's peer makes
    them (for the rare peer whose Lemire draw was rejected)."""
    rng = np.random.default_rng(peer_stream(seed, index))
    first = float(rng.random())
    choice = np.empty(rounds, dtype=np.int64)
    jitter = np.empty(rounds, dtype=np.float64)
    for r in range(rounds):
        choice[r] = int(rng.integers(k)) if k >= 1 else -1
        jitter[r] = float(rng.random())
    return first, choice, jitter


def _agrees_with_numpy(
    seed: int, sizes: np.ndarray, first: np.ndarray, choice: np.ndarray, jitter: np.ndarray
) -> bool:
    """Replays a few peers through numpy's calls and compares (a numpy whose streams differ
    would otherwise go unnoticed)."""
    n, rounds = choice.shape
    for i in sorted({0, n // 2, n - 1}):
        rng = np.random.default_rng(peer_stream(seed, i))
        if float(rng.random()) != first[i]:
            return False
        k = int(sizes[i])
        for r in range(min(rounds, 6)):
            c = int(rng.integers(k)) if k >= 1 else -1
            if c != choice[i, r] or float(rng.random()) != jitter[i, r]:
                return False
    return True


def _events_bulk(
    config: SimConfig,
    neighbours: Sequence[Sequence[int]] | None,
    net: _Net,
    records: list[float],
) -> Events | None:
    n = config.peers
    period, jitter = config.period, config.jitter
    end = records[-1]
    if n == 0 or jitter >= 0.9 or net.delay.kind not in ("constant", "uniform", "exponential"):
        return None
    if net.loss > 0 and net.delay.kind == "exponential" and net.delay.a > 0:
        return None
    rounds = int(end / (period * (1.0 - jitter))) + 3
    sizes = _view_sizes(n, neighbours)
    draws = _peer_draws(config.seed, sizes, rounds)
    if draws is None:
        return None
    first, choice, u = draws
    # Round r of a peer happens at times[:, r]; the jitter drawn at round r sets round r+1.
    steps = period * (1.0 + jitter * (2.0 * u - 1.0))
    times = np.add.accumulate(np.concatenate([(period * first)[:, None], steps], axis=1), axis=1)
    if np.any(times[:, rounds - 1] < end):
        return None  # pragma: no cover - the bound above always covers the run
    live = times[:, :rounds] < end
    peer_of, round_of = np.nonzero(live)
    r_time = times[peer_of, round_of]
    order = np.argsort(r_time, kind="stable")
    peer_of, round_of, r_time = peer_of[order], round_of[order], r_time[order]
    pick = choice[peer_of, round_of]
    if neighbours is None:
        target = np.where(pick >= 0, pick + (pick >= peer_of), -1)
    else:
        # Every view end to end; a peer's k-th neighbour is flat[start + k].
        flat = np.fromiter(itertools.chain.from_iterable(neighbours), np.int64, int(sizes.sum()))
        starts = np.cumsum(sizes) - sizes
        target = np.full(len(pick), -1, dtype=np.int64)
        has = pick >= 0
        target[has] = flat[starts[peer_of[has]] + pick[has]]
    outcome = np.where(target >= 0, IN_FLIGHT, NO_TARGET).astype(np.int8)
    for event in net.partitions:
        block = -(-n // event.groups)
        cut = (event.start <= r_time) & (r_time < event.end) & (peer_of // block != target // block)
        outcome[(outcome == IN_FLIGHT) & cut] = PARTITIONED
    # The network stream, in the order the pushes happen.
    rng = seeding.generator(config.seed, seeding.NETWORK)
    pushed = np.nonzero(outcome == IN_FLIGHT)[0]
    delay = net.delay
    if net.loss > 0:
        doubles = rng.random(2 * len(pushed)).tolist()
        low, span = delay.a, delay.b - delay.a
        kept, delays, pos = [], [], 0
        for j in pushed.tolist():
            lost = doubles[pos] < net.loss
            pos += 1
            if lost:
                outcome[j] = LOST
                continue
            if delay.kind == "uniform":
                delays.append(low + span * doubles[pos])
                pos += 1
            else:
                delays.append(delay.a if delay.kind == "constant" else 0.0)
            kept.append(j)
        pushed = np.asarray(kept, dtype=np.int64)
        d = np.asarray(delays, dtype=np.float64)
    elif delay.kind == "uniform":
        d = rng.uniform(delay.a, delay.b, size=len(pushed))
    elif delay.kind == "exponential" and delay.a > 0:
        d = rng.exponential(delay.a, size=len(pushed))
    else:
        d = np.full(len(pushed), delay.a if delay.kind == "constant" else 0.0)
    d_time = r_time[pushed] + (d + net.extra)
    arrives = d_time < end
    d_src, d_time = pushed[arrives], d_time[arrives]
    d_peer = target[d_src]
    # Every event, sorted by time; the first record (t = 0) comes before everything.
    rec = np.asarray(records[1:], dtype=np.float64)
    all_time = np.concatenate([r_time, d_time, rec])
    kinds = np.concatenate([
        np.full(len(r_time), ROUND, np.int8), np.full(len(d_time), DELIVER, np.int8),
        np.full(len(rec), RECORD, np.int8),
    ])  # fmt: skip
    order = np.argsort(all_time, kind="stable")
    sorted_time = all_time[order]
    if len(sorted_time) > 1 and np.any(sorted_time[1:] == sorted_time[:-1]):
        return None  # two events at one instant: the loop's sequence numbers order them
    if len(rec) and sorted_time[-1] != rec[-1]:
        return None  # pragma: no cover - every other event is before the last record
    # Positions: round j -> its index in the sorted events.
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order)) + 1  # + 1: the first record is event 0
    nd = len(d_time)
    peer = np.concatenate([peer_of, d_peer, np.full(len(rec), -1)])[order]
    ref = np.concatenate([target, position[d_src], np.arange(1, len(rec) + 1)])[order]
    out = np.concatenate([outcome, np.zeros(nd + len(rec), np.int8)])[order]
    return Events(
        np.concatenate([[RECORD], kinds[order]]).astype(np.int8),
        np.concatenate([[-1], peer]).astype(np.int64),
        np.concatenate([[0], ref]).astype(np.int64),
        np.concatenate([[NO_TARGET], out]).astype(np.int8),
        np.concatenate([[0.0], sorted_time]),
        "bulk",
    )


def _events_heap(
    config: SimConfig,
    neighbours: Sequence[Sequence[int]] | None,
    net: _Net,
    records: list[float],
) -> Events:
    """The event loop itself: a heap ordered by ``(when, sequence)``, one event at a time."""
    n = config.peers
    rngs = [np.random.default_rng(peer_stream(config.seed, i)) for i in range(n)]
    randoms = [r.random for r in rngs]
    integers = [r.integers for r in rngs]
    net_rng = seeding.generator(config.seed, seeding.NETWORK)
    net_random = net_rng.random
    delay, loss, partitions, extra = net.delay, net.loss, net.partitions, net.extra
    period, jitter = config.period, config.jitter
    others = n - 1

    def partitioned(src: int, dst: int, now: float) -> bool:
        for event in partitions:
            if event.start <= now < event.end:
                block = -(-n // event.groups)
                if src // block != dst // block:
                    return True
        return False

    heap: list[tuple[float, int, int, int, int]] = []  # (when, seq, what, peer, ref)
    seq = itertools.count()
    for i in range(n):
        heapq.heappush(heap, (0.0 + period * float(randoms[i]()), next(seq), ROUND, i, -1))
    kind, peer, ref, outcome, when = [RECORD], [-1], [0], [NO_TARGET], [0.0]
    if len(records) > 1:
        heapq.heappush(heap, (records[1], next(seq), RECORD, -1, 1))
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        now, _, what, i, r = pop(heap)
        if what == ROUND:
            if neighbours is None:
                target = -1
                if others > 0:
                    k = int(integers[i](others))
                    target = k + (k >= i)
            else:
                view = neighbours[i]
                target = view[int(integers[i](len(view)))] if view else -1
            if target < 0:
                out = NO_TARGET
            elif partitions and partitioned(i, target, now):
                out = PARTITIONED
            elif loss > 0 and float(net_random()) < loss:
                out = LOST
            else:
                out = IN_FLIGHT
                push(heap, (now + (delay.sample(net_rng) + extra), next(seq), DELIVER, target,
                            len(kind)))  # fmt: skip
            kind.append(ROUND)
            when.append(now)
            peer.append(i)
            ref.append(target)
            outcome.append(out)
            d = period * (1.0 + jitter * (2.0 * float(randoms[i]()) - 1.0))
            push(heap, (now + d, next(seq), ROUND, i, -1))
        elif what == DELIVER:
            kind.append(DELIVER)
            when.append(now)
            peer.append(i)
            ref.append(r)
            outcome.append(NO_TARGET)
        else:
            kind.append(RECORD)
            when.append(now)
            peer.append(-1)
            ref.append(r)
            outcome.append(NO_TARGET)
            if r + 1 == len(records):
                break
            push(heap, (records[r + 1], next(seq), RECORD, -1, r + 1))
    return Events(
        np.asarray(kind, np.int8), np.asarray(peer, np.int64), np.asarray(ref, np.int64),
        np.asarray(outcome, np.int8), np.asarray(when, np.float64), "heap",
    )  # fmt: skip


# ----------------------------------------------------------------------------------- state


def build_schedule(
    config: SimConfig,
    parts: Sequence[np.ndarray],
    neighbours: Sequence[Sequence[int]] | None,
    schedule: LRSchedule,
    message_bytes: int,
    eval_times: Sequence[tuple[float, int]],
    walker: str | None = None,
) -> Schedule:
    """Replay the run; ``neighbours`` None means uniform sampling over all peers.
    ``walker``: how the state pass runs (one of :data:`.state.WALKERS`; None: by the run's
    size, see :func:`.state.state_pass`)."""
    from sim.engines.batched import state

    ev = events(config, neighbours, message_bytes, eval_times)
    guard = AgeGuard(config.age_guard)
    steps = config.local_steps
    sizes = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    bsz = np.minimum(config.batch_size, sizes)
    trains = (sizes > 0) & (steps > 0)
    inc = np.where(trains, steps * bsz, 0).astype(np.int64)
    # A peer's allowance depends only on its shard's size: one per distinct size (an
    # AgeAllowance per peer cost 22 ms at 10,000 peers, 2 s at 1,000,000).
    distinct, which = np.unique(sizes, return_inverse=True)
    allowances: list[AgeAllowance] = [
        guard.allowance(*training_rate(config, s)) for s in distinct.tolist()
    ]
    rate = np.array([a.rate for a in allowances], dtype=np.float64)[which]
    burst = np.array([a.burst for a in allowances], dtype=np.float64)[which]
    per_event, counters, ages_at, oldest, waves, walked = state.state_pass(
        ev.kind, ev.peer, ev.ref, ev.outcome, ev.time, trains, inc, steps,
        state.POLICY_CODES[guard.policy], rate, burst, state.RULE_CODES[config.merge],
        len(eval_times), walker,
    )  # fmt: skip
    if walked != len(eval_times):
        raise AssertionError("the schedule ended before its last evaluation")  # pragma: no cover
    if oldest >= state.EXACT_AGE:
        raise GossipError(
            f"an age reached {oldest:,} samples, beyond what the batched engine computes "
            "exactly (2**53); use --engine asyncio"
        )
    rec_times = record_times(eval_times)
    evals = [
        _snapshot(rec_times[r], eval_times[r][1], ages_at[r], row, message_bytes)
        for r, row in enumerate(counters.tolist())
    ]
    out = Schedule(
        ev, evals, steps, per_event["train_wave"], per_event["age_before"],
        per_event["send_wave"], per_event["used"], per_event["merge_wave"],
        per_event["merge_weight"], counters[:, state.EVAL_WAVE].copy(), waves,
    )  # fmt: skip
    minibatch = (bsz > 0) & (bsz < sizes)
    if minibatch.any() and steps > 0:
        out.batch_rows, out.batch_at = _minibatch_rows(config, parts, out, minibatch)
    return out


def _minibatch_rows(
    config: SimConfig, parts: Sequence[np.ndarray], schedule: Schedule, minibatch: np.ndarray
) -> tuple[torch.Tensor, np.ndarray]:
    """Every minibatch peer's batches for all its TRAIN events: ``[trains, steps, b]`` in
    (peer, event) order, and each TRAIN event's position in it (-1: none)."""
    steps = schedule.steps
    peer = schedule.events.peer
    trains = np.nonzero(schedule.train_wave >= 0)[0]
    trains = trains[minibatch[peer[trains]]]
    trains = trains[np.argsort(peer[trains], kind="stable")]  # by peer, in event order
    owners, counts = np.unique(peer[trains], return_counts=True)
    chunks = [
        peer_batches(torch.as_tensor(parts[i]), config.batch_size,
                     peer_torch_seed(config.seed, i), c * steps).view(c, steps, -1)
        for i, c in zip(owners.tolist(), counts.tolist(), strict=True)
    ]  # fmt: skip
    at = np.full(len(peer), -1, dtype=np.int64)
    at[trains] = np.arange(len(trains))
    if not chunks:  # no minibatch peer trains before the run ends
        return torch.empty(0, steps, config.batch_size, dtype=torch.long), at
    return torch.cat(chunks), at


def sent_bytes(sent: int, message_bytes: int) -> int:
    return sent * message_bytes


def _snapshot(
    time: float, period: int, ages: np.ndarray, row: list[int], message_bytes: int
) -> Snapshot:
    """One record's counters (a row of the state pass's ``counters``) as the observer reads
    them; a drop or refusal reason appears only once it has happened, as in a ``Counter``."""
    from sim.engines.batched import state

    dropped: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for counter, reason, column in (
        (dropped, "partition", state.DROP_PARTITION), (dropped, "loss", state.DROP_LOSS),
        (rejected, "age_inflation", state.REJECT_INFLATION),
    ):  # fmt: skip
        if row[column]:
            counter[reason] = row[column]
    sent = row[state.SENT]
    network = NetworkStats(
        sent, row[state.DELIVERED], row[state.IN_FLIGHT_NOW], sent_bytes(sent, message_bytes),
        dropped, rejected,
    )  # fmt: skip
    return Snapshot(
        time, period, ages, network, row[state.MERGES], row[state.AGE_CAPPED],
        row[state.TRAIN_STEPS],
    )  # fmt: skip


def describe(schedule: Schedule) -> dict[str, Any]:
    """Counts of each operation (for logs and tests)."""
    return {
        "train": int((schedule.train_wave >= 0).sum()),
        "send": int((schedule.send_wave >= 0).sum()),
        "merge": int((schedule.merge_wave >= 0).sum()),
        "eval": len(schedule.evals),
        "events": schedule.events.path,
    }
