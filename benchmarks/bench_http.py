"""Push throughput of the real node's HTTP path on loopback, against raw TCP.

For each model size (an ``nn.Linear`` stack of about ``--sizes`` MB of fp32 parameters) and
codec, a client pushes the model with ``HttpTransport.push`` (the real client path: encode,
then ``POST /v1/gossip``) to a real ``NodeServer`` on 127.0.0.1, served by aiohttp's
``AppRunner``/``TCPSite``, and times each push until the 202 answer. The server validates and
decodes the body before answering (``check_and_decode``) and queues it for its Peer's worker,
which merges later: only request completion is timed. In the same run, the same number of
bytes goes over two yardsticks, each answered by one byte: a raw asyncio TCP stream to a
server that reads and discards them (``raw``), and a plain blocking socket, ``sendall`` to
a thread that ``recv_into``s a preallocated buffer (``sock``: what ``iperf3`` measures, the
honest ceiling). ``/sock`` and ``/raw`` are HTTP MB/s over each (1 MB = 10**6 bytes of wire
body). ``8x MB/s``: eight clients push at once to the one server, all bytes over the time
until the last answer.

By default the servers run in a subprocess (``--server subprocess``), so that client and
server have their own event loop and GIL; ``--server inprocess`` shares one loop.
The server's Peer uses the ``--server-merge`` rule with no local training (default ``none``:
its worker only republishes a snapshot, so that pushes measure the HTTP path alone).

``--loop`` chooses the event loop of both processes (default: uvloop when installed, as
``gossip-node --event-loop auto`` does).

Separately, in the client process: ``encode`` (``gossip.codec.encode``), ``enc pool``
(``encode_into`` a reused buffer, what a push does), ``decode``
(``gossip.codec.decode`` of the message bytes) and ``merge`` (``AgeWeightedMerge.merge_``
into a local flat vector), medians of ``--decode-repeat`` runs. ``post-only`` is a POST of
the already encoded body through the transport's session (push minus encode).

    python benchmarks/bench_http.py                      # 1 MB and 45 MB, fp32/fp16/int8
    python benchmarks/bench_http.py --sizes 45 --codecs fp32 --repeat 9
    python benchmarks/bench_http.py --server inprocess
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gossip.memory import enable_huge_pages, kernel_mode

# As gossip-node does, before torch is imported (it reads the setting once); both processes
# run this. THP_MEM_ALLOC_ENABLE=0 in the environment measures without huge pages.
HUGE_PAGES = enable_huge_pages()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from aiohttp import web  # noqa: E402
from torch import nn  # noqa: E402

from gossip.codec import CODECS, MessageMeta, decode, encode, encode_into  # noqa: E402
from gossip.learner import Learner, LearnerConfig, LocalData  # noqa: E402
from gossip.merge import AgeWeightedMerge  # noqa: E402
from gossip.state import ModelState  # noqa: E402
from peers.auth import AuthConfig, MessageSigner, MessageVerifier  # noqa: E402
from peers.http_transport import (  # noqa: E402
    CONTENT_TYPE,
    HttpConfig,
    HttpTransport,
    ModelPayload,
)
from peers.peer import Peer, PeerConfig, ThreadCompute  # noqa: E402
from peers.server import NodeServer  # noqa: E402
from peers.transport import ModelMessage, ModelSnapshot  # noqa: E402
from sampling.uniform import UniformSampler  # noqa: E402

MB = 1e6
SERVER_ID = "server"
CLIENT_ID = "client"


# --------------------------------------------------------------------------- the model


def linear_stack(size_mb: float, seed: int = 0) -> nn.Module:
    """An ``nn.Linear(w, w)`` stack with about ``size_mb`` MB of fp32 parameters."""
    depth = 1 if size_mb < 8 else 4
    width = max(2, int(math.sqrt(size_mb * MB / 4 / depth)))
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])


def model_learner(size_mb: float) -> Learner:
    """A Learner over the linear stack with a tiny local dataset (it never trains here)."""
    model = linear_stack(size_mb)
    width = next(model.parameters()).shape[1]
    data = LocalData(torch.zeros(4, width), torch.zeros(4, dtype=torch.long))
    return Learner(model, data, LearnerConfig(device="cpu"))


def no_auth() -> tuple[MessageSigner, MessageVerifier]:
    config = AuthConfig()
    return MessageSigner(config), MessageVerifier(config)


# --------------------------------------------------------------------------- the servers


@dataclass
class Servers:
    """A NodeServer and a raw discard server on loopback, and how to stop them."""

    http_port: int
    raw_port: int
    stop: Callable[[], Awaitable[None]]


async def _discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Raw TCP: per request an 8-byte length, that many bytes (discarded), one byte back."""
    try:
        while True:
            head = await reader.readexactly(8)
            left = int.from_bytes(head, "little")
            while left > 0:
                chunk = await reader.read(min(left, 1 << 20))
                if not chunk:
                    return
                left -= len(chunk)
            writer.write(b"k")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class TimedNodeServer(NodeServer):
    """The real NodeServer, timing its push handler and the check+decode inside it."""

    def __init__(self, peer: Peer, transport: HttpTransport) -> None:
        super().__init__(peer, transport, self.bench_status)
        self.handler_s: list[float] = []
        self.decode_s: list[float] = []
        inner = transport.check_and_decode

        async def timed_check_and_decode(
            body: bytes, auth_header: str | None, *, copy: bool = True
        ) -> ModelMessage:
            start = time.perf_counter()
            try:
                return await inner(body, auth_header, copy=copy)
            finally:
                self.decode_s.append(time.perf_counter() - start)

        transport.check_and_decode = timed_check_and_decode  # type: ignore[method-assign]

    async def gossip(self, request: web.Request) -> web.Response:
        start = time.perf_counter()
        try:
            return await super().gossip(request)
        finally:
            self.handler_s.append(time.perf_counter() - start)

    def bench_status(self) -> dict[str, Any]:
        """GET /v1/status: what the Prometheus collector needs, plus the timings."""
        return {
            "age": 0,
            "peers_known": 0,
            "accuracy": None,
            "handler_s": self.handler_s,
            "decode_s": self.decode_s,
        }


