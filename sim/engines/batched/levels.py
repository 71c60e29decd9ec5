"""The state pass by dependency levels: :func:`.state.walk`'s arithmetic over numpy arrays.

The walk is sequential through two kinds of dependency only: a peer's events, in order, and
a delivery after the round that sent it (it reads the sender's age and wave at the send).
Everything else it keeps is a sum or a maximum (the counters, the largest wave, the largest
age), read only at the evaluation records. So between two records the events form a DAG in
which an event has at most two predecessors, and the events of one *level* of it (the
longest path to them from a source) belong to distinct peers and depend only on lower
levels. Walking the levels in order, a level is a few numpy operations over its events: the
same states, in the same order per peer, with the same IEEE operations as the walk.

Why: in Python the walk costs about 1.3 µs an event (0.25 s of the 1 s a 10-period run of
10,000 ``logreg`` peers takes) and numba's compiled walk costs 0.6-0.8 s to load in a fresh
process. Uniform or topology gossip has a few dozen levels per period whatever N is
(10,000 peers over 10 periods: 200,000 events in 68 levels), so this pass costs about 0.2
µs an event there (0.5 at 2,000,000 events, where the arrays outgrow the caches). Narrow runs (a handful of peers over many periods) have levels of a few events,
where the per-level numpy calls cost more than Python's walk: :func:`level_walk` measures
the width first and declines them. The tests hold its output to the walk's, bit for bit.
"""

from __future__ import annotations

import numpy as np

from sim.engines.batched.state import (
    _CREDIT_CAP,
    AGE_CAPPED,
    COUNTERS,
    DELIVER,
    DELIVERED,
    DROP_LOSS,
    DROP_PARTITION,
    EVAL_WAVE,
    IN_FLIGHT,
    IN_FLIGHT_NOW,
    MERGES,
    NO_TARGET,
    PARTITIONED,
    POLICY_CAP,
    POLICY_OFF,
    POLICY_REFUSE,
    RECORD,
    REJECT_INFLATION,
    RULE_AGE_WEIGHTED,
    RULE_AVERAGE,
    RULE_NONE,
    SENT,
    TRAIN_STEPS,
)  # fmt: skip

# Events per level below which the walk in Python is faster than a level's numpy calls
# (about 60 calls of a few µs each against 1.3 µs an event).
MIN_WIDTH = 160

Segment = tuple[np.ndarray, np.ndarray]  # events by (level, kind); bounds of the groups


def plan_levels(
    kind: np.ndarray, peer: np.ndarray, ref: np.ndarray, min_width: int | None = None
) -> list[Segment | None] | None:
    """Per stretch of events before each record (and after the last): the events sorted by
    (level, kind), and the bounds of each (level, ROUND) and (level, DELIVER) group in that
    order. None when the levels would average fewer than ``min_width`` (None: ``MIN_WIDTH``)
    events."""
    size = len(kind)
    min_width = MIN_WIDTH if min_width is None else min_width
    records = np.flatnonzero(kind == RECORD)
    starts = np.concatenate(([0], records + 1)).tolist()
    ends = np.concatenate((records, [size])).tolist()
    budget = size / max(min_width, 1)  # more levels than this: too narrow
    levels = 0
    out: list[Segment | None] = []
    for a, b in zip(starts, ends, strict=True):
        m = b - a
        if m <= 0:
            out.append(None)
            continue
        p, k, r = peer[a:b], kind[a:b], ref[a:b]
        # A peer's events in order: each one's successor (next), predecessor (prev) and a
        # count of the predecessors it waits for. (By a distinct key and the default sort:
        # a stable sort of the peers is 3-4x slower.)
        by_peer = np.argsort(p.astype(np.int64) * m + np.arange(m))
        same = p[by_peer[1:]] == p[by_peer[:-1]]
        earlier, later = by_peer[:-1][same], by_peer[1:][same]
        nxt = np.full(m, -1, dtype=np.int64)
        nxt[earlier] = later
        prev = np.full(m, -1, dtype=np.int64)
        prev[later] = earlier
        waiting = np.zeros(m, dtype=np.int64)
        waiting[later] = 1
        # A delivery waits for its round when that round is in this stretch too.
        d = np.flatnonzero((k == DELIVER) & (r >= a))
        sends = r[d] - a
        delivery = np.full(m, -1, dtype=np.int64)
        delivery[sends] = d
        if np.count_nonzero(delivery >= 0) != len(d):  # pragma: no cover - one push each
            return None
        waiting[d] += 1
        level = np.full(m, -1, dtype=np.int64)
        ready = np.flatnonzero(waiting == 0)
        depth = done = 0
        while ready.size:
            level[ready] = depth
            depth += 1
            done += ready.size
            if levels + depth > budget:
                return None
            s1 = nxt[ready]
            s1 = s1[s1 >= 0]
            waiting[s1] -= 1  # (distinct: a peer's next event is one event's successor)
            s2 = delivery[ready]
            s2 = s2[s2 >= 0]
            waiting[s2] -= 1
            r1, r2 = s1[waiting[s1] == 0], s2[waiting[s2] == 0]
            # A delivery whose peer's previous event was in this level too is in r1 already.
            before = prev[r2]
            again = before >= 0
            again[again] = level[before[again]] == depth - 1
            ready = np.concatenate((r1, r2[~again]))
        if done != m:  # pragma: no cover - predecessors are earlier events: a DAG
            raise AssertionError("the events' dependencies have a cycle")
        levels += depth
        key = 2 * level + (k == DELIVER)
        order = np.argsort(key) + a
        bounds = np.zeros(2 * depth + 1, dtype=np.int64)
        np.cumsum(np.bincount(key, minlength=2 * depth), out=bounds[1:])
        out.append((order, bounds))
    return out


