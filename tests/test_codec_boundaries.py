"""Every check of the wire decoder, pinned at its boundary (issue 13).

Each refused message here is a valid encoded message with exactly one thing changed (the
header re-serialised with ``json`` and its length prefix fixed), so that the one check under
test is the only one it fails: removing that check, or moving its bound by one, makes the
test fail. Each refusal asserts the :class:`RejectReason` and a piece of the detail, so that a
different check refusing the message does not pass for this one. Limits are probed at the
limit (accepted) and one past it (refused).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
import torch

from gossip.codec import (
    CODECS,
    MAX_AGE,
    QUANT_TENSOR,
    CodecError,
    DecodedModel,
    MessageMeta,
    RejectReason,
    decode,
    encode,
    max_header_bytes,
    max_message_bytes,
    read_meta,
)
from gossip.state import ModelSchema, TensorSpec

# Three small tensors: enough for overlaps and gaps between neighbours. fp32 offsets are
# layer.a [0, 24], layer.b [24, 40], layer.c [40, 52].
SCHEMA = ModelSchema(
    (
        TensorSpec("layer.a", (2, 3)),
        TensorSpec("layer.b", (4,)),
        TensorSpec("layer.c", (3,)),
    )
)
FLAT = torch.linspace(-1.0, 1.0, SCHEMA.numel)
HEADER_LIMIT = max_header_bytes(SCHEMA)

Decoder = Callable[..., object]
DECODERS = pytest.mark.parametrize("fn", [decode, read_meta], ids=["decode", "read_meta"])


def _meta(codec: str = "fp32", **kw: Any) -> MessageMeta:
    fields: dict[str, Any] = dict(
        sender="10.0.0.1:8000",
        age=7,
        nonce="n0nce",
        timestamp=12.5,
        schema_hash=SCHEMA.hash,
        codec=codec,
    )
    fields.update(kw)
    return MessageMeta(**fields)


def _blob(codec: str = "fp32", flat: torch.Tensor = FLAT, **kw: Any) -> bytes:
    return encode(flat, SCHEMA, _meta(codec, **kw))


GOOD = {codec: _blob(codec) for codec in CODECS}


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(header as a dict, tensor data) of a message."""
    (n,) = struct.unpack_from("<Q", blob)
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _join(header: dict[str, Any], body: bytes, header_len: int | None = None) -> bytes:
    """A message from a header dict and tensor data; the header is padded with spaces to
    ``header_len`` bytes (default: to a multiple of 8, as the encoder does)."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    target = len(raw) + (-len(raw) % 8) if header_len is None else header_len
    assert target >= len(raw), "header does not fit the requested length"
    raw += b" " * (target - len(raw))
    return struct.pack("<Q", len(raw)) + raw + body


def _edit(blob: bytes, edit: Callable[[dict[str, Any]], None], body: bytes | None = None) -> bytes:
    header, data = _split(blob)
    edit(header)
    return _join(header, data if body is None else body)


def _with_meta(key: str, value: object, codec: str = "fp32") -> bytes:
    def set_field(h: dict[str, Any]) -> None:
        h["__metadata__"][key] = value

    return _edit(GOOD[codec], set_field)


def _with_offsets(spans: Mapping[str, object], body: bytes, codec: str = "fp32") -> bytes:
    def set_offsets(h: dict[str, Any]) -> None:
        for name, offsets in spans.items():
            h[name]["data_offsets"] = offsets

    return _edit(GOOD[codec], set_offsets, body)


def _accept(fn: Decoder, blob: bytes, **kw: Any) -> MessageMeta:
    out = fn(blob, SCHEMA, **kw)
    if isinstance(out, DecodedModel):
        assert out.flat.shape == (SCHEMA.numel,) and bool(torch.isfinite(out.flat).all())
        return out.meta
    assert isinstance(out, MessageMeta)
    return out


def _reject(
    blob: bytes, reason: RejectReason, detail: str, fn: Decoder = decode, **kw: Any
) -> CodecError:
    with pytest.raises(CodecError) as info:
        fn(blob, SCHEMA, **kw)
    assert info.value.reason is reason, info.value
    assert detail in info.value.detail, info.value
    return info.value


def test_the_base_messages_are_valid() -> None:
    for codec, blob in GOOD.items():
        out = decode(blob, SCHEMA)
        assert out.meta == _meta(codec) and read_meta(blob, SCHEMA) == out.meta
    assert torch.equal(decode(GOOD["fp32"], SCHEMA).flat, FLAT)
    header, body = _split(GOOD["fp32"])
    # our helpers re-serialise losslessly: the rebuilt message is byte-identical
    assert _join(header, body) == GOOD["fp32"]
    assert [header[s.name]["data_offsets"] for s in SCHEMA.specs] == [[0, 24], [24, 40], [40, 52]]


# --------------------------------------------------------------------------- total size


@DECODERS
def test_total_size_at_max_bytes_is_accepted_one_more_is_too_large(fn: Decoder) -> None:
    blob = GOOD["fp32"]
    _accept(fn, blob, max_bytes=len(blob))
    _reject(blob, RejectReason.TOO_LARGE, "exceeds the limit", fn, max_bytes=len(blob) - 1)


def _message_of_default_limit() -> bytes:
    """A message exactly ``max_message_bytes(SCHEMA)`` long: the header padded to its own
    limit and 8 trailing bytes after the data (refused later, for the trailing bytes only)."""
    header, body = _split(GOOD["fp32"])
    assert max_message_bytes(SCHEMA) == 8 + HEADER_LIMIT + 8 + len(body)  # fp32 is the largest
    blob = _join(header, body + bytes(8), header_len=HEADER_LIMIT)
    assert len(blob) == max_message_bytes(SCHEMA)
    return blob


def test_default_size_limit_is_max_message_bytes() -> None:
    blob = _message_of_default_limit()
    assert read_meta(blob, SCHEMA) == _meta()  # the size and header checks pass at the limit
    _reject(blob, RejectReason.BAD_LAYOUT, "8 trailing bytes")
    for fn in (decode, read_meta):
        _reject(blob + b" ", RejectReason.TOO_LARGE, "exceeds the limit", fn)


@pytest.mark.parametrize("codec", CODECS)
def test_per_codec_size_limit_fits_the_largest_valid_message(codec: str) -> None:
    # the largest header the decoder accepts and the longest sender and nonce
    header, body = _split(_blob(codec, sender="s" * 128, nonce="n" * 64, age=MAX_AGE))
    blob = _join(header, body, header_len=HEADER_LIMIT)
    limit = max_message_bytes(SCHEMA, codec)
    assert len(blob) <= limit
    assert decode(blob, SCHEMA, max_bytes=limit).meta.sender == "s" * 128


# --------------------------------------------------------------------------- header


@DECODERS
def test_seven_bytes_are_truncated_eight_reach_the_header(fn: Decoder) -> None:
    _reject(GOOD["fp32"][:7], RejectReason.TRUNCATED, "no header length", fn)
    # eight bytes hold a (zero) header length: the next check is the JSON one
    _reject(struct.pack("<Q", 0), RejectReason.BAD_HEADER, "not JSON", fn)


@DECODERS
def test_header_length_at_its_limit_is_accepted_one_more_is_refused(fn: Decoder) -> None:
    header, body = _split(GOOD["fp32"])
    _accept(fn, _join(header, body, header_len=HEADER_LIMIT))
    too_long = _join(header, body, header_len=HEADER_LIMIT + 1)
    assert len(too_long) <= max_message_bytes(SCHEMA)  # not the total size check
    _reject(too_long, RejectReason.BAD_HEADER, "exceeds the limit", fn)


@DECODERS
def test_header_longer_than_what_follows_is_truncated(fn: Decoder) -> None:
    (n,) = struct.unpack_from("<Q", GOOD["fp32"])
    header_only = GOOD["fp32"][: 8 + n]
    assert read_meta(header_only, SCHEMA) == _meta()  # exactly the header: it can be read
    _reject(header_only[:-1], RejectReason.TRUNCATED, f"header of {n} bytes", fn)


@DECODERS
def test_header_that_is_not_utf8_is_bad_header(fn: Decoder) -> None:
    blob = bytearray(_join(*_split(GOOD["fp32"]), header_len=HEADER_LIMIT))
    blob[8 + HEADER_LIMIT - 1] = 0xFF  # the last padding byte
    _reject(bytes(blob), RejectReason.BAD_HEADER, "not JSON (UnicodeDecodeError)", fn)


@DECODERS
def test_header_with_trailing_non_space_is_bad_header(fn: Decoder) -> None:
    blob = bytearray(_join(*_split(GOOD["fp32"]), header_len=HEADER_LIMIT))
    blob[8 + HEADER_LIMIT - 1] = ord("x")
    _reject(bytes(blob), RejectReason.BAD_HEADER, "not JSON (JSONDecodeError)", fn)


@DECODERS
def test_deeply_nested_header_is_bad_header(fn: Decoder) -> None:
    deep = b"[" * HEADER_LIMIT
    _reject(struct.pack("<Q", len(deep)) + deep, RejectReason.BAD_HEADER, "not JSON", fn)


@DECODERS
@pytest.mark.parametrize("value", [[], "x", 1, None])
def test_header_that_is_not_an_object_is_bad_header(fn: Decoder, value: object) -> None:
    raw = json.dumps(value).encode()
    _reject(struct.pack("<Q", len(raw)) + raw, RejectReason.BAD_HEADER, "not a JSON object", fn)


# --------------------------------------------------------------------------- metadata


@DECODERS
@pytest.mark.parametrize("value", [None, "v=1", ["v", "1"], 1])
def test_metadata_that_is_not_a_map_is_bad_metadata(fn: Decoder, value: object) -> None:
    def set_meta(h: dict[str, Any]) -> None:
        h["__metadata__"] = value

    _reject(_edit(GOOD["fp32"], set_meta), RejectReason.BAD_METADATA, "not a string map", fn)


@DECODERS
def test_missing_metadata_is_bad_metadata(fn: Decoder) -> None:
    def drop(h: dict[str, Any]) -> None:
        del h["__metadata__"]

    _reject(_edit(GOOD["fp32"], drop), RejectReason.BAD_METADATA, "not a string map", fn)


@DECODERS
@pytest.mark.parametrize("key", ["age", "timestamp", "v"])
def test_a_non_string_metadata_value_is_bad_metadata(fn: Decoder, key: str) -> None:
    value = {"age": 7, "timestamp": 12.5, "v": 1}[key]  # the right value, as a JSON number
    _reject(_with_meta(key, value), RejectReason.BAD_METADATA, "not a string map", fn)


@DECODERS
def test_extra_metadata_keys_are_allowed_but_must_be_strings(fn: Decoder) -> None:
    _accept(fn, _with_meta("note", "hello"))
    _reject(_with_meta("note", 1), RejectReason.BAD_METADATA, "not a string map", fn)


@DECODERS
@pytest.mark.parametrize("key", ["v", "sender", "age", "nonce", "timestamp", "schema", "codec"])
def test_each_missing_metadata_key_is_bad_metadata(fn: Decoder, key: str) -> None:
    def drop(h: dict[str, Any]) -> None:
        del h["__metadata__"][key]

    _reject(_edit(GOOD["fp32"], drop), RejectReason.BAD_METADATA, f"metadata lacks {key}", fn)


@DECODERS
@pytest.mark.parametrize("version", ["2", "0", "1.0", " 1", "", "v1"])
def test_other_format_version_is_bad_metadata(fn: Decoder, version: str) -> None:
    _reject(_with_meta("v", version), RejectReason.BAD_METADATA, "format version", fn)


@DECODERS
@pytest.mark.parametrize("codec", ["zstd", "FP32", "fp32 ", "", "int4"])
def test_unknown_codec(fn: Decoder, codec: str) -> None:
    _reject(_with_meta("codec", codec), RejectReason.UNKNOWN_CODEC, "is not one of", fn)


@DECODERS
def test_schema_hash_one_character_off_is_schema_mismatch(fn: Decoder) -> None:
    forged = SCHEMA.hash[:-1] + ("0" if SCHEMA.hash[-1] != "0" else "1")
    _reject(_with_meta("schema", forged), RejectReason.SCHEMA_MISMATCH, "schema hash", fn)
    _reject(_with_meta("schema", SCHEMA.hash.upper()), RejectReason.SCHEMA_MISMATCH, "hash", fn)


@DECODERS
def test_sender_of_128_characters_is_accepted_129_refused(fn: Decoder) -> None:
    assert _accept(fn, _with_meta("sender", "s" * 128)).sender == "s" * 128
    _reject(_with_meta("sender", "s" * 129), RejectReason.BAD_METADATA, "sender or nonce", fn)


@DECODERS
@pytest.mark.parametrize("sender", ["", "peer ", "peer!", "péer", "a\nb", "peer+1", "a,b"])
def test_malformed_sender_is_bad_metadata(fn: Decoder, sender: str) -> None:
    _reject(_with_meta("sender", sender), RejectReason.BAD_METADATA, "sender or nonce", fn)


@DECODERS
@pytest.mark.parametrize("sender", ["[::1]:8000", "node-1.example.org:80/a@b_C9", "x"])
def test_sender_alphabet_is_accepted(fn: Decoder, sender: str) -> None:
    assert _accept(fn, _with_meta("sender", sender)).sender == sender


@DECODERS
def test_nonce_of_64_characters_is_accepted_65_refused(fn: Decoder) -> None:
    assert _accept(fn, _with_meta("nonce", "n" * 64)).nonce == "n" * 64
    _reject(_with_meta("nonce", "n" * 65), RejectReason.BAD_METADATA, "sender or nonce", fn)


@DECODERS
@pytest.mark.parametrize("nonce", ["", "n.1", "n:1", "n 1", "n1 ", "n/1", "ñ"])
def test_malformed_nonce_is_bad_metadata(fn: Decoder, nonce: str) -> None:
    _reject(_with_meta("nonce", nonce), RejectReason.BAD_METADATA, "sender or nonce", fn)


@DECODERS
def test_nonce_alphabet_is_accepted(fn: Decoder) -> None:
    nonce = "AZaz09_-"
    assert _accept(fn, _with_meta("nonce", nonce)).nonce == nonce
    assert _accept(fn, _with_meta("nonce", "x")).nonce == "x"


@DECODERS
@pytest.mark.parametrize("text", ["soon", "", "1,5", "0x10"])
def test_timestamp_that_is_not_a_number_is_bad_metadata(fn: Decoder, text: str) -> None:
    _reject(_with_meta("timestamp", text), RejectReason.BAD_METADATA, "not a number", fn)


@DECODERS
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e309", "-1e309"])
def test_non_finite_timestamp_is_bad_metadata(fn: Decoder, text: str) -> None:
    _reject(_with_meta("timestamp", text), RejectReason.BAD_METADATA, "not finite", fn)


@DECODERS
def test_largest_finite_timestamp_is_accepted(fn: Decoder) -> None:
    assert _accept(fn, _with_meta("timestamp", "1.7976931348623157e308")).timestamp == (
        1.7976931348623157e308
    )
    assert _accept(fn, _with_meta("timestamp", "-5")).timestamp == -5.0


# --------------------------------------------------------------------------- age


@DECODERS
def test_max_age_is_accepted_one_more_is_refused(fn: Decoder) -> None:
    assert MAX_AGE == 2**53 - 1  # the largest age that float64 holds exactly, and its successor
    assert _accept(fn, _blob(age=2**53 - 1)).age == 2**53 - 1
    _reject(_blob(age=2**53), RejectReason.BAD_AGE, f"exceeds the bound {2**53 - 1}", fn)


@DECODERS
def test_a_custom_age_bound_is_inclusive(fn: Decoder) -> None:
    assert _accept(fn, _blob(age=100), max_age=100).age == 100
    _reject(_blob(age=101), RejectReason.BAD_AGE, "exceeds the bound 100", fn, max_age=100)
    assert _accept(fn, _blob(age=0), max_age=0).age == 0


@DECODERS
def test_age_text_of_20_digits_is_accepted_21_refused(fn: Decoder) -> None:
    # with leading zeros: the value is tiny, only the length differs
    assert _accept(fn, _with_meta("age", "0" * 19 + "1")).age == 1
    _reject(_with_meta("age", "0" * 20 + "1"), RejectReason.BAD_AGE, "non-negative integer", fn)
    # with a bound above 10**20: 20 nines fit it, and 10**20 (21 digits) is refused for its
    # length alone
    bound = 10**20
    assert _accept(fn, _with_meta("age", "9" * 20), max_age=bound).age == bound - 1
    _reject(
        _with_meta("age", str(bound)),
        RejectReason.BAD_AGE,
        "non-negative integer",
        fn,
        max_age=bound,
    )


@DECODERS
def test_twenty_digit_age_beyond_the_bound_is_refused_by_the_bound(fn: Decoder) -> None:
    _reject(_with_meta("age", "9" * 20), RejectReason.BAD_AGE, "exceeds the bound", fn)


@DECODERS
@pytest.mark.parametrize("age", ["", "-1", "+1", " 1", "1 ", "1.0", "1e3", "٣", "²", "１"])
def test_age_text_that_is_not_ascii_digits_is_bad_age(fn: Decoder, age: str) -> None:
    _reject(_with_meta("age", age), RejectReason.BAD_AGE, "non-negative integer", fn)


# --------------------------------------------------------------------------- tensor entries


def test_one_extra_header_entry_is_schema_mismatch() -> None:
    def add(h: dict[str, Any]) -> None:
        h["layer.d"] = {"dtype": "F32", "shape": [0], "data_offsets": [52, 52]}

    _reject(_edit(GOOD["fp32"], add), RejectReason.SCHEMA_MISMATCH, "4 tensors, expected 3")


def test_one_extra_entry_in_an_int8_message_is_schema_mismatch() -> None:
    def add(h: dict[str, Any]) -> None:
        h["extra"] = {"dtype": "I8", "shape": [0], "data_offsets": [0, 0]}

    _reject(_edit(GOOD["int8"], add), RejectReason.SCHEMA_MISMATCH, "5 tensors, expected 4")


def test_one_entry_fewer_is_schema_mismatch() -> None:
    def drop(h: dict[str, Any]) -> None:
        del h["layer.c"]

    body = _split(GOOD["fp32"])[1][:40]
    _reject(_edit(GOOD["fp32"], drop, body), RejectReason.SCHEMA_MISMATCH, "2 tensors, expected 3")


def test_renamed_entry_is_schema_mismatch() -> None:
    def rename(h: dict[str, Any]) -> None:
        h["layer.x"] = h.pop("layer.c")

    _reject(_edit(GOOD["fp32"], rename), RejectReason.SCHEMA_MISMATCH, "'layer.c' missing")


def test_int8_message_without_its_quant_entry_is_schema_mismatch() -> None:
    def rename(h: dict[str, Any]) -> None:
        h["__other__"] = h.pop(QUANT_TENSOR)

    _reject(_edit(GOOD["int8"], rename), RejectReason.SCHEMA_MISMATCH, "'__quant__' missing")


@pytest.mark.parametrize("value", [[1, 2], "F32", None, 3])
def test_entry_that_is_not_an_object_is_schema_mismatch(value: object) -> None:
    def replace(h: dict[str, Any]) -> None:
        h["layer.c"] = value

    _reject(_edit(GOOD["fp32"], replace), RejectReason.SCHEMA_MISMATCH, "'layer.c' missing")


@pytest.mark.parametrize(("codec", "dtype"), [("fp32", "F16"), ("fp32", "F64"), ("fp16", "F32")])
def test_wrong_dtype_is_schema_mismatch(codec: str, dtype: str) -> None:
    def set_dtype(h: dict[str, Any]) -> None:
        h["layer.b"]["dtype"] = dtype  # offsets unchanged: sized for the expected dtype

    _reject(_edit(GOOD[codec], set_dtype), RejectReason.SCHEMA_MISMATCH, "wrong dtype or shape")


@pytest.mark.parametrize("shape", [[3, 2], [6], [1, 2, 3], [2, 3, 1]])
def test_wrong_shape_of_the_same_size_is_schema_mismatch(shape: list[int]) -> None:
    def set_shape(h: dict[str, Any]) -> None:
        h["layer.a"]["shape"] = shape

    _reject(_edit(GOOD["fp32"], set_shape), RejectReason.SCHEMA_MISMATCH, "wrong dtype or shape")


def test_wrong_quant_entry_shape_is_schema_mismatch() -> None:
    def set_shape(h: dict[str, Any]) -> None:
        h[QUANT_TENSOR]["shape"] = [2, 3]  # same size as (3, 2)

    _reject(_edit(GOOD["int8"], set_shape), RejectReason.SCHEMA_MISMATCH, "wrong dtype or shape")


def test_codec_that_disagrees_with_the_tensor_dtypes_is_schema_mismatch() -> None:
    # fp32 data labelled fp16: every entry now has the wrong dtype for the codec
    blob = _with_meta("codec", "fp16")
    _reject(blob, RejectReason.SCHEMA_MISMATCH, "'layer.a' has wrong dtype or shape")


# --------------------------------------------------------------------------- data offsets

BODY = _split(GOOD["fp32"])[1]


def test_missing_data_offsets_is_bad_layout() -> None:
    def drop(h: dict[str, Any]) -> None:
        del h["layer.b"]["data_offsets"]

    _reject(_edit(GOOD["fp32"], drop), RejectReason.BAD_LAYOUT, "'layer.b' has bad data_offsets")


@pytest.mark.parametrize(
    "offsets",
    [
        "24,40",
        {"0": 24, "1": 40},
        [24],
        [],
        [24, 40, 40],  # a third element, the first two right
        [24.0, 40],
        [24, 40.0],
        ["24", 40],
        [24, None],
    ],
)
def test_malformed_data_offsets_are_bad_layout(offsets: object) -> None:
    blob = _with_offsets({"layer.b": offsets}, BODY)
    _reject(blob, RejectReason.BAD_LAYOUT, "'layer.b' has bad data_offsets")


def test_boolean_data_offset_is_bad_layout() -> None:
    # False == 0 and has the right value; only its type is wrong
    blob = _with_offsets({"layer.a": [False, 24]}, BODY)
    _reject(blob, RejectReason.BAD_LAYOUT, "'layer.a' has bad data_offsets")


def test_negative_start_is_bad_data_offsets() -> None:
    blob = _with_offsets({"layer.a": [-4, 20]}, BODY)  # the right size
    _reject(blob, RejectReason.BAD_LAYOUT, "'layer.a' has bad data_offsets")


def test_start_after_end_is_bad_data_offsets() -> None:
    blob = _with_offsets({"layer.c": [52, 40]}, BODY)
    _reject(blob, RejectReason.BAD_LAYOUT, "'layer.c' has bad data_offsets")


def test_end_one_past_the_data_is_bad_data_offsets() -> None:
    # the last tensor moved one byte on (its size unchanged), past the end of the data
    blob = _with_offsets({"layer.c": [41, 53]}, BODY)
    _reject(blob, RejectReason.BAD_LAYOUT, "'layer.c' has bad data_offsets")
    # one more byte of data makes the same offsets end exactly at the end: the 1-byte gap is
    # now the only thing wrong, and a different check refuses it
    blob = _with_offsets({"layer.c": [41, 53]}, BODY[:40] + b"\0" + BODY[40:])
    _reject(blob, RejectReason.BAD_LAYOUT, "overlaps or leaves gaps")


def test_size_that_disagrees_with_the_shape_is_bad_layout() -> None:
    # layer.a one element short and everything after it moved up: the offsets still tile
    # the (shortened) data exactly, only layer.a's size is wrong
    body = BODY[:20] + BODY[24:]
    blob = _with_offsets({"layer.a": [0, 20], "layer.b": [20, 36], "layer.c": [36, 48]}, body)
    _reject(blob, RejectReason.BAD_LAYOUT, "'layer.a' size disagrees with its shape")


def test_size_one_element_too_large_is_bad_layout() -> None:
    body = BODY[:24] + bytes(4) + BODY[24:]
    blob = _with_offsets({"layer.a": [0, 28], "layer.b": [28, 44], "layer.c": [44, 56]}, body)
    _reject(blob, RejectReason.BAD_LAYOUT, "'layer.a' size disagrees with its shape")


def test_only_an_overlap_is_bad_layout() -> None:
    # layer.c starts 4 bytes inside layer.b and the data is 4 bytes shorter: sizes are
    # right, nothing is left uncovered, the data ends where the last tensor does
    blob = _with_offsets({"layer.c": [36, 48]}, BODY[:36] + BODY[40:])
    _reject(blob, RejectReason.BAD_LAYOUT, "overlaps or leaves gaps")


def test_only_a_gap_is_bad_layout() -> None:
    # 4 unused bytes between layer.b and layer.c: sizes are right, nothing overlaps, the
    # data ends where the last tensor does
    blob = _with_offsets({"layer.c": [44, 56]}, BODY[:40] + bytes(4) + BODY[40:])
    _reject(blob, RejectReason.BAD_LAYOUT, "overlaps or leaves gaps")


def test_only_a_gap_before_the_first_tensor_is_bad_layout() -> None:
    spans = {"layer.a": [4, 28], "layer.b": [28, 44], "layer.c": [44, 56]}
    _reject(_with_offsets(spans, bytes(4) + BODY), RejectReason.BAD_LAYOUT, "overlaps or leaves")


def test_a_tensor_inside_another_is_bad_layout() -> None:
    # layer.c (12 bytes) placed on the first 12 bytes of layer.b, the data cut after layer.b:
    # sizes are right, every byte is covered, the data ends where the last tensor does
    blob = _with_offsets({"layer.c": [24, 36]}, BODY[:40])
    _reject(blob, RejectReason.BAD_LAYOUT, "overlaps or leaves gaps")


def test_tensors_in_another_order_are_accepted() -> None:
    # a permuted (but exact) tiling is valid safetensors; the decoder gathers it
    body = BODY[40:52] + BODY[24:40] + BODY[0:24]
    blob = _with_offsets({"layer.c": [0, 12], "layer.b": [12, 28], "layer.a": [28, 52]}, body)
    assert torch.equal(decode(blob, SCHEMA).flat, FLAT)


@pytest.mark.parametrize("codec", CODECS)
def test_one_trailing_byte_is_bad_layout(codec: str) -> None:
    decode(GOOD[codec], SCHEMA)
    _reject(GOOD[codec] + b"\0", RejectReason.BAD_LAYOUT, "1 trailing bytes")


# --------------------------------------------------------------------------- int8 parameters


def _int8_with_quant(row: int, col: int, value: float) -> bytes:
    header, body = _split(GOOD["int8"])
    assert header[QUANT_TENSOR]["data_offsets"] == [0, 24]
    pos = (2 * row + col) * 4
    patched = body[:pos] + np.array([value], dtype="<f4").tobytes() + body[pos + 4 :]
    return _join(header, patched)


@pytest.mark.parametrize("scale", [0.0, -0.0, -1e-45, -0.01, float("nan"), float("inf"), -np.inf])
def test_int8_scale_not_finite_and_positive_is_non_finite(scale: float) -> None:
    blob = _int8_with_quant(1, 0, scale)
    _reject(blob, RejectReason.NON_FINITE, "quantization parameters")


@pytest.mark.parametrize("low", [float("nan"), float("inf"), -float("inf")])
def test_int8_non_finite_minimum_is_non_finite(low: float) -> None:
    _reject(_int8_with_quant(2, 1, low), RejectReason.NON_FINITE, "quantization parameters")


def test_int8_smallest_positive_scale_is_accepted() -> None:
    tiny = float(np.nextafter(np.float32(0), np.float32(1)))  # the smallest subnormal
    out = decode(_int8_with_quant(0, 0, tiny), SCHEMA)
    assert bool(torch.isfinite(out.flat).all())


def test_int8_finite_parameters_that_overflow_are_caught_by_the_value_check() -> None:
    # a finite, positive scale passes the parameter check; the dequantized values overflow
    _reject(_int8_with_quant(0, 0, 3e38), RejectReason.NON_FINITE, "NaN or infinite values")


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("codec", ["fp32", "fp16"])
def test_one_non_finite_value_is_non_finite(codec: str, value: float) -> None:
    header, body = _split(GOOD[codec])
    dtype = "<f4" if codec == "fp32" else "<f2"
    size = np.dtype(dtype).itemsize
    pos = 5 * size  # one element in the middle of layer.a
    patched = body[:pos] + np.array([value], dtype=dtype).tobytes() + body[pos + size :]
    _reject(_join(header, patched), RejectReason.NON_FINITE, "NaN or infinite values")


def test_largest_finite_values_are_accepted() -> None:
    flat = FLAT.clone()
    flat[:3] = torch.finfo(torch.float32).max  # their sum overflows; each is finite
    assert torch.equal(decode(_blob(flat=flat), SCHEMA).flat, flat)
    flat16 = FLAT.clone()
    flat16[0] = 65504.0
    assert decode(_blob("fp16", flat=flat16), SCHEMA).flat[0] == 65504.0


def test_read_meta_does_not_look_at_the_tensors() -> None:
    header, body = _split(GOOD["fp32"])
    nan = np.array([np.nan], dtype="<f4").tobytes()
    blob = _join(header, nan + body[4:])
    assert read_meta(blob, SCHEMA) == _meta()
    _reject(blob, RejectReason.NON_FINITE, "NaN or infinite values")
    assert read_meta(GOOD["fp32"] + b"junk", SCHEMA) == _meta()


# --------------------------------------------------------------------------- encode


def test_encode_refuses_metadata_naming_another_schema() -> None:
    other = ModelSchema((TensorSpec("layer.a", (2, 3)),))
    with pytest.raises(ValueError, match="different schema"):
        encode(FLAT, SCHEMA, _meta(schema_hash=other.hash))
    with pytest.raises(ValueError, match="different schema"):
        encode(FLAT[:6], other, _meta())  # SCHEMA's hash, other's tensors


def test_encode_refuses_an_unknown_codec() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        encode(FLAT, SCHEMA, _meta("zstd"))


@pytest.mark.parametrize("codec", CODECS)
def test_encode_accepts_what_it_was_given_whatever_the_dtype(codec: str) -> None:
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        out = decode(encode(FLAT.to(dtype), SCHEMA, _meta(codec)), SCHEMA)
        assert out.meta == _meta(codec)


# Was a bug: encode wrote a message its own decoder refused (bad_layout).
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("delta", [-1, 1])
def test_encode_refuses_a_flat_vector_that_does_not_fit_the_schema(codec: str, delta: int) -> None:
    flat = torch.linspace(-1.0, 1.0, SCHEMA.numel + delta)
    with pytest.raises(ValueError):
        encode(flat, SCHEMA, _meta(codec))


# Was a bug: int8 raised a torch RuntimeError from _quantize for a (numel, 1) vector.
@pytest.mark.parametrize("codec", CODECS)
def test_encode_of_a_non_flat_vector_is_refused(codec: str) -> None:
    with pytest.raises(ValueError, match="flat vector"):
        encode(FLAT.reshape(-1, 1), SCHEMA, _meta(codec))


# --------------------------------------------------------------------------- int8 corners


def test_a_codec_error_reads_reason_then_detail() -> None:
    error = CodecError(RejectReason.BAD_LAYOUT, "tensor x overlaps y")
    assert str(error) == "bad_layout: tensor x overlaps y"
    assert error.reason is RejectReason.BAD_LAYOUT and error.detail == "tensor x overlaps y"


def test_int8_does_not_depend_on_torch_default_dtype() -> None:
    # A user's torch.set_default_dtype(float64) must not change what goes on the wire: the
    # per-tensor (scale, min) table is float32 whatever the default.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        blob = encode(FLAT, SCHEMA, _meta("int8"))
    finally:
        torch.set_default_dtype(previous)
    assert blob == GOOD["int8"]


def test_int8_with_an_empty_tensor_between_others() -> None:
    # A zero-size tensor has no range: it is skipped, and the tensors after it are still
    # quantized (a skip that ended the loop would leave them as garbage).
    schema = ModelSchema((TensorSpec("a", (3,)), TensorSpec("empty", (0,)), TensorSpec("c", (4,))))
    flat = torch.tensor([0.0, 0.5, 1.0, -2.0, -1.0, 1.0, 2.0])
    meta = MessageMeta("s", 1, "n0nce", 0.0, schema.hash, "int8")
    out = decode(encode(flat, schema, meta), schema).flat
    assert out.shape == flat.shape
    assert torch.allclose(out, flat, atol=4.0 / 255)


@pytest.mark.parametrize("codec", CODECS)
def test_a_model_without_tensors_round_trips(codec: str) -> None:
    # The degenerate schema (no tensors): every codec writes and reads it, none raises.
    schema = ModelSchema(())
    meta = MessageMeta("s", 1, "n0nce", 0.0, schema.hash, codec)
    decoded = decode(encode(torch.zeros(0), schema, meta), schema)
    assert decoded.flat.shape == (0,) and decoded.meta.age == 1


# --------------------------------------------------------------------------- what is said

LONG = "z" * 80


def _detail(blob: bytes, fn: Decoder = decode, schema: ModelSchema = SCHEMA) -> str:
    with pytest.raises(CodecError) as info:
        fn(blob, schema)
    return info.value.detail


def test_each_refusal_says_exactly_what_is_wrong() -> None:
    (n,) = struct.unpack_from("<Q", GOOD["fp32"])
    cases = {
        "truncated": (GOOD["fp32"][: 8 + n - 1], f"header of {n} bytes but only {n - 1} follow"),
        "metadata": (
            _edit(GOOD["fp32"], lambda h: h.__setitem__("__metadata__", [])),
            "__metadata__ missing or not a string map",
        ),
        "lacks": (
            _edit(GOOD["fp32"], lambda h: [h["__metadata__"].pop(k) for k in ("codec", "age")]),
            "metadata lacks age, codec",
        ),
        "version": (_with_meta("v", LONG), f"format version {LONG[:16]!r} is not 1"),
        "codec": (_with_meta("codec", LONG), f"codec {LONG[:16]!r} is not one of fp32, fp16, int8"),
        "schema": (_with_meta("schema", "0" * 32), "schema hash differs from the local model's"),
        "sender": (_with_meta("sender", "a b"), "sender or nonce malformed"),
        "timestamp": (_with_meta("timestamp", "soon"), "timestamp is not a number"),
        "finite": (_with_meta("timestamp", "inf"), "timestamp is not finite"),
        "age": (_with_meta("age", "9" * 30), f"age {'9' * 24!r} is not a non-negative integer"),
        "gap": (
            _with_offsets({"layer.c": [24, 36]}, BODY[:40]),
            "tensor data overlaps or leaves gaps",
        ),
    }
    for name, (blob, detail) in cases.items():
        assert _detail(blob) == detail, name


def test_a_header_length_with_the_top_bit_set_exceeds_the_limit() -> None:
    # Read as unsigned: a length of 2**63 + 5 is huge, never negative.
    n = 2**63 + 5
    blob = struct.pack("<Q", n) + GOOD["fp32"][8:]
    assert _detail(blob) == f"header of {n} bytes exceeds the limit of {HEADER_LIMIT}"


def test_tensor_names_are_quoted_up_to_64_characters() -> None:
    name = "t" * 70
    schema = ModelSchema((TensorSpec(name, (2,)),))
    meta = MessageMeta("s", 1, "n0nce", 0.0, schema.hash, "fp32")
    blob = encode(torch.zeros(2), schema, meta)
    quoted = repr(name[:64])

    def change(edit: Callable[[dict[str, Any]], None]) -> bytes:
        header, body = _split(blob)
        edit(header)
        return _join(header, body)

    assert _detail(change(lambda h: h.__setitem__(name, 1)), schema=schema) == (
        f"tensor {quoted} missing"
    )
    assert _detail(change(lambda h: h[name].__setitem__("shape", [1])), schema=schema) == (
        f"tensor {quoted} has wrong dtype or shape"
    )
    assert _detail(change(lambda h: h[name].__setitem__("data_offsets", [0])), schema=schema) == (
        f"tensor {quoted} has bad data_offsets"
    )
    header, body = _split(blob)
    header[name]["data_offsets"] = [0, 4]
    assert _detail(_join(header, body[:4]), schema=schema) == (
        f"tensor {quoted} size disagrees with its shape"
    )


def test_value_refusals_say_what_is_wrong() -> None:
    flat = FLAT.clone()
    flat[3] = float("nan")
    header, body = _split(GOOD["fp32"])
    bad = bytearray(body)
    bad[12:16] = struct.pack("<f", float("nan"))
    assert _detail(_join(header, bytes(bad))) == "model contains NaN or infinite values"
    header, body = _split(GOOD["int8"])
    bad = bytearray(body)
    bad[0:4] = struct.pack("<f", 0.0)  # the first tensor's scale
    assert _detail(_join(header, bytes(bad))) == (
        "int8 quantization parameters are not finite and positive"
    )


def test_encode_errors_say_what_is_wrong() -> None:
    with pytest.raises(ValueError) as info:
        encode(FLAT, SCHEMA, _meta("bf16"))
    assert str(info.value) == "unknown codec 'bf16'; choose one of fp32, fp16, int8"
    with pytest.raises(ValueError) as info:
        encode(FLAT, SCHEMA, _meta(schema_hash="0" * 32))
    assert str(info.value) == "message metadata names a different schema than the one encoded"


@pytest.mark.parametrize(
    "order", [("layer.c", "layer.a", "layer.b"), ("layer.b", "layer.a", "layer.c")]
)
def test_tensors_in_any_order_decode_to_the_same_values(order: tuple[str, ...]) -> None:
    # Orders whose spans, taken in schema order, are partly adjacent: only a check of every
    # neighbouring pair tells that they are not one contiguous run.
    header, body = _split(GOOD["fp32"])
    pieces = {s.name: body[o : o + 4 * s.numel] for s, o in zip(
        SCHEMA.specs, (0, 24, 40), strict=True)}  # fmt: skip
    out, at = b"", 0
    for name in order:
        header[name]["data_offsets"] = [at, at + len(pieces[name])]
        out += pieces[name]
        at += len(pieces[name])
    assert torch.equal(decode(_join(header, out), SCHEMA).flat, FLAT)


def test_fp16_clamps_below_its_range_too() -> None:
    flat = FLAT.clone()
    flat[0], flat[1] = -1e9, 1e9
    out = decode(encode(flat, SCHEMA, _meta("fp16")), SCHEMA).flat
    assert (float(out[0]), float(out[1])) == (-65504.0, 65504.0)


def test_decoding_under_a_float64_default_dtype_still_gives_float32() -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        outs = {codec: decode(GOOD[codec], SCHEMA).flat for codec in CODECS}
        empty = ModelSchema(())
        for codec in CODECS:
            meta = MessageMeta("s", 1, "n0nce", 0.0, empty.hash, codec)
            outs[f"empty {codec}"] = decode(encode(torch.zeros(0), empty, meta), empty).flat
    finally:
        torch.set_default_dtype(previous)
    assert {k: v.dtype for k, v in outs.items()} == dict.fromkeys(outs, torch.float32)


@pytest.mark.parametrize("codec", CODECS)
def test_a_decoded_model_owns_its_memory(codec: str) -> None:
    # A node reads pushes into pooled buffers and reuses them: a decoded model that were a
    # view of the buffer would change under the next push.
    buffer = bytearray(GOOD[codec])
    flat = decode(memoryview(buffer), SCHEMA).flat
    before = flat.clone()
    buffer[-64:] = bytes(64)
    assert torch.equal(flat, before)


def test_the_size_limit_of_one_codec_is_its_own() -> None:
    big = ModelSchema((TensorSpec("w", (1000,)),))
    assert max_message_bytes(big, "int8") < max_message_bytes(big, "fp16")
    assert max_message_bytes(big, "fp16") < max_message_bytes(big, "fp32")
    assert max_message_bytes(big) == max_message_bytes(big, "fp32")


def test_a_header_that_is_not_an_object_says_so() -> None:
    assert _detail(_join([], b"")) == "header is not a JSON object"  # type: ignore[arg-type]


def test_an_int8_message_with_its_quant_table_last_decodes_the_same() -> None:
    # The int8 codes, contiguous in schema order, are then followed by the table: reading
    # them must stop where they end.
    header, body = _split(GOOD["int8"])
    start, end = header[QUANT_TENSOR]["data_offsets"]
    table, codes = body[start:end], body[end:]
    for spec in SCHEMA.specs:
        a, b = header[spec.name]["data_offsets"]
        header[spec.name]["data_offsets"] = [a - len(table), b - len(table)]
    header[QUANT_TENSOR]["data_offsets"] = [len(codes), len(codes) + len(table)]
    moved = decode(_join(header, codes + table), SCHEMA).flat
    assert torch.equal(moved, decode(GOOD["int8"], SCHEMA).flat)


def test_int8_of_a_range_too_small_for_a_scale_still_decodes() -> None:
    # Found by the round-trip property under mutation testing: (hi - lo) / 255 underflows
    # to 0 for a range of one subnormal, and the encoder wrote a scale its own decoder
    # refuses (non_finite).
    schema = ModelSchema((TensorSpec("w", (2,)),))
    flat = torch.tensor([0.0, 1.401298464324817e-45])
    meta = MessageMeta("s", 1, "n0nce", 0.0, schema.hash, "int8")
    out = decode(encode(flat, schema, meta), schema).flat
    assert torch.allclose(out, flat, atol=1e-44, rtol=0)
