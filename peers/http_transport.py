"""The HTTP transport of a real node (client side): push and pull models with aiohttp.

One ``aiohttp.ClientSession`` per node with a bounded connection pool and connect/read
timeouts. A push is a ``POST /v1/gossip`` of a codec message; it is never retried (the
receiver refuses a replayed nonce, and the next period sends a fresher model anyway). A pull
is a ``GET /v1/model``; being idempotent, it is retried once on a connection error. Network
trouble never raises out of the transport: it is reported as ``FAILED`` (the Peer tells its
sampler) and counted. Large models are encoded and decoded in a worker thread so that the
event loop stays responsive.

A view exchange of a dynamic sampler (Cyclon, Newscast) is a ``POST /v1/sample`` of a JSON
envelope ``{"exchange", "nonce", "timestamp"}`` answered by the same envelope, both signed
and replay-checked like models; the addresses in its descriptors are learned, except for
peers listed in the peers file, which keep their listed address. With Ed25519 keys, the keys
in descriptors are checked against the ids' bindings (:func:`sampling.views.check_keys`) and
sent as bound (:func:`sampling.views.with_keys`); ids are bound by their own first signed
message (see :mod:`peers.auth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial

import aiohttp
from aiohttp.abc import AbstractStreamWriter

from gossip.codec import (
    CodecError,
    MessageMeta,
    decode,
    encode,
    encode_into,
    max_message_bytes,
    read_meta,
)
from gossip.state import ModelSchema
from peers.auth import AUTH_HEADER, AuthError, MessageSigner, MessageVerifier, format_public_key
from peers.http_guard import BufferPool
from peers.transport import ModelMessage, ModelSink, ModelSnapshot, SendOutcome, Transport
from sampling.views import (
    Descriptor,
    ExchangeRefused,
    ViewExchange,
    check_keys,
    parse_exchange,
    with_keys,
)

log = logging.getLogger("gossip.node")
CONTENT_TYPE = "application/vnd.gossip.safetensors"
_THREAD_THRESHOLD = 1 << 20  # bytes: above this, (de)serialise off the event loop
_FIRST_PIECE = 1 << 16  # bytes of the body written with the request's headers


class ModelPayload(aiohttp.BytesPayload):
    """A push body that aiohttp sends without copying it.

    aiohttp sends the request's headers with the body's first write in one
    ``transport.write``; where ``writelines`` is unsafe (Python before 3.12.9) it joins them,
    ``b"".join((headers, body))``: a copy of the whole model into a fresh buffer, which for a
    45 MB model took 20 ms of a 62 ms push (the time before the server saw its first byte).
    This payload writes a first piece of 64 KiB (the join copies only that) and then the rest
    as one view, which the event loop's transport sends from where it lies."""

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)
        if content_length is not None:
            view = view[:content_length]
        await writer.write(view[:_FIRST_PIECE])
        if len(view) > _FIRST_PIECE:
            await writer.write(view[_FIRST_PIECE:])


# A view exchange: at most this many entries and bytes (a sampler's own limit, its exchange
# length, is checked by the sampler).
MAX_SAMPLE_ENTRIES = 256
MAX_SAMPLE_BYTES = 256 * 1024


class Oversized(Exception):
    """A body past its limit."""


async def read_capped(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """A whole body of at most ``limit`` bytes (raises :class:`Oversized` beyond)."""
    chunks, n = [], 0
    while chunk := await stream.readany():
        n += len(chunk)
        if n > limit:
            raise Oversized
        chunks.append(chunk)
    return b"".join(chunks)


_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]{1,255}/?")


@dataclass(frozen=True)
class HttpConfig:
    """Client and server limits. connect_timeout / read_timeout: seconds (the read timeout
    also bounds how long a server waits for a request body: slow senders are cut off).
    pool_limit: concurrent connections of the client. codec: what this node sends."""

    connect_timeout: float = 3.0
    read_timeout: float = 30.0
    pool_limit: int = 16
    codec: str = "fp32"


