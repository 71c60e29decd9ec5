"""A real node against one misbehaving outsider on 127.0.0.1: slow headers, too many
connections (in all, and from one address), garbage on a kept-alive connection and the
answer to it, piles of unfinished uploads, requests beyond the bound, stalled TLS. Each test
waits on the server's own counters (bounded polls), never on a fixed sleep; the only sleeps
are the pace of a trickling client."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from netutil import NodeFactory, closed_by_server, lone_node_config, self_signed_cert

from gossip.codec import MessageMeta, encode
from gossip.errors import ConfigError
from peers import log_guard
from peers.http_guard import (
    BufferPool,
    connection_budget,
    raise_file_limit,
    remote_address,
    short_error_text,
)
from peers.log_guard import LogGuard
from peers.node import Node
from peers.node_config import NodeConfig

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter


NODE_DEFAULTS: dict[str, Any] = {"read_timeout": 5.0, "age_guard": "refuse", "header_timeout": 0.3}


def _config(tmp_path: Path, **kw: Any) -> NodeConfig:
    return lone_node_config(tmp_path, **{**NODE_DEFAULTS, **kw})


def _http(node: Node) -> dict[str, Any]:
    return node.server.http_status()


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _connect(node: Node, **kw: Any) -> tuple[Reader, Writer]:
    return await asyncio.open_connection("127.0.0.1", node.config.port, **kw)


async def _closed(reader: Reader, timeout: float = 5.0) -> bool:
    return await closed_by_server(reader, timeout)


def _trickle(reader: Reader, writer: Writer, data: bytes) -> None:
    """Write unless the server has closed the connection (then writing only fails)."""
    if not (reader.at_eof() or reader.exception() or writer.is_closing()):
        writer.write(data)


async def _response(reader: Reader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    length = next(
        int(v) for k, _, v in (h.partition(": ") for h in lines) if k.lower() == "content-length"
    )
    return int(lines[0].split()[1]), await asyncio.wait_for(reader.readexactly(length), 5)


async def _get(node: Node, path: str, scheme: str = "http", **kw: Any) -> tuple[int, Any]:
    url = f"{scheme}://127.0.0.1:{node.config.port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url, **kw) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


def _message(node: Node) -> bytes:
    """A valid push of the node's own weights (the model does not move if it were merged)."""
    meta = MessageMeta("mallory", 5, f"n{time.monotonic_ns()}", time.time(), node.schema.hash)
    return encode(node.learner.state.flat.clone(), node.schema, meta)


def _upload_head(length: int) -> bytes:
    return f"POST /v1/gossip HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


def _remote_log(caplog: pytest.LogCaptureFixture) -> str:
    names = ("aiohttp", "asyncio", "gossip.server")
    return "".join(
        caplog.handler.format(r) + "\n" for r in caplog.records if r.name.startswith(names)
    )


# ------------------------------------------------------------------ slow headers


async def test_slow_headers_are_cut_off_while_healthz_answers(start_node: NodeFactory) -> None:
    node = await start_node(header_timeout=0.3)
    assert node.server.guard is not None and node.server.guard.tracks_headers  # this aiohttp
    conns = [await _connect(node) for _ in range(20)]
    started = time.monotonic()
    for _, writer in conns:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    answered = False
    for _ in range(150):  # a header line every 20 ms to each: never complete, never idle
        if _http(node)["header_timeouts"] == len(conns):
            break
        for reader, writer in conns:
            _trickle(reader, writer, b"X-Slow: y\r\n")
        if not answered:  # while all the slow ones are open
            assert _http(node)["connections_open"] == len(conns)
            status, body = await _get(node, "/healthz")
            assert status == 200 and body["ok"] is True
            answered = True
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    assert _http(node)["header_timeouts"] == len(conns) and answered
    assert 0.3 <= elapsed < 3.0
    assert all(await asyncio.gather(*(_closed(r, 1.0) for r, _ in conns)))
    await _until(lambda: _http(node)["connections_open"] == 0)
    assert (await _get(node, "/healthz"))[0] == 200


