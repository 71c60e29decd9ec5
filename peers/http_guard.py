"""Connection-level limits of a node's HTTP server, underneath aiohttp.

aiohttp's server protocol (``web_protocol.RequestHandler``) bounds the size of request
headers but not the time they take, nor the number of open connections: 300 clients that
trickle header bytes hold 300 sockets for as long as they like, and with enough of them the
process runs out of file descriptors and asyncio's accept loop logs ``Too many open files``
forever. :class:`HttpGuard` is the protocol factory given to ``loop.create_server``; each
connection gets a small protocol of ours (:class:`_Connection`) that owns the socket and
drives one aiohttp ``RequestHandler`` behind it:

- **Connection bound.** Beyond ``max_connections`` open sockets a new one is closed at once
  (counted; logged only the 1st, 2nd, 4th, 8th, ... time), before TLS and before aiohttp
  sees it, so that the process stays below its file limit and the accept loop never hits
  EMFILE.
- **Bound per address.** Beyond ``max_connections_per_ip`` open sockets from one remote
  address (an IPv6 one: from its /64, which one host commonly holds all of), a new one from
  it is closed at once too, and counted apart: one outsider reconnecting cannot hold all the
  slots and lock the honest peers out.
- **Header deadline.** A request's headers must be complete within ``header_timeout``:
  counted from the connection's start for its first request (so a socket that sends
  nothing goes too), from their first byte for a later one on a kept-alive connection;
  else the socket is aborted. An idle kept-alive connection is closed by aiohttp's own
  keep-alive timer, which the server sets to twice ``header_timeout`` so that the deadline,
  and its counter, are what cut a slow request short. (aiohttp's timer counts from the last
  response, not from a request's first byte, and its default is an hour.)
- **TLS** is done here, with ``loop.start_tls`` and a handshake deadline, for the same reason
  as the bound: to count (and refuse) raw sockets, including those stuck in a handshake.
- **Short error answers.** aiohttp answers a request it cannot parse with a 400 whose body is
  the parser's message, which quotes the unparsable bytes (60 KB answered for 21 KB of
  garbage). Each handler is made a :class:`BriefErrorHandler`, whose ``handle_error`` gives
  such an answer a short fixed body (``400 Bad Request``); aiohttp still logs it (through
  ``peers.log_guard``), sets the status and closes the connection. A 500 keeps aiohttp's own
  fixed text.

Why a wrapping protocol rather than a ``RequestHandler`` subclass: the handler's constructor,
its ``start()`` loop and the ``Server`` that builds it are undocumented internals that aiohttp
reworks between releases (pipelining queues, eager task starts, ...). The wrapper
depends on asyncio's documented Protocol interface, which the handler implements, plus two
attributes it only reads (``_request_count``, bumped synchronously by ``data_received`` when
the parser completes a request's headers, and ``_messages``, whose newest entry holds that
request's body stream). Should a future aiohttp drop them, ``HttpGuard.tracks_headers`` is
False, a warning says so, the header deadline is off (the keep-alive timer remains) and a
test fails; the server keeps working. The parse itself stays aiohttp's: the deadline ends
where *its* parser says the headers end, never where a second parser of ours would.

The short answers override one method, ``handle_error(request, status, exc, message)``, which
aiohttp's handler calls on itself to answer an error; the subclass is never constructed (a
handler the ``Server`` built becomes one by a ``__class__`` change: the subclass adds no
slots, so the layout is the same), so nothing depends on how aiohttp builds its handlers.
Should ``handle_error`` go, or the factory hand out something other than a plain
``RequestHandler``, handlers are left as they are (``HttpGuard.short_errors`` is False, a
warning says so) and a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

log = logging.getLogger("gossip.server")
RESERVED_FDS = 128  # outgoing connections, data and checkpoint files, logs, torch, stdio
_EARLY_DATA_LIMIT = 1 << 19  # bytes decrypted before start_tls returns (one TLS read)
_UNKNOWN = object()  # a body stream we could not find: treat as "body in progress"


def raise_file_limit(ceiling: int = 1 << 20) -> int:
    """Raise the soft RLIMIT_NOFILE toward the hard limit (at most ``ceiling``); return the
    soft limit now in force (``ceiling`` where the platform has no such limit)."""
    try:
        import resource
    except ImportError:  # not POSIX
        return ceiling
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    target = ceiling if hard == unlimited else min(hard, ceiling)
    if soft == unlimited:
        return ceiling
    if soft < target:
        with contextlib.suppress(ValueError, OSError):  # e.g. macOS caps below the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def _now_and_then(n: int, what: str) -> None:
    """Log the ``n``-th occurrence of something only when ``n`` is a power of two."""
    if n & (n - 1) == 0:
        log.warning("%s (%d so far)", what, n)


def connection_budget(max_connections: int, file_limit: int) -> int:
    """``max_connections``, lowered so that the open sockets stay safely below the file limit."""
    return max(1, min(max_connections, file_limit - RESERVED_FDS))


def remote_address(transport: asyncio.BaseTransport) -> str:
    """Whom a connection counts against for ``max_connections_per_ip``: the remote IPv4
    address, the /64 of an IPv6 one (an IPv4-mapped one: its IPv4 address), else ``""``."""
    peer = transport.get_extra_info("peername")
    host = peer[0] if isinstance(peer, tuple) and peer else None
    if not isinstance(host, str):
        return ""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def short_error_text(status: int) -> str:
    """The whole body of an error answer: ``400 Bad Request``."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


