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
assigned in wave order: a merge frees its slot, and a snapshot in the same or a later wave
reuses it, so the pool holds only the models in flight *in wave order*. Only snapshots that
some merge reads get a slot (a dropped or refused message needs none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.engines.batched.schedule import Schedule


@dataclass
class Wave:
    """One wave: merges (peer, slot, weight), trains (peer, event), snapshots (peer, slot)."""

    merge_peer: np.ndarray
    merge_slot: np.ndarray
    merge_weight: np.ndarray
    train_peer: np.ndarray
    train_event: np.ndarray
    send_peer: np.ndarray
    send_slot: np.ndarray
    evals_before: list[int] = field(default_factory=list)


@dataclass
class Plan:
    waves: list[Wave]
    evals_after: list[int]  # evaluations after the last wave
    pool_size: int


def _by_wave(wave: np.ndarray, peer: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The events with ``wave >= 0`` sorted by wave, then by peer (a peer has at most one
    operation of a kind per wave; in peer order the gathers and scatters of the stacked
    rows walk memory forwards), and the bounds of each wave's run in that order."""
    events = np.nonzero(wave >= 0)[0]
    order = np.lexsort((peer[events], wave[events]))
    events = events[order]
    bounds = np.searchsorted(wave[events], np.arange(count + 1))
    return events, bounds


def assign_slots(schedule: Schedule) -> tuple[np.ndarray, int]:
    """A pool slot per used snapshot (indexed by event; -1 elsewhere), and the pool size.

    In wave order, a wave's merges free their slots before its snapshots take one: a stack
    of free slots, popped and pushed a whole wave at a time (a few numpy operations per
    wave instead of a Python step per message: 10 s at 1,000,000 peers)."""
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
        released = slot[merged_msg[m_bounds[w] : m_bounds[w + 1]]]
        if len(released):
            free = np.concatenate([free, released])
        taking = sends[s_bounds[w] : s_bounds[w + 1]]
        k = len(taking)
        if k == 0:
            continue
        reuse = min(k, len(free))
        fresh = np.arange(size, size + k - reuse, dtype=np.int64)
        size += k - reuse
        slot[taking] = np.concatenate([free[len(free) - reuse :], fresh])
        free = free[: len(free) - reuse]
    return slot, size


def plan_waves(schedule: Schedule, peers: int) -> Plan:
    del peers
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
    waves = []
    for w in range(count):
        m = slice(m_bounds[w], m_bounds[w + 1])
        t = slice(t_bounds[w], t_bounds[w + 1])
        s = slice(s_bounds[w], s_bounds[w + 1])
        waves.append(Wave(m_peer[m], m_slot[m], m_weight[m], t_peer[t], trains[t],
                          s_peer[s], s_slot[s]))  # fmt: skip
    after: list[int] = []
    for index, w in enumerate(schedule.eval_wave.tolist()):
        if w < count:
            waves[w].evals_before.append(index)
        else:
            after.append(index)
    return Plan(waves, after, size)
