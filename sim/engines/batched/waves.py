"""Waves: the schedule's operations grouped so that each group is a few batched tensor ops.

The trace is a dependency graph: each peer's operations in order, and each merge after the
snapshot it reads was taken. A wave runs three phases over the stacked parameters: merges
(each peer at most once), then training steps, then snapshots (``SEND``) into the pool of
in-flight models. An operation goes into the earliest wave that keeps its peer's order and
its phase after the peer's previous operation in that wave; a merge also waits for the wave
after its snapshot's. An evaluation is a barrier: it runs between two waves, after every
operation before it and before every one after it.

Snapshot slots are assigned in wave order: a merge frees its slot, and a snapshot in the same
or a later wave reuses it, so the pool holds only the models in flight *in wave order*.
Only snapshots that some merge reads get a slot (a dropped or refused message needs none).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.engines.batched.schedule import EVAL, MERGE, SEND, TRAIN, Schedule

_PHASE = {MERGE: 0, TRAIN: 1, SEND: 2}


@dataclass
class Wave:
    """One wave: merges (peer, slot, weight), trains (peer, op), snapshots (peer, slot)."""

    merge_peer: list[int] = field(default_factory=list)
    merge_slot: list[int] = field(default_factory=list)
    merge_weight: list[float] = field(default_factory=list)
    train_peer: list[int] = field(default_factory=list)
    train_op: list[int] = field(default_factory=list)
    send_peer: list[int] = field(default_factory=list)
    send_slot: list[int] = field(default_factory=list)
    evals_before: list[int] = field(default_factory=list)


@dataclass
class Plan:
    waves: list[Wave]
    evals_after: list[int]  # evaluations after the last wave
    pool_size: int


def plan_waves(schedule: Schedule, peers: int) -> Plan:
    kind, peer, arg, weight = schedule.kind, schedule.peer, schedule.arg, schedule.weight
    wave_of_peer = [0] * peers
    phase_of_peer = [-1] * peers
    send_wave: dict[int, int] = {}
    floor = 0  # no operation before this wave (the last evaluation barrier)
    top = -1  # the highest wave used so far
    waves: list[Wave] = []
    pending_evals: list[int] = []
    # Per wave, the message ids merged and sent (slots are assigned afterwards).
    merged_msgs: list[list[int]] = []
    sent_msgs: list[list[int]] = []

    def wave(w: int) -> Wave:
        while len(waves) <= w:
            waves.append(Wave())
            merged_msgs.append([])
            sent_msgs.append([])
        return waves[w]

    for op in range(len(kind)):
        k = kind[op]
        if k == EVAL:
            # Every operation so far is in a wave <= top: the evaluation runs before wave
            # top + 1, which the next operation opens (or after the last wave).
            floor = top + 1
            pending_evals.append(arg[op])
            continue
        if k == SEND and not schedule.used[arg[op]]:
            continue
        p = peer[op]
        phase = _PHASE[k]
        w = wave_of_peer[p] + (1 if phase <= phase_of_peer[p] else 0)
        if w < floor:
            w, phase_of_peer[p] = floor, -1
        if k == MERGE:
            w = max(w, send_wave[arg[op]] + 1)
        wave_of_peer[p], phase_of_peer[p] = w, phase
        target = wave(w)
        if pending_evals:
            # The first operation after a barrier opens the wave the evaluations precede.
            wave(floor).evals_before.extend(pending_evals)
            pending_evals = []
        top = max(top, w)
        if k == MERGE:
            target.merge_peer.append(p)
            target.merge_weight.append(weight[op])
            merged_msgs[w].append(arg[op])
        elif k == TRAIN:
            target.train_peer.append(p)
            target.train_op.append(op)
        else:
            target.send_peer.append(p)
            send_wave[arg[op]] = w
            sent_msgs[w].append(arg[op])
    # Slots, in wave order: merges free theirs before the wave's snapshots take one.
    free: list[int] = []
    slot_of: dict[int, int] = {}
    size = 0
    for w, target in enumerate(waves):
        for m in merged_msgs[w]:
            target.merge_slot.append(slot_of[m])
        for m in merged_msgs[w]:
            free.append(slot_of.pop(m))
        for m in sent_msgs[w]:
            if free:
                s = free.pop()
            else:
                s, size = size, size + 1
            slot_of[m] = s
            target.send_slot.append(s)
    return Plan(waves, pending_evals, size)
