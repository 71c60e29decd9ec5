"""Fuzzing ``POST /v1/gossip`` of a real node on 127.0.0.1 with a seeded generator.

Valid messages are mutated (truncated, bytes flipped in the header, the metadata or the
tensor data, the length prefix changed, tensors duplicated or removed, wrong dtypes, shapes
and offsets, absurd but finite values, NaN and inf, huge, negative and non-integer ages,
long senders and nonces, wrong schema hash or codec), or replaced by junk, and pushed with
and without authentication headers. For every case, whatever it is:

* the answer is a 202 or a 4xx with ``{"accepted": false, "reason": ...}``: never a 5xx,
  never a dropped connection;
* a refused push leaves the model and its age bit for bit as they were (the node gossips
  once an hour to a peer that is down: its model changes only when it merges a push, and
  the test waits for each accepted push to be merged before the next case);
* the model stays finite, and its age within what the age guard allows: the start age plus
  ``burst + rate * elapsed`` plus the samples it trained on;

and at the end the counters add up: received == accepted + sum(rejected), with exactly the
reasons the answers gave. ``GOSSIP_FUZZ_SEED`` picks another seed (default: fixed).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from netutil import free_ports

from gossip.codec import CODECS, MAX_AGE, MessageMeta, encode
from peers.auth import AUTH_HEADER, AuthConfig, MessageSigner, format_shared_key, write_key_file
from peers.node import Node
from peers.node_config import NodeConfig

SEED = int(os.environ.get("GOSSIP_FUZZ_SEED", "20261201"))
CASES = 2000  # per variant: two variants, a few thousand pushes in all
KEY = bytes(range(32))
# What a mutation raises when an earlier one left no header to mutate further.
NOT_A_MESSAGE = (ValueError, LookupError, TypeError, AttributeError, RecursionError, struct.error)


@dataclass(frozen=True)
class Variant:
    """A node configuration to fuzz."""

    name: str
    node: dict[str, Any] = field(default_factory=dict)
    signed: bool = False


VARIANTS = {
    "open-cap": Variant("open-cap", {"age_guard": "cap"}),
    "hmac-refuse": Variant("hmac-refuse", {"age_guard": "refuse"}, signed=True),
}


@pytest.fixture(params=list(VARIANTS))
async def fuzzed(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Node, Variant]]:
    """A node gossiping once an hour with a peer that is down (nothing but a push changes
    its model), in the variant's configuration."""
    variant = VARIANTS[request.param]
    port, dead = free_ports(2)
    peers = tmp_path / "peers.txt"
    peers.write_text(f"127.0.0.1:{port} n{port}\n127.0.0.1:{dead} dead\n")
    fields: dict[str, Any] = dict(
        peers=str(peers), host="127.0.0.1", port=port, id=f"n{port}", dataset="digits",
        node_index=0, num_nodes=2, model="logreg", period=3600.0, lr=0.5, device="cpu",
        eval_every=0, read_timeout=2.0,
    )  # fmt: skip
    if variant.signed:
        key_file = tmp_path / "cluster.key"
        write_key_file(key_file, format_shared_key(KEY) + "\n")
        fields["auth_key_file"] = str(key_file)
    fields.update(variant.node)
    node = Node(NodeConfig(**fields))
    await node.start()
    yield node, variant
    await node.stop()


# ------------------------------------------------------------------ message surgery


def _split(blob: bytes) -> tuple[Any, bytes]:
    (n,) = struct.unpack_from("<Q", blob)
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _join(header: Any, data: bytes, *, pad: bool = True) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


AGE_TEXTS = [
    "-1", "-3", "1.5", "1e30", "", " 7", "7 ", "0x10", "+5", "１２", "٣", "inf", "nan",
    str(MAX_AGE), str(MAX_AGE + 1), "9" * 20, "9" * 21, "0" * 20, "00012", "18446744073709551616",
]  # fmt: skip
SENDERS = ["", "a" * 128, "a" * 129, "s" * 10_000, "mallory\n", "mal lory", "mällory", "\0", "../x"]
NONCES = ["", "n" * 64, "n" * 65, "n" * 5000, "nonce!", "n\u00e9", "a b"]
TIMESTAMPS = ["nan", "inf", "-inf", "1e309", "-1e30", "1e30", "abc", "", "0", "0x1p3"]
CODEC_TEXTS = ["fp64", "", "FP32", "int4", "top-k", *CODECS]
DTYPES: list[Any] = ["F64", "F16", "BF16", "I8", "U8", "F32", "f32", 3, None, ["F32"]]
FINITE_ABSURD = [1e30, -1e30, 3.4e38, -3.4e38, 1e20, 1e-45, 65504.0, 65520.0]


