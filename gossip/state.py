"""Model state: the parameters of a torch module as one flat vector, plus the model's age.

Gossip learning merges whole models many times a second, so the parameters of a module are
re-homed into a single contiguous float32 buffer (``ModelState.flat``) and each parameter
becomes a view into it. A merge is then one vector operation on ``flat`` (no per-tensor Python
loop), while the optimizer keeps updating the very same memory through the module's
parameters.

The **age** is the number of training samples the model has seen, as in Gossip Learning
(Ormándi, Hegedűs, Jelasity); age-weighted merging uses it as the weight of each side.

The **schema** (names, shapes, dtypes, in order) identifies the architecture: two peers can
exchange models only if their schema hashes are equal.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

# The usual dtype of the flat buffer; a model whose tensors are all float64 (or float16,
# bfloat16) keeps that dtype. The wire format carries float32, float16 or int8 values.
FLAT_DTYPE = torch.float32


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a model: its name, shape and dtype (torch dtype name)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ModelSchema:
    """The ordered list of tensors that make up a model's exchanged state."""

    specs: tuple[TensorSpec, ...]

    @classmethod
    def from_named_tensors(cls, named: Iterator[tuple[str, torch.Tensor]]) -> ModelSchema:
        return cls(
            tuple(
                TensorSpec(
                    name, tuple(int(d) for d in t.shape), str(t.dtype).removeprefix("torch.")
                )
                for name, t in named
            )
        )

    @classmethod
    def from_module(cls, module: nn.Module) -> ModelSchema:
        return cls.from_named_tensors(iter(exchanged_tensors(module)))

    @cached_property
    def numel(self) -> int:
        """Total number of scalars in the model (the length of the flat vector)."""
        return sum(s.numel for s in self.specs)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start offset of each tensor in the flat vector, plus the total at the end."""
        out = [0]
        for s in self.specs:
            out.append(out[-1] + s.numel)
        return tuple(out)

    @cached_property
    def hash(self) -> str:
        """A stable hex digest of the schema (sha256 of its canonical JSON, 16 bytes)."""
        canonical = json.dumps(
            [[s.name, list(s.shape), s.dtype] for s in self.specs], separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    @cached_property
    def index(self) -> dict[str, int]:
        return {s.name: i for i, s in enumerate(self.specs)}

    def __len__(self) -> int:
        return len(self.specs)


def exchanged_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The tensors a peer exchanges: all parameters, then all floating-point buffers.

    Integer buffers (such as BatchNorm's ``num_batches_tracked``) are local bookkeeping and
    are not averaged.
    """
    named: list[tuple[str, torch.Tensor]] = [(n, p) for n, p in module.named_parameters()]
    named += [(n, b) for n, b in module.named_buffers() if b.is_floating_point()]
    return named


class ModelState:
    """A module's exchanged tensors as views into one flat buffer, with an age.

    Create it with :meth:`bind`; afterwards ``flat`` and the module's parameters share memory,
    so writing to ``flat`` (a merge) changes the module, and an optimizer step on the module
    changes ``flat``.
    """

    def __init__(self, schema: ModelSchema, flat: torch.Tensor, age: int = 0) -> None:
        if flat.dim() != 1 or flat.numel() != schema.numel:
            raise ValueError(
                f"flat vector of {flat.numel()} values does not fit schema of {schema.numel}"
            )
        self.schema = schema
        self.flat = flat
        self.age = int(age)

    @classmethod
    def bind(cls, module: nn.Module, age: int = 0) -> ModelState:
        """Move the module's exchanged tensors into one flat buffer and return its state.

        The buffer lives on the module's device. Call before creating the optimizer or after:
        parameters keep their identity, only their storage moves.
        """
        named = exchanged_tensors(module)
        if not named:
            raise ValueError("module has no parameters to exchange")
        device, dtype = named[0][1].device, named[0][1].dtype
        for name, t in named:
            if t.device != device or t.dtype != dtype:
                raise ValueError(
                    f"tensor {name} is {t.dtype} on {t.device}; all exchanged tensors must be "
                    f"{dtype} on {device} to share one flat buffer"
                )
        schema = ModelSchema.from_named_tensors(iter(named))
        flat = torch.empty(schema.numel, dtype=dtype, device=device)
        offsets = schema.offsets
        with torch.no_grad():
            for i, (_, t) in enumerate(named):
                view = flat[offsets[i] : offsets[i + 1]].view(t.shape)
                view.copy_(t)
                # Re-home the tensor: keep the Parameter/buffer object, swap its storage.
                t.data = view
        return cls(schema, flat, age)

    def views(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Named views of the flat buffer in schema order (no copies)."""
        o = self.schema.offsets
        for i, s in enumerate(self.schema.specs):
            yield s.name, self.flat[o[i] : o[i + 1]].view(s.shape)

    def load_flat(self, flat: torch.Tensor, age: int) -> None:
        """Overwrite parameters and age in place (the module sees the change)."""
        with torch.no_grad():
            self.flat.copy_(flat)
        self.age = int(age)

    def snapshot(self) -> tuple[torch.Tensor, int]:
        """A detached copy of (flat, age), safe to send while training continues."""
        return self.flat.detach().clone(), self.age

    def param_hash(self) -> str:
        """sha256 of the parameters' bytes: equal iff the models are bit-for-bit equal."""
        data = self.flat.detach().cpu().contiguous().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()