def level_walk(
    kind: np.ndarray, peer: np.ndarray, ref: np.ndarray, outcome: np.ndarray,
    when: np.ndarray, trains: np.ndarray, inc: np.ndarray, steps: int, policy: int,
    rate: np.ndarray, burst: np.ndarray, rule: int, per_event: dict[str, np.ndarray],
    counters: np.ndarray, ages_at: np.ndarray, min_width: int | None = None,
) -> tuple[int, int, int] | None:  # fmt: skip
    """:func:`.state.walk` over the same inputs, filling ``per_event`` (the walk's per-event
    outputs by name), ``counters`` and ``ages_at`` in place; returns what the walk returns,
    or None (nothing filled) when the run is too narrow (see :func:`plan_levels`)."""
    segments = plan_levels(kind, peer, ref, min_width)
    if segments is None:
        return None
    n = len(trains)
    train_wave, age_before = per_event["train_wave"], per_event["age_before"]
    send_wave, msg_age, used = per_event["send_wave"], per_event["msg_age"], per_event["used"]
    merge_wave, merge_weight = per_event["merge_wave"], per_event["merge_weight"]
    ages = np.zeros(n, dtype=np.int64)
    wave_of = np.zeros(n, dtype=np.int64)
    phase_of = np.full(n, -1, dtype=np.int64)
    credit = burst.astype(np.float64)
    last = np.zeros(n, dtype=np.float64)
    has_last = np.zeros(n, dtype=np.bool_)
    merges_models = rule != RULE_NONE
    guarded = policy == POLICY_REFUSE or (policy == POLICY_CAP and merges_models)
    floor, top, record = 0, -1, 0
    sent = delivered = in_flight = 0
    drop_partition = drop_loss = reject_inflation = 0
    merges = age_capped = train_steps = 0
    n_records, n_record_events = len(counters), int(np.count_nonzero(kind == RECORD))

    def step(i: np.ndarray, phase: int) -> np.ndarray:
        """The wave of each peer's next operation of ``phase`` (the walk's rule)."""
        w: np.ndarray = wave_of[i] + (phase_of[i] >= phase)
        np.maximum(w, floor, out=w)
        return w

    for index, segment in enumerate(segments):
        if segment is not None:
            order, bounds = segment
            for g in range(0, len(bounds) - 1, 2):
                rounds = order[bounds[g] : bounds[g + 1]]
                if len(rounds):
                    i = peer[rounds]
                    t = trains[i]
                    if not t.all():
                        tr, it = rounds[t], i[t]
                    else:
                        tr, it = rounds, i
                    if len(tr):
                        w = step(it, 1)
                        wave_of[it] = w
                        phase_of[it] = 1
                        top = max(top, int(w.max()))
                        train_wave[tr] = w
                        before = ages[it]
                        age_before[tr] = before
                        ages[it] = before + inc[it]
                        train_steps += steps * len(tr)
                    o = outcome[rounds]
                    count = np.bincount(o, minlength=4)
                    c_none, c_flight, c_part = int(count[NO_TARGET]), int(count[IN_FLIGHT]), \
                        int(count[PARTITIONED])  # fmt: skip
                    sent += len(rounds) - c_none
                    in_flight += c_flight
                    drop_partition += c_part
                    drop_loss += len(rounds) - c_none - c_flight - c_part
                    if c_flight:
                        flying = o == IN_FLIGHT
                        fr, fi = (rounds, i) if c_flight == len(rounds) else (rounds[flying],
                                                                             i[flying])  # fmt: skip
                        msg_age[fr] = ages[fi]
                        w = step(fi, 2)
                        wave_of[fi] = w
                        phase_of[fi] = 2
                        top = max(top, int(w.max()))
                        send_wave[fr] = w
                ds = order[bounds[g + 1] : bounds[g + 2]]
                if not len(ds):
                    continue
                in_flight -= len(ds)
                i = peer[ds]
                s = ref[ds]
                t_r = msg_age[s]
                if guarded:
                    now, had, then = when[ds], has_last[i], last[i]
                    later = now > then
                    c = credit[i]
                    refill = had & later
                    if refill.any():
                        c = np.where(refill, np.minimum(burst[i], c + rate[i] * (now - then)), c)
                        credit[i] = c
                    last[i] = np.where(~had | later, now, then)
                    has_last[i] = True
                    bound = ages[i] + np.minimum(c, _CREDIT_CAP).astype(np.int64)
                    if policy == POLICY_REFUSE:
                        refused = t_r > bound
                        n_refused = int(np.count_nonzero(refused))
                        if n_refused:
                            reject_inflation += n_refused
                            keep = ~refused
                            ds, i, s, t_r, bound = (
                                ds[keep],
                                i[keep],
                                s[keep],
                                t_r[keep],
                                bound[keep],
                            )
                delivered += len(ds)
                if not merges_models or not len(ds):
                    continue
                before = ages[i]
                if policy != POLICY_OFF:
                    capped = t_r > bound
                    age_capped += int(np.count_nonzero(capped))
                    t_r = np.where(capped, bound, t_r)
                after = np.maximum(before, t_r)
                ages[i] = after
                if policy != POLICY_OFF:
                    grew = after > before
                    if grew.any():
                        c = credit[i]
                        credit[i] = np.where(grew, np.maximum(0.0, c - (after - before)), c)
                merges += len(ds)
                used[s] = True
                w = step(i, 0)
                sw = send_wave[s]
                w = np.where(w <= sw, sw + 1, w)
                wave_of[i] = w
                phase_of[i] = 0
                top = max(top, int(w.max()))
                merge_wave[ds] = w
                if rule == RULE_AGE_WEIGHTED:
                    total = before + t_r
                    positive = total > 0
                    merge_weight[ds] = np.where(positive, t_r / np.where(positive, total, 1), 0.5)
                elif rule == RULE_AVERAGE:
                    merge_weight[ds] = 0.5
                else:  # replace
                    merge_weight[ds] = np.where(t_r >= before, 1.0, 0.0)
        if index < n_record_events:  # the record that ends this stretch
            if record < n_records:
                row = counters[record]
                row[SENT], row[DELIVERED], row[IN_FLIGHT_NOW] = sent, delivered, in_flight
                row[DROP_PARTITION], row[DROP_LOSS] = drop_partition, drop_loss
                row[REJECT_INFLATION], row[MERGES], row[AGE_CAPPED] = (
                    reject_inflation, merges, age_capped,
                )  # fmt: skip
                row[TRAIN_STEPS] = train_steps
                floor = top + 1
                row[EVAL_WAVE] = floor
                ages_at[record] = ages
            record += 1
    assert counters.shape[1] == COUNTERS
    # Ages only grow, and a merge never exceeds an age some training reached: the largest
    # age now is the walk's largest age after a training step.
    oldest = int(ages.max()) if n else 0
    return oldest, top + 1, record
