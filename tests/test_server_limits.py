"""Every limit of a real node's HTTP server, pinned at its boundary.

``peers.server`` (``ServerLimits``, the body size limit ``max_message_bytes(schema)``,
``max_requests``, ``max_uploads``, the order of checks on a push) and ``peers.http_guard``
(``max_connections``, ``max_connections_per_ip``, ``header_timeout``, the connection budget,
the address key). Each limit is probed at the limit (accepted) and one past it (refused),
with an input that breaks that one rule; a refusal asserts the status, the counter or reason
that grows, and that the model did not change. (``tests/test_node_hardening.py`` has the
floods: 30 connections, 6 uploads; here are the exact edges, each check alone.)

Concurrency is held by the test, not by timing: an upload is held open by sending its
headers and all but the last byte of its body (the server reads it, the test sends the
last byte or aborts it), a connection by not closing it. Every wait is on the server's own
counters and gauges (bounded polls) or on the answer itself; no fixed sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeAlias

import pytest
import torch
from netutil import NodeFactory, closed_by_server, lone_node_config

import peers.server as server_module
from gossip.codec import MAX_AGE, MessageMeta, encode, max_header_bytes, max_message_bytes
from gossip.errors import ConfigError
from peers.auth import AUTH_HEADER, AuthConfig, MessageSigner, format_shared_key, write_key_file
from peers.http_guard import RESERVED_FDS, connection_budget, raise_file_limit, remote_address
from peers.node import Node
from peers.node_config import NodeConfig
from peers.server import ServerLimits

Reader: TypeAlias = asyncio.StreamReader
Writer: TypeAlias = asyncio.StreamWriter

# Long timeouts: a held upload or connection is never cut short by them (tests that are
# about a timeout set their own). A stuck server still fails a test in seconds (WAIT).
NODE_DEFAULTS: dict[str, Any] = {
    "read_timeout": 30.0,
    "header_timeout": 30.0,
    "age_guard": "refuse",
}
WAIT = 10.0
KEY = bytes(range(32))


# ------------------------------------------------------------------ helpers


def _http(node: Node) -> dict[str, Any]:
    return node.server.http_status()


async def _until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait for state the server exposes (a bounded poll, not a sleep before an assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


class Sockets:
    """Raw client connections of one test, all aborted at its end (before the node stops:
    a held upload would otherwise keep the server's shutdown waiting)."""

    def __init__(self) -> None:
        self.writers: list[Writer] = []

    async def open(self, node: Node, host: str = "127.0.0.1", **kw: Any) -> tuple[Reader, Writer]:
        reader, writer = await asyncio.open_connection(host, node.config.port, **kw)
        self.writers.append(writer)
        return reader, writer

    async def accepted(self, node: Node, **kw: Any) -> tuple[Reader, Writer]:
        """A connection, once the server has counted it (accepted or refused)."""
        seen = _handled(node)
        conn = await self.open(node, **kw)
        await _until(lambda: _handled(node) == seen + 1)
        return conn

    def abort_all(self) -> None:
        for writer in self.writers:
            writer.transport.abort()


def _handled(node: Node) -> int:
    s = _http(node)
    return int(
        s["connections_accepted"] + s["connections_refused"] + s["connections_refused_per_ip"]
    )


@pytest.fixture
async def sockets(start_node: NodeFactory) -> AsyncIterator[Sockets]:
    """Depends on ``start_node`` so that it is torn down first (connections, then nodes)."""
    s = Sockets()
    yield s
    s.abort_all()


async def _response(reader: Reader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), WAIT)
    return int(status_line.split()[1]), headers, body


async def _closed(reader: Reader, timeout: float = WAIT) -> bool:
    return await closed_by_server(reader, timeout)


def _head(
    length: int | None, headers: dict[str, str] | None = None, path: str = "/v1/gossip"
) -> bytes:
    """A push's request head: ``Content-Length: length``, or chunked when ``length`` is None."""
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{framing}\r\n{extra}\r\n".encode()


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


