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


def _stable_order(waves: np.ndarray, count: int) -> np.ndarray:
    """The stable argsort of wave numbers in ``[0, count)``: as 16-bit integers where they
    fit, which numpy sorts by radix (5-15x faster than its stable sort of int64)."""
    if count <= np.iinfo(np.int16).max:
        return np.argsort(waves.astype(np.int16), kind="stable")
    return np.argsort(waves, kind="stable")


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
    merges = merges[_stable_order(schedule.merge_wave[merges], count)]
    m_bounds = np.searchsorted(schedule.merge_wave[merges], np.arange(count + 1))
    merged_msg = schedule.events.ref[merges]
    sends = sends[_stable_order(schedule.send_wave[sends], count)]
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
    """Group the schedule's operations by wave, each wave's rows in phase order.

    All waves at once: every (wave, peer) pair with an operation is one row; one sort of all
    operations by (wave, peer, kind) finds the rows and what each does, a second sorts the
    rows by (wave, phase group, peer), and each wave's arrays are slices of the sorted ones.
    (A loop over the waves with a few numpy calls each cost 1.6 ms a wave at 10,000 peers:
    0.3 s of a 50-period run.)"""
    count = schedule.waves
    peer = schedule.events.peer.astype(np.int64, copy=False)
    slot, size = assign_slots(schedule)
    width = max(int(peers), 1)
    kinds = (
        schedule.merge_wave,
        schedule.train_wave,
        np.where(schedule.used, schedule.send_wave, -1),
    )
    events = [np.nonzero(wave >= 0)[0] for wave in kinds]
    op_event = np.concatenate(events)
    # (wave, peer, kind) as one int64; distinct (a peer has at most one operation of a kind
    # in a wave), so the default sort will do: a stable one is 3-6x slower.
    op_key = np.concatenate(
        [
            (w[e] * width + peer[e]) * 3 + k
            for k, (w, e) in enumerate(zip(kinds, events, strict=True))
        ]
    )
    by_key = np.argsort(op_key)
    op_key, op_event = op_key[by_key], op_event[by_key]
    op_kind = op_key % 3
    op_row_key = op_key // 3
    new_row = np.ones(len(op_key), dtype=bool)
    new_row[1:] = op_row_key[1:] != op_row_key[:-1]
    keys = op_row_key[new_row]  # the rows, sorted by (wave, peer)
    op_row = np.cumsum(new_row) - 1
    op_event_of = [np.full(len(keys), -1, dtype=np.int64) for _ in range(3)]
    for k in range(3):
        mine = op_kind == k
        op_event_of[k][op_row[mine]] = op_event[mine]
    merging, training = op_event_of[0] >= 0, op_event_of[1] >= 0
    # Phase groups: 0 merge only, 1 merge and train, 2 train only, 3 snapshot only.
    group = np.where(merging, np.where(training, 1, 0), np.where(training, 2, 3))
    wave_of = keys // width
    rows = keys - wave_of * width
    phase = wave_of * 4 + group
    order = np.argsort(phase * width + rows)  # by wave, group, then peer (all distinct)
    group, wave_of, rows, phase = (a[order] for a in (group, wave_of, rows, phase))
    m_of, t_of, s_of = (a[order] for a in op_event_of)
    bounds = np.searchsorted(wave_of, np.arange(count + 1))
    # Per wave: the end of groups 0-1 (merging), the start of 1 and the end of 2 (training).
    at = bounds[:-1]
    merge_end = np.searchsorted(phase, np.arange(count) * 4 + 2) - at
    train_start = np.searchsorted(phase, np.arange(count) * 4 + 1) - at
    train_end = np.searchsorted(phase, np.arange(count) * 4 + 3) - at
    # The merges in row order (rows of groups 0-1, wave by wave), and the trains likewise.
    m_ev = m_of[group <= 1]
    m_slot = slot[schedule.events.ref[m_ev]]
    m_weight = schedule.merge_weight[m_ev]
    t_ev = t_of[(group == 1) | (group == 2)]
    m_bounds = np.concatenate([[0], np.cumsum(merge_end)])
    t_bounds = np.concatenate([[0], np.cumsum(train_end - train_start)])
    # The snapshots in row order (so each wave's are sorted by position) and their positions.
    sending = np.nonzero(s_of >= 0)[0]
    s_wave = wave_of[sending]
    s_pos = sending - bounds[s_wave]
    s_slot = slot[s_of[sending]]
    s_bounds = np.searchsorted(s_wave, np.arange(count + 1))
    waves = [
        Wave(
            rows[bounds[w] : bounds[w + 1]], int(merge_end[w]),
            m_slot[m_bounds[w] : m_bounds[w + 1]], m_weight[m_bounds[w] : m_bounds[w + 1]],
            int(train_start[w]), int(train_end[w]), t_ev[t_bounds[w] : t_bounds[w + 1]],
            s_pos[s_bounds[w] : s_bounds[w + 1]], s_slot[s_bounds[w] : s_bounds[w + 1]],
        )
        for w in range(count)
    ]  # fmt: skip
    after: list[int] = []
    for index, w in enumerate(schedule.eval_wave.tolist()):
        if w < count:
            waves[w].evals_before.append(index)
        else:
            after.append(index)
    return Plan(waves, after, size)
