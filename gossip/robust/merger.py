"""A peer's merge pipeline: which rule, and the little state robust rules keep.

Merge specs (``--merge``):

``age-weighted`` | ``average`` | ``replace`` | ``none``
    The classic rules of :mod:`gossip.merge` (stateless).
``clipped[:MULT]``
    Age-weighted averaging of the *clipped* received model (ClippedGossip's CLIP, He,
    Karimireddy & Jaggi 2022, applied one message at a time as gossip receives them):
    ``w = w_l + a_r * clip(w_r - w_l, tau)`` with ``a_r`` the age weight and the adaptive
    radius ``tau = MULT * lower_median(d_s)`` over the distances ``d_s = ||w_s - w_l||`` at
    receipt of the latest model of each *other* recent distinct sender (nobody vouches for
    itself; a peer that has heard from one sender only uses its distance). No message moves
    the model by more than ``tau``, and fewer than half of the senders cannot raise ``tau``
    beyond the honest distances. MULT defaults to 1.
``trimmed-mean[:K]``
    Coordinate-wise trimmed mean (drop K largest and K smallest; K defaults to 1) over the
    local model and the latest model of each recent distinct sender; the local model then
    moves toward it by the age weight ``a_r``: ``w = w_l + a_r * (trimmed - w_l)``.
``median``
    The same with the coordinate-wise median.

Every rule returns age ``max(t_l, t_r)``, where ``t_r`` has already been bounded by the age
guard (:mod:`gossip.age_guard`). The window rules keep references to received tensors, which
must not be mutated afterwards (received models and published snapshots never are).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gossip.errors import ConfigError
from gossip.merge import MERGE_RULES, AgeWeightedMerge, MergeRule
from gossip.robust.rules import coordinate_median, lower_median, trimmed_mean
from gossip.robust.window import SenderWindow

ROBUST_RULES = ("clipped", "trimmed-mean", "median")

MERGE_NAMES = (*MERGE_RULES, *ROBUST_RULES)


@dataclass(frozen=True)
class MergeSpec:
    """A parsed ``--merge`` value: the rule's name and its parameter (if any)."""

    name: str
    param: float = 0.0

    def __str__(self) -> str:
        return (
            self.name
            if self.name not in ("clipped", "trimmed-mean")
            else (f"{self.name}:{self.param:g}")
        )


def parse_merge_spec(spec: str) -> MergeSpec:
    """``age-weighted``, ``clipped:1.5``, ``trimmed-mean:2``, ...; one-line ConfigError."""
    name, _, arg = spec.strip().partition(":")
    if name not in MERGE_NAMES:
        raise ConfigError(
            f"unknown merge rule {spec!r}; choose one of: age-weighted, average, replace, "
            "none, clipped[:MULT], trimmed-mean[:K], median"
        )
    if name == "clipped":
        try:
            mult = float(arg) if arg else 1.0
        except ValueError:
            mult = -1.0
        if not 0 < mult < float("inf"):
            raise ConfigError(
                f"merge {spec!r}: clipped:MULT needs a positive number, e.g. clipped:1.5"
            )
        return MergeSpec(name, mult)
    if name == "trimmed-mean":
        if arg and not arg.isdigit():
            raise ConfigError(f"merge {spec!r}: trimmed-mean:K needs an integer K >= 1")
        k = int(arg) if arg else 1
        if k < 1:
            raise ConfigError(f"merge {spec!r}: trimmed-mean:K needs an integer K >= 1")
        return MergeSpec(name, k)
    if arg:
        raise ConfigError(f"merge rule {name!r} takes no parameter, got {spec!r}")
    return MergeSpec(name)


