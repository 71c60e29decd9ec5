"""Five real ``gossip-node`` processes with ``--sampler cyclon``, each told only the seed:
they find each other, and a killed node leaves every view. Observed only from outside
(``/v1/status``); every wait is a bounded poll of the real processes."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest
from netutil import free_ports
from test_node_processes import get_json, node_command

NODES = 5
PERIOD = 0.2
STARTUP_S = 90.0
EVENT_S = 30.0

pytestmark = pytest.mark.slow


def _views(ports: list[int], alive: list[int]) -> dict[int, list[str]]:
    out = {}
    for i in alive:
        with contextlib.suppress(urllib.error.URLError, OSError):
            out[i] = get_json(ports[i], "/v1/status")["view"]
    return out


def _until(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_processes_told_one_seed_find_each_other_and_forget_the_dead(tmp_path: Path) -> None:
    ports = free_ports(NODES)
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(f"127.0.0.1:{ports[0]} n0\n")
    procs = []
    try:
        for i, port in enumerate(ports):
            command = [
                *node_command(), "--peers", str(seeds), "--host", "127.0.0.1",
                "--port", str(port), "--id", f"n{i}", "--node-index", str(i),
                "--num-nodes", str(NODES), "--model", "logreg", "--period", str(PERIOD),
                "--sampler", "cyclon:3:2", "--eval-every", "0", "--threads", "1",
            ]  # fmt: skip
            log = (tmp_path / f"n{i}.log").open("wb")
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        alive = list(range(NODES))
        _until(lambda: len(_views(ports, alive)) == NODES, STARTUP_S)
        _until(lambda: all(len(v) >= 3 for v in _views(ports, alive).values()), EVENT_S)
        # Node 4's peers file names only the seed: what it merges came through sampling too.
        _until(lambda: get_json(ports[4], "/v1/status")["merges"] > 0, EVENT_S)
        assert get_json(ports[4], "/v1/status")["view_exchanges"] > 0
        procs[2].send_signal(signal.SIGKILL)
        alive.remove(2)
        _until(lambda: all("n2" not in v for v in _views(ports, alive).values()), EVENT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
