"""The state pass of the batched engine, compiled: one walk over the events in order.

What it tracks is what the asyncio engine's peers and network would say at every event: the
message accounting, every peer's age and its age guard's credit, every merge's weight, and
the wave of each operation (see :mod:`.waves`). It is sequential (an age depends on the ages
that came before it, a wave on the sender's). :func:`walk` is one source for two runtimes:
Python over lists (about 1.3 µs an event, no start-up cost) or numba over arrays (about 20
ns an event, after 0.6-0.8 s to import numba and load the compiled code from its cache, 5 s
to compile it the first time), which is why it is our own code rather than a library's. A
third walker, :mod:`.levels`, does the same arithmetic over numpy arrays one dependency
level at a time (0.2-0.5 µs an event, no start-up cost). :func:`state_pass` picks by the
number of events (:func:`pick_walker`: Python for small runs, levels from 10,000 events,
compiled above 1,250,000, or above 5,000 once it has run in the process), and the tests
hold the three to each other.

The arithmetic is the Python reference's, operation for operation: the age guard is
:class:`gossip.age_guard.AgeAllowance` (``refill``, ``bound``, ``spend``) written over arrays
of credits, and the merge weights are the rules' ``weight`` (``age-weighted``:
``t_r / (t_l + t_r)``, exact for ages below 2**53, which :func:`state_pass` checks).
Numba does not contract ``a * b + c`` into a fused multiply-add without ``fastmath``, so
every float is the one Python computes.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

# Codes shared with schedule.py (the event kinds and outcomes are defined there).
ROUND, DELIVER, RECORD = 0, 1, 2
NO_TARGET, IN_FLIGHT, PARTITIONED, LOST = 0, 1, 2, 3
POLICY_OFF, POLICY_CAP, POLICY_REFUSE = 0, 1, 2
RULE_AGE_WEIGHTED, RULE_AVERAGE, RULE_REPLACE, RULE_NONE = 0, 1, 2, 3
POLICY_CODES = {"off": POLICY_OFF, "cap": POLICY_CAP, "refuse": POLICY_REFUSE}
RULE_CODES = {
    "age-weighted": RULE_AGE_WEIGHTED, "average": RULE_AVERAGE, "replace": RULE_REPLACE,
    "none": RULE_NONE,
}  # fmt: skip
# Counters per evaluation record, columns of ``counters``.
SENT, DELIVERED, IN_FLIGHT_NOW, DROP_PARTITION, DROP_LOSS, REJECT_INFLATION = 0, 1, 2, 3, 4, 5
MERGES, AGE_CAPPED, TRAIN_STEPS, EVAL_WAVE = 6, 7, 8, 9
COUNTERS = 10
EXACT_AGE = 2**53  # ages below it are exact as float64, so are the age-weighted weights
_CREDIT_CAP = 4.0e18  # int(credit) beyond it would overflow int64; no age gets near it


def walk(
    kind: Any, peer: Any, ref: Any, outcome: Any, when: Any, trains: Any, inc: Any,
    steps: int, policy: int, rate: Any, burst: Any, rule: int,
    train_wave: Any, age_before: Any, send_wave: Any, msg_age: Any, used: Any,
    merge_wave: Any, merge_weight: Any, counters: Any, ages_at: Any, ages: Any,
    wave_of: Any, phase_of: Any, credit: Any, last: Any, has_last: Any,
) -> tuple[int, int, int]:  # fmt: skip
    """Walk the events, filling the outputs in place: per event ``train_wave``,
    ``age_before``, ``send_wave``, ``msg_age``, ``used``, ``merge_wave``, ``merge_weight``;
    per record a row of ``counters`` (``COUNTERS`` columns) and of ``ages_at``. The state
    arrays start as: ``ages`` 0, ``wave_of`` 0, ``phase_of`` -1, ``credit`` = ``burst``,
    ``has_last`` False. Returns (the largest age, the number of waves, records walked).

    Written for both runtimes: only indexing, arithmetic and builtins (lists and numpy
    arrays both have ``copy()``); the age guard's refill and bound are inlined because a
    compiled function may only call compiled ones."""
    floor, top, record = 0, -1, 0
    sent = delivered = in_flight = 0
    drop_partition = drop_loss = reject_inflation = 0
    merges = age_capped = train_steps = 0
    oldest = 0
    merges_models = rule != RULE_NONE
    n_records = len(counters)
    for e in range(len(kind)):
        k = kind[e]
        i = peer[e]
        if k == ROUND:
            if trains[i]:
                w = wave_of[i] + (1 if phase_of[i] >= 1 else 0)
                if w < floor:
                    w = floor
                wave_of[i] = w
                phase_of[i] = 1
                if w > top:
                    top = w
                train_wave[e] = w
                age_before[e] = ages[i]
                ages[i] += inc[i]
                if ages[i] > oldest:
                    oldest = ages[i]
                train_steps += steps
            o = outcome[e]
            if o == NO_TARGET:
                continue
            sent += 1
            if o == IN_FLIGHT:
                in_flight += 1
                msg_age[e] = ages[i]
                w = wave_of[i] + (1 if phase_of[i] >= 2 else 0)
                if w < floor:
                    w = floor
                wave_of[i] = w
                phase_of[i] = 2
                if w > top:
                    top = w
                send_wave[e] = w
            elif o == PARTITIONED:
                drop_partition += 1
            else:
                drop_loss += 1
        elif k == DELIVER:
            in_flight -= 1
            s = ref[e]
            t_r = msg_age[s]
            bound = 0
            # AgeAllowance: refuse checks every offer whatever the rule; cap bounds merges.
            if policy == POLICY_REFUSE or (policy == POLICY_CAP and merges_models):
                now = when[e]
                if has_last[i] and now > last[i]:
                    credit[i] = min(burst[i], credit[i] + rate[i] * (now - last[i]))
                if not has_last[i] or now > last[i]:
                    last[i] = now
                    has_last[i] = True
                bound = ages[i] + int(min(credit[i], _CREDIT_CAP))
                if policy == POLICY_REFUSE and t_r > bound:
                    reject_inflation += 1
                    continue
            delivered += 1
            if not merges_models:
                continue
            before = ages[i]
            if policy != POLICY_OFF and t_r > bound:
                t_r = bound
                age_capped += 1
            after = before if before >= t_r else t_r
            ages[i] = after
            if policy != POLICY_OFF and after > before:
                credit[i] = max(0.0, credit[i] - (after - before))
            merges += 1
            used[s] = True
            w = wave_of[i] + (1 if phase_of[i] >= 0 else 0)
            if w < floor:
                w = floor
            if w <= send_wave[s]:
                w = send_wave[s] + 1
            wave_of[i] = w
            phase_of[i] = 0
            if w > top:
                top = w
            merge_wave[e] = w
            if rule == RULE_AGE_WEIGHTED:
                total = before + t_r
                merge_weight[e] = t_r / total if total > 0 else 0.5
            elif rule == RULE_AVERAGE:
                merge_weight[e] = 0.5
            else:  # replace
                merge_weight[e] = 1.0 if t_r >= before else 0.0
        else:
            if record < n_records:
                row = counters[record]
                row[SENT] = sent
                row[DELIVERED] = delivered
                row[IN_FLIGHT_NOW] = in_flight
                row[DROP_PARTITION] = drop_partition
                row[DROP_LOSS] = drop_loss
                row[REJECT_INFLATION] = reject_inflation
                row[MERGES] = merges
                row[AGE_CAPPED] = age_capped
                row[TRAIN_STEPS] = train_steps
                floor = top + 1
                row[EVAL_WAVE] = floor
                ages_at[record] = ages.copy()
            record += 1
    return oldest, top + 1, record


_compiled: list[Any] = []  # walk compiled by numba, once per process (imported on demand)
# Events above which numba's walk is taken: with its load in a fresh process it walked
# 1,000,000 events in 0.43-0.51 s against the level walk's 0.33-0.36 s, and 2,000,000 in
# 0.46-0.7 s against 0.9-1.0 s (62,500 peers over 10 periods at this threshold).
COMPILE_ABOVE = 1_250_000
# Once the compiled walk has run in this process (a sweep's worker after its first large
# run), loading costs nothing more: every run but the smallest takes it (the Python walk of
# 5,000 events takes ~7 ms, the compiled call ~0.1 ms).
COMPILE_WARM_ABOVE = 5_000
# Events from which the level walk is tried (below, Python's walk is as fast); it declines
# narrow runs itself (see levels.MIN_WIDTH).
LEVELS_ABOVE = 10_000
_warm: list[bool] = []  # the compiled walk has been called (numba loaded and cache read)
WALKERS = ("python", "levels", "compiled")


def _compiled_walk() -> Any:
    if not _compiled:
        from numba import njit

        _compiled.append(njit(cache=True)(walk))
    return _compiled[0]


def pick_walker(size: int) -> str:
    """The walker for a run of ``size`` events, as :func:`state_pass` picks it."""
    threshold = COMPILE_WARM_ABOVE if _warm else COMPILE_ABOVE
    if size > threshold and importlib.util.find_spec("numba") is not None:
        return "compiled"
    return "levels" if size > LEVELS_ABOVE else "python"


def state_pass(
    kind: np.ndarray, peer: np.ndarray, ref: np.ndarray, outcome: np.ndarray,
    when: np.ndarray, trains: np.ndarray, inc: np.ndarray, steps: int, policy: int,
    rate: np.ndarray, burst: np.ndarray, rule: int, n_records: int,
    walker: str | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, int, int, int]:  # fmt: skip
    """Run :func:`walk` compiled by numba, by dependency levels over numpy arrays
    (:mod:`.levels`; it falls back to Python for narrow runs) or in Python: ``walker``
    names one of ``WALKERS``, None picks by the number of events (:func:`pick_walker`).
    Returns the per-event arrays by name, ``counters`` ``[records, COUNTERS]``, the ages
    ``[records, N]``, the largest age, the number of waves and of records walked."""
    n, size = len(trains), len(kind)
    if walker is None:
        walker = pick_walker(size)
    if walker not in WALKERS:
        raise ValueError(f"unknown walker {walker!r}; choose one of {', '.join(WALKERS)}")
    per_event: dict[str, np.ndarray] = {
        "train_wave": np.full(size, -1, dtype=np.int64),
        "age_before": np.zeros(size, dtype=np.int64),
        "send_wave": np.full(size, -1, dtype=np.int64),
        "msg_age": np.zeros(size, dtype=np.int64),
        "used": np.zeros(size, dtype=np.bool_),
        "merge_wave": np.full(size, -1, dtype=np.int64),
        "merge_weight": np.zeros(size, dtype=np.float64),
    }
    counters = np.zeros((n_records, COUNTERS), dtype=np.int64)
    ages_at = np.zeros((n_records, n), dtype=np.int64)
    inputs = (kind, peer, ref, outcome, when, trains, inc)
    if walker == "levels":
        from sim.engines.batched.levels import level_walk

        done = level_walk(
            *inputs, steps, policy, rate, burst, rule, per_event, counters, ages_at
        )  # fmt: skip
        if done is not None:
            return per_event, counters, ages_at, *done
        walker = "python"  # too narrow: nothing was filled
    state = (
        np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.full(n, -1, np.int64),
        burst.astype(np.float64), np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.bool_),
    )  # fmt: skip
    if walker == "compiled":
        oldest, waves, walked = _compiled_walk()(
            *inputs, steps, policy, rate, burst, rule, *per_event.values(), counters, ages_at,
            *state,
        )  # fmt: skip
        if not _warm:
            _warm.append(True)
        return per_event, counters, ages_at, int(oldest), int(waves), int(walked)
    # Python: over lists (indexing a list is several times faster than a numpy scalar; a
    # run this small holds at most a few million entries as Python objects).
    lists = [a.tolist() for a in (*per_event.values(),)]
    state_lists = [a.tolist() for a in state]
    rows = counters.tolist()
    snapshots: list[list[int]] = [[] for _ in range(n_records)]
    python_walk: Any = walk  # (mypy cannot count the unpacked arguments)
    oldest, waves, walked = python_walk(
        *(a.tolist() for a in inputs), steps, policy, rate.tolist(), burst.tolist(), rule,
        *lists, rows, snapshots, *state_lists,
    )  # fmt: skip
    for name, values in zip(per_event, lists, strict=True):
        per_event[name] = np.asarray(values, dtype=per_event[name].dtype)
    counters = np.asarray(rows, dtype=np.int64).reshape(n_records, COUNTERS)
    if n_records:
        ages_at = np.asarray(snapshots, dtype=np.int64).reshape(n_records, n)
    return per_event, counters, ages_at, int(oldest), int(waves), int(walked)
