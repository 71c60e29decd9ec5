"""A guard against age inflation.

Age-weighted averaging gives a received model the weight ``t_r / (t_l + t_r)``: a peer that
lies about its age (say 10**12) would overwrite everyone's model with one message. The guard
bounds a received age by what the network could plausibly have reached relative to the
local model: ``bound = factor * t_l + slack``. Beyond it, the age is either capped to the
bound (``cap``, the default: the message still counts, with bounded weight, and a newcomer
with age 0 still catches up within a few merges since the bound grows with its own age) or
the message is refused (``refuse``). ``off`` disables the guard.
"""

from __future__ import annotations

from dataclasses import dataclass

from gossip.errors import ConfigError

POLICIES = ("cap", "refuse", "off")


@dataclass(frozen=True)
class AgeGuard:
    policy: str = "cap"
    factor: float = 2.0
    slack: int = 10_000

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(
                f"unknown age guard {self.policy!r}; choose one of: {', '.join(POLICIES)}"
            )
        if self.factor < 1 or self.slack < 0:
            raise ConfigError("age guard factor must be >= 1 and slack >= 0")

    def bound(self, local_age: int) -> int:
        return int(self.factor * local_age) + self.slack

    def check(self, received_age: int, local_age: int) -> tuple[int | None, str | None]:
        """(age to use, note): ``(age, None)`` when plausible, ``(bound, "age_capped")`` when
        capped, ``(None, "age_inflation")`` when refused."""
        if self.policy == "off" or received_age <= self.bound(local_age):
            return received_age, None
        if self.policy == "cap":
            return self.bound(local_age), "age_capped"
        return None, "age_inflation"
