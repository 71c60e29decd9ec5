"""A real node's durable state across restarts: no replay of what an earlier run accepted
(HMAC and Ed25519, after a clean stop and after a crash), counters by reason, and periodic
work (checkpoints, evaluation) that survives its own failures."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from netutil import free_ports

from gossip.codec import MessageMeta, encode
from peers.auth import (
    AuthConfig,
    AuthError,
    AuthReason,
    MessageSigner,
    MessageVerifier,
    format_private_key,
    format_public_key,
    format_shared_key,
    public_key_of,
    restart_floor,
    write_key_file,
)
from peers.checkpoint import CheckpointError, CheckpointStore, counters_snapshot
from peers.node import Node
from peers.node_config import NodeConfig

SHARED = bytes(range(32))
NODE_SEED = bytes(range(1, 33))  # the node's own Ed25519 key
ALICE_SEED = bytes(range(2, 34))  # a peer that pushes to it
WINDOW = 30.0


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Setup:
    """Files and ports of one node that is restarted, and how its peer "alice" signs."""

    tmp_path: Path
    port: int
    dead: int
    scheme: str  # "hmac" or "ed25519"

    def config(self, port: int | None = None, **kw: Any) -> NodeConfig:
        port = self.port if port is None else port
        peers = self.tmp_path / f"peers-{port}.txt"
        key = self.tmp_path / "node.key"
        if not key.exists():
            text = (
                format_shared_key(SHARED)
                if self.scheme == "hmac"
                else format_private_key(NODE_SEED)
            )
            write_key_file(key, text)
        alice = "" if self.scheme == "hmac" else " " + format_public_key(public_key_of(ALICE_SEED))
        peers.write_text(f"127.0.0.1:{port} me\n127.0.0.1:{self.dead} alice{alice}\n")
        fields: dict[str, Any] = dict(
            peers=str(peers), host="127.0.0.1", port=port, id="me", dataset="digits",
            node_index=0, num_nodes=2, model="logreg", period=0.05, lr=0.5, device="cpu",
            eval_every=0, read_timeout=1.0, checkpoint_dir=str(self.tmp_path / "ckpt"),
            auth_key_file=str(key), auth_window=WINDOW,
        )  # fmt: skip
        fields.update(kw)
        return NodeConfig(**fields)

    def signer(self) -> MessageSigner:
        if self.scheme == "hmac":
            return MessageSigner(AuthConfig(shared_key=SHARED))
        return MessageSigner(AuthConfig(private_key=ALICE_SEED))


@pytest.fixture(params=["hmac", "ed25519"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    port, dead = free_ports(2)
    return Setup(tmp_path, port, dead, request.param)


async def _started(config: NodeConfig) -> Node:
    node = Node(config)
    await node.start()
    return node


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    """Nodes a test started; whatever is still running at the end is stopped."""
    started: list[Node] = []
    yield started
    for node in started:
        if node.peer.running:  # not stopped by the test (nor failed to start)
            await node.stop()


def _signed_push(node: Node, setup: Setup, **meta: Any) -> tuple[bytes, dict[str, str]]:
    """Alice's model message (the node's own parameters: nothing a screen would refuse)."""
    fields: dict[str, Any] = dict(
        sender="alice", age=5, nonce=f"n{time.monotonic_ns()}", timestamp=time.time(),
        schema_hash=node.schema.hash, codec="fp32",
    )  # fmt: skip
    fields.update(meta)
    body = encode(node.learner.state.flat.clone(), node.schema, MessageMeta(**fields))
    return body, setup.signer().headers(body)


async def _post(node: Node, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
    url = f"http://127.0.0.1:{node.config.port}/v1/gossip"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as r,
    ):
        answer = await r.json()
        return r.status, answer.get("reason")


async def _status(node: Node) -> dict[str, Any]:
    url = f"http://127.0.0.1:{node.config.port}/v1/status"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        status: dict[str, Any] = await resp.json()
        return status


async def _wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def _balanced(node: Node) -> bool:
    c = node.peer.counters
    return c.received == c.accepted + sum(c.rejected.values())


# --------------------------------------------------------------------------- replay


async def test_a_message_accepted_before_a_clean_restart_is_refused_after_it(
    setup: Setup, nodes: list[Node]
) -> None:
    first = await _started(setup.config())
    nodes.append(first)
    body, headers = _signed_push(first, setup)
    assert await _post(first, body, headers) == (202, None)
    assert await _post(first, body, headers) == (401, "replay")  # the nonce cache, as before
    await first.stop()

    again = await _started(setup.config())
    nodes.append(again)
    assert again.restored_from is not None
    before = again.peer.counters.rejected["stale"], again.peer.counters.received
    # The same bytes again: the new run has no nonce cache, its floor refuses them.
    assert await _post(again, body, headers) == (401, "stale")
    assert again.peer.counters.rejected["stale"] == before[0] + 1
    assert again.peer.counters.received == before[1] + 1 and _balanced(again)
    # A message signed now is newer than the floor: accepted.
    fresh, fresh_headers = _signed_push(again, setup)
    assert await _post(again, fresh, fresh_headers) == (202, None)


async def test_a_message_stamped_ahead_is_refused_after_a_clean_restart(
    setup: Setup, nodes: list[Node]
) -> None:
    # A sender whose clock runs ahead (inside the window): its message is stamped after the
    # restart time, so only the stored high-water mark can refuse the replay.
    first = await _started(setup.config())
    nodes.append(first)
    ahead, ahead_headers = _signed_push(first, setup, timestamp=time.time() + WINDOW - 5)
    assert await _post(first, ahead, ahead_headers) == (202, None)
    await first.stop()
    again = await _started(setup.config())
    nodes.append(again)
    assert await _post(again, ahead, ahead_headers) == (401, "stale")
    assert again.verifier.floor >= first.verifier.high_water


async def test_a_message_accepted_before_a_crash_is_refused_after_it(
    setup: Setup, nodes: list[Node]
) -> None:
    # The first run never stops cleanly (no final checkpoint): all that is on disk is the
    # checkpoint it wrote as it started, before it accepted anything.
    first = await _started(setup.config())
    nodes.append(first)
    on_disk = CheckpointStore(setup.tmp_path / "ckpt").load_latest(first.schema.hash)
    assert on_disk is not None and not on_disk.clean_stop
    now, now_headers = _signed_push(first, setup)
    ahead, ahead_headers = _signed_push(first, setup, timestamp=time.time() + WINDOW - 5)
    for body, headers in ((now, now_headers), (ahead, ahead_headers)):
        assert await _post(first, body, headers) == (202, None)

    (other,) = free_ports(1)  # the crashed run is not asked to stop: it holds its port
    again = await _started(setup.config(port=other))
    nodes.append(again)
    for body, headers in ((now, now_headers), (ahead, ahead_headers)):
        assert await _post(again, body, headers) == (401, "stale")
    # For one window after a crash even fresh messages are refused (they cannot be told
    # apart from one the crashed run accepted just before it died).
    assert again.verifier.floor >= time.time() + WINDOW - 5
    fresh, fresh_headers = _signed_push(again, setup)
    assert await _post(again, fresh, fresh_headers) == (401, "stale")
    assert _balanced(again)


# --------------------------------------------------------------------------- counters


async def test_counters_by_reason_are_the_same_after_a_restart(
    setup: Setup, nodes: list[Node]
) -> None:
    first = await _started(setup.config())
    nodes.append(first)
    good, good_headers = _signed_push(first, setup)
    assert await _post(first, good, good_headers) == (202, None)
    assert await _post(first, good, good_headers) == (401, "replay")
    assert await _post(first, good, {}) == (401, "missing_auth")
    old, old_headers = _signed_push(first, setup, timestamp=time.time() - 2 * WINDOW)
    assert await _post(first, old, old_headers) == (401, "stale")
    assert await _post(first, b"not a model", {}) == (400, "bad_header")
    await _wait_until(lambda: first.peer.counters.merges == 1)
    await first.stop()
    incoming = ("received", "accepted", "rejected", "merges", "train_steps", "samples_trained")
    last = {k: v for k, v in counters_snapshot(first.peer.counters).items() if k in incoming}
    assert last["rejected"] == {"bad_header": 1, "missing_auth": 1, "replay": 1, "stale": 1}
    assert last["received"] == 5 and last["accepted"] == 1

    again = await _started(setup.config())
    nodes.append(again)
    now = counters_snapshot(again.peer.counters)
    assert {k: now[k] for k in incoming} == last
    status = await _status(again)
    assert status["rejected_by_reason"] == last["rejected"]
    assert status["messages_received"] == 5 and status["messages_rejected"] == 4
    assert _balanced(again)
    # ... and they go on counting from there.
    assert await _post(again, b"", {}) == (400, "truncated")
    assert again.peer.counters.received == 6 and _balanced(again)


# --------------------------------------------------------------------------- periodic work


async def test_a_failing_checkpoint_is_logged_and_retried(
    tmp_path: Path,
    nodes: list[Node],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, dead = free_ports(2)
    setup = Setup(tmp_path, port, dead, "hmac")
    node = Node(setup.config(checkpoint_every=0.05))
    store = node.store
    assert store is not None
    real_save = store.save
    failures = 0

    def flaky_save(*args: Any, **kw: Any) -> Path:
        nonlocal failures
        if failures < 5 and node.peer.running:  # the periodic ones (a full disk, say)
            failures += 1
            raise CheckpointError("cannot write checkpoint in ckpt: No space left on device")
        return real_save(*args, **kw)

    monkeypatch.setattr(store, "save", flaky_save)
    with caplog.at_level(logging.ERROR, logger="gossip.node"):
        await node.start()
        nodes.append(node)
        written = len(store.list())  # the start-up checkpoint
        await _wait_until(lambda: len(store.list()) > written)  # the loop went on
    assert failures == 5 and node.task_errors == {"checkpoint: CheckpointError": 5}
    logged = [r for r in caplog.records if "checkpoint failed" in r.getMessage()]
    assert len(logged) == 3  # the 1st, 2nd and 4th: bounded, however long it fails
    assert "No space left" in logged[0].getMessage()
    assert not logged[0].exc_info  # a GossipError: its one line is enough


async def test_an_unexpected_error_in_evaluation_is_logged_and_the_loop_goes_on(
    tmp_path: Path,
    nodes: list[Node],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, dead = free_ports(2)
    setup = Setup(tmp_path, port, dead, "hmac")
    node = Node(setup.config(eval_every=1, period=0.02, checkpoint_every=0.05))
    calls = 0

    def broken_evaluate() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("shape mismatch in the test split")

    monkeypatch.setattr(node, "evaluate", broken_evaluate)
    store = node.store
    assert store is not None
    with caplog.at_level(logging.ERROR, logger="gossip.node"):
        await node.start()
        nodes.append(node)
        written = len(store.list())
        await _wait_until(lambda: calls >= 3 and len(store.list()) > written)  # it went on
    logged = [r for r in caplog.records if "evaluation failed" in r.getMessage()]
    assert logged[0].exc_info  # not a GossipError: logged with its traceback
    assert 2 <= len(logged) <= 1 + math.floor(math.log2(calls))


# --------------------------------------------------------------------------- the rule


HEADER = MessageSigner(AuthConfig(shared_key=SHARED)).headers(b"body")["X-Gossip-Auth"]
T0 = 1_700_000_000.0


def _accept(verifier: MessageVerifier, nonce: str, ts: float, now: float) -> None:
    verifier.verify(sender="a", nonce=nonce, timestamp=ts, body=b"body", header=HEADER, now=now)


def _refusal(verifier: MessageVerifier, nonce: str, ts: float, now: float) -> AuthReason | None:
    try:
        _accept(verifier, nonce, ts, now)
    except AuthError as e:
        return e.reason
    return None


def test_the_floor_refuses_at_and_below_it_and_accepts_just_above() -> None:
    verifier = MessageVerifier(AuthConfig(shared_key=SHARED, window_s=10.0), floor=T0)
    assert verifier.floor == T0 and verifier.high_water == T0
    assert _refusal(verifier, "at", T0, T0 + 1) == AuthReason.STALE
    assert len(verifier) == 0  # refused: not remembered
    _accept(verifier, "above", math.nextafter(T0, math.inf), T0 + 1)
    assert verifier.high_water == math.nextafter(T0, math.inf)
    _accept(verifier, "ahead", T0 + 11, T0 + 1)  # a sender's clock 10 s ahead: in the window
    assert verifier.high_water == T0 + 11
    verifier.raise_floor(T0 - 100)  # never lowered
    assert verifier.floor == T0
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="floor"):
            verifier.raise_floor(bad)
    assert MessageVerifier(AuthConfig(shared_key=SHARED)).high_water == -math.inf


def test_restart_floor_cases() -> None:
    assert restart_floor(start=T0, window_s=60) == T0  # no checkpoint
    assert restart_floor(start=T0, window_s=60, high_water=T0 - 5, clean_stop=True) == T0
    assert restart_floor(start=T0, window_s=60, high_water=T0 + 5, clean_stop=True) == T0 + 5
    assert restart_floor(start=T0, window_s=60, high_water=T0 - 5, clean_stop=False) == T0 + 60
    assert restart_floor(start=T0, window_s=60, high_water=T0 + 99, clean_stop=False) == T0 + 99
    with pytest.raises(ValueError):
        restart_floor(start=math.nan, window_s=60)
    with pytest.raises(ValueError):
        restart_floor(start=T0, window_s=0)


@given(
    accepts=st.lists(
        st.tuples(st.floats(0, 100), st.floats(-1, 1)), min_size=1, max_size=30
    ),  # (receive time, skew of the sender's clock in windows)
    checkpoint_after=st.integers(0, 30),
    clean=st.booleans(),
    downtime=st.floats(0, 50),
    later=st.floats(0, 200),
)
def test_nothing_an_earlier_run_accepted_is_accepted_after_a_restart(
    accepts: list[tuple[float, float]],
    checkpoint_after: int,
    clean: bool,
    downtime: float,
    later: float,
) -> None:
    """The law of the module docstring: whatever the first run accepted (with senders'
    clocks anywhere inside the window), and whenever it stored its last checkpoint (all of
    it after a clean stop), the next run accepts none of it again at any time."""
    window = 10.0
    first = MessageVerifier(AuthConfig(shared_key=SHARED, window_s=window), floor=T0)
    accepted: list[tuple[str, float]] = []
    stored = first.high_water  # the start-up checkpoint
    now = T0
    for i, (step, skew) in enumerate(sorted(accepts)):
        now = T0 + step
        ts = now + skew * window
        if _refusal(first, f"n{i}", ts, now) is None:
            accepted.append((f"n{i}", ts))
        if i + 1 == checkpoint_after:
            stored = first.high_water
    if clean:
        stored = first.high_water  # the final checkpoint, after the last accept
    start = now + downtime
    floor = restart_floor(start=start, window_s=window, high_water=stored, clean_stop=clean)
    second = MessageVerifier(AuthConfig(shared_key=SHARED, window_s=window), floor=floor)
    at = start + later
    for nonce, ts in accepted:
        assert _refusal(second, nonce, ts, at) is not None
    # ... and it does accept a message signed after its floor.
    fresh_at = max(at, floor + 1)
    assert _refusal(second, "fresh", fresh_at, fresh_at) is None
