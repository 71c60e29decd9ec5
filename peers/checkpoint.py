"""Durable state of a real node: periodic, atomic checkpoints so a restarted node resumes.

A checkpoint is a safetensors file ``ckpt-<seq:010d>.safetensors`` holding one float32 tensor
``flat`` (the model's parameters in schema order) and string metadata: format version, age,
schema hash, seq, created_at, the sampler's view and the node's counters (both JSON), the
replay high-water mark of the node's message verifier (see :mod:`peers.auth`), whether a
clean stop wrote it, and a ``checksum``: the sha256 of every other metadata field together
with the tensor bytes. An edited field (age, counters, view, seq, ...) or a corrupt payload
behind an intact header is caught, and the file skipped with a reason.

Writing is atomic: a temporary file in the same directory is written, flushed and fsynced,
renamed over the final name with :func:`os.replace`, and the directory is fsynced. Only then
are old checkpoints pruned, and only *valid* ones: the checkpoints that pass every check for
this model are counted, the newest ``keep`` of them kept and the older valid ones deleted. A
file that fails a check (torn, corrupt, edited, another model or format) never counts toward
``keep``, so it can never be the reason a good checkpoint is deleted; it is left in place (to
inspect) and skipped when loading. What pruning verified is remembered by (inode, size,
mtime), so a file is read once, not at every save. Loading takes the newest checkpoint that
passes every check and reports the ones it skipped with why.

Never pickle, never ``torch.load``: the files are parsed by the safetensors library only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# safetensors' own parser (no pickle), named so it cannot be mistaken for torch.load.
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from gossip.errors import ConfigError, GossipError

log = logging.getLogger(__name__)

VERSION = "gossip-checkpoint/2"
_NAME = re.compile(r"ckpt-[0-9]{10}\.safetensors")
_MAX_SEQ = 10**10 - 1  # ten digits in the file name
_CHECKSUM_DOMAIN = b"gossip-checkpoint/2 checksum\n"


class CheckpointError(GossipError):
    """The checkpoint directory cannot be used (not a directory, not writable)."""


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One loaded checkpoint. ``flat`` is a float32 1-D cpu tensor. ``auth_high_water``:
    the replay high-water mark stored with it (None: none). ``clean_stop``: written by a
    node that stopped cleanly (it accepted nothing after it)."""

    flat: torch.Tensor
    age: int
    schema_hash: str
    sampler_view: list[str]
    counters: dict[str, Any]
    seq: int
    created_at: float
    auth_high_water: float | None = None
    clean_stop: bool = False


@dataclass(frozen=True)
class _Verdict:
    """What checking one version of a file for one schema found (why: None when valid)."""

    key: tuple[int, int, int]
    schema_hash: str
    why: str | None


