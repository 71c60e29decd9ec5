"""Pushes of large models are encoded into pooled send buffers: every body that reaches a
real aiohttp server is the model that was pushed (a reused buffer never leaks one push into
the next), and a buffer is given back whatever happens to the push."""

from __future__ import annotations

import torch
from aiohttp import web
from netutil import free_ports

from gossip.codec import decode
from gossip.state import ModelSchema, TensorSpec
from peers.auth import AuthConfig, MessageSigner, MessageVerifier
from peers.http_transport import HttpConfig, HttpTransport
from peers.transport import ModelSnapshot, SendOutcome

SCHEMA = ModelSchema((TensorSpec("w", (600, 600)), TensorSpec("b", (600,))))  # 1.4 MB fp32


def _transport(peers: dict[str, str]) -> HttpTransport:
    auth = AuthConfig()
    return HttpTransport("me", peers, SCHEMA, HttpConfig(read_timeout=5.0), MessageSigner(auth),
                         MessageVerifier(auth))  # fmt: skip


async def test_every_pushed_body_is_its_own_model_through_reused_buffers() -> None:
    bodies: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.json_response({"accepted": True}, status=202)

    app = web.Application(client_max_size=1 << 24)
    app.router.add_post("/v1/gossip", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    (port,) = free_ports(1)
    await web.TCPSite(runner, "127.0.0.1", port).start()
    transport = _transport({"peer": f"http://127.0.0.1:{port}"})
    await transport.start()
    try:
        assert transport._pooled
        models = [torch.full((SCHEMA.numel,), float(k)) for k in range(4)]
        for age, flat in enumerate(models):
            outcome = await transport.push("peer", ModelSnapshot("me", flat, age))
            assert outcome is SendOutcome.DELIVERED
        assert transport.send_buffers.allocated == 1 and transport.send_buffers.in_use == 0
    finally:
        await transport.close()
        await runner.cleanup()
    for age, (body, flat) in enumerate(zip(bodies, models, strict=True)):
        decoded = decode(body, SCHEMA)
        assert decoded.meta.age == age and torch.equal(decoded.flat, flat)


async def test_a_failed_push_gives_its_buffer_back() -> None:
    (port,) = free_ports(1)  # nobody listens there
    transport = _transport({"peer": f"http://127.0.0.1:{port}"})
    await transport.start()
    try:
        for _ in range(3):
            snapshot = ModelSnapshot("me", torch.zeros(SCHEMA.numel), 1)
            assert await transport.push("peer", snapshot) is SendOutcome.FAILED
        assert transport.send_buffers.in_use == 0 and transport.send_buffers.allocated == 1
    finally:
        await transport.close()


class _Recorder:
    """A stream writer that records each write (what aiohttp's would pass to the transport)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, chunk: bytes | memoryview) -> None:
        self.writes.append(bytes(chunk))


async def test_a_model_payload_writes_a_small_first_piece_then_the_rest() -> None:
    """aiohttp joins the request's headers with the first write (a copy, on Python before
    3.12.9): that write must be small, and the pieces must make up the body exactly."""
    from peers.http_transport import _FIRST_PIECE, ModelPayload

    body = bytes(range(256)) * 1000  # 256,000 bytes
    payload = ModelPayload(memoryview(body))
    assert payload.size == len(body)
    recorder = _Recorder()
    await payload.write(recorder)  # type: ignore[arg-type]
    assert [len(w) for w in recorder.writes] == [_FIRST_PIECE, len(body) - _FIRST_PIECE]
    assert b"".join(recorder.writes) == body
    short = _Recorder()
    await ModelPayload(body).write_with_length(short, 1000)  # type: ignore[arg-type]
    assert short.writes == [body[:1000]]  # at most content_length, in one piece
    tiny = _Recorder()
    await ModelPayload(b"").write(tiny)  # type: ignore[arg-type]
    assert b"".join(tiny.writes) == b""
