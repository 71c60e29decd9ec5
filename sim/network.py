"""The simulated network: per-link delay, loss, bandwidth, partitions, in virtual time.

Every peer gets a :class:`SimTransport` (the same :class:`~peers.transport.Transport`
interface the HTTP transport implements). A push is accounted as *sent*, then becomes
*dropped* (lost, partitioned, receiver offline), *rejected* (the receiver's codec or inbox
refused it) or *delivered*, after its delay. At any instant::

    sent == delivered + dropped + rejected + in_flight

Messages are really encoded and decoded with the codec (so validation and quantization
error are part of what is measured), or handed over in memory with ``codec="off"`` for speed,
in which case the byte count is that of the fp32 encoding.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from gossip.codec import CODECS, CodecError, MessageMeta, decode, encode
from gossip.errors import ConfigError
from gossip.state import ModelSchema
from peers.transport import ModelMessage, ModelSink, ModelSnapshot, SendOutcome, Transport
from sampling.views import ViewExchange

DELAY_KINDS = ("constant", "uniform", "exponential")


@dataclass(frozen=True)
class DelayModel:
    """One-way delay of a message in seconds: ``constant:D``, ``uniform:LO:HI``,
    ``exponential:MEAN`` (a bare number means constant)."""

    kind: str = "constant"
    a: float = 0.0
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> DelayModel:
        parts = spec.split(":")
        try:
            if len(parts) == 1:
                return cls._checked(spec, "constant", float(parts[0]), 0.0)
            kind, *nums = parts
            kind = {"exp": "exponential", "const": "constant"}.get(kind, kind)
            values = [float(x) for x in nums]
        except ValueError:
            raise ConfigError(
                f"delay {spec!r} has a non-numeric value; e.g. 0.05, uniform:0.01:0.1, exponential:0.05"
            ) from None
        arity = {"constant": 1, "uniform": 2, "exponential": 1}
        if kind not in arity:
            raise ConfigError(
                f"unknown delay kind {kind!r} in {spec!r}; choose one of: {', '.join(DELAY_KINDS)}"
            )
        if len(values) != arity[kind]:
            raise ConfigError(f"delay {spec!r}: {kind} takes {arity[kind]} number(s)")
        return cls._checked(spec, kind, values[0], values[1] if len(values) > 1 else 0.0)

    @classmethod
    def _checked(cls, spec: str, kind: str, a: float, b: float) -> DelayModel:
        if a < 0 or b < 0 or (kind == "uniform" and b < a):
            raise ConfigError(f"delay {spec!r} must be non-negative (and LO <= HI for uniform)")
        return cls(kind, a, b)

    def sample(self, rng: np.random.Generator) -> float:
        if self.kind == "constant":
            return self.a
        if self.kind == "uniform":
            return float(rng.uniform(self.a, self.b))
        return float(rng.exponential(self.a)) if self.a > 0 else 0.0

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a


@dataclass(frozen=True)
class PartitionEvent:
    """Between ``start`` and ``end`` the peers are split into ``groups`` contiguous blocks
    of peer indices; messages across blocks are dropped. Spec ``split:START:END[:GROUPS]``."""

    start: float
    end: float
    groups: int = 2

    @classmethod
    def parse_schedule(cls, spec: str) -> tuple[PartitionEvent, ...]:
        if not spec or spec == "none":
            return ()
        events = []
        for item in spec.split(","):
            parts = item.strip().split(":")
            try:
                if parts[0] != "split" or len(parts) not in (3, 4):
                    raise ValueError
                start, end = float(parts[1]), float(parts[2])
                groups = int(parts[3]) if len(parts) == 4 else 2
            except ValueError:
                raise ConfigError(
                    f"partition {item!r} is not split:START:END[:GROUPS], e.g. split:20:40"
                ) from None
            if not 0 <= start < end or groups < 2:
                raise ConfigError(f"partition {item!r} needs 0 <= START < END and GROUPS >= 2")
            events.append(cls(start, end, groups))
        return tuple(events)


@dataclass(frozen=True)
class NetworkConfig:
    """The simulated network. delay: see :class:`DelayModel`. loss: probability that a
    message is lost. bandwidth: bytes per second per message (0: unlimited; transfer time
    ``size / bandwidth`` adds to the delay). codec: ``fp32``/``fp16``/``int8`` to really
    encode and decode every message, ``off`` to hand models over in memory. partitions:
    schedule, see :class:`PartitionEvent`."""

    delay: str = "uniform:0.01:0.1"
    loss: float = 0.0
    bandwidth: float = 0.0
    codec: str = "off"
    partitions: str = "none"

    def __post_init__(self) -> None:
        DelayModel.parse(self.delay)
        PartitionEvent.parse_schedule(self.partitions)
        if not 0 <= self.loss < 1:
            raise ConfigError(f"loss probability must be in [0, 1), got {self.loss}")
        if self.bandwidth < 0:
            raise ConfigError(f"bandwidth must be >= 0 bytes/s, got {self.bandwidth}")
        if self.codec not in (*CODECS, "off"):
            raise ConfigError(
                f"unknown codec {self.codec!r}; choose one of: {', '.join((*CODECS, 'off'))}"
            )


@dataclass
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    in_flight: int = 0
    bytes_sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)

    def balanced(self) -> bool:
        return (
            self.sent
            == self.delivered
            + sum(self.dropped.values())
            + sum(self.rejected.values())
            + self.in_flight
        )


class SimNetwork:
    """All simulated links between the peers of one run."""

    def __init__(
        self, config: NetworkConfig, schema: ModelSchema, rng: np.random.Generator
    ) -> None:
        self.config = config
        self.schema = schema
        self.rng = rng
        self.delay = DelayModel.parse(config.delay)
        self.partitions = PartitionEvent.parse_schedule(config.partitions)
        self.stats = NetworkStats()
        self.views = ViewStats()
        self.sinks: dict[str, ModelSink] = {}
        self.index: dict[str, int] = {}
        self.online: set[str] = set()
        self._nonce = itertools.count()
        probe = MessageMeta("p" * 8, 10**9, "n" * 12, 0.0, schema.hash, "fp32")
        self._fp32_bytes = len(encode(torch.zeros(schema.numel), schema, probe))

    def transport(self, peer_id: str) -> SimTransport:
        self.index[peer_id] = len(self.index)
        return SimTransport(self, peer_id)

    # ----------------------------------------------------------------- topology of failures

    def partitioned(self, src: str, dst: str, now: float) -> bool:
        n = len(self.index)
        for event in self.partitions:
            if event.start <= now < event.end:
                block = -(-n // event.groups)
                if self.index[src] // block != self.index[dst] // block:
                    return True
        return False

    def _lost(self) -> bool:
        return self.config.loss > 0 and float(self.rng.random()) < self.config.loss

    def _transfer_time(self, nbytes: int) -> float:
        return self.delay.sample(self.rng) + (
            nbytes / self.config.bandwidth if self.config.bandwidth else 0.0
        )

    # ----------------------------------------------------------------- messages

    def _pack(self, snapshot: ModelSnapshot, now: float) -> tuple[bytes | None, int]:
        if self.config.codec == "off":
            return None, self._fp32_bytes
        meta = MessageMeta(
            snapshot.sender,
            snapshot.age,
            f"n{next(self._nonce)}",
            now,
            self.schema.hash,
            self.config.codec,
        )
        blob = encode(snapshot.flat, self.schema, meta)
        return blob, len(blob)

    def _unpack(self, snapshot: ModelSnapshot, blob: bytes | None, nbytes: int) -> ModelMessage:
        if blob is None:
            return ModelMessage(snapshot.sender, snapshot.age, snapshot.flat, nbytes)
        decoded = decode(blob, self.schema)
        return ModelMessage(decoded.meta.sender, decoded.meta.age, decoded.flat, nbytes)

    def send(self, src: str, dst: str, snapshot: ModelSnapshot) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        blob, nbytes = self._pack(snapshot, now)
        self.stats.sent += 1
        self.stats.bytes_sent += nbytes
        if dst not in self.sinks:
            self.stats.dropped["unknown_peer"] += 1
        elif self.partitioned(src, dst, now):
            self.stats.dropped["partition"] += 1
        elif self._lost():
            self.stats.dropped["loss"] += 1
        else:
            self.stats.in_flight += 1
            loop.call_later(self._transfer_time(nbytes), self._deliver, dst, snapshot, blob, nbytes)

    def _deliver(self, dst: str, snapshot: ModelSnapshot, blob: bytes | None, nbytes: int) -> None:
        self.stats.in_flight -= 1
        if dst not in self.online:
            self.stats.dropped["offline"] += 1
            return
        try:
            message = self._unpack(snapshot, blob, nbytes)
        except CodecError as e:
            self.stats.rejected[e.reason.value] += 1
            return
        reason = self.sinks[dst].offer(message)
        if reason is None:
            self.stats.delivered += 1
        else:
            self.stats.rejected[reason] += 1

    async def exchange_views(
        self, src: str, dst: str, request: ViewExchange
    ) -> ViewExchange | None:
        """A view exchange: the request travels to ``dst`` (delay, loss, partitions,
        offline peers), ``dst``'s sampler answers it, the answer travels back. Both are
        counted in :attr:`views` (their JSON size), never in the model accounting."""
        loop = asyncio.get_running_loop()
        views = self.views
        for leg, (a, b, msg) in enumerate(((src, dst, request), (dst, src, None))):
            if leg == 1:
                handler = getattr(self.sinks.get(dst), "handle_sample", None)
                msg = handler(src, request) if handler is not None else None
                if msg is None:
                    views.dropped["refused"] += 1
                    return None
            assert msg is not None
            views.sent += 1
            nbytes = len(json.dumps(msg.to_json()))
            views.bytes_sent += nbytes
            if b not in self.sinks:
                views.dropped["unknown_peer"] += 1
                return None
            if self.partitioned(a, b, loop.time()):
                views.dropped["partition"] += 1
                return None
            if self._lost():
                views.dropped["loss"] += 1
                return None
            await asyncio.sleep(self._transfer_time(nbytes))
            if b not in self.online:
                views.dropped["offline"] += 1
                return None
        views.answered += 1
        return msg

    async def fetch(self, src: str, dst: str) -> ModelMessage | None:
        """A pull: the request travels to ``dst``, its published model travels back.
        The returned model counts as a message sent by ``dst``."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.delay.sample(self.rng))
        if dst not in self.online or self.partitioned(src, dst, loop.time()) or self._lost():
            return None
        snapshot = self.sinks[dst].published()
        blob, nbytes = self._pack(snapshot, loop.time())
        self.stats.sent += 1
        self.stats.bytes_sent += nbytes
        self.stats.in_flight += 1
        await asyncio.sleep(self._transfer_time(nbytes))
        self.stats.in_flight -= 1
        if src not in self.online:
            self.stats.dropped["offline"] += 1
            return None
        try:
            message = self._unpack(snapshot, blob, nbytes)
        except CodecError as e:
            self.stats.rejected[e.reason.value] += 1
            return None
        self.stats.delivered += 1
        return message


class ViewStats:
    """Peer-sampling traffic, counted apart from model messages."""

    def __init__(self) -> None:
        self.sent = 0
        self.answered = 0
        self.bytes_sent = 0
        self.dropped: Counter[str] = Counter()

    def as_dict(self) -> dict[str, object]:
        return {"view_messages": self.sent, "view_answered": self.answered,
                "view_bytes": self.bytes_sent, "view_dropped": dict(self.dropped)}  # fmt: skip


class SimTransport(Transport):
    """A peer's end of the simulated network."""

    def __init__(self, network: SimNetwork, peer_id: str) -> None:
        self.network = network
        self.peer_id = peer_id

    def attach(self, sink: ModelSink) -> None:
        self.network.sinks[self.peer_id] = sink

    async def push(self, dest: str, snapshot: ModelSnapshot) -> SendOutcome:
        self.network.send(self.peer_id, dest, snapshot)
        return SendOutcome.SENT

    async def pull(self, dest: str) -> ModelMessage | None:
        return await self.network.fetch(self.peer_id, dest)

    async def sample(self, dest: str, request: ViewExchange) -> ViewExchange | None:
        return await self.network.exchange_views(self.peer_id, dest, request)