async def start_servers(size_mb: float, merge: str) -> Servers:
    learner = model_learner(size_mb)
    signer, verifier = no_auth()
    transport = HttpTransport(
        SERVER_ID, {}, learner.state.schema, HttpConfig(read_timeout=120.0), signer, verifier
    )
    rng = np.random.default_rng(0)
    peer = Peer(
        SERVER_ID,
        learner,
        UniformSampler(SERVER_ID, [], rng),
        transport,
        PeerConfig(period=3600.0, merge=merge, local_steps=0, inbox_size=64),
        rng,
        ThreadCompute(),
    )
    server = TimedNodeServer(peer, transport)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = int(runner.addresses[0][1])
    peer.start()
    raw = await asyncio.start_server(_discard, "127.0.0.1", 0)
    raw_port = int(raw.sockets[0].getsockname()[1])

    async def stop() -> None:
        raw.close()
        await raw.wait_closed()
        await runner.cleanup()
        await peer.stop()

    return Servers(http_port, raw_port, stop)


def socket_sink() -> int:
    """A plain blocking socket server in a thread: per request an 8-byte length, that many
    bytes ``recv_into`` one preallocated buffer, one byte back. Returns its port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while True:
            conn, _ = listener.accept()
            with conn:
                while True:
                    head = conn.recv(8, socket.MSG_WAITALL)
                    if len(head) < 8:
                        break
                    left = int.from_bytes(head, "little")
                    while left > 0:
                        got = conn.recv_into(view, min(left, len(buf)))
                        if got == 0:
                            break
                        left -= got
                    conn.sendall(b"k")

    threading.Thread(target=serve, daemon=True).start()
    return int(listener.getsockname()[1])


async def serve_forever(size_mb: float, merge: str) -> None:
    """Subprocess mode: start, tell the parent the ports, run until stdin closes."""
    servers = await start_servers(size_mb, merge)
    sock_port = socket_sink()
    print(f"READY {servers.http_port} {servers.raw_port} {sock_port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await servers.stop()


class SubprocessServers:
    """start_servers in a child process (its own event loop and GIL)."""

    def __init__(self, size_mb: float, merge: str, torch_threads: int, loop: str) -> None:
        args = [sys.executable, __file__, "--serve", str(size_mb), "--server-merge", merge]
        args += ["--torch-threads", str(torch_threads), "--loop", loop]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            self.proc.kill()
            raise RuntimeError("the server subprocess did not start")
        self.http_port, self.raw_port, self.sock_port = int(line[1]), int(line[2]), int(line[3])

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# --------------------------------------------------------------------------- measurements


@dataclass
class Row:
    size_mb: float
    codec: str
    wire_mb: float
    push_ms: float
    http_mbps: float
    post_mbps: float
    raw_mbps: float
    sock_mbps: float
    multi_mbps: float
    encode_ms: float
    encode_pool_ms: float
    decode_ms: float
    view_ms: float
    merge_ms: float
    srv_read_ms: float
    srv_decode_ms: float
    outcomes: str


def _median_time(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def codec_times(
    state: ModelState, codec: str, n: int
) -> tuple[bytes, float, float, float, float, float]:
    """(message, encode s, encode into a reused buffer s, decode s, decode s without a copy
    (what a node's server does: ``copy=False`` from its upload buffer), merge s), medians of
    ``n`` back-to-back runs each."""
    schema = state.schema
    meta = MessageMeta(CLIENT_ID, 1000, "nonce", time.time(), schema.hash, codec)
    message = encode(state.flat, schema, meta)
    encode_s = _median_time(lambda: encode(state.flat, schema, meta), n)
    buf = bytearray(len(message))
    pool_s = _median_time(lambda: encode_into(state.flat, schema, meta, buf), n)
    decode_s = _median_time(lambda: decode(message, schema), n)
    upload = bytearray(message)
    view_s = _median_time(lambda: decode(upload, schema, copy=False), n)
    remote = decode(message, schema).flat
    local = state.flat.clone()
    rule = AgeWeightedMerge()
    merge_s = _median_time(lambda: rule.merge_(local, 1000, remote, 1000), n)
    return message, encode_s, pool_s, decode_s, view_s, merge_s


class SocketClient:
    """The plain-socket yardstick's client: blocking ``sendall`` of length and bytes, then
    one byte back (run between the event loop's measurements, nothing else running)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, payload: bytes) -> float:
        start = time.perf_counter()
        self.sock.sendall(len(payload).to_bytes(8, "little"))
        self.sock.sendall(payload)
        if self.sock.recv(1) != b"k":
            raise RuntimeError("the socket sink did not answer")
        return time.perf_counter() - start

    def close(self) -> None:
        self.sock.close()


class RawClient:
    """Raw TCP on one kept-alive connection: 8-byte length, the bytes, wait for one byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, payload: bytes) -> float:
        start = time.perf_counter()
        self.writer.write(len(payload).to_bytes(8, "little"))
        self.writer.write(payload)
        await self.writer.drain()
        await self.reader.readexactly(1)
        return time.perf_counter() - start

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def _post(transport: HttpTransport, url: str, body: bytes) -> tuple[float, int]:
    """POST an already encoded body through the transport's session (push minus encode)."""
    start = time.perf_counter()
    headers = {"Content-Type": CONTENT_TYPE}
    async with transport.session.post(url, data=ModelPayload(body), headers=headers) as resp:
        await resp.read()
    return time.perf_counter() - start, resp.status


async def _server_timings(transport: HttpTransport, url: str) -> tuple[list[float], list[float]]:
    async with transport.session.get(f"{url}/v1/status") as resp:
        status = await resp.json()
    return status["handler_s"], status["decode_s"]


def _transport(url: str, state: ModelState, codec: str, name: str = CLIENT_ID) -> HttpTransport:
    signer, verifier = no_auth()
    return HttpTransport(
        name, {SERVER_ID: url}, state.schema, HttpConfig(read_timeout=120.0, codec=codec),
        signer, verifier,
    )  # fmt: skip


async def concurrent_pushes(
    url: str, state: ModelState, codec: str, senders: int, repeat: int, pause: float
) -> float:
    """Median over ``repeat`` rounds of the time ``senders`` clients take to push at once."""
    clients = [_transport(url, state, codec, f"{CLIENT_ID}{k}") for k in range(senders)]
    for c in clients:
        await c.start()
    snapshot = ModelSnapshot(CLIENT_ID, state.flat, 1000)
    times = []
    try:
        for i in range(repeat + 1):
            start = time.perf_counter()
            await asyncio.gather(*(c.push(SERVER_ID, snapshot) for c in clients))
            if i > 0:
                times.append(time.perf_counter() - start)
            await asyncio.sleep(pause * senders)
    finally:
        for c in clients:
            await c.close()
    return statistics.median(times)


async def measure_codec(
    ports: tuple[int, int, int], state: ModelState, codec: str, args: argparse.Namespace
) -> Row:
    """Interleaved runs of push, POST-only, raw TCP and the plain socket (one warm-up round
    first), so that load from other processes hits all of them alike."""
    http_port, raw_port, sock_port = ports
    n = args.decode_repeat if state.schema.numel * 4 < 8 * MB else max(3, args.decode_repeat // 4)
    message, enc_s, pool_s, dec_s, view_s, merge_s = codec_times(state, codec, n)
    payload = os.urandom(1024) * (len(message) // 1024) + os.urandom(len(message) % 1024)
    url = f"http://127.0.0.1:{http_port}"
    transport = _transport(url, state, codec)
    await transport.start()
    raw = await RawClient.connect(raw_port)
    sock = SocketClient(sock_port)
    snapshot = ModelSnapshot(CLIENT_ID, state.flat, 1000)
    pushes, posts, raws, socks, outcomes = [], [], [], [], set()
    try:
        seen = len((await _server_timings(transport, url))[0])
        for i in range(args.repeat + 1):
            start = time.perf_counter()
            outcome = await transport.push(SERVER_ID, snapshot)
            push_s = time.perf_counter() - start
            await asyncio.sleep(args.pause)  # let the server's worker drain its inbox
            post_s, status = await _post(transport, f"{url}/v1/gossip", message)
            await asyncio.sleep(args.pause)
            raw_s = await raw.send(payload)
            await asyncio.sleep(args.pause)
            sock_s = sock.send(payload)
            await asyncio.sleep(args.pause)
            if i > 0:  # round 0 warms up connections and caches
                pushes.append(push_s)
                posts.append(post_s)
                raws.append(raw_s)
                socks.append(sock_s)
                outcomes |= {outcome.value, f"HTTP {status}"}
        handler_s, decode_s = await _server_timings(transport, url)
    finally:
        sock.close()
        await raw.close()
        await transport.close()
    handler_s, decode_s = handler_s[seen + 2 :], decode_s[seen + 2 :]  # drop the warm-up
    multi_s = (
        await concurrent_pushes(
            url, state, codec, args.senders, max(3, args.repeat // 2), args.pause
        )
        if args.senders > 1
        else math.nan
    )
    wire = len(message) / MB
    push_med = statistics.median(pushes)
    return Row(
        size_mb=state.schema.numel * 4 / MB,
        codec=codec,
        wire_mb=wire,
        push_ms=push_med * 1e3,
        http_mbps=wire / push_med,
        post_mbps=wire / statistics.median(posts),
        raw_mbps=wire / statistics.median(raws),
        sock_mbps=wire / statistics.median(socks),
        multi_mbps=args.senders * wire / multi_s,
        encode_ms=enc_s * 1e3,
        encode_pool_ms=pool_s * 1e3,
        decode_ms=dec_s * 1e3,
        view_ms=view_s * 1e3,
        merge_ms=merge_s * 1e3,
        srv_read_ms=statistics.median(h - d for h, d in zip(handler_s, decode_s, strict=True))
        * 1e3,
        srv_decode_ms=statistics.median(decode_s) * 1e3,
        outcomes=",".join(sorted(outcomes)),
    )


async def measure(args: argparse.Namespace) -> list[Row]:
    rows = []
    for size_mb in args.sizes:
        state = model_learner(size_mb).state
        sub: SubprocessServers | None = None
        servers: Servers | None = None
        if args.server == "subprocess":
            sub = SubprocessServers(size_mb, args.server_merge, args.torch_threads, args.loop)
            ports = (sub.http_port, sub.raw_port, sub.sock_port)
        else:
            servers = await start_servers(size_mb, args.server_merge)
            ports = (servers.http_port, servers.raw_port, socket_sink())
        try:
            for codec in args.codecs:
                rows.append(await measure_codec(ports, state, codec, args))
                print_row(rows[-1])
        finally:
            if servers is not None:
                await servers.stop()
            if sub is not None:
                sub.close()
    return rows


HEADER = (
    f"{'model MB':>8} {'codec':>5} {'wire MB':>7} {'push ms':>8} {'HTTP MB/s':>9}"
    f" {'POST MB/s':>9} {'raw MB/s':>9} {'sock MB/s':>9} {'/sock':>6} {'/raw':>6}"
    f" {'8x MB/s':>8} {'enc ms':>7} {'enc pool':>8} {'dec ms':>7} {'dec view':>8}"
    f" {'merge ms':>8}"
    f" {'srv read':>8} {'srv dec':>8}  outcomes"
)


def print_row(r: Row) -> None:
    print(
        f"{r.size_mb:>8.2f} {r.codec:>5} {r.wire_mb:>7.2f} {r.push_ms:>8.1f} {r.http_mbps:>9.0f}"
        f" {r.post_mbps:>9.0f} {r.raw_mbps:>9.0f} {r.sock_mbps:>9.0f}"
        f" {r.http_mbps / r.sock_mbps:>6.3f} {r.http_mbps / r.raw_mbps:>6.3f}"
        f" {r.multi_mbps:>8.0f} {r.encode_ms:>7.2f} {r.encode_pool_ms:>8.2f} {r.decode_ms:>7.2f}"
        f" {r.view_ms:>8.2f} {r.merge_ms:>8.2f} {r.srv_read_ms:>8.1f} {r.srv_decode_ms:>8.1f}  {r.outcomes}",
        flush=True,
    )


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def _default_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _loop_policy(loop: str) -> None:
    if loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> None:
    doc = __doc__.splitlines()
    parser = argparse.ArgumentParser(
        description=doc[0],
        epilog="\n".join(doc[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--sizes", type=_floats, default=[1.0, 45.0], help="model MB (fp32), default 1,45")
    add("--codecs", type=lambda s: s.split(","), default=list(CODECS), help="default: all")
    add("--repeat", type=int, default=9, help="timed rounds per row (median), default 9")
    add("--decode-repeat", type=int, default=20, help="codec runs (/4 over 8 MB), default 20")
    add("--pause", type=float, default=0.05, help="seconds between requests, default 0.05")
    add("--server", choices=("subprocess", "inprocess"), default="subprocess")
    add("--server-merge", default="none", help="merge rule of the server's Peer, default none")
    add("--torch-threads", type=int, default=0, help="client and server; 0: torch's default")
    add("--loop", choices=("asyncio", "uvloop"), default=_default_loop(),
        help="event loop of client and server (default: uvloop when installed)")  # fmt: skip
    add("--senders", type=int, default=8, help="clients pushing at once for 8x MB/s (1: skip)")
    add("--serve", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    if args.serve is not None:
        _loop_policy(args.loop)
        asyncio.run(serve_forever(args.serve, args.server_merge))
        return
    print(
        f"loop: {args.loop}, server: {args.server}, server merge: {args.server_merge}, torch threads:"
        f" {torch.get_num_threads()}, cpus: {os.cpu_count()}, medians of {args.repeat} rounds,"
        f" 1 MB = 10**6 bytes, ms columns are medians, huge pages:"
        f" {'on' if HUGE_PAGES else 'off'} (kernel: {kernel_mode()})"
    )
    print(HEADER)
    _loop_policy(args.loop)
    asyncio.run(measure(args))


if __name__ == "__main__":
    main()
