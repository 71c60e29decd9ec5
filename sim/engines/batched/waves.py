"""Waves: the schedule's operations grouped so that each group is a few batched tensor ops.

The trace is a dependency graph: each peer's operations in order, and each merge after the
snapshot it reads was taken. A wave runs three phases over the stacked parameters: merges
(each peer at most once), then training steps, then snapshots (``SEND``) into the pool of
in-flight models. The schedule pass (:func:`.schedule.build_schedule`) puts each operation
in the earliest wave that keeps its peer's order and its phase after the peer's previous
operation in that wave; a merge also waits for the wave after its snapshot's. An evaluation
is a barrier: it runs between two waves, after every operation before it and before every
one after it.

Here the operations are grouped by wave (one stable sort per kind) and snapshot slots are
assigned in wave order: a merge frees its slot, and a snapshot in a later wave reuses it, so
the pool holds only the models in flight *in wave order*. Only snapshots that some merge
reads get a slot (a dropped or refused message needs none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.engines.batched.schedule import Schedule


@dataclass
class Wave:
    """One wave over the rows ``peer`` (each peer once), ordered so that every phase is one
    contiguous run of them: rows ``[0, merge_end)`` merge the pool's ``merge_slot`` with
    ``merge_weight``, rows ``[train_start, train_end)`` take their steps (the TRAIN events
    ``train_event``), and rows ``send_pos`` (sorted) are copied into the pool at
    ``send_slot``.

    The order is: merge only, merge and train, train only, neither (a snapshot only), so a
    wave's rows are gathered from the stacked parameters once, merged, trained and written
    back once, instead of a gather and a scatter per phase (a third less memory traffic)."""

    peer: np.ndarray
    merge_end: int
    merge_slot: np.ndarray
    merge_weight: np.ndarray
    train_start: int
    train_end: int
    train_event: np.ndarray
    send_pos: np.ndarray
    send_slot: np.ndarray
    evals_before: list[int] = field(default_factory=list)

    @property
    def merge_peer(self) -> np.ndarray:
        return self.peer[: self.merge_end]

    @property
    def train_peer(self) -> np.ndarray:
        return self.peer[self.train_start : self.train_end]

    @property
    def send_peer(self) -> np.ndarray:
        return np.asarray(self.peer[self.send_pos])


@dataclass
class Plan:
    waves: list[Wave]
    evals_after: list[int]  # evaluations after the last wave
    pool_size: int


def _by_wave(wave: np.ndarray, peer: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The events with ``wave >= 0`` sorted by wave, then by peer (a peer has at most one
    operation of a kind per wave), and the bounds of each wave's run in that order."""
    events = np.nonzero(wave >= 0)[0]
    # One int64 key (wave, then peer): half the time of np.lexsort on the two columns.
    width = int(peer.max()) + 1 if len(peer) else 1
    order = np.argsort(wave[events] * width + peer[events], kind="stable")
    events = events[order]
    bounds = np.searchsorted(wave[events], np.arange(count + 1))
    return events, bounds


def assign_slots(schedule: Schedule) -> tuple[np.ndarray, int]:
    """A pool slot per used snapshot (indexed by event; -1 elsewhere), and the pool size.

    In wave order, a wave's snapshots take slots, then its merges free theirs for the next
    wave: a stack of free slots, popped and pushed a whole wave at a time (a few numpy
    operations per wave instead of a Python step per message: 10 s at 1,000,000 peers). A
    slot freed in a wave is not reused in the same wave, because a wave runs in chunks of
    rows and a later chunk may still have to read what an earlier chunk's snapshot would
    overwrite."""
    slot = np.full(len(schedule.used), -1, dtype=np.int64)
    sends = np.nonzero(schedule.used)[0]
    if len(sends) == 0:
        return slot, 0
    count = schedule.waves
    merges = np.nonzero(schedule.merge_wave >= 0)[0]
    merges = merges[np.argsort(schedule.merge_wave[merges], kind="stable")]
    m_bounds = np.searchsorted(schedule.merge_wave[merges], np.arange(count + 1))
    merged_msg = schedule.events.ref[merges]
    sends = sends[np.argsort(schedule.send_wave[sends], kind="stable")]
    s_bounds = np.searchsorted(schedule.send_wave[sends], np.arange(count + 1))
    free = np.zeros(0, dtype=np.int64)
    size = 0
    for w in range(count):
        taking = sends[s_bounds[w] : s_bounds[w + 1]]
        k = len(taking)
        if k:
            reuse = min(k, len(free))
            fresh = np.arange(size, size + k - reuse, dtype=np.int64)
            size += k - reuse
            slot[taking] = np.concatenate([free[len(free) - reuse :], fresh])
            free = free[: len(free) - reuse]
        released = slot[merged_msg[m_bounds[w] : m_bounds[w + 1]]]
        if len(released):
            free = np.concatenate([free, released])
    return slot, size


def plan_waves(schedule: Schedule, peers: int) -> Plan:
    """Group the schedule's operations by wave, each wave's rows in phase order."""
    count = schedule.waves
    peer = schedule.events.peer
    slot, size = assign_slots(schedule)
    merges, m_bounds = _by_wave(schedule.merge_wave, peer, count)
    trains, t_bounds = _by_wave(schedule.train_wave, peer, count)
    send_wave = np.where(schedule.used, schedule.send_wave, -1)
    sends, s_bounds = _by_wave(send_wave, peer, count)
    m_peer, m_slot = peer[merges], slot[schedule.events.ref[merges]]
    m_weight = schedule.merge_weight[merges]
    t_peer, s_peer, s_slot = peer[trains], peer[sends], slot[sends]
    # Per peer, the positions of its operations in the current wave (-1: none); reset after.
    m_at = np.full(peers, -1, dtype=np.int64)
    t_at = np.full(peers, -1, dtype=np.int64)
    waves = []
    for w in range(count):
        m = slice(m_bounds[w], m_bounds[w + 1])
        t = slice(t_bounds[w], t_bounds[w + 1])
        s = slice(s_bounds[w], s_bounds[w + 1])
        mp, tp, sp = m_peer[m], t_peer[t], s_peer[s]
        m_at[mp] = np.arange(len(mp))
        t_at[tp] = np.arange(len(tp))
        rows = np.unique(np.concatenate([mp, tp, sp]))
        merging, training = m_at[rows] >= 0, t_at[rows] >= 0
        # Phase groups: 0 merge only, 1 merge and train, 2 train only, 3 snapshot only.
        group = np.where(merging, np.where(training, 1, 0), np.where(training, 2, 3))
        order = np.argsort(group, kind="stable")  # rows are sorted: by peer within a group
        rows, group = rows[order], group[order]
        merge_end = int(np.count_nonzero(group <= 1))
        train_start = int(np.count_nonzero(group == 0))
        train_end = train_start + int(np.count_nonzero(training))
        at = m_at[rows[:merge_end]]
        t_ev = trains[t][t_at[rows[train_start:train_end]]]
        position = np.empty(peers, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        m_at[mp] = -1
        t_at[tp] = -1
        send_pos = position[sp]
        by_pos = np.argsort(send_pos, kind="stable")  # so that a chunk sends a run of them
        waves.append(Wave(
            rows, merge_end, m_slot[m][at], m_weight[m][at], train_start, train_end, t_ev,
            send_pos[by_pos], s_slot[s][by_pos],
        ))  # fmt: skip
    after: list[int] = []
    for index, w in enumerate(schedule.eval_wave.tolist()):
        if w < count:
            waves[w].evals_before.append(index)
        else:
            after.append(index)
    return Plan(waves, after, size)
