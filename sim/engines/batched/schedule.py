"""The schedule pass of the batched engine: the asyncio engine's events, without asyncio or
tensors.

In gossip learning *when* things happen never depends on the model values (DESIGN.md,
"Batched engine"): who pushes to whom and when, delays, losses, partitions, and (with the
screens off) every merge weight and age follow from the seed alone. This pass replays the
asyncio engine's virtual-time event order exactly: one heap ordered by ``(when, sequence)``
like :class:`sim.clock.VirtualTimeLoop`'s, times computed with the same float arithmetic
(``now + delay``), and every random number drawn from the same stream in the same order:

* per peer, from its ``peer_stream`` generator: the first wait ``period * U``, then per round
  the sampler's choice and the jitter of the next wait;
* from the network stream, per push that is not partitioned: the loss draw (when loss > 0),
  then the delay;
* per peer, from its CPU torch generator: the minibatch permutation once per local epoch.

It tracks what the peers' counters and the network's accounting would say, ages and the age
guard's credit (with the real :class:`~gossip.age_guard.AgeAllowance`), and emits the
operations the compute pass executes: ``TRAIN`` (a peer's local steps with the learning rate
of each), ``SEND`` (a snapshot of the sender's model that a later merge reads), ``MERGE``
(with its weight) and ``EVAL`` (an evaluation point, with the counters at that instant).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gossip.age_guard import AgeAllowance, AgeGuard
from gossip.merge import MERGE_RULES
from gossip.schedule import LRSchedule
from gossip.seeding import peer_stream, peer_torch_seed
from sim.config import SimConfig
from sim.network import DelayModel, NetworkStats, PartitionEvent

TRAIN, SEND, MERGE, EVAL = 0, 1, 2, 3
_ROUND, _DELIVER, _RECORD = 0, 1, 2


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
class Schedule:
    """The operations of one run in virtual-time order (parallel lists, one entry per op).

    kind: TRAIN / SEND / MERGE / EVAL. peer: the peer (EVAL: -1). arg: SEND and MERGE: the
    message id; TRAIN: the index of its first learning rate in ``lrs``; EVAL: the index in
    ``evals``. weight: MERGE: the received model's weight. ``rows``: per TRAIN op with
    minibatches smaller than the shard, the dataset rows of each step (else None: the whole
    shard, every step). ``used``: per message id, whether a merge reads it.
    """

    kind: list[int] = field(default_factory=list)
    peer: list[int] = field(default_factory=list)
    arg: list[int] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    rows: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    used: list[bool] = field(default_factory=list)
    evals: list[Snapshot] = field(default_factory=list)
    steps: int = 1

    def add(self, kind: int, peer: int, arg: int, weight: float = 0.0) -> int:
        self.kind.append(kind)
        self.peer.append(peer)
        self.arg.append(arg)
        self.weight.append(weight)
        return len(self.kind) - 1


class _Batches:
    """One peer's minibatch rows, drawn exactly as :meth:`gossip.learner.Learner._next_rows`."""

    def __init__(self, indices: torch.Tensor, batch_size: int, seed: int) -> None:
        self.indices = indices
        self.n = len(indices)
        self.b = min(batch_size, self.n)
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.cursor = 0

    def next(self) -> torch.Tensor:
        if self.cursor + self.b > self.order.shape[0]:
            perm = torch.randperm(self.n, generator=self.generator)
            self.order = self.indices[perm]
            self.cursor = 0
        rows = self.order[self.cursor : self.cursor + self.b]
        self.cursor += self.b
        return rows


def training_rate(config: SimConfig, n: int) -> tuple[float, float]:
    """:meth:`peers.peer.Peer._training_rate` for a peer holding ``n`` samples."""
    batch = min(config.batch_size, n) if n else config.batch_size
    per_update = float(config.local_steps * batch)
    updates = (2.0 if config.mode == "push-pull" else 1.0) + (config.train_on != "receive")
    return updates * max(per_update, 1.0) / config.period, max(per_update, 1.0)


