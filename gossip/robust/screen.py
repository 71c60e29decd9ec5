"""The outlier screen every received model passes before any merge rule.

A schema-valid model can still be absurd: one push whose values are all 1e30 (finite in
float32) turned a victim's model into NaN for good. The screen refuses a received model whose
norm is more than ``factor`` times a reference that honest data determines:

    reference = max(||w_local||, lower_median({||w_local||} + latest norms of the other
                                              recent senders), floor)
    floor = floor_rms * sqrt(number of parameters)

* The local model is honest, so a newcomer's tiny model still lets the screen open: norms
  are recorded for every message, refused or not, so the second honest sender's norm lifts
  the reference (no lock-out); a local model below the floor does not vote at all.
* The sender's own earlier norm is excluded, so an attacker cannot vouch for itself, and the
  lower median over the local model and distinct senders cannot be moved by attackers unless
  they are more than half of them (the local model counts as one honest voice).
* Norms are compared, not trusted: an infinite or NaN norm is refused.
* The floor gives a model without scale (all zeros, say) one: with the defaults, any model
  whose root-mean-square value is at most ``factor * floor_rms = 1`` passes.
* A lower bound: a model whose norm is below ``low`` times both the local model's norm and
  the *upper* median of it and the other recent senders' latest norms is refused too.
  Honest models of one network have nearly equal norms (see the README for the ratios
  measured), while shrinking poison such as ``ipm``'s ``-0.1 mu`` has a tenth of theirs and
  escapes the distance screen whenever honest models are spread: with 3 local steps at lr
  0.8 one merged ``ipm`` model shrinks its victim, whose models then spread the others
  further, and 20% attackers took the network to 0.10. The upper median, because attackers
  would lower a lower one; the local norm too, so that senders with absurd norms cannot lift
  the bound above honest models (one at least ``low`` times our own norm always passes); a
  zero local model (a newcomer initialised at zero) refuses nothing by it. ``low = 0`` turns
  the bound off.

Refusals are counted by the caller as ``outlier``. ``factor = 0`` turns the screen off.

:class:`DistanceScreen` is the second test: a received model further from the local one than
``factor`` times the lower median of the other recent senders' distances is refused. A model
pointing the wrong way (``-w``, noise, a zero model) is far from every honest model while
honest ones are about as far from each other, so it is refused; the test is relative, so a
newcomer far from everyone (all senders equally far) still merges, and so does a peer after
a partition heals whose senders come from both sides. Without another sender to compare
with, the reference is this sender's own previous distance (a leaf of a star hears one
sender only). The reference is never below ``floor_rel * ||w_local||``: a model within
``factor * floor_rel = 80%`` of our own norm is never refused. That keeps honest peers
together while distances grow from zero at the start (all peers begin at the same model)
and gives the first contact a reference; a model pointing away from ours (``-w`` is 200% of
our norm away, a zero model 100%) is refused even on the first contact, but recorded.
The local model votes too, with twice its recent per-update motion (an average of how far
each update moved it, about the distance to the senders it merges with), so a peer whose
recent senders are mostly hostile still has an honest voice in the median. Subtle poison within the honest spread passes: that
is the merge rules' job (``clipped``, ``median``, ``trimmed-mean``).
"""

from __future__ import annotations

import math

from gossip.robust.rules import lower_median
from gossip.robust.window import SenderWindow

OUTLIER = "outlier"


class NormScreen:
    """Per-peer norm screen (its state: the latest norm of each recent sender)."""

    def __init__(
        self, factor: float = 10.0, window: int = 8, floor_rms: float = 0.1, low: float = 0.5
    ) -> None:
        if not (math.isfinite(factor) and (factor == 0 or factor >= 1)):
            raise ValueError(f"screen factor must be 0 (off) or >= 1, got {factor}")
        if not 0 <= low < 1:
            raise ValueError(f"screen low must be in [0, 1) (0: no lower bound), got {low}")
        self.factor = factor
        self.floor_rms = floor_rms
        self.low = low
        self.norms: SenderWindow[float] = SenderWindow(window)

    @property
    def enabled(self) -> bool:
        return self.factor > 0

    def reference(self, sender: str, local_norm: float, numel: int) -> float:
        floor = self.floor_rms * math.sqrt(numel)
        # A local model below the floor has no scale to vote with (a zero-initialised one).
        votes = [local_norm] if local_norm > floor else []
        median = lower_median([*votes, *self.norms.values(exclude=sender)])
        return max(local_norm, 0.0 if math.isnan(median) else median, floor)

    def check(self, sender: str, local_norm: float, remote_norm: float, numel: int) -> str | None:
        """None when the model may be merged, else :data:`OUTLIER`. Records the norm."""
        if not self.enabled:
            return None
        limit = self.factor * self.reference(sender, local_norm, numel)
        lower = self.low * self.lower_reference(sender, local_norm) if self.low else 0.0
        self.norms.put(sender, remote_norm if math.isfinite(remote_norm) else math.inf)
        return None if lower <= remote_norm <= limit else OUTLIER

    def lower_reference(self, sender: str, local_norm: float) -> float:
        """``min(local norm, upper median of it and the other senders' norms)``; 0 for a
        zero local model."""
        if not local_norm > 0:
            return 0.0
        votes = sorted([local_norm, *self.norms.values(exclude=sender)])
        return min(local_norm, votes[len(votes) // 2])


class DistanceScreen:
    """Per-peer distance screen (its state: the latest distance of each recent sender)."""

    def __init__(self, factor: float = 4.0, window: int = 8, floor_rel: float = 0.2) -> None:
        if not (math.isfinite(factor) and (factor == 0 or factor >= 1)):
            raise ValueError(f"distance screen factor must be 0 (off) or >= 1, got {factor}")
        self.factor = factor
        self.floor_rel = floor_rel
        self.distances: SenderWindow[float] = SenderWindow(window)
        self.motion: float | None = None  # running mean of the local model's per-update move

    def observe_motion(self, distance: float, weight: float = 0.1) -> None:
        """Record how far one update moved the local model (non-finite moves are ignored)."""
        if math.isfinite(distance):
            self.motion = (
                distance
                if self.motion is None
                else ((1 - weight) * self.motion + weight * distance)
            )

    @property
    def enabled(self) -> bool:
        return self.factor > 0

    def check(self, sender: str, local_norm: float, distance: float) -> str | None:
        """None when the model may be merged, else :data:`OUTLIER`. Records the distance."""
        if not self.enabled:
            return None
        others = self.distances.values(exclude=sender) or self.distances.get(sender)
        if self.motion:
            others = [*others, 2.0 * self.motion]
        self.distances.put(sender, distance if math.isfinite(distance) else math.inf)
        reference = max(lower_median(others) if others else 0.0, self.floor_rel * local_norm)
        return None if distance <= self.factor * reference else OUTLIER
