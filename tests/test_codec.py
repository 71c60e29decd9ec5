"""The wire codec: round trips, interop with the safetensors library, hostile input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from gossip.codec import (
    CODECS,
    MAX_AGE,
    CodecError,
    MessageMeta,
    RejectReason,
    decode,
    encode,
    encode_into,
    encoded_size,
    max_message_bytes,
)
from gossip.state import ModelSchema, ModelState, TensorSpec


def _state(seed: int = 0, age: int = 7) -> ModelState:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    return ModelState.bind(model, age=age)


STATE = _state()


def _meta(state: ModelState, codec: str = "fp32", **kw: object) -> MessageMeta:
    fields: dict[str, object] = dict(
        sender="10.0.0.1:8000",
        age=state.age,
        nonce="n0nce",
        timestamp=12.5,
        schema_hash=state.schema.hash,
        codec=codec,
    )
    fields.update(kw)
    return MessageMeta(**fields)  # type: ignore[arg-type]


def _schema_from_shapes(shapes: list[tuple[int, ...]]) -> ModelSchema:
    return ModelSchema(tuple(TensorSpec(f"layer{i}.w", s) for i, s in enumerate(shapes)))


shapes = st.lists(
    st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple), min_size=1, max_size=5
)
finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@given(shapes, st.sampled_from(CODECS), st.sampled_from(DTYPES), st.integers(0, MAX_AGE), st.data())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_every_codec_and_dtype(
    shape_list: list[tuple[int, ...]], codec: str, dtype: torch.dtype, age: int, data: st.DataObject
) -> None:
    schema = _schema_from_shapes(shape_list)
    values = data.draw(st.lists(finite, min_size=schema.numel, max_size=schema.numel))
    source = torch.tensor(values, dtype=dtype)  # a model kept in this precision
    flat = source.float()  # what the wire can carry at best (float64 rounds to float32)
    meta = MessageMeta("peer-a", age, "abc", 1.0, schema.hash, codec)
    out = decode(encode(flat, schema, meta), schema)
    assert out.meta == meta
    assert out.flat.dtype == torch.float32 and out.flat.shape == flat.shape
    if codec == "fp32":
        assert torch.equal(out.flat, flat)
    elif codec == "fp16":
        # fp16 keeps 11 significant bits: relative error <= 2**-11, plus subnormal spacing.
        assert torch.all((out.flat - flat).abs() <= flat.abs() * 2**-11 + 2**-24)
    else:
        # int8: per tensor, the error is at most half a quantization step.
        o = schema.offsets
        for i in range(len(schema)):
            seg = flat[o[i] : o[i + 1]]
            step = (seg.max() - seg.min()).item() / 255
            err = (out.flat[o[i] : o[i + 1]] - seg).abs().max().item()
            # float32 arithmetic in (de)quantization adds a few ulps of the tensor's range
            assert err <= step / 2 + 1e-6 * max(1.0, seg.abs().max().item())


@pytest.mark.parametrize("codec", CODECS)
def test_message_size_is_within_the_advertised_bound(codec: str) -> None:
    blob = encode(STATE.flat, STATE.schema, _meta(STATE, codec, sender="x" * 128, nonce="n" * 64))
    assert len(blob) <= max_message_bytes(STATE.schema, codec) <= max_message_bytes(STATE.schema)


@pytest.mark.parametrize("codec", CODECS)
def test_safetensors_library_reads_what_we_write(codec: str) -> None:
    blob = encode(STATE.flat, STATE.schema, _meta(STATE, codec))
    tensors = safetensors.torch.load(blob)
    names = {n for n, _ in STATE.views()}
    assert names <= tensors.keys()
    if codec == "fp32":
        for name, view in STATE.views():
            assert torch.equal(tensors[name], view)


def test_we_read_what_the_safetensors_library_writes() -> None:
    # The library orders tensors its own way; the decoder takes the general (gather) path.
    meta = _meta(STATE)
    metadata = {
        "v": "1",
        "sender": meta.sender,
        "age": str(meta.age),
        "nonce": meta.nonce,
        "timestamp": "12.5",
        "schema": meta.schema_hash,
        "codec": "fp32",
    }
    blob = safetensors.torch.save({n: v.clone() for n, v in STATE.views()}, metadata=metadata)
    out = decode(blob, STATE.schema)
    assert torch.equal(out.flat, STATE.flat) and out.meta.age == STATE.age


def test_fp16_clamps_values_beyond_its_range() -> None:
    flat = STATE.flat.clone()
    flat[0] = 1e9
    out = decode(encode(flat, STATE.schema, _meta(STATE, "fp16")), STATE.schema)
    assert out.flat[0] == 65504.0


def test_int8_constant_tensor_is_exact() -> None:
    schema = _schema_from_shapes([(5,), (3,)])
    flat = torch.tensor([2.5] * 5 + [-1.0, 0.0, 1.0])
    out = decode(encode(flat, schema, MessageMeta("p", 0, "n", 0.0, schema.hash, "int8")), schema)
    assert torch.equal(out.flat[:5], flat[:5])


# ----------------------------------------------------------------- hostile input


def _reason(blob: bytes | bytearray, schema: ModelSchema = STATE.schema, **kw: int) -> RejectReason:
    with pytest.raises(CodecError) as e:
        decode(blob, schema, **kw)  # type: ignore[arg-type]
    return e.value.reason


def _rewrite_header(blob: bytes, edit: object) -> bytes:
    (n,) = struct.unpack_from("<Q", blob)
    header = json.loads(blob[8 : 8 + n])
    edit(header)  # type: ignore[operator]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + blob[8 + n :]


GOOD = encode(STATE.flat, STATE.schema, _meta(STATE))


@given(st.binary(max_size=4096))
@settings(max_examples=300)
def test_random_bytes_only_raise_codec_error(blob: bytes) -> None:
    with pytest.raises(CodecError):
        decode(blob, STATE.schema)


@given(st.integers(0, len(GOOD) - 1))
@settings(max_examples=200)
def test_every_truncation_is_rejected(cut: int) -> None:
    with pytest.raises(CodecError):
        decode(GOOD[:cut], STATE.schema)


@given(st.integers(0, len(GOOD) - 1), st.integers(0, 255))
@settings(max_examples=300)
def test_a_flipped_byte_never_raises_anything_else(pos: int, value: int) -> None:
    blob = bytearray(GOOD)
    blob[pos] = value
    try:
        out = decode(bytes(blob), STATE.schema)
    except CodecError:
        return
    assert bool(torch.isfinite(out.flat).all())  # accepted only if still a valid message


def test_oversize_body() -> None:
    assert _reason(GOOD, max_bytes=len(GOOD) - 1) is RejectReason.TOO_LARGE
    assert _reason(GOOD + b"\0" * max_message_bytes(STATE.schema)) is RejectReason.TOO_LARGE


def test_header_length_beyond_limit_is_refused_before_reading() -> None:
    assert _reason(struct.pack("<Q", 2**62) + b"{}") is RejectReason.BAD_HEADER


def test_trailing_garbage_is_refused() -> None:
    assert _reason(GOOD + b"xyz") is RejectReason.BAD_LAYOUT


def test_wrong_schema() -> None:
    other = ModelState.bind(nn.Linear(3, 2))
    blob = encode(other.flat, other.schema, _meta(other))
    assert _reason(blob) is RejectReason.SCHEMA_MISMATCH


def test_schema_hash_forged_but_shapes_differ() -> None:
    def shrink(h: dict[str, dict[str, object]]) -> None:
        h["2.weight"]["shape"] = [10, 143]

    assert _reason(_rewrite_header(GOOD, shrink)) is RejectReason.SCHEMA_MISMATCH


def test_overlapping_offsets() -> None:
    def overlap(h: dict[str, dict[str, list[int]]]) -> None:
        first, second = h["0.weight"]["data_offsets"], h["0.bias"]["data_offsets"]
        size = second[1] - second[0]
        h["0.bias"]["data_offsets"] = [first[0], first[0] + size]

    assert _reason(_rewrite_header(GOOD, overlap)) is RejectReason.BAD_LAYOUT


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("codec", ["fp32", "fp16"])
def test_non_finite_values(value: float, codec: str) -> None:
    flat = STATE.flat.clone()
    flat[3] = value
    blob = encode(flat, STATE.schema, _meta(STATE, codec)) if codec == "fp32" else None
    if blob is None:  # the fp16 encoder clamps infinities; forge the bytes directly
        good16 = bytearray(encode(STATE.flat, STATE.schema, _meta(STATE, codec)))
        good16[-2:] = np.array([value], dtype="<f2").tobytes()
        blob = bytes(good16)
    assert _reason(blob) is RejectReason.NON_FINITE


def test_int8_with_non_finite_scale() -> None:
    blob = bytearray(encode(STATE.flat, STATE.schema, _meta(STATE, "int8")))
    (n,) = struct.unpack_from("<Q", blob)
    blob[8 + n : 8 + n + 4] = np.array([np.nan], dtype="<f4").tobytes()
    assert _reason(bytes(blob)) is RejectReason.NON_FINITE


@pytest.mark.parametrize("age", ["-1", "1e9", "abc", "", "٣"])
def test_malformed_age(age: str) -> None:
    def set_age(h: dict[str, dict[str, str]]) -> None:
        h["__metadata__"]["age"] = age

    assert _reason(_rewrite_header(GOOD, set_age)) is RejectReason.BAD_AGE


def test_absurd_age_is_refused_against_the_bound() -> None:
    blob = encode(STATE.flat, STATE.schema, _meta(STATE, age=10**12))
    assert _reason(blob, max_age=10**9) is RejectReason.BAD_AGE
    assert decode(blob, STATE.schema).meta.age == 10**12


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("codec", "zstd", RejectReason.UNKNOWN_CODEC),
        ("v", "2", RejectReason.BAD_METADATA),
        ("sender", "a b", RejectReason.BAD_METADATA),
        ("sender", "", RejectReason.BAD_METADATA),
        ("nonce", "x" * 65, RejectReason.BAD_METADATA),
        ("timestamp", "nan", RejectReason.BAD_METADATA),
        ("timestamp", "soon", RejectReason.BAD_METADATA),
        ("schema", "0" * 32, RejectReason.SCHEMA_MISMATCH),
    ],
)
def test_bad_metadata_fields(key: str, value: str, reason: RejectReason) -> None:
    def set_field(h: dict[str, dict[str, str]]) -> None:
        h["__metadata__"][key] = value

    assert _reason(_rewrite_header(GOOD, set_field)) is reason


def test_missing_metadata() -> None:
    def drop(h: dict[str, object]) -> None:
        del h["__metadata__"]

    assert _reason(_rewrite_header(GOOD, drop)) is RejectReason.BAD_METADATA


def test_header_not_json_and_not_object() -> None:
    assert _reason(struct.pack("<Q", 4) + b"\xff\xfe{]") is RejectReason.BAD_HEADER
    assert _reason(struct.pack("<Q", 8) + b"[1,2,3] ") is RejectReason.BAD_HEADER
    assert _reason(struct.pack("<Q", 16) + b"[" * 16) is RejectReason.BAD_HEADER


def test_codec_error_message_is_one_line() -> None:
    with pytest.raises(CodecError) as e:
        decode(b"\x01" * 3, STATE.schema)
    assert "\n" not in str(e.value) and e.value.reason is RejectReason.TRUNCATED


def test_read_meta_checks_the_header_without_the_tensors() -> None:
    from gossip.codec import read_meta

    assert read_meta(GOOD, STATE.schema) == decode(GOOD, STATE.schema).meta
    # Tensor data is not looked at: a NaN payload passes read_meta, not decode.
    flat = STATE.flat.clone()
    flat[0] = float("nan")
    blob = encode(flat, STATE.schema, _meta(STATE))
    assert read_meta(blob, STATE.schema).age == STATE.age
    assert _reason(blob) is RejectReason.NON_FINITE
    with pytest.raises(CodecError):
        read_meta(GOOD[:20], STATE.schema)


def test_huge_finite_values_whose_sum_overflows_are_accepted() -> None:
    flat = STATE.flat.clone()
    flat[:4] = 3e38  # finite in float32; their sum is not
    out = decode(encode(flat, STATE.schema, _meta(STATE)), STATE.schema)
    assert torch.equal(out.flat, flat)


# ------------------------------------------------------------------- encode_into


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8"])
def test_encode_into_a_reused_buffer_gives_the_bytes_of_encode(codec: str) -> None:
    first, second = _state(seed=1), _state(seed=2)
    size = encoded_size(first.schema, _meta(first, codec))
    buf = bytearray(size + 100)  # larger than needed: the message is an exact prefix view
    one = encode_into(first.flat, first.schema, _meta(first, codec), buf)
    assert len(one) == size and bytes(one) == encode(first.flat, first.schema, _meta(first, codec))
    del one
    two = encode_into(second.flat, second.schema, _meta(second, codec, nonce="n2"), buf)
    assert bytes(two) == encode(second.flat, second.schema, _meta(second, codec, nonce="n2"))
    decoded = decode(two, second.schema)
    tolerance = {"fp32": 0.0, "fp16": 1e-3, "int8": 0.05}[codec]
    assert torch.allclose(decoded.flat, second.flat, atol=tolerance, rtol=tolerance)


def test_encode_into_grows_a_buffer_that_is_too_small_and_makes_one_without() -> None:
    buf = bytearray(16)
    view = encode_into(STATE.flat, STATE.schema, _meta(STATE), buf)
    assert len(buf) == len(view) == encoded_size(STATE.schema, _meta(STATE))
    del view
    fresh = encode_into(STATE.flat, STATE.schema, _meta(STATE))
    assert bytes(fresh) == bytes(buf)


def test_encoded_size_is_exact_for_every_codec() -> None:
    for codec in ("fp32", "fp16", "int8"):
        assert encoded_size(STATE.schema, _meta(STATE, codec)) == len(
            encode(STATE.flat, STATE.schema, _meta(STATE, codec))
        )
