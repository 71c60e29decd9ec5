"""Checkpoints: atomic writes, pruning, seq after restart, and fallback over bad files."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from gossip.errors import GossipError
from peers.checkpoint import Checkpoint, CheckpointError, CheckpointStore

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
    assert store.skipped == []


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
    assert store.skipped == [(newest, "sha256: tensor bytes do not match their checksum")]
    assert good.exists()


def test_nonfinite_payload_with_matching_sha_is_rejected(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _save(store, 1)
    newest = _save(store, 2)
    raw = bytearray(newest.read_bytes())
    start = _data_offset(newest)
    raw[start : start + 4] = struct.pack("<f", float("nan"))
    # Forge a consistent checksum: only the finiteness check can catch this one.
    digest = hashlib.sha256(bytes(raw[start:])).hexdigest()
    old_digest = json.loads(raw[8:start])["__metadata__"]["sha256"]
    newest.write_bytes(bytes(raw).replace(old_digest.encode(), digest.encode()))
    assert _load(store).seq == 1
    assert store.skipped[0][1].startswith("nonfinite")


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