async def _ask(conn: tuple[Reader, Writer], data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = conn
    writer.write(data)
    return await _response(reader)


async def _hold_upload(sockets: Sockets, node: Node, body: bytes) -> tuple[Reader, Writer]:
    """A push whose body lacks its last byte: its handler runs, reading, until the test
    sends that byte (or aborts the connection)."""
    conn = await sockets.open(node)
    conn[1].write(_head(len(body)) + body[:-1])
    return conn


async def _finish_upload(conn: tuple[Reader, Writer], body: bytes) -> tuple[int, dict[str, Any]]:
    status, _, answer = await _ask(conn, body[-1:])
    return status, _json(answer)


def _json(body: bytes) -> dict[str, Any]:
    value = json.loads(body)
    assert isinstance(value, dict)
    return value


def _message(node: Node, *, flat: torch.Tensor | None = None, **meta: Any) -> bytes:
    """A valid push of the node's own weights (what a merge of it changes is only the age)."""
    fields: dict[str, Any] = dict(
        sender="mallory", age=5, nonce=f"n{time.monotonic_ns()}", timestamp=time.time(),
        schema_hash=node.schema.hash, codec="fp32",
    )  # fmt: skip
    fields.update(meta)
    own = node.learner.state.flat.clone()
    return encode(own if flat is None else flat, node.schema, MessageMeta(**fields))


def _largest_valid(node: Node) -> bytes:
    """A valid fp32 push with the longest header the decoder takes (padded with spaces)."""
    blob = _message(node)
    (n,) = struct.unpack_from("<Q", blob)
    limit = max_header_bytes(node.schema)
    return struct.pack("<Q", limit) + blob[8 : 8 + n].ljust(limit, b" ") + blob[8 + n :]


def _of_max_body(node: Node) -> bytes:
    """Exactly ``max_body`` bytes that pass the size check and are refused after it, for
    their 8 trailing bytes only: the largest valid message is 8 bytes shorter."""
    blob = _largest_valid(node) + bytes(8)
    assert len(blob) == node.server.max_body
    return blob


def _fingerprint(node: Node) -> tuple[str, int]:
    return node.learner.state.param_hash(), node.learner.state.age


def _assert_nothing_taken(node: Node, before: tuple[str, int]) -> None:
    """The model is bit for bit what it was, and nothing waits to be merged."""
    assert _fingerprint(node) == before
    peer = node.peer
    assert peer._inbox is not None and peer._inbox.empty() and not peer._pending
    assert peer.counters.merges == 0 and peer.counters.accepted == 0
    c = peer.counters
    assert c.received == c.accepted + sum(c.rejected.values())


def _refusal(status: int, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    answer = _json(body)
    assert answer["accepted"] is False
    return status, answer["reason"]


# ------------------------------------------------------------------ the body size limit


async def test_the_body_limit_is_max_message_bytes_of_the_schema(start_node: NodeFactory) -> None:
    node = await start_node(codec="int8")  # what this node sends does not lower what it takes
    server = node.server
    assert (
        server.max_body == max_message_bytes(node.schema) == max_message_bytes(node.schema, "fp32")
    )
    assert server.app._client_max_size == server.max_body
    assert server.uploads.size == server.max_body and server.uploads.count == 8


@pytest.mark.parametrize("codec", ["fp32", "int8"])
async def test_the_largest_valid_push_is_accepted(
    start_node: NodeFactory, sockets: Sockets, codec: str
) -> None:
    node = await start_node(codec=codec)
    body = _largest_valid(node)
    assert len(body) == node.server.max_body - 8
    status, _, answer = await _ask(await sockets.open(node), _head(len(body)) + body)
    assert (status, _json(answer)) == (202, {"accepted": True})
    c = node.peer.counters
    assert (c.received, c.accepted, sum(c.rejected.values())) == (1, 1, 0)


async def test_content_length_one_past_the_limit_is_413_before_any_body_byte(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node()
    before = _fingerprint(node)
    reader, writer = await sockets.open(node)
    writer.write(_head(node.server.max_body + 1))  # and never a byte of the body
    status, headers, body = await _response(reader)
    assert _refusal(status, headers, body) == (413, "too_large")
    assert headers.get("connection", "").lower() == "close" and await _closed(reader)
    assert node.server.uploads.allocated == 0  # refused before a buffer was taken
    assert _http(node)["uploads_refused"] == 0 and _http(node)["requests_refused"] == 0
    assert dict(node.peer.counters.rejected) == {"too_large": 1}
    _assert_nothing_taken(node, before)


async def test_content_length_at_the_limit_is_read_and_passes_the_size_check(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node()
    before = _fingerprint(node)
    body = _of_max_body(node)
    conn = await _hold_upload(sockets, node, body)
    await _until(lambda: node.server.uploads.in_use == 1)  # being read: not refused by size
    assert node.peer.counters.received == 0
    status, answer = await _finish_upload(conn, body)
    assert (status, answer) == (400, {"accepted": False, "reason": "bad_layout"})  # not 413
    assert dict(node.peer.counters.rejected) == {"bad_layout": 1}
    assert node.server.uploads.in_use == 0
    _assert_nothing_taken(node, before)


def _chunked(data: bytes, *, end: bool = True) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + (b"\r\n0\r\n\r\n" if end else b"")


async def test_a_chunked_body_of_max_body_bytes_passes_the_size_check(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node()
    before = _fingerprint(node)
    conn = await sockets.open(node)
    status, headers, answer = await _ask(conn, _head(None) + _chunked(_of_max_body(node)))
    assert _refusal(status, headers, answer) == (400, "bad_layout")
    assert dict(node.peer.counters.rejected) == {"bad_layout": 1}
    _assert_nothing_taken(node, before)


async def test_a_chunked_body_one_byte_past_max_body_is_413(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node()
    before = _fingerprint(node)
    reader, writer = await sockets.open(node)
    # No Content-Length to refuse it by: the reader stops at the byte past the buffer. (No
    # final chunk: nothing is left unread when the server closes.)
    writer.write(_head(None) + _chunked(_of_max_body(node) + b"\0", end=False))
    status, headers, answer = await _response(reader)
    assert _refusal(status, headers, answer) == (413, "too_large")
    assert headers.get("connection", "").lower() == "close" and await _closed(reader)
    assert dict(node.peer.counters.rejected) == {"too_large": 1}
    assert node.server.uploads.in_use == 0 and node.server.uploads.allocated == 1
    _assert_nothing_taken(node, before)


# ------------------------------------------------------------------ max_uploads


@pytest.mark.parametrize("n", [1, 3])
async def test_max_uploads_bodies_are_read_at_once_one_more_gets_503(
    start_node: NodeFactory, sockets: Sockets, n: int
) -> None:
    node = await start_node(max_uploads=n)
    server = node.server
    bodies = [_message(node) for _ in range(n)]
    holders = [await _hold_upload(sockets, node, b) for b in bodies]
    await _until(lambda: server.uploads.in_use == n)  # n at once: none refused
    assert _http(node)["uploads_refused"] == 0 and node.peer.counters.received == 0
    before = _fingerprint(node)
    reader, writer = await sockets.open(node)
    writer.write(_head(len(bodies[0])))  # the body is never read, so never sent
    status, headers, answer = await _response(reader)
    assert _refusal(status, headers, answer) == (503, "overloaded")
    assert headers.get("connection", "").lower() == "close" and await _closed(reader)
    http = _http(node)
    assert (http["uploads_refused"], http["requests_refused"]) == (1, 0)
    assert (http["uploads_in_progress"], http["upload_buffers"]) == (n, n)
    assert dict(node.peer.counters.rejected) == {"overloaded": 1}
    _assert_nothing_taken(node, before)
    # One upload ends: its buffer is lent to the accepted model (a view of it) until the
    # model is merged, then free for the next upload: no new one is allocated.
    assert await _finish_upload(holders[0], bodies[0]) == (202, {"accepted": True})
    assert server.uploads.in_use == n - 1
    await _until(lambda: node.peer.counters.merges == 1 and server.uploads.lent == 0)
    body = _message(node)
    again = await _hold_upload(sockets, node, body)
    await _until(lambda: server.uploads.in_use == n)
    assert await _finish_upload(again, body) == (202, {"accepted": True})
    for holder, held in zip(holders[1:], bodies[1:], strict=True):
        assert await _finish_upload(holder, held) == (202, {"accepted": True})
    assert server.uploads.allocated == server.uploads.peak_in_use == n
    assert _http(node)["uploads_refused"] == 1


async def test_an_accepted_model_keeps_its_upload_buffer_until_it_is_merged(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    """fp32 models are views of their upload buffer (no copy): with one upload at a time and
    merge_k = 3, the first two accepted models wait, each in its own buffer, and the next
    upload never overwrites them; once the three are merged their buffers are free again."""
    node = await start_node(max_uploads=1, merge_k=3, inbox_size=4)
    server, peer = node.server, node.peer
    assert server.uploads.lendable == 4 + 2 * 3
    own = node.learner.state.flat.clone()
    flats = [own * (1.0 + 0.01 * (k + 1)) for k in range(3)]
    for k in range(2):
        body = _message(node, flat=flats[k], sender=f"s{k}")
        assert await _finish_upload(await _hold_upload(sockets, node, body), body) == (
            202, {"accepted": True},
        )  # fmt: skip
        await _until(lambda k=k: len(peer._pending) == k + 1)
    for message, flat in zip(peer._pending, flats, strict=False):
        assert torch.equal(message.flat, flat)  # not overwritten by the later upload
    del message  # (the test's own reference would keep its buffer lent)
    assert server.uploads.allocated == 2 and server.uploads.lent == 2
    body = _message(node, flat=flats[2], sender="s2")
    assert await _finish_upload(await _hold_upload(sockets, node, body), body) == (
        202, {"accepted": True},
    )  # fmt: skip
    await _until(lambda: peer.counters.merges == 3 and server.uploads.lent == 0)
    assert server.uploads.allocated == 3 and server.uploads.in_use == 0
    body = _message(node, flat=flats[0], sender="s3")  # a free buffer is reused
    assert (await _finish_upload(await _hold_upload(sockets, node, body), body))[0] == 202
    assert server.uploads.allocated == 3


# ------------------------------------------------------------------ max_requests


@pytest.mark.parametrize("n", [1, 3])
async def test_max_requests_handlers_run_at_once_one_more_gets_503(
    start_node: NodeFactory, sockets: Sockets, n: int
) -> None:
    node = await start_node(max_requests=n, max_uploads=8)
    bodies = [_message(node) for _ in range(n)]
    holders = [await _hold_upload(sockets, node, b) for b in bodies]
    await _until(lambda: _http(node)["requests_in_flight"] == n)
    assert _http(node)["requests_refused"] == 0
    before = _fingerprint(node)
    status, headers, answer = await _ask(await sockets.open(node), _get("/v1/status"))
    assert (status, _json(answer)) == (503, {"error": "overloaded"})
    assert headers.get("retry-after") == "1"
    assert _http(node)["requests_refused"] == 1 and node.peer.counters.received == 0
    # /healthz is exempt: answered at the bound, not counted as refused.
    status, _, answer = await _ask(await sockets.open(node), _get("/healthz"))
    assert status == 200 and _json(answer)["ok"] is True
    assert _http(node)["requests_refused"] == 1 and _http(node)["requests_in_flight"] == n
    _assert_nothing_taken(node, before)
    # One handler ends: the next request is handled.
    assert await _finish_upload(holders[0], bodies[0]) == (202, {"accepted": True})
    await _until(lambda: _http(node)["requests_in_flight"] == n - 1)
    status, _, answer = await _ask(await sockets.open(node), _get("/v1/status"))
    assert status == 200 and _json(answer)["http"]["requests_refused"] == 1
    for holder, held in zip(holders[1:], bodies[1:], strict=True):
        assert await _finish_upload(holder, held) == (202, {"accepted": True})


async def test_a_push_beyond_max_requests_is_503_before_its_upload_is_considered(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node(max_requests=1, max_uploads=8)
    body = _message(node)
    await _hold_upload(sockets, node, body)
    await _until(lambda: _http(node)["requests_in_flight"] == 1)
    before = _fingerprint(node)
    reader, writer = await sockets.open(node)
    writer.write(_head(len(body)))
    status, headers, answer = await _response(reader)
    assert _refusal(status, headers, answer) == (503, "overloaded")
    assert headers.get("connection", "").lower() == "close" and await _closed(reader)
    http = _http(node)
    assert (http["requests_refused"], http["uploads_refused"], http["uploads_in_progress"]) == (
        1,
        0,
        1,
    )
    assert dict(node.peer.counters.rejected) == {"overloaded": 1}
    _assert_nothing_taken(node, before)


# ------------------------------------------------------------------ the order of checks


async def test_max_requests_comes_before_the_body_size(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node(max_requests=1)
    body = _message(node)
    await _hold_upload(sockets, node, body)
    await _until(lambda: _http(node)["requests_in_flight"] == 1)
    before = _fingerprint(node)
    reader, writer = await sockets.open(node)
    writer.write(_head(node.server.max_body + 1))
    assert _refusal(*await _response(reader)) == (503, "overloaded")  # not 413
    assert _http(node)["requests_refused"] == 1
    assert dict(node.peer.counters.rejected) == {"overloaded": 1}
    _assert_nothing_taken(node, before)


async def test_the_body_size_comes_before_max_uploads(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node(max_uploads=1)
    body = _message(node)
    await _hold_upload(sockets, node, body)
    await _until(lambda: node.server.uploads.in_use == 1)
    before = _fingerprint(node)
    reader, writer = await sockets.open(node)
    writer.write(_head(node.server.max_body + 1))
    assert _refusal(*await _response(reader)) == (413, "too_large")  # not 503
    assert _http(node)["uploads_refused"] == 0
    assert dict(node.peer.counters.rejected) == {"too_large": 1}
    _assert_nothing_taken(node, before)


async def test_max_uploads_comes_before_reading_and_decoding(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node(max_uploads=1)
    body = _message(node)
    await _hold_upload(sockets, node, body)
    await _until(lambda: node.server.uploads.in_use == 1)
    before = _fingerprint(node)
    garbage = bytes(range(256))  # a bad header, were it read
    reader, writer = await sockets.open(node)
    writer.write(_head(len(garbage)))
    assert _refusal(*await _response(reader)) == (503, "overloaded")  # not 400 bad_header
    assert await _closed(reader)
    assert dict(node.peer.counters.rejected) == {"overloaded": 1}
    _assert_nothing_taken(node, before)


async def test_the_read_timeout_comes_before_the_header_check(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node(read_timeout=0.5)
    before = _fingerprint(node)
    garbage = bytes(range(256))
    reader, writer = await sockets.open(node)
    writer.write(_head(len(garbage) + 1) + garbage)  # one byte short, forever
    started = time.monotonic()
    status, headers, answer = await _response(reader)
    assert _refusal(status, headers, answer) == (408, "slow_sender")  # not 400 bad_header
    assert time.monotonic() - started >= 0.5 - 0.05  # cut off by the read timeout, not before
    assert await _closed(reader)
    assert dict(node.peer.counters.rejected) == {"slow_sender": 1}
    _assert_nothing_taken(node, before)


def _signed(body: bytes) -> dict[str, str]:
    return MessageSigner(AuthConfig(shared_key=KEY)).headers(body)


def _nan(node: Node) -> torch.Tensor:
    flat = node.learner.state.flat.clone()
    flat[0] = float("nan")
    return flat


def _foreign_schema_message(node: Node) -> bytes:
    """A valid message whose metadata names another schema (otherwise like ours)."""
    blob = _message(node)
    return blob.replace(node.schema.hash.encode(), b"f" * len(node.schema.hash), 1)


# (what the body breaks, in the docstring's order: size, header and metadata,
# authentication, the full decode, the age guard) -> (body, signed, status, reason)
ORDER: dict[str, tuple[Callable[[Node], bytes], bool, int, str]] = {
    "size before header and auth": (
        lambda n: b"\xff" * (n.server.max_body + 1), False, 413, "too_large"),
    "header before auth": (lambda n: b"\xff" * 64, False, 400, "bad_header"),
    "metadata before auth": (lambda n: _message(n, age=MAX_AGE + 1), False, 400, "bad_age"),
    "schema hash before auth": (_foreign_schema_message, False, 400, "schema_mismatch"),
    "auth before the layout": (lambda n: _message(n)[:-4], False, 401, "missing_auth"),
    "auth before the values": (lambda n: _message(n, flat=_nan(n)), False, 401, "missing_auth"),
    "values before the age guard": (
        lambda n: _message(n, flat=_nan(n), age=10**15), True, 400, "non_finite"),
    "the age guard alone": (lambda n: _message(n, age=10**15), True, 422, "age_inflation"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ORDER))
async def test_the_order_of_checks_on_a_push(
    start_node: NodeFactory, sockets: Sockets, tmp_path: Path, case: str
) -> None:
    make, signed, want_status, want_reason = ORDER[case]
    key_file = tmp_path / "cluster.key"
    write_key_file(key_file, format_shared_key(KEY) + "\n")
    node = await start_node(auth_key_file=str(key_file), auth_window=30.0)
    before = _fingerprint(node)
    body = make(node)
    headers = _signed(body) if signed else {}
    assert signed == (AUTH_HEADER in headers)
    reader, writer = await sockets.open(node)
    too_large = len(body) > node.server.max_body
    writer.write(_head(len(body), headers) + (b"" if too_large else body))
    assert _refusal(*await _response(reader)) == (want_status, want_reason)
    assert dict(node.peer.counters.rejected) == {want_reason: 1}
    assert node.peer.counters.received == 1
    _assert_nothing_taken(node, before)


# ------------------------------------------------------------------ max_connections


async def _served(conn: tuple[Reader, Writer]) -> bool:
    status, _, _ = await _ask(conn, _get("/healthz"))  # kept alive: the connection stays
    return status == 200


@pytest.mark.parametrize("n", [1, 3])
async def test_max_connections_are_served_one_more_is_closed_at_once(
    start_node: NodeFactory, sockets: Sockets, n: int
) -> None:
    node = await start_node(max_connections=n, max_connections_per_ip=64)
    assert node.server.guard is not None and node.server.guard.max_connections == n
    conns = [await sockets.accepted(node) for _ in range(n)]
    assert all([await _served(c) for c in conns])
    assert (_http(node)["connections_open"], _http(node)["connections_refused"]) == (n, 0)
    refused = await sockets.accepted(node)
    assert await _closed(refused[0])
    http = _http(node)
    assert (http["connections_open"], http["connections_refused"]) == (n, 1)
    assert http["connections_refused_per_ip"] == 0
    assert http["connections_accepted"] == n
    # One closes: a new one gets its place.
    conns[0][1].transport.abort()
    await _until(lambda: _http(node)["connections_open"] == n - 1)
    assert await _served(await sockets.accepted(node))
    assert (_http(node)["connections_accepted"], _http(node)["connections_refused"]) == (n + 1, 1)
    assert all([await _served(c) for c in conns[1:]])


@pytest.mark.parametrize(("file_limit", "budget"), [(RESERVED_FDS + 3, 3), (RESERVED_FDS + 2, 2)])
async def test_max_connections_is_lowered_below_the_file_limit(
    start_node: NodeFactory,
    sockets: Sockets,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    file_limit: int,
    budget: int,
) -> None:
    monkeypatch.setattr(server_module, "raise_file_limit", lambda: file_limit)
    caplog.set_level(logging.WARNING, logger="gossip.server")
    node = await start_node(max_connections=3)
    lowered = [r for r in caplog.records if "max_connections lowered" in r.getMessage()]
    assert len(lowered) == (budget < 3)
    assert _http(node)["max_connections"] == budget
    conns = [await sockets.accepted(node) for _ in range(budget)]
    assert _http(node)["connections_open"] == budget
    assert await _closed((await sockets.accepted(node))[0])
    assert _http(node)["connections_refused"] == 1
    assert all([await _served(c) for c in conns])


@pytest.mark.parametrize(
    ("wanted", "file_limit", "budget"),
    [(896, 1024, 896), (897, 1024, 896), (1, RESERVED_FDS + 1, 1), (2, RESERVED_FDS + 1, 1),
     (5, RESERVED_FDS, 1), (5, 0, 1)],
)  # fmt: skip
def test_connection_budget_boundaries(wanted: int, file_limit: int, budget: int) -> None:
    assert connection_budget(wanted, file_limit) == budget


def test_raise_file_limit_stops_at_its_ceiling_and_never_lowers() -> None:
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 300:
        pytest.skip("no hard limit of 300 or more to test against")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_file_limit(ceiling=256) == 256  # at the ceiling: left alone
        assert raise_file_limit(ceiling=255) == 256  # above it: never lowered
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 256
        assert raise_file_limit(ceiling=257) == 257  # one below: raised to it, not past
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == 257
        if hard != resource.RLIM_INFINITY:
            assert raise_file_limit(ceiling=hard + 1) == hard  # the hard limit bounds it
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------ max_connections_per_ip


@pytest.mark.parametrize("n", [1, 3])
async def test_max_connections_per_ip_are_served_one_more_is_closed_and_counted_apart(
    start_node: NodeFactory, sockets: Sockets, n: int
) -> None:
    node = await start_node(max_connections=64, max_connections_per_ip=n)
    guard = node.server.guard
    assert guard is not None
    conns = [await sockets.accepted(node) for _ in range(n)]
    assert all([await _served(c) for c in conns])
    assert dict(guard.open_by_address) == {"127.0.0.1": n}
    refused = await sockets.accepted(node)
    assert await _closed(refused[0])
    http = _http(node)
    assert (http["connections_refused_per_ip"], http["connections_refused"]) == (1, 0)
    assert http["connections_open"] == n and dict(guard.open_by_address) == {"127.0.0.1": n}
    conns[0][1].transport.abort()
    await _until(lambda: guard.open_by_address["127.0.0.1"] == n - 1)
    assert await _served(await sockets.accepted(node))
    assert dict(guard.open_by_address) == {"127.0.0.1": n}
    assert _http(node)["connections_refused_per_ip"] == 1


async def test_the_total_bound_is_checked_before_the_per_address_one(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node(max_connections=2, max_connections_per_ip=2)
    conns = [await sockets.accepted(node) for _ in range(2)]
    assert await _closed((await sockets.accepted(node))[0])  # breaks both bounds
    http = _http(node)
    assert (http["connections_refused"], http["connections_refused_per_ip"]) == (1, 0)
    assert all([await _served(c) for c in conns])


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_ipv6_connections_count_against_their_slash_64(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    node = await start_node(host="::1", max_connections_per_ip=1)
    guard = node.server.guard
    assert guard is not None
    conn = await sockets.accepted(node, host="::1")
    assert await _served(conn)
    assert dict(guard.open_by_address) == {"::/64": 1}
    assert await _closed((await sockets.accepted(node, host="::1"))[0])
    assert (_http(node)["connections_refused_per_ip"], _http(node)["connections_refused"]) == (1, 0)


class _Peer:
    def __init__(self, host: str) -> None:
        self.host = host

    def get_extra_info(self, name: str) -> object:
        return (self.host, 1, 0, 0) if name == "peername" else None


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [("2001:db8:0:0:ffff:ffff:ffff:ffff", "2001:db8::", True),  # all 64 interface bits differ
     ("2001:db8:0:0:8000::", "2001:db8:0:0::", True),  # the first interface bit
     ("2001:db8:0:1::", "2001:db8:0:0::", False),  # the last prefix bit
     ("2001:db8:0:1::", "2001:db8:0:1::1", True),
     ("10.0.0.1", "10.0.0.2", False),  # IPv4: the whole address
     ("::ffff:10.0.0.1", "10.0.0.1", True),  # IPv4-mapped: its IPv4 address
     ("::ffff:10.0.0.1", "::ffff:10.0.0.2", False)],
)  # fmt: skip
def test_the_address_key_splits_ipv6_at_bit_64_and_ipv4_at_each_address(
    a: str, b: str, same: bool
) -> None:
    key_a, key_b = remote_address(_Peer(a)), remote_address(_Peer(b))  # type: ignore[arg-type]
    assert (key_a == key_b) is same, (key_a, key_b)


# ------------------------------------------------------------------ header_timeout


async def test_a_connection_that_sends_nothing_is_aborted_at_header_timeout(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node(header_timeout=0.3)
    started = time.monotonic()
    reader, _ = await sockets.accepted(node)
    assert await _closed(reader)
    assert time.monotonic() - started >= 0.3 - 0.05  # the deadline, not before
    await _until(lambda: _http(node)["header_timeouts"] == 1)
    assert _http(node)["connections_open"] == 0


async def test_complete_headers_end_the_deadline_and_the_body_is_the_read_timeouts(
    start_node: NodeFactory, sockets: Sockets
) -> None:
    node = await start_node(header_timeout=0.5, read_timeout=1.0)
    guard = node.server.guard
    assert guard is not None and guard.tracks_headers
    before = _fingerprint(node)
    body = _message(node)
    reader, _ = await _hold_upload(sockets, node, body)
    await _until(lambda: node.server.uploads.in_use == 1)
    (conn,) = guard._connections
    assert conn.timer is None  # the header deadline is off once the headers are complete
    status, headers, answer = await _response(reader)  # past header_timeout, cut at read_timeout
    assert _refusal(status, headers, answer) == (408, "slow_sender")
    assert _http(node)["header_timeouts"] == 0
    assert dict(node.peer.counters.rejected) == {"slow_sender": 1}
    _assert_nothing_taken(node, before)


# ------------------------------------------------------------------ configuration

LIMIT_FIELDS = [f.name for f in dataclasses.fields(ServerLimits)]


def test_server_limits_are_the_node_config_defaults() -> None:
    config = NodeConfig()
    assert ServerLimits() == ServerLimits(**{f: getattr(config, f) for f in LIMIT_FIELDS})


@pytest.mark.parametrize(
    ("field", "value"),
    [("header_timeout", -1.0), ("header_timeout", float("inf")), ("max_connections", -1),
     ("max_requests", -1), ("max_uploads", 0), ("max_connections_per_ip", -1)],
)  # fmt: skip
def test_a_limit_out_of_range_is_a_one_line_config_error(
    tmp_path: Path, field: str, value: float
) -> None:
    flag = "--" + field.replace("_", "-")
    with pytest.raises(ConfigError, match=f"^{flag} must be ") as e:
        lone_node_config(tmp_path, **{field: value})
    assert "\n" not in str(e.value) and str(e.value).endswith(f"got {value}")


SMALLEST: dict[str, Any] = {"header_timeout": math.ulp(0.0), "max_connections": 1, "max_requests": 1,
            "max_uploads": 1, "max_connections_per_ip": 1}  # fmt: skip


def test_the_smallest_allowed_limits_are_taken_as_given(tmp_path: Path) -> None:
    assert set(SMALLEST) == set(LIMIT_FIELDS)
    node = Node(lone_node_config(tmp_path, **SMALLEST))
    assert node.server.limits == ServerLimits(**SMALLEST)
    assert node.server.uploads.count == 1


# A string or a bool for every limit; a fraction for the counts (a float timeout takes one).
WRONG_TYPES = [
    pytest.param(field, raw, id=f"{field}={raw}")
    for field in LIMIT_FIELDS
    for raw in ('"8"', "true", *(() if field == "header_timeout" else ("1.5",)))
]


@pytest.mark.parametrize(("field", "raw"), WRONG_TYPES)
def test_a_limit_of_the_wrong_type_in_a_config_file_is_one_line(
    tmp_path: Path, field: str, raw: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f"[node]\n{field} = {raw}\n")
    base = dataclasses.asdict(lone_node_config(tmp_path))
    del base[field]
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {field} must be ")) as e:
        NodeConfig.from_toml(path, **base)
    assert "\n" not in str(e.value)
