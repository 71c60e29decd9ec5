"""Tests for the virtual-time event loop (sim/clock.py)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import math
import time
from typing import Any

import numpy as np
import pytest

from sim.clock import VirtualTimeDeadlockError, VirtualTimeLoop, run_virtual

pytestmark = pytest.mark.filterwarnings("error")


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_one_hour_sleep_is_instant_and_exact() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        assert loop.time() == 0.0
        await asyncio.sleep(3600)
        return loop.time()

    wall = time.perf_counter()
    assert run_virtual(main()) == 3600.0
    assert time.perf_counter() - wall < 0.5  # sanity bound only; virtual time is what matters


def test_start_time_and_invalid_start() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await asyncio.sleep(2.5)
        return before, loop.time()

    assert run_virtual(main(), start=100.0) == (100.0, 102.5)
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValueError, match="finite"):
            VirtualTimeLoop(bad)


def test_loop_never_spins_while_waiting() -> None:
    selects = 0

    class CountingLoop(VirtualTimeLoop):
        def _advance(self, timeout: float | None) -> None:
            nonlocal selects
            selects += 1
            super()._advance(timeout)

    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        runner.run(asyncio.sleep(1e9))
        assert runner.get_loop().time() == 1e9
    assert selects < 10


def test_call_later_fires_in_time_order_at_exact_times() -> None:
    delays = [5.0, 0.1, 3.3, 0.1 + 0.2, 7.25, 1e-9, 0.0, 1234.5678]

    async def main() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[float, float]] = []

        def record(delay: float) -> None:
            fired.append((delay, loop.time()))

        for delay in delays:
            loop.call_later(delay, record, delay)
        await asyncio.sleep(max(delays) + 1)
        return fired

    fired = run_virtual(main())
    assert [d for d, _ in fired] == sorted(delays)
    assert all(now == 0.0 + d for d, now in fired)  # exactly when = time() + delay


def test_ties_fire_in_scheduling_order_even_after_heap_rebuild() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        fired: list[int] = []
        handles = []
        for i in range(3000):
            # Three distinct deadlines, interleaved, reached through call_at and call_later.
            when = float(1 + i % 3)
            if i % 2:
                handles.append(loop.call_at(when, fired.append, i))
            else:
                handles.append(loop.call_later(when, fired.append, i))
        for i in range(0, 3000, 5):  # cancel 80%: asyncio rebuilds (heapifies) the timer heap
            for j in range(i + 1, i + 5):
                handles[j].cancel()
        await asyncio.sleep(0)  # one loop iteration triggers the rebuild
        await asyncio.sleep(10)
        return fired

    fired = run_virtual(main())
    survivors = list(range(0, 3000, 5))
    expected = [i for t in (1, 2, 3) for i in survivors if 1 + i % 3 == t]
    assert fired == expected


def test_timer_in_the_past_fires_without_moving_the_clock_back() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        seen: list[float] = []
        await asyncio.sleep(10)
        loop.call_at(3.0, lambda: seen.append(loop.time()))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return seen

    assert run_virtual(main()) == [10.0]


def test_wait_for_and_timeout_raise_at_the_right_virtual_time() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        times: list[float] = []
        never = asyncio.Event()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(never.wait(), timeout=5.0)
        times.append(loop.time())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(2.5):
                await asyncio.sleep(100)
        times.append(loop.time())
        async with asyncio.timeout_at(loop.time() + 1.0) as scope:
            scope.reschedule(loop.time() + 4.0)
            await asyncio.sleep(3.0)  # finishes before the rescheduled deadline
        times.append(loop.time())
        assert await asyncio.wait_for(asyncio.sleep(1.0, result="ok"), timeout=1.5) == "ok"
        times.append(loop.time())
        return times

    assert run_virtual(main()) == [5.0, 7.5, 10.5, 11.5]


def test_queue_and_event_between_tasks() -> None:
    async def main() -> tuple[list[tuple[float, int]], list[float]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=2)
        go = asyncio.Event()
        received: list[tuple[float, int]] = []
        woken: list[float] = []

        async def producer() -> None:
            for i in range(6):
                await asyncio.sleep(0.5)
                await queue.put(i)
            go.set()

        async def consumer() -> None:
            for _ in range(6):
                item = await queue.get()
                received.append((loop.time(), item))
                await asyncio.sleep(2.0)  # slower than the producer: back-pressure

        async def waiter() -> None:
            await go.wait()
            woken.append(loop.time())

        await asyncio.gather(producer(), consumer(), waiter(), waiter())
        return received, woken

    received, woken = run_virtual(main())
    assert received == [(0.5, 0), (2.5, 1), (4.5, 2), (6.5, 3), (8.5, 4), (10.5, 5)]
    # The producer's last put (item 5) succeeds when the consumer frees a slot at 6.5.
    assert woken == [6.5, 6.5]


def test_thousand_periodic_tasks_wake_exactly_as_computed() -> None:
    horizon = 40.3  # not a multiple of any period: no wakeup races the horizon
    periods = [0.125 * (1 + i % 16) for i in range(1000)]  # dyadic: sums are exact floats

    async def main() -> tuple[list[int], list[float], float]:
        loop = asyncio.get_running_loop()
        counts = [0] * len(periods)
        last = [0.0] * len(periods)

        async def peer(i: int) -> None:
            while True:
                await asyncio.sleep(periods[i])
                counts[i] += 1
                last[i] = loop.time()

        tasks = [asyncio.create_task(peer(i)) for i in range(len(periods))]
        await asyncio.sleep(horizon)
        end = loop.time()
        await _cancel_all(tasks)
        return counts, last, end

    counts, last, end = run_virtual(main())
    expected = [math.floor(horizon / p) for p in periods]
    assert counts == expected
    assert last == [n * p for n, p in zip(expected, periods, strict=True)]
    assert end == horizon
    assert sum(counts) == sum(expected) > 60_000


def _random_trace(seed: int) -> list[tuple[float, int]]:
    async def main() -> list[tuple[float, int]]:
        loop = asyncio.get_running_loop()
        rng = np.random.default_rng(seed)
        trace: list[tuple[float, int]] = []

        async def walker(ident: int) -> None:
            for _ in range(30):
                # Few distinct durations (many ties) mixed with continuous ones.
                if rng.random() < 0.5:
                    await asyncio.sleep(float(rng.integers(0, 4)))
                else:
                    await asyncio.sleep(float(rng.exponential(1.5)))
                trace.append((loop.time(), ident))

        await asyncio.gather(*(walker(i) for i in range(50)))
        return trace

    return run_virtual(main())


def test_seeded_random_scenario_is_reproducible() -> None:
    first, second, other = _random_trace(7), _random_trace(7), _random_trace(8)
    assert first == second
    assert first != other
    assert len(first) == 50 * 30
    assert [t for t, _ in first] == sorted(t for t, _ in first)
    assert len({t for t, _ in first}) < len(first)  # ties happened and were ordered identically


def test_run_virtual_cleans_up_leftover_tasks(caplog: pytest.LogCaptureFixture) -> None:
    holder: dict[str, Any] = {}

    async def forever(period: float) -> None:
        while True:
            await asyncio.sleep(period)

    async def never_set() -> None:
        await asyncio.Event().wait()

    async def main() -> str:
        holder["loop"] = asyncio.get_running_loop()
        holder["tasks"] = [asyncio.create_task(forever(0.5 + i)) for i in range(20)]
        holder["tasks"].append(asyncio.create_task(never_set()))
        await asyncio.sleep(10)
        return "done"

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        assert run_virtual(main()) == "done"
        gc.collect()
    assert holder["loop"].is_closed()
    assert all(task.cancelled() for task in holder["tasks"])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_exceptions_propagate() -> None:
    async def failing(delay: float) -> None:
        await asyncio.sleep(delay)
        raise ValueError(f"boom at {asyncio.get_running_loop().time()}")

    async def main() -> None:
        await asyncio.gather(failing(3.0), asyncio.sleep(10))

    with pytest.raises(ValueError, match=r"boom at 3\.0"):
        run_virtual(main())


def test_waiting_on_something_that_can_never_happen_is_a_deadlock_error() -> None:
    async def main() -> None:
        await asyncio.sleep(4.0)
        await asyncio.Event().wait()

    with pytest.raises(VirtualTimeDeadlockError, match=r"virtual time 4\.0"):
        run_virtual(main())

    async def parked_forever() -> None:
        await asyncio.sleep(1.5)
        await asyncio.sleep(math.inf)  # an infinite timer is never reached, time stays finite

    with pytest.raises(VirtualTimeDeadlockError, match=r"virtual time 1\.5"):
        run_virtual(parked_forever())


def test_run_until_steps_the_loop_from_outside() -> None:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, VirtualTimeLoop)
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                await asyncio.sleep(1.0)
                ticks.append(loop.time())

        loop.create_task(ticker())
        loop.run_until(3.0)  # the tick due at exactly 3.0 runs
        assert loop.time() == 3.0
        assert ticks == [1.0, 2.0, 3.0]
        loop.run_for(2.5)
        assert loop.time() == 5.5
        assert ticks == [1.0, 2.0, 3.0, 4.0, 5.0]
        with pytest.raises(ValueError, match=r"already at 5\.5"):
            loop.run_until(5.0)
        with pytest.raises(ValueError, match="finite"):
            loop.run_until(math.inf)
        # Idle loop (no timers at all): the clock still moves to the target.
        assert runner.run(asyncio.sleep(0.25)) is None
        assert loop.time() == 5.75
    assert ticks[-1] == 5.0


def test_run_until_on_an_idle_loop_moves_the_clock() -> None:
    loop = VirtualTimeLoop(start=1.0)
    try:
        loop.run_until(42.0)
        assert loop.time() == 42.0
    finally:
        loop.close()


def test_executor_jobs_take_zero_virtual_time() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        events: list[tuple[str, float]] = []
        loop.call_later(1.0, lambda: events.append(("timer", loop.time())))
        # Real work in a thread (hashing releases the GIL): the clock must not jump to the
        # timer while it runs.
        data = bytes(32_000_000)
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        events.append((f"thread {digest == hashlib.sha256(data).hexdigest()}", loop.time()))
        await asyncio.sleep(2.0)
        return events

    assert run_virtual(main()) == [("thread True", 0.0), ("timer", 1.0)]


def test_hundred_thousand_wakeups_complete() -> None:
    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        count = 0

        async def sleeper(period: float) -> None:
            nonlocal count
            for _ in range(1000):
                await asyncio.sleep(period)
                count += 1

        await asyncio.gather(*(sleeper(1.0 + i / 128) for i in range(100)))
        return count, loop.time()

    assert run_virtual(main()) == (100_000, 1000 * (1.0 + 99 / 128))