class Merger:
    """Merges received models into a peer's flat parameters in place."""

    def __init__(self, spec: str | MergeSpec, window: int = 8) -> None:
        self.spec = spec if isinstance(spec, MergeSpec) else parse_merge_spec(spec)
        name = self.spec.name
        self.rule: MergeRule = MERGE_RULES.get(name, AgeWeightedMerge())
        self._models: SenderWindow[torch.Tensor] = SenderWindow(window)
        self._distances: SenderWindow[float] = SenderWindow(window)
        self.last_radius: float | None = None  # the clipping radius of the last merge
        # How far the last merge moved the model toward what it merged, in [0, 1]: the
        # weight of the momentum it takes over (see Learner.merged).
        self.last_weight: float = 0.0

    @property
    def merges(self) -> bool:
        """False for ``none``: such a peer need not screen or decode received models."""
        return self.rule.merges or self.spec.name in ROBUST_RULES

    def merge_(self, w_l: torch.Tensor, t_l: int, w_r: torch.Tensor, t_r: int, sender: str) -> int:
        """Merge ``w_r`` (age ``t_r``, from ``sender``) into ``w_l`` in place; the new age."""
        name = self.spec.name
        if name not in ROBUST_RULES:
            self.last_weight = self.rule.weight(t_l, t_r) if self.rule.merges else 0.0
            return int(self.rule.merge_(w_l, t_l, w_r, t_r))
        if name == "clipped":
            self._clipped_(w_l, t_l, w_r, t_r, sender)
            return max(int(t_l), int(t_r))
        self._models.put(sender, w_r)
        stacked = torch.stack([w_l, *self._models.values()])
        if name == "median":
            robust = coordinate_median(stacked)
        else:
            robust = trimmed_mean(stacked, int(self.spec.param))
        # Move toward the robust aggregate as far as age-weighting would move toward the
        # received model: replacing the model by it discarded the local progress every merge
        # (the window's models are a few periods old), 0.67 instead of 0.80 on the default job.
        self.last_weight = AgeWeightedMerge().weight(t_l, t_r)
        w_l.lerp_(robust, self.last_weight)
        return max(int(t_l), int(t_r))

    def merge_many_(
        self, w_l: torch.Tensor, t_l: int, received: list[tuple[torch.Tensor, int, str]]
    ) -> int:
        """Merge several received models ``(w, t, sender)`` into ``w_l`` at once; the new age.

        ``age-weighted``: ``w = (t_l w_l + sum t_i w_i) / (t_l + sum t_i)`` (equal weights
        when every age is 0); ``average``: the plain mean of all; ``replace``: the oldest
        received model if it is at least as old as ours. The robust rules take them one at
        a time (each message is clipped or screened on its own). Age: the maximum."""
        name = self.spec.name
        if not received:
            return int(t_l)
        if name in ROBUST_RULES or name == "none":
            age = int(t_l)
            weight_kept = 1.0
            for w, t, sender in received:
                age = self.merge_(w_l, age, w, t, sender)
                weight_kept *= 1.0 - self.last_weight
            self.last_weight = 1.0 - weight_kept
            return age
        ages = [float(t) for _, t, _ in received]
        top = max(int(t) for _, t, _ in received)
        if name == "replace":
            best = max(range(len(received)), key=lambda i: ages[i])
            self.last_weight = 1.0 if ages[best] >= t_l else 0.0
            if self.last_weight:
                w_l.copy_(received[best][0])
            return max(int(t_l), top)
        weights = [float(t_l), *ages] if name == "age-weighted" else [1.0] * (1 + len(ages))
        total = sum(weights)
        if total <= 0:
            weights, total = [1.0] * len(weights), float(len(weights))
        # Accumulate in the model's precision from the local model: one pass per model.
        w_l.mul_(weights[0] / total)
        for (w, _, _), a in zip(received, weights[1:], strict=True):
            w_l.add_(w, alpha=a / total)
        self.last_weight = 1.0 - weights[0] / total
        return max(int(t_l), top)

    def _clipped_(
        self, w_l: torch.Tensor, t_l: int, w_r: torch.Tensor, t_r: int, sender: str
    ) -> None:
        diff = w_r - w_l
        dist = float(torch.linalg.vector_norm(diff))
        if not dist < float("inf"):  # overflowed or NaN: nothing of it can be used
            self.last_radius, self.last_weight = 0.0, 0.0
            return
        # The radius comes from the other senders: nobody vouches for itself. A peer that
        # hears from one sender only (a leaf) uses that sender's distance: it has no choice.
        others = self._distances.values(exclude=sender)
        self._distances.put(sender, dist)
        radius = self.spec.param * lower_median(others if others else [dist])
        self.last_radius = radius
        ratio = min(1.0, radius / dist) if dist > 0 else 1.0
        self.last_weight = AgeWeightedMerge().weight(t_l, t_r) * ratio
        w_l.add_(diff, alpha=self.last_weight)