class CheckpointStore:
    """The checkpoints of one node in one directory (created if missing)."""

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ConfigError(f"checkpoint keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.skipped: list[tuple[Path, str]] = []
        self._last_seq = 0
        self._verdicts: dict[str, _Verdict] = {}  # file name -> what checking it found
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint path {self.directory} is a file; pass a directory")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(
                f"cannot create checkpoint directory {self.directory}: {e.strerror or e}"
            ) from None

    def list(self) -> list[Path]:
        """The checkpoint files, oldest first (by seq); temporary files are not listed."""
        found = [p for p in self.directory.glob("ckpt-*") if _NAME.fullmatch(p.name)]
        return sorted(found, key=_seq_of)

    def save(
        self,
        flat: torch.Tensor,
        age: int,
        schema_hash: str,
        sampler_view: Sequence[str],
        counters: dict[str, Any],
        created_at: float,
        *,
        auth_high_water: float | None = None,
        clean_stop: bool = False,
    ) -> Path:
        """Write the next checkpoint atomically, prune old valid ones, and return its path."""
        # What load would reject is refused here, so that it cannot prune the good ones.
        data = flat.detach().to("cpu").contiguous()
        if data.dim() != 1 or data.dtype != torch.float32 or not bool(data.isfinite().all()):
            raise ValueError(f"flat must be a finite 1-D float32 tensor, got {flat.dtype}")
        if isinstance(age, bool) or int(age) != age or age < 0 or not math.isfinite(created_at):
            raise ValueError(f"age must be an int >= 0, created_at finite: {age!r}, {created_at!r}")
        if auth_high_water is not None and not math.isfinite(auth_high_water):
            raise ValueError(f"auth_high_water must be finite or None, got {auth_high_water!r}")
        seq = max([self._last_seq, *map(_seq_of, self.list())]) + 1
        if seq > _MAX_SEQ:
            raise CheckpointError(
                f"checkpoint numbers in {self.directory} are exhausted (a file is numbered"
                f" {seq - 1}); move the checkpoint files away and restart"
            )
        metadata = {
            "version": VERSION,
            "age": str(int(age)),
            "schema_hash": schema_hash,
            "seq": str(seq),
            "created_at": repr(float(created_at)),
            "sampler_view": json.dumps(list(sampler_view)),
            "counters": json.dumps(counters, sort_keys=True),
            "auth_high_water": "" if auth_high_water is None else repr(float(auth_high_water)),
            "clean_stop": "true" if clean_stop else "false",
        }
        metadata["checksum"] = checkpoint_checksum(metadata, data)
        body = save_safetensors({"flat": data}, metadata=metadata)
        final = self.directory / f"ckpt-{seq:010d}.safetensors"
        tmp = self.directory / f".ckpt-{seq:010d}.tmp"
        try:
            for leftover in self.directory.glob(".ckpt-*.tmp"):
                leftover.unlink(missing_ok=True)
            with open(tmp, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise CheckpointError(
                f"cannot write checkpoint in {self.directory}: {e.strerror or e}; "
                "check that it is a writable directory with free space"
            ) from None
        self._last_seq = seq
        with contextlib.suppress(OSError):  # we just wrote it: valid without reading it back
            self._verdicts[final.name] = _Verdict(_stat_key(final), schema_hash, None)
        self._prune(schema_hash)
        return final

    def _prune(self, schema_hash: str) -> None:
        """Delete the valid checkpoints of this schema beyond the newest ``keep`` valid ones;
        files that fail a check are neither counted nor deleted."""
        files = self.list()
        names = {p.name for p in files}
        for gone in set(self._verdicts) - names:
            del self._verdicts[gone]
        valid = [p for p in files if self._is_valid(p, schema_hash)]
        for old in valid[: max(0, len(valid) - self.keep)]:
            with contextlib.suppress(OSError):
                old.unlink()
            self._verdicts.pop(old.name, None)

    def _is_valid(self, path: Path, schema_hash: str) -> bool:
        """Whether ``path`` passes every check for this schema (read once per file version)."""
        try:
            key = _stat_key(path)  # before reading: a change after it is seen next time
        except OSError:
            return False
        known = self._verdicts.get(path.name)
        if known is not None and known.key == key and known.schema_hash == schema_hash:
            return known.why is None
        try:
            _read(path, schema_hash)
            why = None
        except _Invalid as e:
            why = str(e)
            log.warning("checkpoint %s is not valid (%s): not counted toward keep", path, why)
        self._verdicts[path.name] = _Verdict(key, schema_hash, why)
        return why is None

    def load_latest(self, schema_hash: str) -> Checkpoint | None:
        """The newest valid checkpoint for this schema, or None; fills :attr:`skipped`."""
        self.skipped = []
        for path in reversed(self.list()):
            try:
                key: tuple[int, int, int] | None = _stat_key(path)
            except OSError:
                key = None
            try:
                ckpt = _read(path, schema_hash)
            except _Invalid as e:
                log.warning("skipping checkpoint %s: %s", path, e)
                self.skipped.append((path, str(e)))
                if key is not None:
                    self._verdicts[path.name] = _Verdict(key, schema_hash, str(e))
                continue
            if key is not None:
                self._verdicts[path.name] = _Verdict(key, schema_hash, None)
            return ckpt
        return None


class _Invalid(Exception):
    """Why a checkpoint file is not usable; the message starts with a short reason word."""


def checkpoint_checksum(metadata: Mapping[str, str], flat: torch.Tensor) -> str:
    """The sha256 a checkpoint stores as ``checksum``: over every other metadata field (as
    canonical JSON) and the bytes of the float32 tensor ``flat``."""
    fields = {k: v for k, v in metadata.items() if k != "checksum"}
    head = json.dumps(fields, sort_keys=True, ensure_ascii=True).encode()
    digest = hashlib.sha256(_CHECKSUM_DOMAIN)
    digest.update(len(head).to_bytes(8, "little"))
    digest.update(head)
    digest.update(flat.detach().to("cpu").contiguous().numpy().data)
    return digest.hexdigest()


def _read(path: Path, schema_hash: str) -> Checkpoint:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _Invalid(f"unreadable: {e.strerror or e}") from None
    try:
        tensors = load_safetensors(raw)  # validates header, offsets and length first
        meta = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
        if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
            raise ValueError("metadata is not a table of strings")
    except Exception as e:  # the parser's errors are not one class: any failure is corruption
        raise _Invalid(f"corrupt: {e}") from None
    if meta.get("version") != VERSION:
        raise _Invalid(f"version: {str(meta.get('version'))[:64]!r} is not {VERSION!r}")
    flat = tensors.get("flat")
    if set(tensors) != {"flat"} or flat is None or flat.dim() != 1 or flat.dtype != torch.float32:
        raise _Invalid("corrupt: expected exactly one 1-D float32 tensor 'flat'")
    if checkpoint_checksum(meta, flat) != meta.get("checksum"):
        raise _Invalid("checksum: contents do not match their checksum (corrupt or edited)")
    if meta.get("schema_hash") != schema_hash:
        raise _Invalid(f"schema: checkpoint is for model {meta.get('schema_hash')!r}")
    if not bool(torch.isfinite(flat).all()):
        raise _Invalid("nonfinite: tensor holds NaN or infinity")
    try:
        age, seq, created_at = int(meta["age"]), int(meta["seq"]), float(meta["created_at"])
        view, counters = json.loads(meta["sampler_view"]), json.loads(meta["counters"])
        high_water = float(meta["auth_high_water"]) if meta["auth_high_water"] else None
        clean_stop = {"true": True, "false": False}[meta["clean_stop"]]
        ok = age >= 0 and seq == _seq_of(path) and math.isfinite(created_at)
        ok = ok and (high_water is None or math.isfinite(high_water))
        ok = ok and isinstance(counters, dict) and isinstance(view, list)
        if not (ok and all(isinstance(p, str) for p in view)):
            raise ValueError(
                "bad age, created_at, high-water mark, view, counters, or seq not matching"
                " the file name"
            )
    except (KeyError, ValueError) as e:
        raise _Invalid(f"metadata: {e}") from None
    return Checkpoint(
        flat, age, schema_hash, view, counters, seq, created_at, high_water, clean_stop
    )


# --------------------------------------------------------------------------- counters


def counters_snapshot(counters: object) -> dict[str, Any]:
    """The plain-data fields of a counters object, for a checkpoint: ints, bools, finite
    floats and mappings of str to int (a Counter by reason, say); other fields are left out."""
    out: dict[str, Any] = {}
    for name in _field_names(counters):
        value = getattr(counters, name)
        if isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
            out[name] = value
        elif isinstance(value, Mapping) and all(
            isinstance(k, str) and _is_int(v) for k, v in value.items()
        ):
            out[name] = dict(sorted(value.items()))
    return out


def restore_counters(counters: object, saved: Mapping[str, Any]) -> list[str]:
    """Set the fields of ``counters`` from a :func:`counters_snapshot`, by name: an int field
    from an int, a float field from a number, a mapping field (emptied first) from the str ->
    int entries of a mapping. Unknown names and values of the wrong type are ignored; their
    names are returned (sorted)."""
    fields = set(_field_names(counters))
    ignored: list[str] = []
    for name, value in saved.items():
        current = getattr(counters, name, None) if name in fields else None
        if isinstance(current, bool):
            ok = isinstance(value, bool)
        elif isinstance(current, int):
            ok = _is_int(value)
        elif isinstance(current, float):
            ok = (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
            value = float(value) if ok else value
        elif isinstance(current, MutableMapping) and isinstance(value, Mapping):
            entries = {k: v for k, v in value.items() if isinstance(k, str) and _is_int(v)}
            current.clear()
            current.update(entries)
            if len(entries) < len(value):
                ignored.append(name)
            continue
        else:
            ok = False
        if ok:
            setattr(counters, name, value)
        else:
            ignored.append(name)
    return sorted(ignored)


def _field_names(obj: object) -> list[str]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [f.name for f in dataclasses.fields(obj)]
    return list(vars(obj))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- files


def _seq_of(path: Path) -> int:
    return int(path.name[5:15])  # ckpt-<10 digits>.safetensors, checked by list()


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some platforms (Windows) cannot open or fsync a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
