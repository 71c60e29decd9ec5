"""peers.http_guard.BufferPool: bounded, reused, and never hands out a buffer something views.

A decoded fp32 model is a view of its upload buffer (``decode(copy=False)``): the pool must
not let the next upload overwrite it while it waits to be merged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gossip.codec import MessageMeta, decode, encode
from gossip.state import ModelSchema, TensorSpec
from peers.http_guard import BufferPool, _exported

SCHEMA = ModelSchema((TensorSpec("w", (4, 3)), TensorSpec("b", (3,))))


def _message(value: float, codec: str = "fp32") -> bytes:
    meta = MessageMeta("a", 1, "n", 0.0, SCHEMA.hash, codec)
    return encode(torch.full((SCHEMA.numel,), value), SCHEMA, meta)


def test_exported_sees_every_kind_of_view_and_their_end() -> None:
    buf = bytearray(64)
    assert not _exported(buf) and len(buf) == 64  # the probe leaves the size as it was
    view = memoryview(buf)[8:]
    assert _exported(buf)
    view.release()
    assert not _exported(buf)
    t = torch.from_numpy(np.frombuffer(buf, dtype=np.float32, count=4, offset=8))
    derived = t[1:3]
    del t
    assert _exported(buf)  # a view of the tensor keeps the export too
    del derived
    assert not _exported(buf)


def test_a_lent_buffer_is_not_handed_out_until_its_views_are_gone() -> None:
    pool = BufferPool(1, 64, lendable=1)
    a = pool.acquire()
    assert a is not None and pool.acquire() is None  # one being filled at a time
    view = np.frombuffer(a, dtype=np.uint8)
    pool.release(a)
    assert pool.lent == 1
    b = pool.acquire()
    assert b is not None and b is not a and pool.allocated == 2
    pool.release(b)
    c = pool.acquire()
    assert c is b  # the free one, not the lent one
    pool.release(c)
    assert pool.acquire() is b  # (still: a is lent)
    pool.release(b)
    del view
    assert pool.lent == 0
    got = {id(pool.acquire())}
    assert got <= {id(a), id(b)} and pool.allocated == 2


def test_nothing_beyond_count_plus_lendable() -> None:
    pool = BufferPool(1, 16, lendable=2)
    views = []
    for _ in range(3):
        buf = pool.acquire()
        assert buf is not None
        views.append(memoryview(buf))
        pool.release(buf)
    assert pool.allocated == 3 and pool.lent == 3
    assert pool.acquire() is None  # all lent: refused, not a fourth buffer
    views.pop().release()
    assert pool.acquire() is not None and pool.allocated == 3


def test_equal_contents_are_told_apart_by_identity() -> None:
    """Two free buffers with the same bytes: the pool takes the free one, not the first equal
    one (list.remove would compare contents)."""
    pool = BufferPool(2, 8, lendable=0)
    a, b = pool.acquire(), pool.acquire()
    assert a is not None and b is not None and a == b
    pool.release(a)
    pool.release(b)
    held = memoryview(b)
    assert pool.acquire() is a
    assert pool.acquire() is None  # b is lent, and count + lendable = 2 are allocated
    held.release()


def test_decode_without_copy_borrows_a_writable_fp32_buffer() -> None:
    buf = bytearray(_message(2.0))
    decoded = decode(buf, SCHEMA, copy=False)
    assert torch.equal(decoded.flat, torch.full((SCHEMA.numel,), 2.0))
    assert _exported(buf)
    struct_end = len(buf) - 4 * SCHEMA.numel
    buf[struct_end : struct_end + 4] = np.float32(7.0).tobytes()
    assert decoded.flat[0] == 7.0  # a view: no copy
    del decoded
    assert not _exported(buf)


@pytest.mark.parametrize(
    ("data", "codec"),
    [(bytes, "fp32"), (bytearray, "fp16"), (bytearray, "int8")],
    ids=["read-only-bytes", "fp16", "int8"],
)
def test_decode_without_copy_copies_what_it_cannot_borrow(data: type, codec: str) -> None:
    buf = data(_message(2.0, codec))
    decoded = decode(buf, SCHEMA, copy=False)
    assert torch.allclose(decoded.flat, torch.full((SCHEMA.numel,), 2.0), atol=0.01)
    if isinstance(buf, bytearray):
        assert not _exported(buf)
    assert decoded.flat.is_contiguous() and decoded.flat.dtype == torch.float32


def test_decode_copies_by_default() -> None:
    buf = bytearray(_message(2.0))
    decoded = decode(buf, SCHEMA)
    assert not _exported(buf)
    buf[-4:] = np.float32(7.0).tobytes()
    assert decoded.flat[-1] == 2.0
