"""Five real ``gossip-node`` processes on 127.0.0.1: learn, survive a crash, resume, stop cleanly.

Each node is started through the CLI exactly as a user would (console script, peers file,
its shard of digits, a checkpoint directory), and observed only from outside: ``/healthz``,
``/v1/status``, its checkpoint files, its exit code and its JSON log. Every wait is a
bounded poll of the real processes (they import torch, so startup takes seconds on a loaded
2-core machine); the processes are killed in the fixture's teardown whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netutil import free_ports

from peers.checkpoint import CheckpointStore

NODES = 5
PERIOD = 0.2
STARTUP_S = 60.0  # five processes importing torch at once on two busy cores
LEARN_S = 40.0
EVENT_S = 20.0
POLL_S = 0.1

pytestmark = pytest.mark.slow

Status = dict[str, Any]


def node_command() -> list[str]:
    script = Path(sys.executable).parent / "gossip-node"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from peers.cli import main; main()"]


def get_json(port: int, path: str) -> Status:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        out: Status = json.loads(resp.read())
        return out


class Cluster:
    """The node processes of one test, their ports, checkpoint directories and logs."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * NODES
        self.ports = free_ports(NODES)  # right before writing the peers file
        self.peers_file = tmp_path / "peers.txt"
        self.peers_file.write_text(
            "".join(f"127.0.0.1:{port} n{i}\n" for i, port in enumerate(self.ports))
        )
        self.launches = [0] * NODES

    def ckpt_dir(self, i: int) -> Path:
        return self.tmp / f"ckpt-n{i}"

    def log_path(self, i: int) -> Path:
        return self.tmp / f"n{i}-{self.launches[i]}.log"

    def args(self, i: int) -> list[str]:
        return [
            *node_command(),
            "--peers", str(self.peers_file),
            "--host", "127.0.0.1",
            "--port", str(self.ports[i]),
            "--dataset", "digits",
            "--node-index", str(i),
            "--num-nodes", str(NODES),
            "--model", "logreg",
            "--lr", "0.5",
            "--period", str(PERIOD),
            "--eval-every", "2",
            "--checkpoint-dir", str(self.ckpt_dir(i)),
            "--checkpoint-every", "1.0",
            "--status-every", "2.0",
            "--device", "cpu", "--threads", "1",
            "--log-format", "json",
        ]  # fmt: skip

    def start(self, i: int) -> None:
        self.launches[i] += 1
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # five processes share two cores
        with self.log_path(i).open("wb") as log:
            self.procs[i] = subprocess.Popen(
                self.args(i), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.tmp
            )

    def proc(self, i: int) -> subprocess.Popen[bytes]:
        p = self.procs[i]
        assert p is not None
        return p

    def logs(self, i: int) -> str:
        return self.log_path(i).read_text(errors="replace")

    def status(self, i: int) -> Status:
        return get_json(self.ports[i], "/v1/status")

    def statuses(self, nodes: list[int]) -> dict[int, Status]:
        return {i: self.status(i) for i in nodes}

    def wait_healthy(self, nodes: list[int]) -> None:
        deadline = time.monotonic() + STARTUP_S
        pending = set(nodes)
        while pending:
            for i in sorted(pending):
                if self.proc(i).poll() is not None:
                    pytest.fail(f"node {i} exited with {self.proc(i).returncode}:\n{self.logs(i)}")
                try:
                    if get_json(self.ports[i], "/healthz")["ok"] is True:
                        pending.discard(i)
                except (OSError, urllib.error.URLError):
                    pass
            if pending and time.monotonic() > deadline:
                pytest.fail(f"nodes {sorted(pending)} not healthy after {STARTUP_S} s")
            time.sleep(POLL_S)

    def wait_for(
        self,
        nodes: list[int],
        ok: Callable[[dict[int, Status]], bool],
        timeout: float,
        what: str,
    ) -> dict[int, Status]:
        deadline = time.monotonic() + timeout
        while True:
            seen = self.statuses(nodes)
            if ok(seen):
                return seen
            if time.monotonic() > deadline:
                pytest.fail(f"after {timeout} s still not {what}: {seen}")
            time.sleep(POLL_S)

    def kill_all(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.kill()
        for p in self.procs:
            if p is not None:
                p.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.kill_all()


def newest_checkpoint_age(directory: Path, schema: str) -> int:
    ckpt = CheckpointStore(directory).load_latest(schema)
    assert ckpt is not None, f"no valid checkpoint in {directory}"
    return ckpt.age


def json_messages(text: str) -> list[str]:
    """The ``msg`` of every JSON log line (other output, e.g. library warnings, is skipped)."""
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "msg" in record:
            out.append(str(record["msg"]))
    return out


def test_five_processes_learn_survive_a_crash_resume_and_stop_cleanly(
    cluster: Cluster,
) -> None:
    everyone = list(range(NODES))
    victim, survivors = NODES - 1, list(range(NODES - 1))
    for i in everyone:
        cluster.start(i)
    cluster.wait_healthy(everyone)

    # Learning: every node's own evaluation on the test split far above chance (0.1).
    learned = cluster.wait_for(
        everyone,
        lambda s: all(st["accuracy"] is not None and st["accuracy"] > 0.5 for st in s.values()),
        LEARN_S,
        "all above 0.5 accuracy",
    )
    assert all(st["merges"] > 0 and st["messages_received"] > 0 for st in learned.values())
    assert all(st["peers_known"] == NODES - 1 for st in learned.values())
    schema = learned[0]["schema"]
    assert {st["schema"] for st in learned.values()} == {schema}
    assert {st["id"] for st in learned.values()} == {f"n{i}" for i in everyone}

    # Crash: SIGKILL one node once it has written a checkpoint.
    cluster.wait_for(
        [victim],
        lambda s: any(cluster.ckpt_dir(victim).glob("ckpt-*.safetensors")),
        EVENT_S,
        "checkpointed",
    )
    cluster.proc(victim).kill()
    assert cluster.proc(victim).wait(timeout=EVENT_S) == -signal.SIGKILL
    on_disk = CheckpointStore(cluster.ckpt_dir(victim)).load_latest(schema)
    assert on_disk is not None and on_disk.age > 0
    before = cluster.statuses(survivors)

    # The others keep merging; pushes to the dead node fail, and they go on regardless.
    after = cluster.wait_for(
        survivors,
        lambda s: all(
            s[i]["merges"] >= before[i]["merges"] + 3
            and s[i]["send_failed"] > before[i]["send_failed"]
            for i in survivors
        ),
        EVENT_S,
        "merging with failed pushes to the dead node",
    )
    for i in survivors:
        assert cluster.proc(i).poll() is None
        assert after[i]["age"] >= before[i]["age"]
        assert after[i]["accuracy"] is not None and after[i]["accuracy"] > 0.5

    # Restart with the same arguments: it resumes from its newest checkpoint.
    cluster.start(victim)
    cluster.wait_healthy([victim])
    resumed = cluster.status(victim)
    assert resumed["restored_from"] == f"checkpoint {on_disk.seq}"
    assert resumed["age"] >= on_disk.age
    assert resumed["merges"] >= on_disk.counters["merges"]
    # The age may have grown since (a merge keeps the larger age); the log states the loaded one.
    assert f"resumed from checkpoint {on_disk.seq}: age {on_disk.age}" in json_messages(
        cluster.logs(victim)
    )
    # ... and rejoins: it receives and merges models again.
    cluster.wait_for(
        [victim],
        lambda s: s[victim]["merges"] > resumed["merges"] and s[victim]["accuracy"] is not None,
        EVENT_S,
        "rejoined",
    )

    # SIGTERM everyone: exit code 0 and a final checkpoint at least as old as last reported.
    last = cluster.statuses(everyone)
    for i in everyone:
        cluster.proc(i).send_signal(signal.SIGTERM)
    for i in everyone:
        code = cluster.proc(i).wait(timeout=EVENT_S)
        assert code == 0, f"node {i} exited with {code}:\n{cluster.logs(i)}"
    for i in everyone:
        assert newest_checkpoint_age(cluster.ckpt_dir(i), schema) >= last[i]["age"]
        messages = json_messages(cluster.logs(i))
        assert any("listening on" in m for m in messages)
        assert messages[-1].startswith(f"node n{i} stopped at age")
