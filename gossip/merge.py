"""Merge rules: how a peer combines its model with a received one.

Every rule is a pure function of ``(w_local, t_local, w_remote, t_remote)`` returning the
merged ``(w, t)``. ``w`` may carry a leading batch dimension (``(B, D)`` with ages of shape
``(B,)``) so that the batched simulation engine merges thousands of peer pairs at once with
the same code. Each rule is a convex combination ``a_l * w_l + a_r * w_r`` with weights from
:meth:`MergeRule.weights`, which always sum to one.

Rules (by name):

``age-weighted`` (default)
    ``w = (t_l w_l + t_r w_r) / (t_l + t_r)``, ``t = max(t_l, t_r)``. A side that has seen no
    samples contributes nothing; two zero-aged models average equally.
``average``
    ``w = (w_l + w_r) / 2``, ``t = max(t_l, t_r)``.
``replace``
    The original Gossip Learning rule: take the received model when it is at least as old as
    the local one (``t_r >= t_l``), otherwise keep the local one; ``t = max(t_l, t_r)``.
``none``
    Ignore received models (peers train alone): the baseline that gossip must beat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gossip.errors import ConfigError

AgeLike = torch.Tensor | float | int


def _as_age_tensor(t: AgeLike, like: torch.Tensor) -> torch.Tensor:
    """Ages as a float64 tensor on ``like``'s device (exact for ages up to 2**53)."""
    return torch.as_tensor(t, dtype=torch.float64, device=like.device)


@dataclass(frozen=True)
class MergeRule:
    """Base class of merge rules; subclasses define :meth:`weights`."""

    name: str = "base"

    def weights(self, t_l: torch.Tensor, t_r: torch.Tensor) -> torch.Tensor:
        """Weight of the *remote* model, ``a_r`` in [0, 1]; the local weight is ``1 - a_r``."""
        raise NotImplementedError

    def weight(self, t_l: float, t_r: float) -> float:
        """:meth:`weights` for one pair of plain numbers (the per-peer hot path)."""
        return float(
            self.weights(
                torch.tensor(float(t_l), dtype=torch.float64),
                torch.tensor(float(t_r), dtype=torch.float64),
            )
        )

    def merge(
        self, w_l: torch.Tensor, t_l: AgeLike, w_r: torch.Tensor, t_r: AgeLike
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pure merge: returns new ``(w, t)`` and leaves the inputs untouched."""
        tl, tr = _as_age_tensor(t_l, w_l), _as_age_tensor(t_r, w_l)
        a_r = self._broadcast(self.weights(tl, tr), w_l)
        return torch.lerp(w_l, w_r, a_r), torch.maximum(tl, tr)

    def merge_(
        self, w_l: torch.Tensor, t_l: AgeLike, w_r: torch.Tensor, t_r: AgeLike
    ) -> torch.Tensor | float:
        """In-place merge into ``w_l`` (the hot path of a peer); returns the merged age.

        With plain-number ages (one model) the weight is computed in Python and the merge is
        a single fused ``lerp_`` kernel; with age tensors (a batch) rows are weighted apart.
        """
        if not isinstance(t_l, torch.Tensor) and not isinstance(t_r, torch.Tensor):
            w_l.lerp_(w_r, self.weight(t_l, t_r))
            return float(max(t_l, t_r))
        tl, tr = _as_age_tensor(t_l, w_l), _as_age_tensor(t_r, w_l)
        w_l.lerp_(w_r, self._broadcast(self.weights(tl, tr), w_l))
        return torch.maximum(tl, tr)

    @staticmethod
    def _broadcast(a_r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Shape a weight of shape ``(B,)`` as ``(B, 1, ...)`` to scale rows of ``w``."""
        a_r = a_r.to(w.dtype)
        return a_r.reshape(a_r.shape + (1,) * (w.dim() - a_r.dim()))

    @property
    def merges(self) -> bool:
        """False for the ``none`` rule: a peer using it need not even decode received models."""
        return True


@dataclass(frozen=True)
class AgeWeightedMerge(MergeRule):
    name: str = "age-weighted"

    def weights(self, t_l: torch.Tensor, t_r: torch.Tensor) -> torch.Tensor:
        total = t_l + t_r
        # Both sides unaged: neither knows anything, average them equally.
        return torch.where(total > 0, t_r / torch.where(total > 0, total, 1.0), 0.5)

    def weight(self, t_l: float, t_r: float) -> float:
        total = t_l + t_r
        return t_r / total if total > 0 else 0.5


@dataclass(frozen=True)
class AverageMerge(MergeRule):
    name: str = "average"

    def weights(self, t_l: torch.Tensor, t_r: torch.Tensor) -> torch.Tensor:
        return torch.full_like(
            torch.broadcast_to(t_l, torch.broadcast_shapes(t_l.shape, t_r.shape)), 0.5
        )

    def weight(self, t_l: float, t_r: float) -> float:
        return 0.5


@dataclass(frozen=True)
class ReplaceMerge(MergeRule):
    name: str = "replace"

    def weights(self, t_l: torch.Tensor, t_r: torch.Tensor) -> torch.Tensor:
        return (t_r >= t_l).to(torch.float64)

    def weight(self, t_l: float, t_r: float) -> float:
        return 1.0 if t_r >= t_l else 0.0


@dataclass(frozen=True)
class NoMerge(MergeRule):
    name: str = "none"

    def weights(self, t_l: torch.Tensor, t_r: torch.Tensor) -> torch.Tensor:
        return torch.zeros(torch.broadcast_shapes(t_l.shape, t_r.shape), dtype=torch.float64)

    def merge(
        self, w_l: torch.Tensor, t_l: AgeLike, w_r: torch.Tensor, t_r: AgeLike
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Peers training alone keep their own age too.
        return w_l.clone(), _as_age_tensor(t_l, w_l)

    def merge_(
        self, w_l: torch.Tensor, t_l: AgeLike, w_r: torch.Tensor, t_r: AgeLike
    ) -> torch.Tensor | float:
        return t_l if isinstance(t_l, torch.Tensor) else float(t_l)

    @property
    def merges(self) -> bool:
        return False


MERGE_RULES: dict[str, MergeRule] = {
    r.name: r for r in (AgeWeightedMerge(), AverageMerge(), ReplaceMerge(), NoMerge())
}


def get_merge_rule(name: str) -> MergeRule:
    """The merge rule called ``name``; a one-line ConfigError names the valid ones."""
    try:
        return MERGE_RULES[name]
    except KeyError:
        valid = ", ".join(MERGE_RULES)
        raise ConfigError(f"unknown merge rule {name!r}; choose one of: {valid}") from None
