"""The HTTP API of a real node (aiohttp server).

``POST /v1/gossip``  a model push (codec body). Answers 202 when queued for merging, 429 when
                     the inbox is full, 4xx with ``{"accepted": false, "reason": ...}``
                     otherwise; a refused message changes nothing and is counted by reason.
``GET /v1/model``    the current published model (codec body, signed like a push).
``GET /v1/status``   JSON: id, age, accuracy, message counters, peers known, uptime.
``GET /metrics``     Prometheus text format (prometheus-client).
``GET /healthz``     liveness.

Order of checks on a push: body size (limit derived from the model size) and a read timeout
(slow senders are cut off), then the message header and metadata, then authentication
(before any tensor is decoded), then the full decode (schema, layout, finite values, age
bounds), then the age-inflation guard and the inbox.

Limits against one misbehaving client (``ServerLimits``): below aiohttp, ``peers.http_guard``
bounds open connections (in all and per remote address) and the time request headers may
take, and answers unparsable requests briefly; here, at most
``max_requests`` handlers run at once (beyond: 503 at once; ``/healthz`` is exempt, it never
waits) and at most ``max_uploads`` push bodies are read at once, each into one of as many
reusable buffers of the largest valid message size (beyond: 503, and the connection is
closed without reading the body). An accepted fp32 model is not copied out of its buffer:
it is a view of it, and the buffer is lent until the model is merged (at most
``inbox_size + 2 * merge_k`` of them). Memory held by uploads is thus at most
``(max_uploads + inbox_size + 2 * merge_k) * max_body`` (before, the inbox held as many
decoded copies), and a refused or aborted upload holds none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from gossip.codec import CodecError, max_message_bytes
from peers import log_guard
from peers.auth import AUTH_HEADER, AuthError
from peers.http_guard import (
    BufferPool,
    HttpGuard,
    HttpStats,
    connection_budget,
    raise_file_limit,
)
from peers.http_transport import (
    CONTENT_TYPE,
    MAX_SAMPLE_BYTES,
    MAX_SAMPLE_ENTRIES,
    HttpTransport,
    ModelPayload,
    Oversized,
    read_capped,
)
from peers.peer import Peer
from sampling.cyclon import ViewSampler
from sampling.views import ExchangeRefused

log = logging.getLogger("gossip.server")
_STATUS_FOR_REASON = {
    "busy": 429, "offline": 503, "too_large": 413, "slow_sender": 408, "overloaded": 503,
}  # fmt: skip


@dataclass(frozen=True)
class ServerLimits:
    """How much one node's HTTP server gives to its clients, all of them together.

    header_timeout: seconds a request's headers may take (from the connection's start, or
    from their first byte on a kept-alive connection; idle connections are closed after
    twice that). max_connections: open sockets (lowered to stay below the file limit).
    max_requests: handlers running at once. max_uploads: push bodies read at once.
    max_connections_per_ip: open sockets from one remote address (an IPv6 one: its /64).
    """

    header_timeout: float = 10.0
    max_connections: int = 512
    max_requests: int = 64
    max_uploads: int = 8
    max_connections_per_ip: int = 64


class _TooLarge(Exception):
    pass


class PeerCollector(Collector):
    """Exposes a Peer's counters at scrape time (no second set of counters to keep in sync)."""

    def __init__(self, peer: Peer, status: Callable[[], dict[str, Any]]) -> None:
        self.peer = peer
        self.status = status

    def collect(self) -> Iterator[Any]:
        c = self.peer.counters
        sent = CounterMetricFamily(
            "gossip_pushes", "Models pushed to peers, by outcome", labels=["outcome"]
        )
        sent.add_metric(["attempted"], c.pushes)
        sent.add_metric(["failed"], c.send_failed)
        sent.add_metric(["rejected"], c.send_rejected)
        yield sent
        yield CounterMetricFamily("gossip_pulls", "Models pulled from peers", value=c.pulls)
        yield CounterMetricFamily("gossip_received", "Models received", value=c.received)
        rejected = CounterMetricFamily(
            "gossip_rejected", "Received models refused, by reason", labels=["reason"]
        )
        for reason, n in sorted(c.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily("gossip_merges", "Models merged", value=c.merges)
        yield CounterMetricFamily(
            "gossip_rollbacks", "Updates rolled back (non-finite result)", value=c.rollbacks
        )
        yield CounterMetricFamily(
            "gossip_age_capped", "Received ages capped by the guard", value=c.age_capped
        )
        yield CounterMetricFamily("gossip_train_steps", "Local training steps", value=c.train_steps)
        yield CounterMetricFamily(
            "gossip_samples_trained", "Samples trained on", value=c.samples_trained
        )
        status = self.status()
        yield GaugeMetricFamily(
            "gossip_model_age", "Age of the local model (samples seen)", value=status["age"]
        )
        yield GaugeMetricFamily(
            "gossip_peers_known", "Peers in the sampler's view", value=status["peers_known"]
        )
        if status["accuracy"] is not None:
            yield GaugeMetricFamily(
                "gossip_accuracy", "Accuracy at the last evaluation", value=status["accuracy"]
            )
        lat = list(self.peer.merge_latencies)
        summary = SummaryMetricFamily(
            "gossip_receive_to_merge_seconds", "Receive-to-merge latency (recent)"
        )
        summary.add_metric([], count_value=len(lat), sum_value=sum(lat))
        yield summary


# name in NodeServer.http_status(), metric type, help
_HTTP_METRICS = (
    ("connections_open", "gauge", "Open HTTP connections"),
    ("connections_accepted", "counter", "HTTP connections accepted"),
    ("connections_refused", "counter", "HTTP connections closed at once: max_connections reached"),
    ("connections_refused_per_ip", "counter", "Closed at once: max_connections_per_ip reached"),
    ("header_timeouts", "counter", "Connections aborted: request headers took over header_timeout"),
    ("tls_failed", "counter", "TLS handshakes that failed or timed out"),
    ("requests_in_flight", "gauge", "HTTP requests being handled"),
    ("requests_refused", "counter", "HTTP requests answered 503: max_requests reached"),
    ("uploads_in_progress", "gauge", "Push bodies being read"),
    ("uploads_refused", "counter", "Pushes answered 503: max_uploads bodies being read"),
    ("upload_buffers", "gauge", "Upload buffers allocated (reading or lent to a model)"),
)


class HttpCollector(Collector):
    """The HTTP server's own counters (connections, header timeouts, refusals)."""

    def __init__(self, stats: Callable[[], dict[str, int | float]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        stats = self.stats()
        for key, kind, text in _HTTP_METRICS:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(f"gossip_http_{key}", text, value=stats[key])


class NodeServer:
    """The aiohttp application of one node, and the guarded listener that serves it."""

    def __init__(
        self,
        peer: Peer,
        transport: HttpTransport,
        status: Callable[[], dict[str, Any]],
        limits: ServerLimits | None = None,
    ) -> None:
        self.peer = peer
        self.transport = transport
        self.status = status
        self.limits = limits or ServerLimits()
        self.max_body = max_message_bytes(transport.schema)
        # Accepted fp32 models are views of their upload buffer (decode(copy=False)): a buffer
        # is then lent until its model is merged. At most inbox_size of them wait in the
        # inbox, merge_k for company, and merge_k are being merged (see Peer._inbox_loop).
        # An attacking test node (alie, ipm) keeps the models it saw: it copies instead.
        config = peer.config
        self.borrow = peer.attacker is None or peer.attacker.kind not in ("alie", "ipm")
        lendable = config.inbox_size + 2 * config.merge_k if self.borrow else 0
        self.uploads = BufferPool(self.limits.max_uploads, self.max_body, lendable)
        self.in_flight = 0
        self.requests_refused = 0
        self.uploads_refused = 0
        self.guard: HttpGuard | None = None
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PeerCollector(peer, status))
        self.registry.register(HttpCollector(self.http_status))
        self.app = web.Application(client_max_size=self.max_body, middlewares=[self._bounded])
        self.app.add_routes(
            [
                web.post("/v1/gossip", self.gossip),
                web.post("/v1/sample", self.sample),
                web.get("/v1/model", self.model),
                web.get("/v1/status", self.get_status),
                web.get("/metrics", self.metrics),
                web.get("/healthz", self.healthz),
            ]
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        """Listen on ``host:port`` (raises OSError when that is impossible)."""
        limits = self.limits
        log_guard.install()
        budget = connection_budget(limits.max_connections, raise_file_limit())
        if budget < limits.max_connections:
            log.warning(
                "max_connections lowered from %d to %d to stay below the open-file limit",
                limits.max_connections, budget,
            )  # fmt: skip
        # keepalive_timeout: idle connections go after 2 * header_timeout (aiohttp's default
        # is an hour; see peers.http_guard). lingering_time=0: a body the handler did not read
        # (a refused upload) is not read afterwards either; the connection is closed after
        # the answer.
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            keepalive_timeout=2 * limits.header_timeout,
            lingering_time=0.0,
        )
        await self._runner.setup()
        handler_factory = self._runner.server
        assert handler_factory is not None
        self.guard = HttpGuard(
            handler_factory,
            max_connections=budget,
            header_timeout=limits.header_timeout,
            ssl_context=ssl_context,
            max_connections_per_ip=limits.max_connections_per_ip,
        )
        try:
            self._listener = await asyncio.get_running_loop().create_server(
                self.guard, host, port, backlog=128
            )
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, close every connection."""
        if self._listener is not None:
            self._listener.close()
        if self.guard is not None:
            self.guard.abort_pending()
        if self._runner is not None:
            await self._runner.cleanup()  # no new requests; in-flight handlers finish
            self._runner = None
        if self.guard is not None:
            await self.guard.close()
        if self._listener is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listener.wait_closed(), timeout=1.0)
            self._listener = None

    def http_status(self) -> dict[str, int | float]:
        """Counters and gauges of the server (a part of /v1/status; also in /metrics)."""
        guard = self.guard
        stats = asdict(guard.stats if guard else HttpStats())
        return {
            "connections_open": guard.open if guard else 0,
            **stats,
            "requests_in_flight": self.in_flight,
            "requests_refused": self.requests_refused,
            "uploads_in_progress": self.uploads.in_use,
            "uploads_refused": self.uploads_refused,
            "upload_buffers": self.uploads.allocated,
            "max_connections": guard.max_connections if guard else self.limits.max_connections,
            "max_connections_per_ip": self.limits.max_connections_per_ip,
        }

    # ------------------------------------------------------------------ handlers

    @web.middleware
    async def _bounded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """At most ``max_requests`` handlers at once; beyond, 503 at once."""
        if request.path == "/healthz":  # answers without waiting: cannot pile up
            return await handler(request)
        if self.in_flight >= self.limits.max_requests:
            self.requests_refused += 1
            if request.method == "POST" and request.path == "/v1/gossip":
                return self._refuse("overloaded", 503)
            return web.json_response(
                {"error": "overloaded"}, status=503, headers={"Retry-After": "1"}
            )
        self.in_flight += 1
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    def _refuse(self, reason: str, status: int = 400, *, close: bool = False) -> web.Response:
        # Every incoming push counts as received: received == accepted + sum(rejected).
        self.peer.counters.received += 1
        self.peer.counters.rejected[reason] += 1
        response = web.json_response({"accepted": False, "reason": reason}, status=status)
        if close or status == 503:
            response.force_close()
        return response

    @staticmethod
    async def _read_body(content: StreamReader, buf: bytearray) -> int:
        """Copy the request body into ``buf`` chunk by chunk; its length."""
        n = 0
        while chunk := await content.readany():
            end = n + len(chunk)
            if end > len(buf):  # (a slice assignment past the end would grow the buffer)
                raise _TooLarge
            buf[n:end] = chunk
            n = end
        return n

    async def gossip(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > self.max_body:
            return self._refuse("too_large", 413, close=True)
        buf = self.uploads.acquire()
        if buf is None:  # max_uploads bodies are being read: do not read this one
            self.uploads_refused += 1
            return self._refuse("overloaded", 503)
        try:
            try:
                async with asyncio.timeout(self.transport.config.read_timeout):
                    n = await self._read_body(request.content, buf)
            except _TooLarge:
                return self._refuse("too_large", 413, close=True)
            except TimeoutError:
                return self._refuse("slow_sender", 408, close=True)
            except (ConnectionError, RequestPayloadError):  # gone, or a malformed body
                return self._refuse("aborted", 400, close=True)
            # A view, not a copy. The checks and the decoder take any buffer (they hash it,
            # measure it and memoryview() it), although check_and_decode says bytes. An fp32
            # model is decoded as a view of the buffer, which the pool then lends until the
            # model is gone (merged, or refused just below); other codecs are copies.
            body = cast(bytes, memoryview(buf)[:n])
            try:
                message = await self.transport.check_and_decode(
                    body, request.headers.get(AUTH_HEADER), copy=not self.borrow
                )
            except CodecError as e:
                return self._refuse(e.reason.value, _STATUS_FOR_REASON.get(e.reason.value, 400))
            except AuthError as e:
                return self._refuse(str(e.reason), 401)
        finally:
            self.uploads.release(buf)
        reason = self.peer.offer(message)  # counts received / accepted / rejected itself
        if reason is not None:
            return web.json_response(
                {"accepted": False, "reason": reason}, status=_STATUS_FOR_REASON.get(reason, 422)
            )
        return web.json_response({"accepted": True}, status=202)

    async def sample(self, request: web.Request) -> web.Response:
        """A view exchange of the dynamic sampler: checked, authenticated, answered (signed).
        Refusals are counted by reason in ``sample_refused`` (one line per status, never the
        body in the log)."""
        transport = self.transport
        if request.content_length is not None and request.content_length > MAX_SAMPLE_BYTES:
            return self._refuse_sample("too_large", 413)
        try:
            async with asyncio.timeout(transport.config.read_timeout):
                body = await read_capped(request.content, MAX_SAMPLE_BYTES)
        except Oversized:
            return self._refuse_sample("too_large", 413)
        except TimeoutError:
            return self._refuse_sample("slow_sender", 408)
        except (ConnectionError, RequestPayloadError):
            return self._refuse_sample("aborted", 400)
        try:
            sampler = self.peer.sampler
            limit = sampler.l if isinstance(sampler, ViewSampler) else MAX_SAMPLE_ENTRIES
            exchange = transport.open_sample(body, request.headers.get(AUTH_HEADER), limit)
        except ExchangeRefused as e:
            return self._refuse_sample(e.reason, 413 if e.reason == "too_large" else 400)
        except AuthError as e:
            return self._refuse_sample(str(e.reason), 401)
        answer = self.peer.handle_sample(exchange.sender.peer_id, exchange)
        if answer is None:
            return self._refuse_sample("refused", 409)
        out = transport.sample_body(answer)
        return web.Response(
            body=out, content_type="application/json", headers=transport.signer.headers(out)
        )

    def _refuse_sample(self, reason: str, status: int) -> web.Response:
        self.transport.sample_refused[reason] += 1
        return web.json_response({"accepted": False, "reason": reason}, status=status)

    async def model(self, request: web.Request) -> web.Response:
        # Encoded afresh each time: every message carries its own nonce and timestamp, so
        # that a pulling peer's replay protection accepts it.
        body = await self.transport.encode_async(self.peer.published())
        # (ModelPayload: aiohttp would join the headers with the whole body, a copy of it)
        return web.Response(
            body=ModelPayload(body, content_type=CONTENT_TYPE),
            headers=self.transport.signer.headers(body),
        )

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "time": time.time()})