class BriefErrorHandler(RequestHandler):
    """aiohttp's handler, answering what it cannot parse without quoting it back."""

    __slots__ = ()  # the same layout as RequestHandler's: see the module's docstring

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        if status != HTTPStatus.INTERNAL_SERVER_ERROR:
            message = short_error_text(status)
        return super().handle_error(request, status, exc, message)


@dataclass
class HttpStats:
    """What the guard did, for /v1/status and /metrics."""

    connections_accepted: int = 0
    connections_refused: int = 0
    connections_refused_per_ip: int = 0
    header_timeouts: int = 0
    tls_failed: int = 0


class HttpGuard:
    """Protocol factory for ``loop.create_server``: counts, bounds and times connections."""

    def __init__(
        self,
        handler_factory: Callable[[], RequestHandler],
        *,
        max_connections: int,
        header_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        max_connections_per_ip: int | None = None,
    ) -> None:
        self.handler_factory = handler_factory
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip or max_connections
        self.header_timeout = header_timeout
        self.ssl_context = ssl_context
        self.stats = HttpStats()
        self.open = 0
        self.open_by_address: Counter[str] = Counter()  # only addresses with a connection open
        self._connections: set[_Connection] = set()
        # The two attributes of aiohttp's handler that the header deadline reads (see above).
        self.tracks_headers = all(
            hasattr(RequestHandler, name) for name in ("_request_count", "_messages")
        )
        if not self.tracks_headers:
            log.warning("this aiohttp hides its parser state: no header deadline, keep-alive only")
        self.short_errors = callable(getattr(RequestHandler, "handle_error", None))
        if not self.short_errors:
            log.warning("this aiohttp has no handle_error: bad requests get its own answers")

    def _handler(self) -> RequestHandler:
        handler = self.handler_factory()
        if self.short_errors and type(handler) is RequestHandler:
            handler.__class__ = BriefErrorHandler
        elif self.short_errors:
            self.short_errors = False
            log.warning("aiohttp built a %s: bad requests get its own answers", type(handler))
        return handler

    def __call__(self) -> _Connection:
        return _Connection(self)

    def abort_pending(self) -> None:
        """Close the connections aiohttp does not know yet (in a TLS handshake)."""
        for conn in list(self._connections):
            if conn.inner is None:
                conn.abort()

    async def close(self) -> None:
        """Abort every connection still open and wait for the handshake tasks to end."""
        tasks = [c.task for c in self._connections if c.task is not None]
        for conn in list(self._connections):
            conn.abort()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Connection(asyncio.Protocol):
    """One accepted socket: the bound, TLS, the header deadline; aiohttp's handler behind."""

    def __init__(self, guard: HttpGuard) -> None:
        self.guard = guard
        self.raw: asyncio.Transport | None = None  # the socket's transport
        self.transport: asyncio.Transport | None = None  # what the handler uses (maybe TLS)
        self.inner: RequestHandler | None = None
        self.task: asyncio.Task[None] | None = None  # the TLS handshake
        self.early: list[bytes] | None = None  # plaintext that arrived before start_tls returned
        self.counted = False
        self.address = ""  # whom it counts against (see remote_address)
        self.lost = False
        self.timer: asyncio.TimerHandle | None = None
        self.payload: Any = None  # body stream of the newest request; None before the first

    # ------------------------------------------------------------------ lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        guard = self.guard
        if guard.open >= guard.max_connections:
            guard.stats.connections_refused += 1
            raw.abort()
            limit = guard.max_connections
            _now_and_then(guard.stats.connections_refused, f"{limit} connections open: refused one")
            return
        address = remote_address(raw)
        if guard.open_by_address[address] >= guard.max_connections_per_ip:
            guard.stats.connections_refused_per_ip += 1
            raw.abort()
            limit = guard.max_connections_per_ip
            _now_and_then(
                guard.stats.connections_refused_per_ip,
                f"{limit} connections open from {address or 'one address'}: refused one",
            )
            return
        guard.open += 1
        guard.open_by_address[address] += 1
        guard.stats.connections_accepted += 1
        guard._connections.add(self)
        self.counted = True
        self.address = address
        self.raw = raw
        if guard.ssl_context is None:
            self._attach(raw)
            return
        # start_tls swaps the socket's protocol; nothing may be read before it has.
        raw.pause_reading()
        self.early = []
        self.task = asyncio.get_running_loop().create_task(self._handshake(raw, guard.ssl_context))

    async def _handshake(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.guard.header_timeout
        try:
            tls = await loop.start_tls(
                raw, self, context, server_side=True,
                ssl_handshake_timeout=timeout, ssl_shutdown_timeout=timeout,
            )  # fmt: skip
        except asyncio.CancelledError:
            self._release()
            raise
        except Exception:  # bad ClientHello, plain HTTP, timeout, peer gone: the remote's doing
            self.guard.stats.tls_failed += 1
            self._release()
            return
        finally:
            self.task = None
        if tls is None or self.lost or tls.is_closing():
            self._release()
            return
        self._attach(tls)
        early, self.early = self.early or [], None
        for chunk in early:
            self.data_received(chunk)

    def _attach(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.inner = self.guard._handler()
        self.inner.connection_made(transport)
        self._arm()  # the first request's headers: from the start of the connection

    def _arm(self) -> None:
        if not self.guard.tracks_headers:
            return
        self.timer = asyncio.get_running_loop().call_later(
            self.guard.header_timeout, self._headers_too_slow
        )

    def _release(self) -> None:
        if self.counted:
            self.counted = False
            guard = self.guard
            guard.open -= 1
            guard.open_by_address[self.address] -= 1
            if guard.open_by_address[self.address] <= 0:
                del guard.open_by_address[self.address]  # bounded by the open connections
            guard._connections.discard(self)

    def abort(self) -> None:
        transport = self.transport or self.raw
        if transport is not None:
            transport.abort()
        self._release()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost:
            return
        self.lost = True
        self._cancel_timer()
        self._release()
        if self.inner is not None:
            self.inner.connection_lost(exc)

    # ------------------------------------------------------------------ data

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner is None:
            if self.early is None:  # refused, or closing: drop
                return
            self.early.append(data)
            if sum(map(len, self.early)) > _EARLY_DATA_LIMIT:
                self.abort()
            return
        if not self.guard.tracks_headers:
            inner.data_received(data)
            return
        waiting = self._awaiting_headers()
        before = inner._request_count
        inner.data_received(data)
        if inner._request_count != before:  # the parser completed (or refused) headers
            self._cancel_timer()
            messages = inner._messages
            self.payload = messages[-1][1] if messages else _UNKNOWN
        elif waiting and data and self.timer is None and not self.lost:
            # Every byte of this chunk belongs to headers not yet complete: the clock starts.
            # (A chunk that completes a request or a body and then starts the next request's
            # headers starts it at the following chunk, or aiohttp's keep-alive timer closes
            # a connection that sends nothing more: the bound is then a few times as long.)
            self._arm()

    def _awaiting_headers(self) -> bool:
        """Whether the next byte received starts (or continues) a request's headers."""
        payload = self.payload
        return payload is None or (payload is not _UNKNOWN and bool(payload.is_eof()))

    def _headers_too_slow(self) -> None:
        self.timer = None
        if self.lost or self.transport is None:
            return
        self.guard.stats.header_timeouts += 1
        self.transport.abort()
        slow = f"aborted a connection: request headers took over {self.guard.header_timeout:g} s"
        _now_and_then(self.guard.stats.header_timeouts, slow)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def eof_received(self) -> None:  # returning None: the transport closes itself
        if self.inner is not None:
            self.inner.eof_received()

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


class BufferPool:
    """At most ``count`` reusable buffers of ``size`` bytes being filled at once, and at most
    ``count + lendable`` in all, allocated on first need.

    Memory held by request bodies is then bounded by ``(count + lendable) * size`` whatever
    the clients do, and is reused rather than returned to (and fragmented in) the allocator.

    A released buffer may still be *lent*: a model decoded without a copy
    (``decode(copy=False)``) is a view of it, waiting in the inbox or being merged. Such a
    buffer is not handed out again until nothing views it any more. That is exact, not a
    guess from reference counts: a ``bytearray`` with a live buffer export (numpy, and so the
    torch tensor built on it, holds one for as long as it or any view of it lives) refuses
    to be resized, which :func:`_exported` tries.
    """

    def __init__(self, count: int, size: int, lendable: int = 0) -> None:
        self.count = count
        self.lendable = lendable
        self.size = size
        self.allocated = 0
        self.in_use = 0
        self.peak_in_use = 0
        self._free: list[bytearray] = []

    def acquire(self) -> bytearray | None:
        """A free buffer, or None when ``count`` are being filled or every one of the
        ``count + lendable`` is in use or lent."""
        if self.in_use >= self.count:
            return None
        # (by position: list.remove would compare the buffers' contents)
        free = next(
            (i for i in range(len(self._free) - 1, -1, -1) if not _exported(self._free[i])), None
        )
        if free is not None:
            buf = self._free.pop(free)
        elif self.allocated < self.count + self.lendable:
            buf = bytearray(self.size)
            self.allocated += 1
        else:
            return None
        self.in_use += 1
        self.peak_in_use = max(self.peak_in_use, self.in_use)
        return buf

    def release(self, buf: bytearray) -> None:
        """Done filling ``buf`` (it may stay lent until the views of it are gone)."""
        self.in_use -= 1
        self._free.append(buf)

    @property
    def lent(self) -> int:
        """Released buffers that something still views (decoded models not yet merged)."""
        return sum(1 for b in self._free if _exported(b))


def _exported(buf: bytearray) -> bool:
    """Whether something holds a view of ``buf``: resizing it then raises BufferError. The
    probe grows it by one byte and shrinks it back (about 1 us; the first one may move the
    allocation once, with mremap)."""
    try:
        buf.append(0)
    except BufferError:
        return True
    del buf[-1]
    return False
