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

from peers.auth import (
    format_private_key,
    format_public_key,
    generate_ed25519_keypair,
    write_key_file,
)

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


@pytest.mark.parametrize("keys", [False, True], ids=["no-keys", "ed25519"])
def test_processes_told_one_seed_find_each_other_and_forget_the_dead(
    tmp_path: Path, keys: bool
) -> None:
    """With ``keys``, every node has its own Ed25519 key and the seeds file lists only the
    seed's: the others' keys are bound on first use, and all of it still works."""
    ports = free_ports(NODES)
    seeds = tmp_path / "seeds.txt"
    key_args: list[list[str]] = [[] for _ in range(NODES)]
    seed_key = ""
    if keys:
        for i in range(NODES):
            private, public = generate_ed25519_keypair()
            write_key_file(tmp_path / f"key{i}", format_private_key(private))
            key_args[i] = ["--auth-key-file", str(tmp_path / f"key{i}")]
            seed_key = seed_key or " " + format_public_key(public)
    seeds.write_text(f"127.0.0.1:{ports[0]} n0{seed_key}\n")
    procs = []
    try:
        for i, port in enumerate(ports):
            command = [
                *node_command(), "--peers", str(seeds), "--host", "127.0.0.1",
                "--port", str(port), "--id", f"n{i}", "--node-index", str(i),
                "--num-nodes", str(NODES), "--model", "logreg", "--period", str(PERIOD),
                "--sampler", "cyclon:3:2", "--eval-every", "0", "--threads", "1",
                *key_args[i],
            ]  # fmt: skip
            log = (tmp_path / f"n{i}.log").open("wb")
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        alive = list(range(NODES))
        _until(lambda: len(_views(ports, alive)) == NODES, STARTUP_S)
        _until(lambda: all(len(v) >= 3 for v in _views(ports, alive).values()), EVENT_S)
        # Node 4's peers file names only the seed: what it merges came through sampling too.
        _until(lambda: get_json(ports[4], "/v1/status")["merges"] > 0, EVENT_S)
        status4 = get_json(ports[4], "/v1/status")
        assert status4["view_exchanges"] > 0 and status4["sample_refused"] == {}
        for status in (get_json(ports[i], "/v1/status") for i in range(NODES)):
            # no model from an honest peer was refused for its key (learned on first use)
            assert not {"bad_auth", "unknown_sender"} & set(status["rejected_by_reason"])
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