async def test_kept_alive_connections_have_a_header_deadline_and_idle_ones_close(
    start_node: NodeFactory,
) -> None:
    node = await start_node(header_timeout=0.3)
    trickler, idler = await _connect(node), await _connect(node)
    for reader, writer in (trickler, idler):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _response(reader))[0] == 200
    started = time.monotonic()
    for i in range(150):  # the second request on the connection, one header line at a time
        if _http(node)["header_timeouts"]:
            break
        _trickle(*trickler, b"GET /healthz HTTP/1.1\r\n" if i == 0 else b"X-Slow: y\r\n")
        await asyncio.sleep(0.02)
    assert await _closed(trickler[0], 1.0)
    assert _http(node)["header_timeouts"] == 1 and time.monotonic() - started < 3.0
    # The idle one is closed by the keep-alive timer (2 * header_timeout), not the deadline.
    assert await _closed(idler[0], 3.0)
    assert _http(node)["header_timeouts"] == 1


# ------------------------------------------------------------------ connection bound


async def test_connections_beyond_the_bound_are_closed_at_once(
    start_node: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    node = await start_node(header_timeout=5.0, max_connections=8)
    conns = [await _connect(node) for _ in range(30)]
    await _until(
        lambda: _http(node)["connections_accepted"] + _http(node)["connections_refused"] == 30
    )
    assert (_http(node)["connections_open"], _http(node)["connections_refused"]) == (8, 22)
    closed = await asyncio.gather(*(_closed(r, 0.5) for r, _ in conns))
    assert sum(closed) == 22 and not any(closed[:8])  # the first eight are served
    with pytest.raises((aiohttp.ClientError, ConnectionError)):
        await _get(node, "/healthz")  # still full: refused too, at once
    for _, writer in conns:
        writer.transport.abort()
    await _until(lambda: _http(node)["connections_open"] == 0)
    assert (await _get(node, "/healthz"))[0] == 200
    assert len(_remote_log(caplog)) < 1000  # refusals are counted, logged at 1, 2, 4, 8, 16


async def test_one_address_cannot_take_all_the_connections(
    start_node: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    node = await start_node(header_timeout=5.0, max_connections=64, max_connections_per_ip=4)
    conns = [await _connect(node) for _ in range(30)]  # one outsider, reconnecting
    await _until(
        lambda: (
            _http(node)["connections_accepted"] + _http(node)["connections_refused_per_ip"] == 30
        )
    )
    assert (_http(node)["connections_open"], _http(node)["connections_refused_per_ip"]) == (4, 26)
    assert _http(node)["connections_refused"] == 0  # the global bound was never reached
    closed = await asyncio.gather(*(_closed(r, 0.5) for r, _ in conns))
    assert sum(closed) == 26 and not any(closed[:4])  # the first four are served
    again = await _connect(node)
    assert await _closed(again[0], 0.5)  # from the same address: refused too, at once
    try:  # another address (all of 127/8 is loopback on Linux) still gets in
        other = await _connect(node, local_addr=("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not a local address here")
    other[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await _response(other[0]))[0] == 200
    assert node.server.guard is not None
    assert dict(node.server.guard.open_by_address) == {"127.0.0.1": 4, "127.0.0.2": 1}
    for _, writer in [*conns, again, other]:
        writer.transport.abort()
    await _until(lambda: _http(node)["connections_open"] == 0)
    assert not node.server.guard.open_by_address  # nothing kept per address once closed
    status, answer = await _get(node, "/v1/status")
    assert status == 200 and answer["http"]["connections_refused_per_ip"] == 27
    assert answer["http"]["max_connections_per_ip"] == 4
    assert "gossip_http_connections_refused_per_ip_total 27.0" in (await _get(node, "/metrics"))[1]
    assert len(_remote_log(caplog)) < 1000  # counted, logged at 1, 2, 4, 8, 16


class _Transport:
    def __init__(self, peername: object) -> None:
        self.peername = peername

    def get_extra_info(self, name: str) -> object:
        return self.peername if name == "peername" else None


@pytest.mark.parametrize(
    ("peername", "address"),
    [(("10.1.2.3", 5000), "10.1.2.3"), (("2001:db8:1:2:3:4:5:6", 5000, 0, 0), "2001:db8:1:2::/64"),
     (("2001:db8:1:2:ffff::1", 80, 0, 0), "2001:db8:1:2::/64"), (("::ffff:10.1.2.3", 1, 0, 0), "10.1.2.3"),
     (("fe80::1%eth0", 1, 0, 2), "fe80::/64"), ("", ""), (None, ""), (("not-an-ip", 1), "not-an-ip")],
)  # fmt: skip
def test_connections_count_against_their_ipv4_address_or_ipv6_slash_64(
    peername: object, address: str
) -> None:
    assert remote_address(_Transport(peername)) == address  # type: ignore[arg-type]


def test_the_file_limit_is_raised_and_the_connection_bound_kept_below_it() -> None:
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_budget(512, 1024) == 512
    assert connection_budget(2000, 1024) == 1024 - 128
    assert connection_budget(512, 100) == 1
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip("no finite hard limit above 512 to test against")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_file_limit() == min(hard, 1 << 20)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == min(hard, 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------ garbage, logs


@pytest.fixture
def frozen_log_guard() -> Iterator[LogGuard]:
    """The node's log guard with its defaults but a clock that stands still (no refill)."""
    previous = log_guard.install()
    guard = log_guard.install(LogGuard(clock=Clock()))
    yield guard
    log_guard.install(previous)


async def test_garbage_on_a_kept_alive_connection_logs_little_and_no_traceback(
    start_node: NodeFactory, caplog: pytest.LogCaptureFixture, frozen_log_guard: LogGuard
) -> None:
    caplog.set_level(logging.DEBUG)
    node = await start_node(header_timeout=2.0)
    garbage = bytes(range(256)) * 82  # 21 KB, newlines and quotes included
    sent = 0
    for _ in range(50):  # 1 MB in all
        reader, writer = await _connect(node)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _response(reader))[0] == 200
        writer.write(garbage)  # the second "request" on the kept-alive connection
        sent += len(garbage)
        assert await _closed(reader, 2.0)  # answered 400, closed
        writer.close()
    text = _remote_log(caplog)
    assert sent >= 1 << 20 and 0 < len(text) < 2048, text  # was 0.47 log bytes per byte sent
    assert "Traceback" not in text and "\\x80\\x81" not in text
    errors = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(errors) == frozen_log_guard.burst  # one a connection, up to the burst
    assert frozen_log_guard.suppressed_total >= 50 - frozen_log_guard.burst
    assert (await _get(node, "/healthz"))[0] == 200


@pytest.mark.parametrize(
    "request_bytes",
    [bytes(range(256)) * 82, b"GET /" + b"x" * 20_000 + b" HTTP/1.1\r\n\r\n",
     b"POST /v1/gossip HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
     b"GET /healthz HTTP/1.1\r\nX-Big: " + b"\x80" * 9000 + b"\r\n\r\n"],
    ids=["binary", "long request line", "bad content-length", "long header"],
)  # fmt: skip
async def test_an_unparsable_request_gets_a_short_fixed_answer(
    start_node: NodeFactory, request_bytes: bytes
) -> None:
    node = await start_node()
    reader, writer = await _connect(node)
    writer.write(request_bytes)
    status, body = await _response(reader)
    assert (status, body) == (400, short_error_text(400).encode()) == (400, b"400 Bad Request")
    assert await _closed(reader, 2.0)  # and the connection is closed
    writer.close()
    guard = node.server.guard
    assert guard is not None and guard.short_errors  # this aiohttp: the override is in place
    assert (await _get(node, "/healthz"))[0] == 200


# ------------------------------------------------------------------ uploads, requests


async def test_uploads_beyond_the_bound_get_503_and_buffers_stay_bounded(
    start_node: NodeFactory,
) -> None:
    node = await start_node(max_uploads=2, read_timeout=10.0)
    before = node.learner.state.param_hash(), node.learner.state.age
    body = _message(node)
    conns = []
    for _ in range(6):  # nearly complete bodies: all but the last byte
        reader, writer = await _connect(node)
        writer.write(_upload_head(len(body)) + body[:-1])
        conns.append((reader, writer))
    await _until(lambda: _http(node)["uploads_refused"] == 4 and node.server.uploads.in_use == 2)
    answers = await asyncio.gather(*(_answer_or_none(r) for r, _ in conns))
    refused = [a for a in answers if a is not None]
    assert len(refused) == 4 and all(a[0] == 503 and b'"overloaded"' in a[1] for a in refused)
    holders = [c for c, a in zip(conns, answers, strict=True) if a is None]
    for _, writer in holders:  # the two uploads being read are aborted by their clients
        writer.transport.abort()
    await _until(lambda: node.server.uploads.in_use == 0)
    pool: BufferPool = node.server.uploads
    assert pool.allocated == pool.peak_in_use == 2 and pool.size == node.server.max_body
    c = node.peer.counters
    assert dict(c.rejected) == {"overloaded": 4, "aborted": 2}
    assert c.received == c.accepted + sum(c.rejected.values()) == 6
    assert (node.learner.state.param_hash(), node.learner.state.age) == before
    # The buffers are reused: a complete push goes through, no third buffer appears.
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{node.config.port}/v1/gossip"
        async with session.post(url, data=_message(node)) as resp:
            assert resp.status in (202, 422)  # accepted (or refused by a content screen)
    assert pool.allocated == 2 and pool.in_use == 0
    assert c.received == c.accepted + sum(c.rejected.values()) == 7


async def _answer_or_none(reader: Reader) -> tuple[int, bytes] | None:
    try:
        async with asyncio.timeout(0.5):
            return await _response(reader)
    except TimeoutError:
        return None


async def test_requests_beyond_the_bound_get_503_at_once(start_node: NodeFactory) -> None:
    node = await start_node(max_requests=2, read_timeout=10.0)
    body = _message(node)
    holders = []
    for _ in range(2):
        reader, writer = await _connect(node)
        writer.write(_upload_head(len(body)) + body[:-1])
        holders.append((reader, writer))
    await _until(lambda: _http(node)["requests_in_flight"] == 2)
    started = time.monotonic()
    status, answer = await _get(node, "/v1/status")
    assert (status, answer) == (503, {"error": "overloaded"}) and time.monotonic() - started < 1
    assert (await _get(node, "/healthz"))[0] == 200  # exempt: it never waits
    reader, writer = await _connect(node)
    writer.write(_upload_head(len(body)) + body)
    assert (await _response(reader))[0] == 503
    assert node.peer.counters.rejected["overloaded"] == 1
    for _, holder in holders:
        holder.transport.abort()
    await _until(lambda: _http(node)["requests_in_flight"] == 0)
    status, answer = await _get(node, "/v1/status")
    assert status == 200 and answer["http"]["requests_refused"] == 2
    status, metrics = await _get(node, "/metrics")
    assert "gossip_http_requests_refused_total 2.0" in metrics
    for name in ("connections_refused_total", "header_timeouts_total", "connections_open"):
        assert f"gossip_http_{name} " in metrics


# ------------------------------------------------------------------ TLS


async def test_tls_handshakes_and_headers_are_bounded_too(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    cert, key = self_signed_cert(tmp_path)
    node = await start_node(tls_cert=str(cert), tls_key=str(key), header_timeout=0.3)
    client = ssl.create_default_context(cafile=str(cert))
    assert (await _get(node, "/healthz", "https", ssl=client))[0] == 200
    mute, _ = await _connect(node)  # TCP only: never says hello
    tls_reader, tls_writer = await _connect(node, ssl=client)
    for i in range(100):
        if _http(node)["header_timeouts"] and _http(node)["tls_failed"]:
            break
        _trickle(
            tls_reader, tls_writer, b"GET /healthz HTTP/1.1\r\n" if i == 0 else b"X-Slow: y\r\n"
        )
        await asyncio.sleep(0.02)
    assert (_http(node)["header_timeouts"], _http(node)["tls_failed"]) == (1, 1)
    assert await _closed(mute, 1.0) and await _closed(tls_reader, 1.0)
    assert (await _get(node, "/healthz", "https", ssl=client))[0] == 200
    await _until(lambda: _http(node)["connections_open"] == 0)


# ------------------------------------------------------------------ the log filter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(
    name: str, msg: str, *args: object, exc: BaseException | None = None
) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as e:
        return e


def test_log_guard_rate_limits_per_logger_and_summarises() -> None:
    clock = Clock()
    guard = LogGuard(rate=1.0, burst=3, clock=clock)
    passed = [guard.filter(_record("aiohttp.server", "line %d", i)) for i in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert guard.filter(_record("gossip.node", "other logger"))  # its own bucket
    clock.now = 0.5
    assert not guard.filter(_record("aiohttp.server", "still too soon"))
    clock.now = 1.5
    record = _record("aiohttp.server", "back")
    assert guard.filter(record) and record.getMessage() == "suppressed 8 similar log lines; back"
    assert guard.filter(_record("aiohttp.server", "again")) is False  # 1.5 tokens - 1, - 1
    clock.now = 100.0
    assert [guard.filter(_record("aiohttp.server", "x")) for _ in range(4)] == [True] * 3 + [False]
    assert guard.suppressed_total == 10


def test_log_guard_bounds_messages_and_flattens_remote_errors() -> None:
    from aiohttp.http_exceptions import BadHttpMethod

    guard = LogGuard(max_chars=100, clock=Clock())
    long = _record("gossip.node", "peer said %s", "x\n" * 5000)
    assert guard.filter(long)
    text = logging.Formatter().format(long)
    assert len(text) < 130 and "\n" not in text and text.endswith("... [10010 chars]")
    echoed = _raised(BadHttpMethod("'" + "\x00garbage\n" * 1000 + "'"))
    record = _record("aiohttp.server", "Error handling request from %s", "127.0.0.1", exc=echoed)
    assert guard.filter(record)
    text = logging.Formatter().format(record)
    assert text.startswith("Error handling request from 127.0.0.1 [BadHttpMethod: 400")
    assert "garbage" not in text and "Traceback" not in text and len(text) < 260
    bug = _record("gossip.node", "merge failed", exc=_raised(KeyError("w")))
    assert guard.filter(bug)  # our own bug: the traceback is kept (and bounded)
    assert "Traceback" in logging.Formatter().format(bug)
    reset = _record("gossip.node", "push failed", exc=_raised(ConnectionResetError("gone")))
    assert guard.filter(reset)
    assert logging.Formatter().format(reset) == "push failed [ConnectionResetError: gone]"
    broken = _record("asyncio", "%d apples", "not a number")
    assert guard.filter(broken) and "unformattable" in broken.getMessage()


def test_log_guard_install_is_idempotent() -> None:
    guard = log_guard.install()
    assert log_guard.install() is guard
    fresh = log_guard.install(LogGuard())
    try:
        filters = logging.getLogger("aiohttp.server").filters
        assert [f for f in filters if isinstance(f, LogGuard)] == [fresh]
    finally:
        log_guard.install(guard)


@pytest.mark.parametrize(
    ("field", "value"),
    [("header_timeout", 0.0), ("header_timeout", float("nan")), ("max_connections", 0),
     ("max_requests", 0), ("max_uploads", -1), ("max_connections_per_ip", 0)],
)  # fmt: skip
def test_bad_limits_are_one_line_config_errors(tmp_path: Path, field: str, value: float) -> None:
    with pytest.raises(ConfigError, match="--" + field.replace("_", "-")) as e:
        _config(tmp_path, **{field: value})
    assert "\n" not in str(e.value)


def test_gossip_node_logging_puts_the_guard_on_its_handler() -> None:
    from peers.cli import setup_logging

    tree = logging.getLogger("gossip")
    saved = tree.handlers[:], tree.level
    try:
        setup_logging("json")
        guards = [f for f in tree.handlers[0].filters if isinstance(f, LogGuard)]
        assert guards == [log_guard.install()]  # the same guard as on aiohttp's loggers
        assert guards[0] in logging.getLogger("asyncio").filters
    finally:
        tree.handlers[:] = saved[0]
        tree.setLevel(saved[1])
