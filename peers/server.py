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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from gossip.codec import CodecError, max_message_bytes
from peers.auth import AUTH_HEADER, AuthError
from peers.http_transport import CONTENT_TYPE, HttpTransport
from peers.peer import Peer

_STATUS_FOR_REASON = {"busy": 429, "offline": 503, "too_large": 413, "slow_sender": 408}


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


class NodeServer:
    """The aiohttp application of one node."""

    def __init__(
        self, peer: Peer, transport: HttpTransport, status: Callable[[], dict[str, Any]]
    ) -> None:
        self.peer = peer
        self.transport = transport
        self.status = status
        self.max_body = max_message_bytes(transport.schema)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PeerCollector(peer, status))
        self.app = web.Application(client_max_size=self.max_body)
        self.app.add_routes(
            [
                web.post("/v1/gossip", self.gossip),
                web.get("/v1/model", self.model),
                web.get("/v1/status", self.get_status),
                web.get("/metrics", self.metrics),
                web.get("/healthz", self.healthz),
            ]
        )

    def _refuse(self, reason: str, status: int = 400) -> web.Response:
        # Every incoming push counts as received: received == accepted + sum(rejected).
        self.peer.counters.received += 1
        self.peer.counters.rejected[reason] += 1
        return web.json_response({"accepted": False, "reason": reason}, status=status)

    async def gossip(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > self.max_body:
            return self._refuse("too_large", 413)
        try:
            body = await asyncio.wait_for(
                request.read(), timeout=self.transport.config.read_timeout
            )
        except web.HTTPRequestEntityTooLarge:
            return self._refuse("too_large", 413)
        except TimeoutError:
            return self._refuse("slow_sender", 408)
        try:
            message = await self.transport.check_and_decode(body, request.headers.get(AUTH_HEADER))
        except CodecError as e:
            return self._refuse(e.reason.value, _STATUS_FOR_REASON.get(e.reason.value, 400))
        except AuthError as e:
            return self._refuse(str(e.reason), 401)
        reason = self.peer.offer(message)  # counts received / accepted / rejected itself
        if reason is not None:
            return web.json_response(
                {"accepted": False, "reason": reason}, status=_STATUS_FOR_REASON.get(reason, 422)
            )
        return web.json_response({"accepted": True}, status=202)

    async def model(self, request: web.Request) -> web.Response:
        # Encoded afresh each time: every message carries its own nonce and timestamp, so
        # that a pulling peer's replay protection accepts it.
        body = await self.transport.encode_async(self.peer.published())
        return web.Response(
            body=body, content_type=CONTENT_TYPE, headers=self.transport.signer.headers(body)
        )

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), content_type="text/plain", charset="utf-8"
        )

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "time": time.time()})