def build_schedule(
    config: SimConfig,
    parts: Sequence[np.ndarray],
    neighbours: Sequence[Sequence[int]] | None,
    schedule: LRSchedule,
    message_bytes: int,
    eval_times: Sequence[tuple[float, int]],
) -> Schedule:
    """Replay the run's events; ``neighbours`` None means uniform sampling over all peers."""
    n_peers = config.peers
    seed = config.seed
    rngs = [np.random.default_rng(peer_stream(seed, i)) for i in range(n_peers)]
    from gossip import seeding
    from gossip.seeding import generator

    net_rng = generator(seed, seeding.NETWORK)
    delay = DelayModel.parse(config.delay)
    partitions = PartitionEvent.parse_schedule(config.partitions)
    rule = MERGE_RULES[config.merge]
    merges_models = rule.merges
    guard = AgeGuard(config.age_guard)
    allowances = [guard.allowance(*training_rate(config, len(p))) for p in parts]
    sizes = [len(p) for p in parts]
    bsz = [min(config.batch_size, n) for n in sizes]
    minibatch = [0 < b < n for b, n in zip(bsz, sizes, strict=True)]
    batches = {
        i: _Batches(torch.as_tensor(parts[i]), config.batch_size, peer_torch_seed(seed, i))
        for i in range(n_peers)
        if minibatch[i]
    }
    scheduled_lr = schedule.kind != "constant"
    steps = config.local_steps

    out = Schedule(steps=steps)
    ages = [0] * n_peers
    stats = NetworkStats()
    merges = age_capped = train_steps = 0
    period, jitter = config.period, config.jitter
    loss = config.loss
    bandwidth = config.bandwidth
    block_cache: dict[int, int] = {}

    def partitioned(src: int, dst: int, now: float) -> bool:
        for event in partitions:
            if event.start <= now < event.end:
                block = block_cache.setdefault(event.groups, -(-n_peers // event.groups))
                if src // block != dst // block:
                    return True
        return False

    heap: list[tuple[float, int, int, int, int]] = []  # (when, seq, what, peer, message)
    seq = itertools.count()
    # t = 0: the peers start in index order and each draws its first wait; the evaluation
    # coroutine records the initial state (asyncio.sleep(0) only yields).
    for i in range(n_peers):
        heapq.heappush(heap, (0.0 + period * float(rngs[i].random()), next(seq), _ROUND, i, -1))
    messages: list[tuple[int, int]] = []  # message id -> (sender, age at send)
    evals = list(eval_times)
    now = 0.0
    next_eval = 0

    def record(at: float, p: int) -> None:
        snap_net = NetworkStats(
            stats.sent, stats.delivered, stats.in_flight, stats.bytes_sent,
            Counter(stats.dropped), Counter(stats.rejected),
        )  # fmt: skip
        out.evals.append(
            Snapshot(at, p, np.asarray(ages, dtype=np.int64), snap_net, merges, age_capped,
                     train_steps)
        )  # fmt: skip
        out.add(EVAL, -1, len(out.evals) - 1)

    # The first record happens at t = 0, before any timer fires.
    record(0.0, evals[0][1])
    next_eval = 1
    if next_eval < len(evals):
        t_next, _ = evals[next_eval]
        heapq.heappush(heap, (now + max(0.0, t_next - now), next(seq), _RECORD, -1, -1))
    # The hot loop: bound methods and local counters (this pass is pure Python per event).
    pop, push = heapq.heappop, heapq.heappush
    add_kind, add_peer, add_arg, add_weight = (
        out.kind.append,
        out.peer.append,
        out.arg.append,
        out.weight.append,
    )
    add_lr, add_used = out.lrs.append, out.used.append
    randoms = [r.random for r in rngs]
    integers = [r.integers for r in rngs]
    net_random = net_rng.random
    if delay.kind == "uniform":
        uniform, low, high = net_rng.uniform, delay.a, delay.b

        def sample_delay() -> float:
            return float(uniform(low, high))
    else:

        def sample_delay() -> float:
            return delay.sample(net_rng)

    extra = message_bytes / bandwidth if bandwidth else 0.0
    lr0 = config.lr
    others = n_peers - 1
    while heap:
        when, _, what, i, msg = pop(heap)
        now = when
        if what == _ROUND:
            # Train on the timer (the local steps with their learning rates), then push.
            if steps > 0 and sizes[i] > 0:
                b = bsz[i]
                add_arg(len(out.lrs))
                for s in range(steps):
                    add_lr(lr0 * schedule.factor(ages[i] + s * b) if scheduled_lr else lr0)
                add_kind(TRAIN)
                add_peer(i)
                add_weight(0.0)
                if minibatch[i]:
                    out.rows[len(out.kind) - 1] = [batches[i].next() for _ in range(steps)]
                ages[i] += steps * b
                train_steps += steps
            # The sampler's choice (UniformSampler / NeighbourSampler by index: the same
            # rng.integers(len(view)) draw on the same view, all others or the neighbours).
            if neighbours is None:
                target: int | None = None
                if others > 0:
                    k = int(integers[i](others))
                    target = k + (k >= i)
            else:
                view = neighbours[i]
                target = view[int(integers[i](len(view)))] if view else None
            if target is not None:
                stats.sent += 1
                stats.bytes_sent += message_bytes
                if partitions and partitioned(i, target, now):
                    stats.dropped["partition"] += 1
                elif loss > 0 and float(net_random()) < loss:
                    stats.dropped["loss"] += 1
                else:
                    stats.in_flight += 1
                    m = len(messages)
                    messages.append((i, ages[i]))
                    add_used(False)
                    add_kind(SEND)
                    add_peer(i)
                    add_arg(m)
                    add_weight(0.0)
                    push(heap, (now + (sample_delay() + extra), next(seq), _DELIVER, target, m))
            d = period * (1.0 + jitter * (2.0 * float(randoms[i]()) - 1.0))
            push(heap, (now + d, next(seq), _ROUND, i, -1))
        elif what == _DELIVER:  # offered, queued, merged at once (inline compute takes no time)
            stats.in_flight -= 1
            t_r = messages[msg][1]
            allowance: AgeAllowance = allowances[i]
            if allowance.policy == "refuse":  # offer() checks it whatever the rule
                reason = allowance.check(t_r, ages[i], now)[1]
                if reason is not None:
                    stats.rejected[reason] += 1
                    continue
            stats.delivered += 1
            if not merges_models:
                continue
            before = ages[i]
            if allowance.policy != "off":
                bound = allowance.bound(before, now)
                if t_r > bound:
                    t_r = bound
                    age_capped += 1
            ages[i] = int(max(before, t_r))
            allowance.spend(before, ages[i])
            merges += 1
            out.used[msg] = True
            add_kind(MERGE)
            add_peer(i)
            add_arg(msg)
            add_weight(rule.weight(before, t_r))
        else:
            record(now, evals[next_eval][1])
            next_eval += 1
            if next_eval == len(evals):
                break
            t_next, _ = evals[next_eval]
            push(heap, (now + max(0.0, t_next - now), next(seq), _RECORD, -1, -1))
    if next_eval < len(evals):
        raise AssertionError("the schedule ended before its last evaluation")  # pragma: no cover
    return out


def describe(schedule: Schedule) -> dict[str, Any]:
    """Counts of each operation (for logs and tests)."""
    counts = Counter(schedule.kind)
    return {
        "train": counts[TRAIN],
        "send": counts[SEND],
        "merge": counts[MERGE],
        "eval": counts[EVAL],
    }
