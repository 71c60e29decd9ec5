"""A virtual-time asyncio event loop: the clock jumps to the next timer instead of waiting.

`VirtualTimeLoop` runs unchanged asyncio code (``asyncio.sleep``, ``call_later``, ``wait_for``,
``asyncio.timeout``, queues, events, tasks, ``gather``). Whenever no callback is ready, its clock
jumps straight to the earliest timer, like trio's ``MockClock(autojump_threshold=0)`` or SimPy's
event heap, so a simulated hour costs only the Python overhead of its callbacks.

Guarantees and rules:

* ``loop.time()`` (and so ``asyncio.get_running_loop().time()``) is virtual seconds, starting
  at ``start``. ``time.monotonic()``/``time.time()`` are untouched: code that should run in
  simulation must read the clock through ``loop.time()``.
* Timers due at the same virtual time fire in the order they were scheduled (the timer heap is
  ordered by ``(when, sequence)``), and every timer fires exactly at its ``when``: runs with the
  same inputs are reproducible bit for bit.
* No real I/O: sockets, pipes, subprocesses and signal handlers are not implemented (they raise
  ``NotImplementedError``). Use an in-memory transport.
* Threads: ``run_in_executor``/``asyncio.to_thread`` work and take zero virtual time (the loop
  waits in real time for busy workers before moving the clock). Other threads calling
  ``call_soon_threadsafe`` are not waited for.
* If nothing is ready, no timer is pending and no worker is busy, the program can never make
  progress; instead of hanging, the loop raises `VirtualTimeDeadlockError`.

Recommended pattern for a simulation horizon ``T``::

    async def main() -> Report:
        tasks = [asyncio.create_task(peer.run()) for peer in peers]
        await asyncio.sleep(T)                      # let the peers run until virtual time T
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return report()

    report = run_virtual(main())

To drive a loop step by step from outside (observers, tests), use ``loop.run_until(t)``; wrap it
in ``asyncio.Runner(loop_factory=VirtualTimeLoop)`` so that leftover tasks are cancelled cleanly.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import math
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from contextvars import Context
from typing import Any, TypeVar, TypeVarTuple, Unpack

__all__ = ["VirtualTimeDeadlockError", "VirtualTimeLoop", "run_virtual"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


class VirtualTimeDeadlockError(RuntimeError):
    """Nothing is ready, no timer is pending and no worker thread is busy: nothing can happen."""


class _SequencedTimerHandle(asyncio.TimerHandle):
    """A timer ordered by ``(when, seq)``: ties fire in scheduling order (heapq is not stable)."""

    __slots__ = ("_seq",)
    _seq: int  # set by VirtualTimeLoop.call_at
    _when: float  # slots of TimerHandle, not in typeshed
    _scheduled: bool

    # The loop's heap holds only these handles, so `other` is always sequenced.
    def __lt__(self, other: _SequencedTimerHandle) -> bool:  # type: ignore[override]
        return self._when < other._when or (self._when == other._when and self._seq < other._seq)

    def __gt__(self, other: _SequencedTimerHandle) -> bool:  # type: ignore[override]
        return self._when > other._when or (self._when == other._when and self._seq > other._seq)

    def __le__(self, other: _SequencedTimerHandle) -> bool:  # type: ignore[override]
        return not self.__gt__(other)

    def __ge__(self, other: _SequencedTimerHandle) -> bool:  # type: ignore[override]
        return not self.__lt__(other)


class _ClockAdvancingSelector:
    """The only selector method ``BaseEventLoop._run_once`` uses; it moves virtual time."""

    __slots__ = ("_loop",)

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        self._loop._advance(timeout)
        return []


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """An asyncio event loop whose ``time()`` is virtual and jumps to the next timer when idle."""

    # BaseEventLoop internals this class relies on (CPython 3.11-3.13; not in typeshed).
    _scheduled: list[_SequencedTimerHandle]
    _ready: collections.deque[asyncio.Handle]
    _default_executor: ThreadPoolExecutor | None
    _executor_shutdown_called: bool

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._sequence = itertools.count()
        self._wakeup = threading.Event()  # set by call_soon_threadsafe (worker threads)
        self._executor_jobs = 0
        self._stop_at: float | None = None
        super().__init__()
        self._selector = _ClockAdvancingSelector(self)
        if not math.isfinite(start):
            self.close()
            raise ValueError(f"virtual start time must be a finite number of seconds, got {start}")

    def time(self) -> float:
        """Virtual seconds since the epoch of this loop (``start``)."""
        return self._now

    # `_run_once` fires the timers with ``when < time() + _clock_resolution``. The gap to the next
    # float makes that exactly ``when <= time()``: timers fire at their time, never early or late.
    @property
    def _clock_resolution(self) -> float:
        return math.nextafter(self._now, math.inf) - self._now

    @_clock_resolution.setter
    def _clock_resolution(self, value: float) -> None:
        """Ignore the wall-clock resolution that ``BaseEventLoop.__init__`` assigns."""

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        """Schedule ``callback(*args)`` at virtual time ``when``; ties keep scheduling order."""
        if when is None:
            raise TypeError("when cannot be None")
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        timer = _SequencedTimerHandle(when, callback, args, self, context)
        timer._seq = next(self._sequence)
        heapq.heappush(self._scheduled, timer)
        timer._scheduled = True
        return timer

    def run_until(self, when: float) -> None:
        """Run every callback due at or before virtual time ``when``; leave the clock at ``when``.

        Callbacks scheduled for ``when`` itself (also by callbacks running at ``when``) run too.
        """
        if not math.isfinite(when):
            raise ValueError(f"cannot run until {when}: the target time must be finite")
        if when < self._now:
            raise ValueError(
                f"cannot run until {when}: the virtual clock is already at {self._now}"
            )
        self._stop_at = when
        try:
            self.run_forever()
        finally:
            self._stop_at = None

    def run_for(self, duration: float) -> None:
        """Run for ``duration`` virtual seconds from now (see `run_until`)."""
        self.run_until(self._now + duration)

    def _advance(self, timeout: float | None) -> None:
        """Stand in for the selector's wait of up to ``timeout`` seconds (None: forever)."""
        if timeout == 0:  # callbacks are ready or the loop is stopping
            return
        if self._executor_jobs:  # worker threads take no virtual time: wait for them for real
            self._wakeup.wait()
            self._wakeup.clear()
            return
        if self._wakeup.is_set():  # a thread-safe callback arrived
            self._wakeup.clear()
            return
        stop_at = self._stop_at
        if self._scheduled:
            when = self._scheduled[0]._when  # `_run_once` has dropped cancelled timers at the head
            if when < math.inf and (stop_at is None or when <= stop_at):
                self._now = max(self._now, when)
                return
        if stop_at is not None:
            self._now = max(self._now, stop_at)
            self.stop()
            return
        raise VirtualTimeDeadlockError(
            f"virtual time {self._now}: every task waits, but no (finite) timer is pending; "
            "a future, event or queue is awaited that nothing will ever set"
        )

    def _process_events(self, event_list: list[Any]) -> None:
        """There is no I/O to process."""

    def _write_to_self(self) -> None:
        self._wakeup.set()

    def run_in_executor(
        self,
        executor: Executor | None,
        func: Callable[[Unpack[_Ts]], _T],
        *args: *_Ts,
    ) -> asyncio.Future[_T]:
        """Run ``func`` in a worker thread; the virtual clock waits for it (zero virtual time)."""
        future = super().run_in_executor(executor, func, *args)
        self._executor_jobs += 1
        future.add_done_callback(self._executor_job_done)
        return future

    def _executor_job_done(self, _future: asyncio.Future[Any]) -> None:
        self._executor_jobs -= 1

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        """Shut the default executor down, waiting for its workers in real time."""
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            executor.shutdown(wait=True)


def run_virtual(main: Coroutine[Any, Any, _T], *, start: float = 0.0) -> _T:
    """Run ``main`` to completion on a fresh `VirtualTimeLoop` and return its result.

    Like ``asyncio.run``: afterwards leftover tasks are cancelled and awaited, async generators
    and the default executor are shut down, and the loop is closed. Exceptions propagate.
    """
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)
