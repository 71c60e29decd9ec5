"""Throughput of the virtual-time event loop: timer wakeups per second of wall time.

Each scenario runs N tasks doing ``while True: await asyncio.sleep(period)`` for a virtual
horizon, then cancels them. "same period" wakes all tasks in the same loop iteration;
"distinct periods" gives every task its own period, so wakeups rarely coincide.

    python benchmarks/bench_clock.py [--horizon SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from sim.clock import run_virtual


async def _periodic_tasks(periods: list[float], horizon: float) -> int:
    wakeups = 0

    async def sleeper(period: float) -> None:
        nonlocal wakeups
        while True:
            await asyncio.sleep(period)
            wakeups += 1

    tasks = [asyncio.create_task(sleeper(p)) for p in periods]
    await asyncio.sleep(horizon)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return wakeups


def _measure(periods: list[float], horizon: float) -> tuple[int, float]:
    start = time.perf_counter()
    wakeups = run_virtual(_periodic_tasks(periods, horizon))
    return wakeups, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=float, default=100.0, help="virtual seconds per run")
    args = parser.parse_args()
    horizon: float = args.horizon

    scenarios = [
        ("1,000 tasks, same period 1 s", [1.0] * 1000),
        ("1,000 tasks, distinct periods ~1 s", [1.0 + i * 1e-4 for i in range(1000)]),
        ("100 tasks, distinct periods ~0.1 s", [0.1 + i * 1e-4 for i in range(100)]),
        ("10,000 tasks, distinct periods ~10 s", [10.0 + i * 1e-4 for i in range(10_000)]),
    ]
    print(f"virtual horizon: {horizon:g} s")
    print(f"{'scenario':<40} {'wakeups':>10} {'wall s':>8} {'wakeups/s':>11} {'us/wakeup':>10}")
    for name, periods in scenarios:
        wakeups, wall = _measure(periods, horizon)
        rate = wakeups / wall
        print(f"{name:<40} {wakeups:>10,} {wall:>8.2f} {rate:>11,.0f} {1e6 / rate:>10.2f}")


if __name__ == "__main__":
    main()
