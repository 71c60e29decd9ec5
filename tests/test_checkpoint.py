"""Checkpoints: atomic writes, pruning, seq after restart, fallback over bad files, a checksum
over the whole file, pruning that never counts bad files, and counters by name."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

# safetensors' own parser and writer, to forge files as an editor or a disk would.
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import peers.checkpoint
from gossip.errors import GossipError
from peers.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    checkpoint_checksum,
    counters_snapshot,
    restore_counters,
)

SCHEMA = "a" * 32
OTHER = "b" * 32


def _flat(seed: int, n: int = 257) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float32)


def _save(store: CheckpointStore, seed: int, schema: str = SCHEMA, **kw: Any) -> Path:
    args: dict[str, Any] = {
        "age": 100 + seed,
        "sampler_view": [f"peer-{seed}", "peer-x"],
        "counters": {"sent": seed, "rejected": {"schema": 1}, "loss": 0.1 * seed},
        "created_at": 1000.5 + seed,
    }
    args.update(kw)
    return store.save(_flat(seed), schema_hash=schema, **args)


def _load(store: CheckpointStore) -> Checkpoint:
    ckpt = store.load_latest(SCHEMA)
    assert ckpt is not None
    return ckpt


def _data_offset(path: Path) -> int:
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + int(header_len)


def _metadata(path: Path) -> dict[str, str]:
    raw = path.read_bytes()
    meta: dict[str, str] = json.loads(raw[8 : _data_offset(path)])["__metadata__"]
    return meta


def _rewrite(
    path: Path, changes: dict[str, str] | None = None, *, forge_checksum: bool = False
) -> None:
    """Rewrite ``path`` with some metadata fields changed (a well-formed file, as an editor
    would leave it); ``forge_checksum`` also recomputes the checksum over the change."""
    tensors = load_safetensors(path.read_bytes())
    meta = {**_metadata(path), **(changes or {})}
    if forge_checksum:
        meta["checksum"] = checkpoint_checksum(meta, tensors["flat"])
    path.write_bytes(save_safetensors(tensors, metadata=meta))


def _reasons(store: CheckpointStore) -> list[tuple[str, str]]:
    return [(p.name, why.split(":")[0]) for p, why in store.skipped]


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    flat = _flat(7)
    flat[0] = -0.0
    flat[1] = torch.finfo(torch.float32).tiny / 2  # subnormal
    view = ["127.0.0.1:8001", "node-ü", ""]
    counters = {"sent": 3, "bytes": 2**40, "loss": 0.1 + 0.2, "by_reason": {"busy": 2}}
    path = store.save(flat, 12345, SCHEMA, view, counters, created_at=1.7e9 + 0.125)
    assert path.name == "ckpt-0000000001.safetensors" and store.list() == [path]
    ckpt = _load(store)
    assert ckpt.flat.dtype == torch.float32 and ckpt.flat.shape == flat.shape
    assert ckpt.flat.numpy().tobytes() == flat.numpy().tobytes()
    assert (ckpt.age, ckpt.schema_hash, ckpt.seq) == (12345, SCHEMA, 1)
    assert ckpt.sampler_view == view and ckpt.counters == counters
    assert ckpt.created_at == 1.7e9 + 0.125
    assert (ckpt.auth_high_water, ckpt.clean_stop) == (None, False)
    assert store.skipped == []


def test_replay_high_water_and_clean_stop_round_trip(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(_flat(1), 1, SCHEMA, [], {}, 5.0, auth_high_water=1.7e9 + 0.5, clean_stop=True)
    ckpt = _load(store)
    assert (ckpt.auth_high_water, ckpt.clean_stop) == (1.7e9 + 0.5, True)
    assert _metadata(store.list()[0])["version"] == "gossip-checkpoint/2"
    with pytest.raises(ValueError, match="auth_high_water"):
        store.save(_flat(1), 1, SCHEMA, [], {}, 5.0, auth_high_water=float("inf"))


def test_newest_wins_and_keep_prunes_oldest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    paths = [_save(store, seed) for seed in range(5)]
    assert store.list() == paths[-2:]
    assert not paths[0].exists() and not paths[2].exists()
    ckpt = _load(store)
    assert ckpt.seq == 5 and ckpt.age == 104 and torch.equal(ckpt.flat, _flat(4))


def test_keep_one_leaves_only_the_new_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    _save(store, 0)
    last = _save(store, 1)
    assert store.list() == [last]


def test_seq_continues_after_restart(tmp_path: Path) -> None:
    first = CheckpointStore(tmp_path, keep=3)
    for seed in range(4):
        _save(first, seed)
    restarted = CheckpointStore(tmp_path, keep=3)
    assert _load(restarted).seq == 4
    path = _save(restarted, 9)
    assert path.name == "ckpt-0000000005.safetensors"
    assert [p.name[5:15] for p in restarted.list()] == ["0000000003", "0000000004", "0000000005"]


def test_torn_newest_falls_back_to_previous(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    newest = _save(store, 2)
    size = newest.stat().st_size
    with open(newest, "r+b") as f:
        f.truncate(size - 100)
    ckpt = _load(store)
    assert ckpt.seq == 1 and torch.equal(ckpt.flat, _flat(1))
    assert [(p, why.split(":")[0]) for p, why in store.skipped] == [(newest, "corrupt")]


def test_truncated_inside_header_is_skipped(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    newest = _save(store, 2)
    newest.write_bytes(newest.read_bytes()[:20])
    assert _load(store).seq == 1
    assert store.skipped[0][0] == newest


def test_flipped_payload_byte_is_caught_by_sha(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    good = _save(store, 1)
    newest = _save(store, 2)
    raw = bytearray(newest.read_bytes())
    raw[_data_offset(newest) + 40] ^= 0x01  # a low mantissa bit: still a finite float
    newest.write_bytes(bytes(raw))
    assert _load(store).seq == 1
    assert store.skipped == [
        (newest, "checksum: contents do not match their checksum (corrupt or edited)")
    ]
    assert good.exists()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("age", "196065"),  # one more than saved: still a perfectly plausible age
        ("counters", json.dumps({"sent": 2, "rejected": {"schema": 2}, "loss": 0.2})),
        ("sampler_view", json.dumps(["peer-2", "mallory"])),
        ("created_at", "1002.75"),
        ("seq", "3"),
        ("auth_high_water", "1.0"),
        ("clean_stop", "true"),
        ("schema_hash", OTHER),
        ("checksum", "0" * 64),
    ],
)
def test_any_edited_metadata_field_is_detected(tmp_path: Path, name: str, value: str) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    newest = _save(store, 2, age=196_064)
    assert _metadata(newest)[name] != value
    _rewrite(newest, {name: value})
    assert _load(store).seq == 1
    assert _reasons(store) == [(newest.name, "checksum")]


def test_an_edit_with_a_forged_checksum_still_passes_the_other_checks(tmp_path: Path) -> None:
    # Not a defence against someone who can write the directory; it catches accidents and
    # edits. Shown here so that the checksum is known to be the only thing that catches them.
    store = CheckpointStore(tmp_path)
    newest = _save(store, 2)
    _rewrite(newest, {"age": "7"}, forge_checksum=True)
    assert _load(store).age == 7
    _rewrite(newest, {"age": "-1"}, forge_checksum=True)
    assert store.load_latest(SCHEMA) is None and _reasons(store) == [(newest.name, "metadata")]


def test_nonfinite_payload_with_matching_checksum_is_rejected(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    newest = _save(store, 2)
    raw = bytearray(newest.read_bytes())
    start = _data_offset(newest)
    raw[start : start + 4] = struct.pack("<f", float("nan"))
    newest.write_bytes(bytes(raw))
    # Forge a consistent checksum: only the finiteness check can catch this one.
    _rewrite(newest, forge_checksum=True)
    assert _load(store).seq == 1
    assert store.skipped[0][1].startswith("nonfinite")


def test_a_checkpoint_of_the_previous_format_is_skipped_by_version(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    old = _save(store, 2)
    _rewrite(old, {"version": "gossip-checkpoint/1"}, forge_checksum=True)
    assert _load(store).seq == 1 and _reasons(store) == [(old.name, "version")]


def test_garbage_file_is_skipped(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    garbage = tmp_path / "ckpt-0000000099.safetensors"
    garbage.write_bytes(os.urandom(300))
    empty = tmp_path / "ckpt-0000000098.safetensors"
    empty.write_bytes(b"")
    assert _load(store).seq == 1
    assert [p for p, _ in store.skipped] == [garbage, empty]
    assert all(why.startswith("corrupt") for _, why in store.skipped)


def test_checkpoint_of_another_model_is_skipped(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    other = _save(store, 2, schema=OTHER)
    assert _load(store).seq == 1
    assert store.skipped[0][0] == other and store.skipped[0][1].startswith("schema")
    assert store.load_latest("c" * 32) is None
    assert len(store.skipped) == 2


def test_renamed_file_with_wrong_seq_is_skipped(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    first = _save(store, 1)
    _save(store, 2)
    moved = tmp_path / "ckpt-0000000007.safetensors"
    first.rename(moved)
    assert _load(store).seq == 2  # seq 7 claims to be newer but its metadata says 1
    assert store.skipped[0][0] == moved and store.skipped[0][1].startswith("metadata")


def test_leftover_tmp_is_ignored_then_cleaned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    leftover = tmp_path / ".ckpt-0000000005.tmp"  # not the name the next save writes
    leftover.write_bytes(b"half a checkpoint")
    assert store.list() == [tmp_path / "ckpt-0000000001.safetensors"]
    assert _load(store).seq == 1 and store.skipped == []
    path = _save(store, 2)
    assert path.name == "ckpt-0000000002.safetensors"
    assert not leftover.exists() and sorted(tmp_path.glob("*.tmp")) == []


def test_empty_or_missing_directory_has_no_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir()
    assert store.list() == [] and store.load_latest(SCHEMA) is None
    assert store.skipped == []


def test_path_that_is_a_file_gives_one_line_error(tmp_path: Path) -> None:
    file = tmp_path / "state"
    file.write_text("x")
    with pytest.raises(CheckpointError, match="is a file") as info:
        CheckpointStore(file)
    assert isinstance(info.value, GossipError) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="cannot create") as info:
        CheckpointStore(file / "sub")
    assert "\n" not in str(info.value)


def test_directory_gone_at_save_time_gives_one_line_error(tmp_path: Path) -> None:
    directory = tmp_path / "ckpts"
    store = CheckpointStore(directory)
    directory.rmdir()
    directory.write_text("now a file")
    with pytest.raises(CheckpointError, match="cannot write checkpoint") as info:
        _save(store, 1)
    assert "\n" not in str(info.value)


def test_failed_write_leaves_previous_state_and_no_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    good = _save(store, 1)

    def disk_full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("peers.checkpoint.os.replace", disk_full)
    with pytest.raises(CheckpointError, match="No space left") as info:
        _save(store, 2)
    assert "\n" not in str(info.value)
    assert sorted(tmp_path.iterdir()) == [good]
    assert _load(store).seq == 1


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions"
)
def test_unwritable_directory_gives_one_line_error(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    store = CheckpointStore(directory)
    directory.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="cannot write checkpoint"):
            _save(store, 1)
    finally:
        directory.chmod(0o700)


def test_save_rejects_bad_input(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    with pytest.raises(ValueError, match="finite 1-D float32"):
        store.save(torch.tensor([1.0, float("inf")]), 1, SCHEMA, [], {}, 0.0)
    with pytest.raises(ValueError, match="finite 1-D float32"):
        store.save(torch.zeros(3, dtype=torch.float64), 1, SCHEMA, [], {}, 0.0)
    with pytest.raises(ValueError, match="finite 1-D float32"):
        store.save(torch.zeros(2, 2), 1, SCHEMA, [], {}, 0.0)
    with pytest.raises(ValueError, match="age"):
        store.save(torch.zeros(3), -1, SCHEMA, [], {}, 0.0)
    with pytest.raises(ValueError, match="created_at"):
        store.save(torch.zeros(3), 1, SCHEMA, [], {}, float("nan"))
    assert store.list() == []
    with pytest.raises(GossipError, match="keep"):
        CheckpointStore(tmp_path, keep=0)


# --------------------------------------------------------------------------- pruning


def _corrupt_copies(tmp_path: Path, good: Path, seqs: list[int]) -> list[Path]:
    """Files newer than ``good`` (higher seq) that all fail verification, each a different
    way: random bytes, a torn copy, an edited age, another format."""
    makers = [
        lambda raw: os.urandom(300),
        lambda raw: raw[: len(raw) // 2],
        None,  # edited age
        b"",
    ]
    out = []
    for seq, make in zip(seqs, makers, strict=False):
        path = tmp_path / f"ckpt-{seq:010d}.safetensors"
        if make is None:
            path.write_bytes(good.read_bytes())
            _rewrite(path, {"seq": str(seq), "age": "999999"})
        elif isinstance(make, bytes):
            path.write_bytes(make)
        else:
            path.write_bytes(make(good.read_bytes()))
        out.append(path)
    return out


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_pruning_never_counts_bad_files_nor_deletes_the_newest_good_one(
    tmp_path: Path, keep: int
) -> None:
    store = CheckpointStore(tmp_path, keep=keep)
    good = [_save(store, seed, age=196_064 + seed) for seed in range(keep)]
    bad = _corrupt_copies(tmp_path, good[-1], [50, 51, 52, 53])
    # Each save adds one valid checkpoint; a good one goes only once `keep` newer valid exist.
    for n in range(1, keep + 2):
        newest = _save(store, 10 + n)
        assert _seq_of_name(newest) == 53 + n
        kept = sorted(p for p in store.list() if p not in bad)
        expected = [*good, *sorted(store.list())[-n:]][-keep:]
        assert kept == sorted(expected), n
        assert all(p.exists() for p in bad)  # neither counted nor deleted
        assert _load(store).seq == 53 + n
    # A node restarted now resumes from the newest good one.
    assert _load(CheckpointStore(tmp_path, keep=keep)).seq == 53 + keep + 1


def _seq_of_name(path: Path) -> int:
    return int(path.name[5:15])


def test_the_reported_case_a_good_checkpoint_outlives_newer_corrupt_ones(tmp_path: Path) -> None:
    # One good checkpoint at age 196,064, then corrupt files with higher numbers: today's
    # restart must resume at 196,064, and a save must not delete the good one unless `keep`
    # newer valid ones exist.
    store = CheckpointStore(tmp_path, keep=2)
    good = _save(store, 1, age=196_064)
    bad = _corrupt_copies(tmp_path, good, [2, 3, 4, 5])
    restarted = CheckpointStore(tmp_path, keep=2)
    assert _load(restarted).age == 196_064
    assert len(restarted.skipped) == len(bad)
    first = _save(restarted, 2, age=196_100)
    assert good.exists() and first.exists()
    second = _save(restarted, 3, age=196_200)
    assert not good.exists() and first.exists() and second.exists()
    assert all(p.exists() for p in bad)


def test_a_good_file_corrupted_later_stops_counting(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    first = _save(store, 1)
    second = _save(store, 2)
    raw = bytearray(second.read_bytes())
    raw[_data_offset(second) + 8] ^= 0x01
    second.write_bytes(bytes(raw))
    st = second.stat()
    os.utime(second, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a later edit
    third = _save(store, 3)
    # The cached "valid" of the old version is not trusted: first is still one of two good.
    assert first.exists() and second.exists() and third.exists()
    assert _load(store).seq == 3


def test_other_models_checkpoints_are_neither_counted_nor_pruned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    other = _save(store, 1, schema=OTHER)
    mine = [_save(store, seed) for seed in range(2, 5)]
    assert store.list() == [other, mine[-1]]
    assert store.load_latest(OTHER) is not None


def test_pruning_reads_each_file_once_not_at_every_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = CheckpointStore(tmp_path, keep=3)
    for seed in range(3):
        _save(first, seed)
    garbage = tmp_path / "ckpt-0000000050.safetensors"
    garbage.write_bytes(os.urandom(300))
    reads: Counter[str] = Counter()
    real_read = peers.checkpoint._read

    def counting_read(path: Path, schema_hash: str) -> Checkpoint:
        reads[path.name] += 1
        return real_read(path, schema_hash)

    monkeypatch.setattr(peers.checkpoint, "_read", counting_read)
    restarted = CheckpointStore(tmp_path, keep=3)
    for seed in range(10, 16):
        _save(restarted, seed)
    # Each file that existed before is verified once; the store's own new files never.
    assert reads == Counter({p: 1 for p in ["ckpt-0000000001.safetensors",
                                            "ckpt-0000000002.safetensors",
                                            "ckpt-0000000003.safetensors",
                                            garbage.name]})  # fmt: skip
    assert garbage.exists() and len(restarted.list()) == 4


def test_exhausted_numbers_are_one_line(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    (tmp_path / "ckpt-9999999999.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="exhausted") as info:
        _save(store, 1)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- counters


@dataclass
class _Counters:
    pushes: int = 0
    received: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    busy_s: float = 0.0
    degraded: bool = False
    recent: list[int] = field(default_factory=list)  # not plain data: never stored


def test_counters_round_trip_by_name_through_a_checkpoint(tmp_path: Path) -> None:
    saved = _Counters(3, 10, 6, Counter({"busy": 3, "replay": 1}), 2.5, True, [1])
    snapshot = counters_snapshot(saved)
    assert "recent" not in snapshot
    store = CheckpointStore(tmp_path)
    store.save(_flat(1), 1, SCHEMA, [], snapshot, 0.0)
    restored = _Counters()
    rejected = restored.rejected
    assert restore_counters(restored, _load(store).counters) == []
    assert restored == dataclasses.replace(saved, recent=[])
    assert restored.rejected is rejected  # filled in place
    assert restored.received == restored.accepted + sum(restored.rejected.values())


def test_restoring_counters_ignores_unknown_names_and_wrong_types() -> None:
    counters = _Counters(pushes=1, rejected=Counter({"old": 9}))
    saved: dict[str, Any] = {
        "pushes": 5,
        "received": "7",  # wrong type
        "accepted": True,  # a bool is not a count
        "rejected": {"busy": 2, "bad": "x", "worse": 1.5},
        "busy_s": 3,  # an int is fine for a float
        "degraded": 1,  # not a bool
        "retired_field": 4,  # from an older version: unknown now
        "recent": [1, 2],
    }
    ignored = restore_counters(counters, saved)
    assert ignored == ["accepted", "degraded", "received", "recent", "rejected", "retired_field"]
    assert (counters.pushes, counters.received, counters.accepted) == (5, 0, 0)
    assert counters.rejected == Counter({"busy": 2}) and counters.busy_s == 3.0
    assert counters.degraded is False