class HttpTransport(Transport):
    """Pushes and pulls models to and from the peers listed in peers.txt."""

    def __init__(
        self,
        self_id: str,
        peers: Mapping[str, str],
        schema: ModelSchema,
        config: HttpConfig,
        signer: MessageSigner,
        verifier: MessageVerifier,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.self_id = self_id
        self.peers = dict(peers)  # peer id -> base URL
        self.listed = frozenset(self.peers)  # from the peers file: never re-addressed
        self.sample_refused: Counter[str] = Counter()
        self._sample_nonce = 0
        self.schema = schema
        self.config = config
        self.signer = signer
        self.verifier = verifier
        self.ssl_context = ssl_context
        self.sink: ModelSink | None = None
        self._session: aiohttp.ClientSession | None = None
        # Send buffers for pushes of large models (two pushes at once reuse theirs; a third
        # encodes into a fresh one).
        self._pooled = schema.numel * 4 > _THREAD_THRESHOLD
        self.send_buffers = BufferPool(2, max_message_bytes(schema))
        self.failures: dict[str, int] = {}

    def attach(self, sink: ModelSink) -> None:
        self.sink = sink

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.pool_limit, limit_per_host=2, ssl=self.ssl_context or True
        )
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.config.connect_timeout, sock_read=self.config.read_timeout
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("HttpTransport.start() was not awaited")
        return self._session

    # ------------------------------------------------------------------ encoding

    def encode_snapshot(
        self, snapshot: ModelSnapshot, out: bytearray | None = None
    ) -> bytes | memoryview:
        """The push body: encoded straight into ``out`` (a pooled send buffer) when given."""
        meta = MessageMeta(
            sender=self.self_id,
            age=snapshot.age,
            nonce=secrets.token_urlsafe(12),
            timestamp=time.time(),
            schema_hash=self.schema.hash,
            codec=self.config.codec,
        )
        if out is None:
            return encode(snapshot.flat, self.schema, meta)
        return encode_into(snapshot.flat, self.schema, meta, out)

    async def encode_async(
        self, snapshot: ModelSnapshot, out: bytearray | None = None
    ) -> bytes | memoryview:
        if snapshot.flat.numel() * 4 > _THREAD_THRESHOLD:
            return await asyncio.to_thread(self.encode_snapshot, snapshot, out)
        return self.encode_snapshot(snapshot, out)

    # ------------------------------------------------------------------ push / pull

    def _note_failure(self, dest: str, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1
        log.debug("push to %s failed: %s", dest, why)

    async def push(self, dest: str, snapshot: ModelSnapshot) -> SendOutcome:
        url = self.peers.get(dest)
        if url is None:
            self._note_failure(dest, "unknown_peer")
            return SendOutcome.FAILED
        # Large models are encoded into a pooled buffer, reused push after push: a fresh
        # model-sized allocation page-faults on every push (glibc maps blocks > 32 MB anew).
        buf = self.send_buffers.acquire() if self._pooled else None
        body: bytes | memoryview = b""
        try:
            body = await self.encode_async(snapshot, buf)
            headers = {"Content-Type": CONTENT_TYPE, **self.signer.headers(body)}
            payload = ModelPayload(body, content_type=CONTENT_TYPE)
            async with self.session.post(f"{url}/v1/gossip", data=payload, headers=headers) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self._note_failure(dest, type(e).__name__)
            return SendOutcome.FAILED
        finally:
            if buf is not None:
                # The pool reuses a buffer only when nothing views it; a failed request's
                # traceback keeps aiohttp's reference to the body alive until the cyclic
                # collector runs. Releasing our view ends its export now: a late reader
                # gets ValueError, never the next push's bytes.
                if isinstance(body, memoryview):
                    with contextlib.suppress(BufferError):
                        body.release()
                self.send_buffers.release(buf)
        if 200 <= status < 300:
            return SendOutcome.DELIVERED
        log.debug("push to %s refused with HTTP %d", dest, status)
        return SendOutcome.REJECTED

    async def pull(self, dest: str) -> ModelMessage | None:
        url = self.peers.get(dest)
        if url is None:
            return None
        for attempt in (1, 2):  # GET is idempotent: one retry on a connection error
            try:
                async with self.session.get(f"{url}/v1/model") as resp:
                    if resp.status != 200:
                        return None
                    if (resp.content_length or 0) > max_message_bytes(self.schema):
                        return None
                    # The whole body: StreamReader.read(n) returns what has arrived, at most
                    # n bytes (a pulled model larger than one chunk was cut and refused).
                    body = await read_capped(resp.content, max_message_bytes(self.schema))
                    header = resp.headers.get(AUTH_HEADER)
                break
            except Oversized:
                self._note_failure(dest, "too_large")
                return None
            except (aiohttp.ClientConnectionError, TimeoutError, OSError) as e:
                self._note_failure(dest, type(e).__name__)
                if attempt == 2:
                    return None
            except aiohttp.ClientError as e:
                self._note_failure(dest, type(e).__name__)
                return None
        try:
            return await self.check_and_decode(body, header)
        except (CodecError, AuthError) as e:
            log.info("pulled model from %s rejected: %s", dest, e)
            return None

    # ------------------------------------------------------------------ peer sampling

    def sample_body(self, exchange: ViewExchange) -> bytes:
        """A view exchange as the JSON body of ``POST /v1/sample`` (or its answer), with a
        nonce and a timestamp so that it is signed and replay-checked like a model."""
        self._sample_nonce += 1
        envelope = {
            "exchange": with_keys(exchange, self.key_text).to_json(),
            "nonce": f"s{time.time_ns()}-{self._sample_nonce}",
            "timestamp": time.time(),
        }
        return json.dumps(envelope, separators=(",", ":")).encode()

    def open_sample(
        self, body: bytes, auth_header: str | None, max_entries: int = MAX_SAMPLE_ENTRIES
    ) -> ViewExchange:
        """Parse, check and authenticate a view-exchange body; learn the addresses it
        names. Raises :class:`ExchangeRefused` (reason ``schema``, ``too_large``, ...) or
        :class:`AuthError`."""
        if len(body) > MAX_SAMPLE_BYTES:
            raise ExchangeRefused("too_large", f"{len(body)} bytes, at most {MAX_SAMPLE_BYTES}")
        try:
            envelope = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ExchangeRefused("schema", "the body is not JSON") from None
        if not isinstance(envelope, dict) or set(envelope) != {"exchange", "nonce", "timestamp"}:
            raise ExchangeRefused("schema", "expected exactly exchange, nonce, timestamp")
        nonce, timestamp = envelope["nonce"], envelope["timestamp"]
        if not isinstance(nonce, str) or not 1 <= len(nonce) <= 128:
            raise ExchangeRefused("schema", "nonce must be a string of 1-128 characters")
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
            raise ExchangeRefused("schema", "timestamp must be a number")
        exchange = parse_exchange(envelope["exchange"], min(max_entries, MAX_SAMPLE_ENTRIES))
        self.verifier.verify(
            sender=exchange.sender.peer_id, nonce=nonce, timestamp=float(timestamp), body=body,
            header=auth_header, now=time.time(),
        )  # fmt: skip
        exchange = check_keys(exchange, self.key_text)
        self.learn(exchange)
        return exchange

    def key_text(self, peer_id: str) -> str | None:
        """The key ``peer_id`` is bound to, as descriptor text, or None."""
        raw = self.verifier.key_of(peer_id)
        return None if raw is None else format_public_key(raw)

    def learn(self, exchange: ViewExchange) -> None:
        """Remember where the peers an exchange names can be reached (http/https URLs only;
        a peer listed in the peers file keeps its listed address)."""
        self.learn_addresses((exchange.sender, *exchange.entries))

    def learn_addresses(self, descriptors: Iterable[Descriptor]) -> None:
        for d in descriptors:
            if d.peer_id == self.self_id or not d.address or d.peer_id in self.listed:
                continue
            if _URL.fullmatch(d.address):
                self.peers[d.peer_id] = d.address.rstrip("/")

    async def sample(self, dest: str, request: ViewExchange) -> ViewExchange | None:
        url = self.peers.get(dest)
        if url is None:
            self._note_failure(dest, "unknown_peer")
            return None
        body = self.sample_body(request)
        headers = {"Content-Type": "application/json", **self.signer.headers(body)}
        try:
            async with self.session.post(f"{url}/v1/sample", data=body, headers=headers) as resp:
                if resp.status != 200 or (resp.content_length or 0) > MAX_SAMPLE_BYTES:
                    self._note_failure(dest, f"sample_http_{resp.status}")
                    return None
                answer = await read_capped(resp.content, MAX_SAMPLE_BYTES)
                header = resp.headers.get(AUTH_HEADER)
        except Oversized:
            self.sample_refused["too_large"] += 1
            return None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self._note_failure(dest, type(e).__name__)
            return None
        try:
            reply = self.open_sample(answer, header)
        except (ExchangeRefused, AuthError) as e:
            self.sample_refused[getattr(e, "reason", "auth")] += 1
            log.info("view exchange answer from %s refused: %.200s", dest, e)
            return None
        if not reply.reply or reply.sender.peer_id != dest:
            self.sample_refused["wrong_sender"] += 1
            return None
        return reply

    async def check_and_decode(
        self, body: bytes, auth_header: str | None, *, copy: bool = True
    ) -> ModelMessage:
        """Validate metadata, authenticate, then decode (the server's path too; ``copy``:
        see :func:`gossip.codec.decode`)."""
        meta = read_meta(body, self.schema)
        self.verifier.verify(
            sender=meta.sender,
            nonce=meta.nonce,
            timestamp=meta.timestamp,
            body=body,
            header=auth_header,
            now=time.time(),
        )
        if len(body) > _THREAD_THRESHOLD:
            decoded = await asyncio.to_thread(partial(decode, body, self.schema, copy=copy))
        else:
            decoded = decode(body, self.schema, copy=copy)
        return ModelMessage(decoded.meta.sender, decoded.meta.age, decoded.flat, len(body))