class Fuzzer:
    """Seeded generator of hostile pushes to ``node`` (each a body and headers)."""

    def __init__(self, node: Node, variant: Variant, seed: int) -> None:
        self.node = node
        self.variant = variant
        self.rng = random.Random(seed)
        self.torch_rng = torch.Generator().manual_seed(seed)
        self.count = 0
        self.accepted: list[tuple[bytes, dict[str, str]]] = []  # to replay
        self.signer = MessageSigner(AuthConfig(shared_key=KEY))
        self.mutations: list[tuple[str, Callable[[bytes], bytes]]] = [
            ("truncate", self._truncate),
            ("flip header bytes", self._flip_header),
            ("flip data bytes", self._flip_data),
            ("flip any bytes", self._flip_any),
            ("length prefix", self._length_prefix),
            ("insert or delete bytes", self._splice),
            ("trailing bytes", lambda b: b + self._junk(self.rng.randint(1, 64))),
            ("data twice", lambda b: _join(_split(b)[0], _split(b)[1] * 2)),
            ("age text", lambda b: self._meta(b, "age", self.rng.choice(AGE_TEXTS))),
            ("sender", lambda b: self._meta(b, "sender", self.rng.choice(SENDERS))),
            ("nonce", lambda b: self._meta(b, "nonce", self.rng.choice(NONCES))),
            ("timestamp", lambda b: self._meta(b, "timestamp", self.rng.choice(TIMESTAMPS))),
            ("schema hash", lambda b: self._meta(b, "schema", self._hex(64))),
            ("codec", lambda b: self._meta(b, "codec", self.rng.choice(CODEC_TEXTS))),
            ("version", lambda b: self._meta(b, "v", self.rng.choice(["2", "", "1.0", "01"]))),
            ("metadata shape", self._metadata_shape),
            ("tensor dtype", lambda b: self._tensor(b, "dtype", self.rng.choice(DTYPES))),
            ("tensor shape", self._shape),
            ("tensor offsets", self._offsets),
            ("duplicate tensor", self._duplicate),
            ("remove tensor", self._remove),
            ("rename tensor", self._rename),
            ("header shape", self._header_shape),
            ("duplicate key", self._duplicate_key),
            ("quantization", self._quantization),
        ]

    # ---------------------------------------------------------------- building blocks

    def _hex(self, n: int) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(n))

    def _junk(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def nonce(self) -> str:
        self.count += 1
        return f"f{self.count}x{self.rng.getrandbits(32):08x}"

    def values(self) -> tuple[str, torch.Tensor]:
        """A model to send: mostly a neighbour's (close to the node's), else absurd."""
        own = self.node.peer.published().flat
        noise = torch.randn(own.shape, generator=self.torch_rng)
        r = self.rng.random()
        if r < 0.55:
            return "neighbour", own + 0.01 * noise
        kind = self.rng.choice(
            ["constant", "one coordinate", "nan", "inf", "sign-flip", "zeros", "noise",
             "scaled", "far neighbour", "subnormal"]
        )  # fmt: skip
        flat = own.clone()
        if kind == "constant":
            flat.fill_(self.rng.choice(FINITE_ABSURD))
        elif kind == "one coordinate":
            flat[self.rng.randrange(flat.numel())] = self.rng.choice(FINITE_ABSURD)
        elif kind == "nan":
            flat[self.rng.randrange(flat.numel())] = float("nan")
        elif kind == "inf":
            flat[self.rng.randrange(flat.numel())] = self.rng.choice([float("inf"), -float("inf")])
        elif kind == "sign-flip":
            flat = -own
        elif kind == "zeros":
            flat.zero_()
        elif kind == "noise":
            flat = noise * self.rng.choice([1.0, 1e3, 1e15])
        elif kind == "scaled":
            flat = own * self.rng.choice([3.0, 9.0, 11.0, 1e6])
        elif kind == "far neighbour":
            flat = own + self.rng.choice([0.1, 0.5, 2.0]) * noise
        else:
            flat.fill_(1e-45)
        return kind, flat

    def age(self) -> int:
        local = self.node.learner.state.age
        if self.rng.random() < 0.6:
            return max(0, local + self.rng.randrange(-100, 100))
        return self.rng.choice([0, 1, 2**31, 10**15, MAX_AGE, self.rng.randrange(MAX_AGE)])

    def sender(self) -> str:
        return self.rng.choice(["alice", "bob", "carol", "dave", "erin", "mallory"])

    def valid(self) -> tuple[str, bytes]:
        kind, flat = self.values()
        meta = MessageMeta(
            sender=self.sender(), age=self.age(), nonce=self.nonce(), timestamp=time.time(),
            schema_hash=self.node.schema.hash, codec=self.rng.choice(CODECS),
        )  # fmt: skip
        return f"{kind} {meta.codec} age {meta.age}", encode(flat, self.node.schema, meta)

    # ---------------------------------------------------------------- byte mutations

    def _header_len(self, blob: bytes) -> int:
        return 8 + int(struct.unpack_from("<Q", blob)[0])

    def _flip(self, blob: bytes, lo: int, hi: int) -> bytes:
        out = bytearray(blob)
        for _ in range(self.rng.randint(1, 8)):
            if hi > lo:
                out[self.rng.randrange(lo, hi)] ^= self.rng.randint(1, 255)
        return bytes(out)

    def _truncate(self, blob: bytes) -> bytes:
        return blob[: self.rng.randrange(len(blob))]

    def _flip_header(self, blob: bytes) -> bytes:
        return self._flip(blob, 8, self._header_len(blob))

    def _flip_data(self, blob: bytes) -> bytes:
        return self._flip(blob, self._header_len(blob), len(blob))

    def _flip_any(self, blob: bytes) -> bytes:
        return self._flip(blob, 0, len(blob))

    def _length_prefix(self, blob: bytes) -> bytes:
        n = self._header_len(blob) - 8
        value = self.rng.choice(
            [0, 1, n - 1, n + 1, n - 8, n + 8, len(blob), 2**63, 2**64 - 1, self.rng.getrandbits(64)]
        )  # fmt: skip
        return struct.pack("<Q", max(0, value)) + blob[8:]

    def _splice(self, blob: bytes) -> bytes:
        at = self.rng.randrange(len(blob))
        if self.rng.random() < 0.5:
            return blob[:at] + self._junk(self.rng.randint(1, 16)) + blob[at:]
        return blob[:at] + blob[at + self.rng.randint(1, 16) :]

    # ---------------------------------------------------------------- header mutations

    def _edit(self, blob: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
        header, data = _split(blob)
        edit(header)
        return _join(header, data, pad=self.rng.random() < 0.9)

    def _meta(self, blob: bytes, key: str, value: str) -> bytes:
        return self._edit(blob, lambda h: h["__metadata__"].__setitem__(key, value))

    def _names(self, header: dict[str, Any]) -> list[str]:
        return [k for k in header if k != "__metadata__"]

    def _metadata_shape(self, blob: bytes) -> bytes:
        def edit(h: dict[str, Any]) -> None:
            m = h["__metadata__"]
            choice = self.rng.randrange(6)
            if choice == 0:
                del m[self.rng.choice(sorted(m))]
            elif choice == 1:
                m["extra"] = "x" * self.rng.choice([1, 500])
            elif choice == 2:
                m[self.rng.choice(sorted(m))] = self.rng.choice([5, None, [], {}, 1.5, True])
            elif choice == 3:
                h["__metadata__"] = self.rng.choice([None, [], "meta", 7, list(m.items())])
            elif choice == 4:
                del h["__metadata__"]
            else:
                m["age"] = int(m["age"])  # a number, not a string

        return self._edit(blob, edit)

    def _tensor(self, blob: bytes, key: str, value: Any) -> bytes:
        def edit(h: dict[str, Any]) -> None:
            h[self.rng.choice(self._names(h))][key] = value

        return self._edit(blob, edit)

    def _shape(self, blob: bytes) -> bytes:
        header, _ = _split(blob)
        shape = header[self.rng.choice(self._names(header))]["shape"]
        value = self.rng.choice(
            [[], [0], [-1], [1e30], [2**64], list(reversed(shape)), [*shape, 1], [1, *shape],
             "10", None, [str(d) for d in shape], [d + 1 for d in shape]]
        )  # fmt: skip
        return self._tensor(blob, "shape", value)

    def _offsets(self, blob: bytes) -> bytes:
        def edit(h: dict[str, Any]) -> None:
            entry = h[self.rng.choice(self._names(h))]
            a, b = entry["data_offsets"]
            entry["data_offsets"] = self.rng.choice(
                [[-1, b], [a, b + 1], [a - 4, b - 4], [a + 4, b + 4], [b, a], [float(a), float(b)],
                 [str(a), str(b)], [a, b, b], [a], [], [True, b], [a, 2**64], [0, 0], None, "0"]
            )  # fmt: skip

        return self._edit(blob, edit)

    def _duplicate(self, blob: bytes) -> bytes:
        def edit(h: dict[str, Any]) -> None:
            name = self.rng.choice(self._names(h))
            h[name + self.rng.choice(["_copy", ".1", ""]) + "x"] = dict(h[name])

        return self._edit(blob, edit)

    def _remove(self, blob: bytes) -> bytes:
        return self._edit(blob, lambda h: h.pop(self.rng.choice(self._names(h))))

    def _rename(self, blob: bytes) -> bytes:
        def edit(h: dict[str, Any]) -> None:
            name = self.rng.choice(self._names(h))
            h[self.rng.choice(["w", name.upper(), name + " ", "__quant__", "é"])] = h.pop(name)

        return self._edit(blob, edit)

    def _header_shape(self, blob: bytes) -> bytes:
        header, data = _split(blob)
        depth = self.rng.choice([10, 400, 1200])
        raw = self.rng.choice(
            [b"[]", b"null", b"7", b'"text"', json.dumps(list(header.items())).encode(),
             b"[" * depth + b"]" * depth, b"{" + b'"a":{' * depth + b"}" * (depth + 1),
             json.dumps(header).encode()[:-1], b"\xff\xfe" + json.dumps(header).encode()]
        )  # fmt: skip
        return _join(raw, data)

    def _duplicate_key(self, blob: bytes) -> bytes:
        """A second ``__metadata__`` (or tensor) key: JSON keeps the last one."""
        header, data = _split(blob)
        raw = json.dumps(header)
        meta = dict(header["__metadata__"], age=str(self.rng.choice([MAX_AGE, 10**15, 3])))
        name = self.rng.choice([*self._names(header), "__metadata__"])
        value = meta if name == "__metadata__" else dict(header[name], dtype="F64")
        return _join(
            (raw[:-1] + ", " + json.dumps(name) + ": " + json.dumps(value) + "}").encode(), data
        )

    def _quantization(self, blob: bytes) -> bytes:
        """For int8 messages: absurd per-tensor (scale, min) pairs; else absurd data values."""
        header, data = _split(blob)
        out = bytearray(data)
        quant = header.get("__quant__")
        values = [0.0, -1.0, 1e30, -1e30, 3.4e38, float("nan"), float("inf"), 1e-45]
        if quant is not None:
            start, end = quant["data_offsets"]
            at = start + 4 * self.rng.randrange((end - start) // 4)
        else:
            at = 4 * self.rng.randrange(len(data) // 4) if len(data) >= 4 else 0
        if at + 4 <= len(out):
            struct.pack_into("<f", out, at, self.rng.choice(values))
        return _join(header, bytes(out), pad=False)

    # ---------------------------------------------------------------- cases

    def junk(self) -> tuple[str, bytes]:
        max_body = self.node.server.max_body
        kind = self.rng.randrange(6)
        if kind == 0:
            return "junk", self._junk(self.rng.choice([0, 1, 7, 8, 9, 64, 1000, max_body]))
        if kind == 1:
            return "junk after a length", struct.pack("<Q", self.rng.randrange(64)) + self._junk(64)
        if kind == 2:
            doc = {"__metadata__": {"age": "1"}, "x": [1, 2]}
            return "a JSON header only", _join(doc, b"")
        if kind == 3:
            return "too large", self._junk(max_body + self.rng.randint(1, 64))
        if kind == 4:
            return "text", b"GET / HTTP/1.1\r\n\r\n" * self.rng.randint(1, 50)
        return "zeros", bytes(self.rng.randint(8, max_body))

    def case(self) -> tuple[str, bytes, dict[str, str]]:
        """One push: (what it is, body, headers)."""
        r = self.rng.random()
        if r < 0.08:
            what, body = self.junk()
            original = body
        else:
            what, original = self.valid()
            body = original
            if r >= 0.4:  # the rest are mutated, some twice
                for n in range(1 if self.rng.random() < 0.8 else 2):
                    name, mutate = self.rng.choice(self.mutations)
                    try:
                        body = mutate(body)
                    except NOT_A_MESSAGE:
                        assert n == 1, f"{name} failed on a valid message"
                        continue  # the first mutation left no header to mutate further
                    what += f" | {name}"
        return what, body, self.headers(what, body, original)

    def headers(self, what: str, body: bytes, original: bytes) -> dict[str, str]:
        if not self.variant.signed:  # authentication is off: any header is ignored
            return {} if self.rng.random() < 0.9 else {AUTH_HEADER: self._garbage_auth()}
        r = self.rng.random()
        if r < 0.75:
            return self.signer.headers(body)
        if r < 0.8:
            return {}
        if r < 0.85:
            return self.signer.headers(original)  # signed, then changed in transit
        if r < 0.9:
            return MessageSigner(AuthConfig(shared_key=b"k" * 32)).headers(body)
        return {AUTH_HEADER: self._garbage_auth()}

    def _garbage_auth(self) -> str:
        return self.rng.choice(
            ["hmac-sha256=" + self._hex(64), "garbage", "a=b, a=c", "=", ",", "x" * 1100,
             "ed25519=" + base64.b64encode(self._junk(64)).decode(), "hmac-sha256=zz",
             "HMAC-SHA256=" + self._hex(64) + ", ed25519=AAAA"]
        )  # fmt: skip

    def replay(self) -> tuple[str, bytes, dict[str, str]] | None:
        """Now and then, a push accepted before, sent again."""
        if not self.accepted or self.rng.random() > 0.03:
            return None
        body, headers = self.rng.choice(self.accepted)
        return "replay", body, headers


# ------------------------------------------------------------------ the test


async def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll the node's own counters (a few ms each time), bounded."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


async def _push(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    async with session.post(url, data=body, headers=headers) as resp:
        answer = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, answer


def _finite(node: Node) -> bool:
    return bool(torch.isfinite(node.learner.state.flat).all()) and bool(
        torch.isfinite(node.peer.published().flat).all()
    )


async def test_fuzzed_pushes_are_answered_and_never_hurt_the_model(
    fuzzed: tuple[Node, Variant],
) -> None:
    node, variant = fuzzed
    peer, state = node.peer, node.learner.state
    fuzzer = Fuzzer(node, variant, SEED + sum(map(ord, variant.name)))
    url = f"http://127.0.0.1:{node.config.port}/v1/gossip"
    loop = asyncio.get_running_loop()
    allowance = peer.allowance
    started, age0, trained0 = loop.time(), state.age, peer.counters.samples_trained
    reasons: Counter[str] = Counter()
    merged = 0  # pushes answered 202, each waited for until merged
    assert (peer.merge_latencies.maxlen or 0) > CASES  # it counts every update
    # A stuck server fails the test in seconds, not at aiohttp's default of five minutes.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for i in range(CASES):
            what, body, headers = fuzzer.replay() or fuzzer.case()
            where = f"case {i} (seed {SEED}, {variant.name}): {what}"
            before = state.param_hash(), state.age
            try:
                status, answer = await _push(session, url, body, headers)
            except (aiohttp.ClientError, TimeoutError) as e:
                pytest.fail(f"{where}: no answer: {type(e).__name__}: {e}")
            assert status == 202 or 400 <= status < 500, f"{where}: HTTP {status} {answer!r}"
            assert isinstance(answer, dict), f"{where}: not a JSON answer: {answer!r}"
            if status == 202:
                assert answer == {"accepted": True}, where
                merged += 1
                fuzzer.accepted.append((body, headers))
                await _wait_for(lambda n=merged: len(peer.merge_latencies) >= n, f"{where} merged")
            else:
                assert answer["accepted"] is False and isinstance(answer["reason"], str), where
                reasons[answer["reason"]] += 1
                assert (state.param_hash(), state.age) == before, f"{where}: refused, but changed"
            c = peer.counters
            updates = len(peer.merge_latencies)
            assert (c.received, c.accepted, updates) == (i + 1, merged, merged), where
            assert _finite(node), f"{where}: the model is no longer finite"
            trained = c.samples_trained - trained0
            bound = age0 + allowance.burst + allowance.rate * (loop.time() - started) + trained
            assert state.age <= bound, f"{where}: age {state.age} beyond the guard's {bound:.0f}"
        # A last honest push, merged after anything still queued (one worker, FIFO): nothing
        # refused was merged after all.
        body = encode(
            peer.published().flat, node.schema,
            MessageMeta("alice", state.age, fuzzer.nonce(), time.time(), node.schema.hash),
        )  # fmt: skip
        headers = fuzzer.signer.headers(body) if variant.signed else {}
        assert (await _push(session, url, body, headers))[0] == 202
        await _wait_for(lambda: len(peer.merge_latencies) == merged + 1, "the last push merged")
        status_url = f"http://127.0.0.1:{node.config.port}/v1/status"
        async with session.get(status_url) as resp:  # and the node answers as before
            status = await resp.json()
    c = peer.counters
    assert c.merges == merged + 1 and c.received == CASES + 1
    assert c.received == c.accepted + sum(c.rejected.values())
    assert dict(c.rejected) == dict(reasons)  # every refusal counted, under the reason given
    assert status["messages_received"] == CASES + 1 and status["rejected_by_reason"] == reasons
    assert _finite(node)
    # Not a degenerate run: many pushes merged, and refusals of many kinds.
    assert merged >= CASES // 20 and len(reasons) >= 8, (merged, reasons)
