"""Durable state of a real node: periodic, atomic checkpoints so a restarted node resumes.

A checkpoint is a safetensors file ``ckpt-<seq:010d>.safetensors`` holding one float32 tensor
``flat`` (the model's parameters in schema order) and string metadata: format version, age,
schema hash, seq, created_at, the sampler's view and the node's counters (both JSON), and
the sha256 of the tensor bytes, so a corrupt payload behind an intact header is caught.

Writing is atomic: a temporary file in the same directory is written, flushed and fsynced,
renamed over the final name with :func:`os.replace`, and the directory is fsynced. Only then
are checkpoints beyond the newest ``keep`` deleted. Loading takes the newest checkpoint that
passes every check and reports the ones it skipped (torn, corrupt, other model) with why.
Never pickle, never ``torch.load``: the files are parsed by the safetensors library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# safetensors' own parser (no pickle), named so it cannot be mistaken for torch.load.
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from gossip.errors import ConfigError, GossipError

log = logging.getLogger(__name__)

VERSION = "gossip-checkpoint/1"
_NAME = re.compile(r"ckpt-[0-9]{10}\.safetensors")


class CheckpointError(GossipError):
    """The checkpoint directory cannot be used (not a directory, not writable)."""


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One loaded checkpoint. ``flat`` is a float32 1-D cpu tensor."""

    flat: torch.Tensor
    age: int
    schema_hash: str
    sampler_view: list[str]
    counters: dict[str, Any]
    seq: int
    created_at: float


class CheckpointStore:
    """The checkpoints of one node in one directory (created if missing)."""

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ConfigError(f"checkpoint keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.skipped: list[tuple[Path, str]] = []
        self._last_seq = 0
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
    ) -> Path:
        """Write the next checkpoint atomically, prune old ones, and return its path."""
        # What load would reject is refused here, so that it cannot prune the good ones.
        data = flat.detach().to("cpu").contiguous()
        if data.dim() != 1 or data.dtype != torch.float32 or not bool(data.isfinite().all()):
            raise ValueError(f"flat must be a finite 1-D float32 tensor, got {flat.dtype}")
        if isinstance(age, bool) or int(age) != age or age < 0 or not math.isfinite(created_at):
            raise ValueError(f"age must be an int >= 0, created_at finite: {age!r}, {created_at!r}")
        seq = max([self._last_seq, *map(_seq_of, self.list())]) + 1
        metadata = {
            "version": VERSION,
            "age": str(int(age)),
            "schema_hash": schema_hash,
            "seq": str(seq),
            "created_at": repr(float(created_at)),
            "sampler_view": json.dumps(list(sampler_view)),
            "counters": json.dumps(counters, sort_keys=True),
            "sha256": _sha256(data),
        }
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
        files = self.list()  # the new one is the newest: prune from the oldest end
        for old in files[: max(0, len(files) - self.keep)]:
            with contextlib.suppress(OSError):
                old.unlink()
        return final

    def load_latest(self, schema_hash: str) -> Checkpoint | None:
        """The newest valid checkpoint for this schema, or None; fills :attr:`skipped`."""
        self.skipped = []
        for path in reversed(self.list()):
            try:
                return _read(path, schema_hash)
            except _Invalid as e:
                log.warning("skipping checkpoint %s: %s", path, e)
                self.skipped.append((path, str(e)))
        return None


class _Invalid(Exception):
    """Why a checkpoint file is not usable; the message starts with a short reason word."""


def _read(path: Path, schema_hash: str) -> Checkpoint:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _Invalid(f"unreadable: {e.strerror or e}") from None
    try:
        tensors = load_safetensors(raw)  # validates header, offsets and length first
        meta = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    except Exception as e:  # the parser's errors are not one class: any failure is corruption
        raise _Invalid(f"corrupt: {e}") from None
    if meta.get("version") != VERSION:
        raise _Invalid(f"version: {meta.get('version')!r} is not {VERSION!r}")
    if meta.get("schema_hash") != schema_hash:
        raise _Invalid(f"schema: checkpoint is for model {meta.get('schema_hash')!r}")
    flat = tensors.get("flat")
    if set(tensors) != {"flat"} or flat is None or flat.dim() != 1 or flat.dtype != torch.float32:
        raise _Invalid("corrupt: expected exactly one 1-D float32 tensor 'flat'")
    if _sha256(flat) != meta.get("sha256"):
        raise _Invalid("sha256: tensor bytes do not match their checksum")
    if not bool(torch.isfinite(flat).all()):
        raise _Invalid("nonfinite: tensor holds NaN or infinity")
    try:
        age, seq, created_at = int(meta["age"]), int(meta["seq"]), float(meta["created_at"])
        view, counters = json.loads(meta["sampler_view"]), json.loads(meta["counters"])
        ok = age >= 0 and seq == _seq_of(path) and math.isfinite(created_at)
        ok = ok and isinstance(counters, dict) and isinstance(view, list)
        if not (ok and all(isinstance(p, str) for p in view)):
            raise ValueError("bad age, created_at, view, counters, or seq not matching file name")
    except (KeyError, ValueError) as e:
        raise _Invalid(f"metadata: {e}") from None
    return Checkpoint(flat, age, schema_hash, view, counters, seq, created_at)


def _seq_of(path: Path) -> int:
    return int(path.name[5:15])  # ckpt-<10 digits>.safetensors, checked by list()


def _sha256(flat: torch.Tensor) -> str:
    return hashlib.sha256(flat.contiguous().numpy().tobytes()).hexdigest()


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some platforms (Windows) cannot open or fsync a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
