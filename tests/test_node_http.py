"""The real node over HTTP on 127.0.0.1: the API, and hostile input answered with a 4xx
that leaves the model bit for bit unchanged and is counted by reason."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from netutil import free_ports, self_signed_cert

from gossip.codec import MessageMeta, decode, encode
from peers.auth import AUTH_HEADER, AuthConfig, MessageSigner, format_shared_key, write_key_file
from peers.node import Node
from peers.node_config import NodeConfig

KEY = bytes(range(32))


def _config(tmp_path: Path, port: int, peers: list[int], **kw: Any) -> NodeConfig:
    peers_file = tmp_path / f"peers-{port}.txt"
    peers_file.write_text("".join(f"127.0.0.1:{p} n{p}\n" for p in peers))
    fields: dict[str, Any] = dict(
        peers=str(peers_file), host="127.0.0.1", port=port, id=f"n{port}", dataset="digits",
        node_index=peers.index(port) if port in peers else 0, num_nodes=max(2, len(peers)),
        model="logreg", period=0.05, lr=0.5, device="cpu", eval_every=0, read_timeout=1.0,
    )  # fmt: skip
    fields.update(kw)
    return NodeConfig(**fields)


async def _started(config: NodeConfig) -> Node:
    node = Node(config)
    await node.start()
    return node


@pytest.fixture
async def lone_node(tmp_path: Path) -> AsyncIterator[Node]:
    """A node whose only peer is down: its model changes only if a pushed model is merged."""
    port, dead = free_ports(2)
    node = await _started(
        _config(tmp_path, port, [port, dead], age_guard="refuse", train_on="receive")
    )
    yield node
    await node.stop()


def _url(node: Node, path: str) -> str:
    return f"http://127.0.0.1:{node.config.port}{path}"


def _message(node: Node, *, flat: torch.Tensor | None = None, **meta: Any) -> bytes:
    fields: dict[str, Any] = dict(
        sender="mallory", age=5, nonce=f"n{time.monotonic_ns()}", timestamp=time.time(),
        schema_hash=node.schema.hash, codec="fp32",
    )  # fmt: skip
    fields.update(meta)
    return encode(
        node.learner.state.flat.clone() if flat is None else flat,
        node.schema,
        MessageMeta(**fields),
    )


async def _post(
    node: Node, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(_url(node, "/v1/gossip"), data=body, headers=headers or {}) as resp,
    ):
        return resp.status, await resp.json()


async def _wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Wait for real nodes to make progress over real sockets (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_two_nodes_exchange_models_and_ages_grow(tmp_path: Path) -> None:
    a_port, b_port = free_ports(2)
    a = await _started(_config(tmp_path, a_port, [a_port, b_port]))
    b = await _started(_config(tmp_path, b_port, [a_port, b_port]))
    try:
        await _wait_until(lambda: a.peer.counters.merges >= 5 and b.peer.counters.merges >= 5)
        assert a.learner.state.age > 0 and b.learner.state.age > 0
        async with aiohttp.ClientSession() as session:
            async with session.get(_url(a, "/v1/status")) as resp:
                status = await resp.json()
            for key in (
                "id",
                "age",
                "accuracy",
                "messages_sent",
                "messages_received",
                "messages_rejected",
                "peers_known",
                "uptime_s",
            ):
                assert key in status, key
            assert status["id"] == f"n{a_port}" and status["peers_known"] == 1
            assert status["messages_received"] >= 5
            async with session.get(_url(a, "/metrics")) as resp:
                text = await resp.text()
                assert (
                    resp.status == 200
                    and "gossip_merges_total" in text
                    and "gossip_model_age" in text
                )
            async with session.get(_url(a, "/healthz")) as resp:
                assert resp.status == 200 and (await resp.json())["ok"] is True
            async with session.get(_url(b, "/v1/model")) as resp:
                pulled = decode(await resp.read(), b.schema)
                assert pulled.meta.sender == f"n{b_port}" and pulled.meta.age > 0
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.parametrize("model", ["logreg", "mlp"])
async def test_pull_mode_over_http(tmp_path: Path, model: str) -> None:
    """mlp: 221 KB, a body that arrives in several chunks (a pull once kept only the first)."""
    a_port, b_port = free_ports(2)
    a = await _started(_config(tmp_path, a_port, [a_port, b_port], mode="pull", model=model))
    b = await _started(_config(tmp_path, b_port, [a_port, b_port], mode="pull", model=model))
    try:
        await _wait_until(lambda: a.peer.counters.merges >= 3 and b.peer.counters.merges >= 3)
        assert a.peer.counters.pulls >= 3 and a.peer.counters.pushes == 0
    finally:
        await a.stop()
        await b.stop()


def _forge_header(blob: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    (n,) = struct.unpack_from("<Q", blob)
    header = json.loads(blob[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + blob[8 + n :]


def _nan_model(node: Node) -> bytes:
    flat = node.learner.state.flat.clone()
    flat[0] = float("nan")
    return _message(node, flat=flat)


def _negative_age(node: Node) -> bytes:
    return _forge_header(_message(node), lambda h: h["__metadata__"].__setitem__("age", "-3"))


BAD_INPUTS: dict[str, tuple[Callable[[Node], bytes], int, str]] = {
    "truncated": (lambda n: _message(n)[:-10], 400, "bad_layout"),
    "random bytes": (lambda n: bytes(range(256)) * 4, 400, "bad_header"),
    "empty": (lambda n: b"", 400, "truncated"),
    "wrong schema": (
        lambda n: encode(
            torch.zeros(3),
            _other_schema(),
            MessageMeta("m", 1, "x", time.time(), _other_schema().hash),
        ),
        400,
        "schema_mismatch",
    ),
    "NaN values": (_nan_model, 400, "non_finite"),
    "negative age": (_negative_age, 400, "bad_age"),
    "absurd age": (lambda n: _message(n, age=10**15), 422, "age_inflation"),
}


def _other_schema() -> Any:
    from gossip.state import ModelSchema, TensorSpec

    return ModelSchema((TensorSpec("w", (3,)),))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_is_refused_and_changes_nothing(lone_node: Node, case: str) -> None:
    make, status, reason = BAD_INPUTS[case]
    before = lone_node.learner.state.param_hash(), lone_node.learner.state.age
    code, body = await _post(lone_node, make(lone_node))
    assert (code, body) == (status, {"accepted": False, "reason": reason})
    c = lone_node.peer.counters
    assert c.rejected[reason] == 1 and c.received == c.accepted + sum(c.rejected.values()) == 1
    # A refused message is never queued: nothing waits to be merged (no sleep-and-see).
    assert lone_node.peer._inbox is not None and lone_node.peer._inbox.empty()
    assert not lone_node.peer._pending and len(lone_node.peer.merge_latencies) == 0
    assert (lone_node.learner.state.param_hash(), lone_node.learner.state.age) == before
    assert lone_node.peer.counters.merges == 0


async def test_oversize_body_is_refused_before_reading(lone_node: Node) -> None:
    code, body = await _post(lone_node, b"\0" * (lone_node.server.max_body + 1))
    assert (code, body["reason"]) == (413, "too_large")


async def test_a_good_push_is_accepted_and_merged(lone_node: Node) -> None:
    flat = lone_node.peer.published().flat + 0.01  # a neighbour's model: close to ours
    code, body = await _post(lone_node, _message(lone_node, flat=flat, age=40))
    assert (code, body) == (202, {"accepted": True})
    await _wait_until(lambda: lone_node.peer.counters.merges == 1)
    assert lone_node.learner.state.age >= 40


async def test_slow_sender_is_cut_off(lone_node: Node) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", lone_node.config.port)
    length = lone_node.server.max_body - 1  # allowed, but it never arrives
    writer.write(
        f"POST /v1/gossip HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
        + b"\0" * 10
    )
    await writer.drain()
    started = time.monotonic()
    status_line = await asyncio.wait_for(reader.readline(), timeout=10)  # read_timeout is 1 s
    assert b" 408 " in status_line and time.monotonic() - started < 5
    writer.close()
    assert lone_node.peer.counters.rejected["slow_sender"] == 1


# ------------------------------------------------------------------ authentication


@pytest.fixture
async def secured_node(tmp_path: Path) -> AsyncIterator[Node]:
    key_file = tmp_path / "cluster.key"
    write_key_file(key_file, format_shared_key(KEY) + "\n")
    port, dead = free_ports(2)
    node = await _started(
        _config(
            tmp_path,
            port,
            [port, dead],
            auth_key_file=str(key_file),
            auth_window=30.0,
            train_on="receive",
        )
    )
    yield node
    await node.stop()


def _signed(node: Node, body: bytes, key: bytes = KEY) -> dict[str, str]:
    return MessageSigner(AuthConfig(shared_key=key)).headers(body)


async def test_signed_push_is_accepted(secured_node: Node) -> None:
    body = _message(secured_node)
    assert (await _post(secured_node, body, _signed(secured_node, body)))[0] == 202


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unsigned", "missing_auth"),
        ("bad signature", "bad_auth"),
        ("wrong key", "bad_auth"),
        ("stale", "stale"),
        ("future", "stale"),
    ],
)
async def test_authentication_failures(secured_node: Node, case: str, reason: str) -> None:
    before = secured_node.learner.state.param_hash()
    timestamp = {"stale": time.time() - 120, "future": time.time() + 120}.get(case, time.time())
    body = _message(secured_node, timestamp=timestamp)
    headers = {
        "unsigned": {},
        "bad signature": {AUTH_HEADER: "hmac-sha256=" + "0" * 64},
        "wrong key": _signed(secured_node, body, key=b"k" * 32),
    }.get(case, _signed(secured_node, body))
    code, answer = await _post(secured_node, body, headers)
    assert (code, answer["reason"]) == (401, reason)
    assert secured_node.peer.counters.rejected[reason] == 1
    assert secured_node.learner.state.param_hash() == before


async def test_replayed_message_is_refused(secured_node: Node) -> None:
    body = _message(secured_node, flat=secured_node.peer.published().flat + 0.01)
    headers = _signed(secured_node, body)
    assert (await _post(secured_node, body, headers))[0] == 202
    # merge_latencies grows once the whole update (merge, then training) has finished.
    await _wait_until(lambda: len(secured_node.peer.merge_latencies) == 1)
    after_first = secured_node.learner.state.param_hash()
    code, answer = await _post(secured_node, body, headers)
    assert (code, answer["reason"]) == (401, "replay")
    # Refused before the peer saw it: never offered, never queued (no sleep-and-see).
    c = secured_node.peer.counters
    assert (c.received, c.accepted, c.rejected["replay"], c.merges) == (2, 1, 1, 1)
    assert secured_node.peer._inbox is not None and secured_node.peer._inbox.empty()
    assert secured_node.learner.state.param_hash() == after_first


async def test_secured_nodes_gossip_with_each_other(tmp_path: Path) -> None:
    key_file = tmp_path / "cluster.key"
    write_key_file(key_file, format_shared_key(KEY) + "\n")
    a_port, b_port = free_ports(2)
    a = await _started(_config(tmp_path, a_port, [a_port, b_port], auth_key_file=str(key_file)))
    b = await _started(_config(tmp_path, b_port, [a_port, b_port], auth_key_file=str(key_file)))
    try:
        await _wait_until(lambda: a.peer.counters.merges >= 3 and b.peer.counters.merges >= 3)
        assert sum(a.peer.counters.rejected.values()) == 0
    finally:
        await a.stop()
        await b.stop()


async def test_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    from gossip.errors import GossipError

    port, other = free_ports(2)
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        with pytest.raises(GossipError, match="pick another --port") as e:
            await _started(_config(tmp_path, port, [port, other]))
        assert "\n" not in str(e.value)
    finally:
        holder.close()


async def test_stop_writes_a_final_checkpoint_and_restart_resumes(tmp_path: Path) -> None:
    a_port, b_port = free_ports(2)
    ckpt = tmp_path / "ckpt-a"
    a = await _started(_config(tmp_path, a_port, [a_port, b_port], checkpoint_dir=str(ckpt)))
    b = await _started(_config(tmp_path, b_port, [a_port, b_port]))
    try:
        await _wait_until(lambda: a.peer.counters.merges >= 3)
    finally:
        await a.stop()
        await b.stop()
    age, weights = a.learner.state.age, a.learner.state.param_hash()
    again = Node(_config(tmp_path, a_port, [a_port, b_port], checkpoint_dir=str(ckpt)))
    again.restore()
    assert again.learner.state.age == age and again.learner.state.param_hash() == weights
    assert again.restored_from is not None and again.peer.published().age == age


async def test_nodes_gossip_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    a_port, b_port = free_ports(2)
    peers_file = tmp_path / "peers-tls.txt"
    peers_file.write_text(f"https://127.0.0.1:{a_port} a\nhttps://127.0.0.1:{b_port} b\n")
    tls = dict(tls_cert=str(cert), tls_key=str(key), tls_ca=str(cert))
    configs = [
        _config(tmp_path, port, [a_port, b_port], id=name, **tls).replace(peers=str(peers_file))
        for port, name in ((a_port, "a"), (b_port, "b"))
    ]
    a, b = await _started(configs[0]), await _started(configs[1])
    try:
        await _wait_until(lambda: a.peer.counters.merges >= 3 and b.peer.counters.merges >= 3)
        # Plain HTTP to a TLS port does not get a model in.
        with pytest.raises(aiohttp.ClientError):
            await _post(a, _message(a))
    finally:
        await a.stop()
        await b.stop()
