"""Where a sweep's runs execute: inline, a local process pool, or a Ray cluster.

Every executor runs :func:`execute` on configurations (as plain dicts) and yields
``(index, outcome)`` as runs finish, in any order. An outcome is plain data (``status``,
``records``, ``summary``, ``error``): the driver writes every file, so Ray workers on other
machines need the project installed (``pip install 'gossip-learning[ray]'`` on every node, or
a Ray ``runtime_env``) but no shared file system. A run is deterministic given its
configuration (one torch thread by default), so the executors give identical results.

The process pool uses the ``spawn`` start method: a forked child would inherit the driver's
torch thread pools and whatever a previous run left in memory.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from gossip.errors import ConfigError, GossipError

EXECUTORS = ("process", "ray")


def execute(config_fields: dict[str, Any]) -> dict[str, Any]:
    """Run one simulation (in a worker) and return what the driver needs to write it."""
    from sim.config import SimConfig
    from sim.runner import Diverged, run_simulation

    try:
        result = run_simulation(SimConfig(**config_fields))
    except Diverged as e:
        return {"status": "diverged", "records": e.records, "summary": {}, "error": str(e)}
    except GossipError as e:
        return {"status": "failed", "records": [], "summary": {}, "error": str(e)}
    except Exception as e:  # a bug, or out of memory: the sweep goes on and says so
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        return {"status": "crashed", "records": [], "summary": {}, "error": last}
    return {"status": "ok", "records": result.records, "summary": result.summary, "error": ""}


class Executor(Protocol):
    name: str

    def run(self, jobs: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]: ...

    def close(self) -> None: ...


class InlineExecutor:
    """One run after another in this process (``--workers 1``)."""

    name = "inline"

    def run(self, jobs: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        for i, job in enumerate(jobs):
            yield i, execute(job)

    def close(self) -> None:
        pass


class ProcessExecutor:
    """A local pool of ``workers`` processes (spawned)."""

    name = "process"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def run(self, jobs: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        if not jobs:
            return
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(min(self.workers, len(jobs)), mp_context=context)
        pending: dict[Future[dict[str, Any]], int] = {
            self._pool.submit(execute, job): i for i, job in enumerate(jobs)
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    outcome = future.result()
                except Exception as e:  # the worker died (killed, out of memory)
                    outcome = {"status": "crashed", "records": [], "summary": {},
                               "error": f"worker process died: {type(e).__name__}"}  # fmt: skip
                yield i, outcome

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayExecutor:
    """Runs on a Ray cluster (``address``: ``auto``, ``HOST:PORT``, or None to start a
    local Ray instance with ``workers`` CPUs). Each run asks for one CPU."""

    name = "ray"

    def __init__(self, address: str | None, workers: int) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--executor ray needs Ray: pip install 'gossip-learning[ray]' (or pip install ray)"
            ) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:  # a local instance just for this sweep
                kwargs.update(num_cpus=workers, object_store_memory=256 * 1024 * 1024)
            else:
                kwargs["address"] = address
            # Ray starts a real cluster (GCS, raylet, workers): this is not a mock.
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            try:
                ray.init(**kwargs)
            except ConnectionError as e:
                raise ConfigError(
                    f"cannot connect to the Ray cluster at {address!r} ({e}); start one with"
                    " `ray start --head` or leave out --ray-address for a local one"
                ) from None
            self._started = True
        self._remote = ray.remote(num_cpus=1, max_retries=0)(execute)

    def run(self, jobs: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
        ray = self._ray
        refs = {self._remote.remote(job): i for i, job in enumerate(jobs)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    outcome = ray.get(ref)
                except Exception as e:  # the worker died
                    outcome = {"status": "crashed", "records": [], "summary": {},
                               "error": f"ray task failed: {type(e).__name__}"}  # fmt: skip
                yield refs[ref], outcome

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(kind: str, workers: int, ray_address: str | None = None) -> Executor:
    """The executor for ``--executor`` / ``--workers`` / ``--ray-address``."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r}; choose one of: {', '.join(EXECUTORS)}")
    if kind == "ray":
        return RayExecutor(ray_address, workers)
    if ray_address is not None:
        raise ConfigError("--ray-address needs --executor ray")
    return InlineExecutor() if workers == 1 else ProcessExecutor(workers)
