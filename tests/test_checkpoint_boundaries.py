"""One test per check of a checkpoint, each with an input that breaks exactly that rule.

Every file here is a valid checkpoint with one thing changed and its checksum recomputed over
the change (so the checksum is never what refuses it), and each test asserts the reason the
store gives. Limits are probed at and just past the boundary. The mutation run of
``peers/checkpoint.py`` (``.ci/mutation checkpoint``) is measured against these tests and
``tests/test_checkpoint.py``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

# safetensors' own parser and writer, to forge files as an editor or a disk would.
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from gossip.errors import ConfigError
from peers.checkpoint import (
    VERSION,
    CheckpointError,
    CheckpointStore,
    checkpoint_checksum,
    counters_snapshot,
    restore_counters,
)

SCHEMA = "c" * 32


def _save(store: CheckpointStore, **kw: Any) -> Path:
    args: dict[str, Any] = {
        "flat": torch.arange(5, dtype=torch.float32),
        "age": 10,
        "schema_hash": SCHEMA,
        "sampler_view": ["a", "b"],
        "counters": {"sent": 1},
        "created_at": 5.0,
    }
    args.update(kw)
    return store.save(**args)


def _meta(path: Path) -> dict[str, str]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta: dict[str, str] = json.loads(raw[8 : 8 + n])["__metadata__"]
    return meta


def _forge(
    path: Path,
    changes: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """Rewrite ``path`` with ``changes`` to its metadata (a value None deletes the key) and
    optionally other tensors, with the checksum recomputed over the result."""
    meta: dict[str, Any] = _meta(path)
    for k, v in (changes or {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    tensors = tensors if tensors is not None else load_safetensors(path.read_bytes())
    flat = tensors.get("flat", next(iter(tensors.values())))
    meta["checksum"] = checkpoint_checksum(meta, flat)
    path.write_bytes(save_safetensors(tensors, metadata=meta))


def _reason(store: CheckpointStore) -> str:
    """The reason word the store gives for the one file it skipped (and it loaded nothing)."""
    assert store.load_latest(SCHEMA) is None
    assert len(store.skipped) == 1
    return store.skipped[0][1]


@pytest.fixture
def one(tmp_path: Path) -> tuple[CheckpointStore, Path]:
    store = CheckpointStore(tmp_path)
    return store, _save(store)


def test_the_unchanged_forged_file_loads(one: tuple[CheckpointStore, Path]) -> None:
    # The baseline of every test below: forging alone (a recomputed checksum) changes nothing.
    store, path = one
    _forge(path)
    ckpt = store.load_latest(SCHEMA)
    assert ckpt is not None and ckpt.age == 10 and ckpt.seq == 1 and store.skipped == []
    assert ckpt.sampler_view == ["a", "b"] and ckpt.counters == {"sent": 1}
    assert ckpt.created_at == 5.0 and ckpt.auth_high_water is None and ckpt.clean_stop is False


# --------------------------------------------------------------------------- reading: format


def test_version_alone(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    _forge(path, {"version": VERSION + "x"})
    assert _reason(store).startswith("version:")


def test_a_missing_version(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    _forge(path, {"version": None})
    assert _reason(store).startswith("version:")


def test_a_second_tensor_alone(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    flat = torch.arange(5, dtype=torch.float32)
    _forge(path, tensors={"flat": flat, "extra": torch.zeros(1)})
    assert _reason(store) == "corrupt: expected exactly one 1-D float32 tensor 'flat'"


def test_the_one_tensor_under_another_name(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    _forge(path, tensors={"weights": torch.arange(5, dtype=torch.float32)})
    assert _reason(store) == "corrupt: expected exactly one 1-D float32 tensor 'flat'"


def test_a_two_dimensional_flat(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    _forge(path, tensors={"flat": torch.zeros(1, 5)})
    assert _reason(store) == "corrupt: expected exactly one 1-D float32 tensor 'flat'"


def test_a_float64_flat(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    _forge(path, tensors={"flat": torch.zeros(5, dtype=torch.float64)})
    assert _reason(store) == "corrupt: expected exactly one 1-D float32 tensor 'flat'"


def test_metadata_that_is_not_all_strings(
    one: tuple[CheckpointStore, Path], tmp_path: Path
) -> None:
    # safetensors writes only string metadata; splice a number into the JSON header by hand.
    # safetensors' parser refuses it before our own check (kept as a second line) sees it.
    store, path = one
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"]["age"] = 10
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    assert _reason(store).startswith("corrupt:")


def test_the_checksum_alone(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    good = _meta(path)["checksum"]
    _forge(path)
    meta = _meta(path)
    tensors = load_safetensors(path.read_bytes())
    flipped = ("0" if good[0] != "0" else "1") + good[1:]
    path.write_bytes(save_safetensors(tensors, metadata={**meta, "checksum": flipped}))
    assert _reason(store).startswith("checksum:")


def test_a_missing_checksum(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    meta = _meta(path)
    del meta["checksum"]
    path.write_bytes(save_safetensors(load_safetensors(path.read_bytes()), metadata=meta))
    assert _reason(store).startswith("checksum:")


def test_another_schema_alone(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    _forge(path, {"schema_hash": "d" * 32})
    assert _reason(store) == f"schema: checkpoint is for model {'d' * 32!r}"


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_one_nonfinite_value_alone(one: tuple[CheckpointStore, Path], bad: float) -> None:
    store, path = one
    flat = torch.arange(5, dtype=torch.float32)
    flat[3] = bad
    _forge(path, tensors={"flat": flat})
    assert _reason(store) == "nonfinite: tensor holds NaN or infinity"


# --------------------------------------------------------------------------- reading: metadata


def test_age_zero_is_a_valid_age(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    _forge(path, {"age": "0"})
    ckpt = store.load_latest(SCHEMA)
    assert ckpt is not None and ckpt.age == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("age", "-1"),
        ("age", "1.5"),
        ("age", None),
        ("seq", "2"),
        ("seq", "0"),
        ("seq", None),
        ("created_at", "inf"),
        ("created_at", "nan"),
        ("created_at", "soon"),
        ("auth_high_water", "inf"),
        ("auth_high_water", "nan"),
        ("auth_high_water", "high"),
        ("auth_high_water", None),
        ("clean_stop", "True"),
        ("clean_stop", "1"),
        ("clean_stop", None),
        ("sampler_view", json.dumps({"a": 1})),
        ("sampler_view", json.dumps(["a", 1])),
        ("sampler_view", "[not json"),
        ("sampler_view", None),
        ("counters", json.dumps(["sent", 1])),
        ("counters", "{not json"),
        ("counters", None),
    ],
)
def test_one_bad_metadata_field_alone(
    one: tuple[CheckpointStore, Path], field: str, value: str | None
) -> None:
    store, path = one
    _forge(path, {field: value})
    assert _reason(store).startswith("metadata:")


def test_a_finite_high_water_and_a_clean_stop_are_read(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    _forge(path, {"auth_high_water": "12.5", "clean_stop": "true"})
    ckpt = store.load_latest(SCHEMA)
    assert ckpt is not None and ckpt.auth_high_water == 12.5 and ckpt.clean_stop is True


# --------------------------------------------------------------------------- saving


@pytest.mark.parametrize(
    "kw",
    [
        {"flat": torch.tensor([0.0, float("nan")])},
        {"flat": torch.tensor([0.0, float("-inf")])},
        {"flat": torch.zeros(4, dtype=torch.float16)},
        {"flat": torch.zeros(1, 4)},
        {"age": -1},
        {"age": True},
        {"age": 1.5},
        {"created_at": float("inf")},
        {"created_at": float("nan")},
        {"auth_high_water": float("inf")},
        {"auth_high_water": float("nan")},
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_save_refuses_what_load_would_skip(tmp_path: Path, kw: dict[str, Any]) -> None:
    store = CheckpointStore(tmp_path)
    with pytest.raises(ValueError) as info:
        _save(store, **kw)
    assert "\n" not in str(info.value)
    assert store.list() == [] and list(tmp_path.iterdir()) == []


def test_save_accepts_the_edges_it_must(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, age=0, created_at=0.0, auth_high_water=0.0, flat=torch.zeros(1))
    ckpt = store.load_latest(SCHEMA)
    assert ckpt is not None and ckpt.age == 0 and ckpt.auth_high_water == 0.0
    assert ckpt.flat.tolist() == [0.0]


def test_save_takes_a_non_contiguous_float32_view(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    base = torch.arange(10, dtype=torch.float32)
    _save(store, flat=base[::2])
    ckpt = store.load_latest(SCHEMA)
    assert ckpt is not None and ckpt.flat.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_keep_one_is_the_smallest_keep(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path, keep=1).keep == 1
    with pytest.raises(ConfigError, match="at least 1, got 0"):
        CheckpointStore(tmp_path, keep=0)


def test_the_last_number_is_used_then_numbers_are_exhausted(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    (tmp_path / "ckpt-9999999998.safetensors").write_bytes(b"x")
    last = _save(store)
    assert last.name == "ckpt-9999999999.safetensors"
    with pytest.raises(CheckpointError, match="exhausted"):
        _save(store)


def test_the_next_number_follows_the_highest_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    (tmp_path / "ckpt-0000000041.safetensors").write_bytes(b"x")
    assert _save(store).name == "ckpt-0000000042.safetensors"
    assert _save(store).name == "ckpt-0000000043.safetensors"


@pytest.mark.parametrize(
    "name",
    [
        "ckpt-000000001.safetensors",  # nine digits
        "ckpt-00000000001.safetensors",  # eleven digits
        "ckpt-0000000001.safetensors.bak",
        "ckpt-000000000a.safetensors",
        ".ckpt-0000000001.tmp",
    ],
)
def test_only_exact_checkpoint_names_are_listed(tmp_path: Path, name: str) -> None:
    store = CheckpointStore(tmp_path)
    (tmp_path / name).write_bytes(b"x")
    assert store.list() == []


def test_files_are_listed_by_number_not_by_mtime(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for seq in (3, 1, 2):
        (tmp_path / f"ckpt-{seq:010d}.safetensors").write_bytes(b"x")
    assert [p.name[5:15] for p in store.list()] == ["0000000001", "0000000002", "0000000003"]


def test_keep_two_keeps_exactly_two(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for _ in range(4):
        _save(store)
    assert [p.name for p in store.list()] == [
        "ckpt-0000000003.safetensors",
        "ckpt-0000000004.safetensors",
    ]


# --------------------------------------------------------------------------- counters


def test_counters_snapshot_keeps_only_plain_data() -> None:
    class Counters:
        def __init__(self) -> None:
            self.sent = 3
            self.flag = True
            self.loss = 0.5
            self.bad_loss = float("inf")
            self.nan = float("nan")
            self.by_reason = {"b": 2, "a": 1}
            self.mixed = {"a": 1, "b": "x"}
            self.bools = {"a": True}
            self.name = "peer"
            self.items = [1, 2]

    snap = counters_snapshot(Counters())
    assert snap == {"sent": 3, "flag": True, "loss": 0.5, "by_reason": {"a": 1, "b": 2}}
    assert list(snap["by_reason"]) == ["a", "b"]


def test_restore_counters_one_rule_at_a_time() -> None:
    class Counters:
        def __init__(self) -> None:
            self.n = 0
            self.flag = False
            self.loss = 0.0
            self.by = {"old": 9}
            self.name = "x"

    c = Counters()
    ignored = restore_counters(
        c,
        {
            "n": 4,
            "flag": True,
            "loss": 2,  # an int into a float field is taken, as a float
            "by": {"a": 1, "b": True, "c": "x"},
            "name": "y",  # a str field is never restored
            "unknown": 1,
        },
    )
    assert (c.n, c.flag, c.loss, c.by, c.name) == (4, True, 2.0, {"a": 1}, "x")
    assert isinstance(c.loss, float)
    assert ignored == ["by", "name", "unknown"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", True),  # a bool is not an int count
        ("n", 1.0),
        ("flag", 1),
        ("loss", float("inf")),
        ("loss", True),
        ("loss", "1.0"),
        ("by", 3),
    ],
)
def test_restore_counters_refuses_a_wrong_type_alone(field: str, value: object) -> None:
    class Counters:
        def __init__(self) -> None:
            self.n = 7
            self.flag = False
            self.loss = 0.25
            self.by = {"k": 1}

    c = Counters()
    before = dict(vars(c))
    assert restore_counters(c, {field: value}) == [field]
    assert vars(c) == before


# --------------------------------------------------------------------------- what is said


def test_a_new_store_keeps_three_and_has_skipped_nothing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    assert store.keep == 3 and store.skipped == []


def test_a_directory_that_cannot_be_created_says_why(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError) as info:
        CheckpointStore(tmp_path / "file" / "ckpt")
    assert str(info.value) == (
        f"cannot create checkpoint directory {tmp_path / 'file' / 'ckpt'}: Not a directory"
    )


def test_a_failed_write_says_why_and_how_to_fix(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "d")
    (tmp_path / "d").rmdir()
    (tmp_path / "d").write_text("now a file")
    with pytest.raises(CheckpointError) as info:
        _save(store)
    assert str(info.value) == (
        f"cannot write checkpoint in {tmp_path / 'd'}: Not a directory; "
        "check that it is a writable directory with free space"
    )


def test_exhausted_numbers_name_the_last_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    (tmp_path / "ckpt-9999999999.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError) as info:
        _save(store)
    assert "(a file is numbered 9999999999)" in str(info.value)


def test_an_unreadable_entry_is_skipped_with_the_os_reason(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    (tmp_path / "ckpt-0000000001.safetensors").mkdir()  # a directory where a file should be
    assert _reason(store) == "unreadable: Is a directory"


def test_the_version_reason_quotes_at_most_64_characters(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    _forge(path, {"version": "v" * 100})
    assert _reason(store) == f"version: {'v' * 64!r} is not {VERSION!r}"


def test_the_version_reason_quotes_the_bad_version(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    _forge(path, {"version": "gossip-checkpoint/1"})
    assert _reason(store) == f"version: 'gossip-checkpoint/1' is not {VERSION!r}"


def test_the_metadata_reason_lists_what_is_checked(one: tuple[CheckpointStore, Path]) -> None:
    store, path = one
    _forge(path, {"age": "-1"})
    assert _reason(store) == (
        "metadata: bad age, created_at, high-water mark, view, counters, or seq not matching"
        " the file name"
    )


def test_skipped_and_invalid_files_are_logged_with_name_and_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    bad = tmp_path / "ckpt-0000000001.safetensors"
    bad.write_bytes(b"garbage")
    with caplog.at_level("WARNING", logger="peers.checkpoint"):
        _save(store)  # pruning finds the garbage file
        store.load_latest(SCHEMA)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"checkpoint {bad} is not valid (corrupt:") and
               m.endswith("): not counted toward keep") for m in messages)  # fmt: skip
    # load_latest took the good newest file, so it logged nothing about the bad one; make
    # the good one unusable to see the skip message.
    _forge(tmp_path / "ckpt-0000000002.safetensors", {"age": "-1"})
    caplog.clear()
    with caplog.at_level("WARNING", logger="peers.checkpoint"):
        store.load_latest(SCHEMA)
    messages = [r.getMessage() for r in caplog.records]
    assert (
        f"skipping checkpoint {tmp_path / 'ckpt-0000000002.safetensors'}: metadata: bad age"
        in (
            messages[0][
                : len(
                    f"skipping checkpoint {tmp_path / 'ckpt-0000000002.safetensors'}: metadata: bad age"
                )
            ]
        )
    )
    assert messages[1].startswith(f"skipping checkpoint {bad}: corrupt:")


def test_what_load_latest_checked_is_not_read_again_by_pruning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import peers.checkpoint as module

    first = CheckpointStore(tmp_path, keep=5)
    for _ in range(3):
        _save(first)
    (tmp_path / "ckpt-0000000004.safetensors").write_bytes(b"garbage")
    store = CheckpointStore(tmp_path, keep=5)
    assert store.load_latest(SCHEMA) is not None  # reads 4 (bad) then 3 (good)
    reads: list[str] = []
    real = module._read

    def counting(path: Path, schema_hash: str) -> Any:
        reads.append(path.name)
        return real(path, schema_hash)

    monkeypatch.setattr(module, "_read", counting)
    _save(store)
    # Pruning needs a verdict on 1..4: 3 and 4 were checked by load_latest (valid and not).
    assert sorted(reads) == ["ckpt-0000000001.safetensors", "ckpt-0000000002.safetensors"]


def test_the_checksum_is_a_fixed_function_of_the_contents() -> None:
    # A known answer: the on-disk format, so that a file written by one version is checked
    # the same way by another (canonical ASCII JSON, an 8-byte little-endian length).
    meta = {"age": "7", "sampler_view": '["pé"]', "checksum": "ignored"}
    assert checkpoint_checksum(meta, torch.tensor([1.0, -2.5])) == (
        "00b9438e6455bf3e62361d0c2885eac09c24ba4eef9aebbfb10aa88f08a6fd31"
    )


def test_counters_are_written_in_a_canonical_order(tmp_path: Path) -> None:
    a, b = CheckpointStore(tmp_path / "a"), CheckpointStore(tmp_path / "b")
    pa = _save(a, counters={"x": 1, "a": 2})
    pb = _save(b, counters={"a": 2, "x": 1})
    assert _meta(pa)["counters"] == _meta(pb)["counters"] == '{"a": 2, "x": 1}'


@dataclass
class _ClassAttrCounters:
    limit: ClassVar[int] = 5  # not a field: never restored
    loss: float = 0.5


@dataclass(slots=True)
class _SlottedCounters:
    sent: int = 0


def test_restore_counters_ignores_class_attributes_and_bad_strings() -> None:
    c = _ClassAttrCounters()
    assert restore_counters(c, {"limit": 7, "loss": "abc"}) == ["limit", "loss"]
    assert _ClassAttrCounters.limit == 5 and c.limit == 5 and c.loss == 0.5
    assert restore_counters(c, {"loss": [1.0]}) == ["loss"]


def test_counters_of_a_slotted_dataclass() -> None:
    c = _SlottedCounters(sent=3)
    assert counters_snapshot(c) == {"sent": 3}
    assert restore_counters(c, {"sent": 9}) == [] and c.sent == 9


def test_an_old_checkpoint_that_cannot_be_deleted_does_not_fail_the_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    first = _save(store)
    real_unlink = Path.unlink

    def refuse(self: Path, missing_ok: bool = False) -> None:
        if self == first:
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    second = _save(store)
    assert first.exists() and second.exists()


def test_a_platform_that_cannot_fsync_a_directory_still_saves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    real_open = os.open

    def no_directories(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if Path(path).is_dir():
            raise PermissionError(13, "Permission denied")  # as on Windows
        return real_open(path, flags, *args, **kw)

    store = CheckpointStore(tmp_path)
    monkeypatch.setattr(os, "open", no_directories)
    path = _save(store)
    monkeypatch.undo()
    assert store.load_latest(SCHEMA) is not None and path.exists()
