"""Learning-rate schedules keyed on a model's age (the number of samples it has seen).

In gossip learning a model's age is carried with it and merged (``max(t_l, t_r)``), so a
schedule that is a function of the age, not of a peer's own step count or of the clock,
carries across merges: a young peer that merges an old model steps like the old model
would, and a peer that restarts from a checkpoint resumes the schedule where it was. This is
the idea of the original gossip learning (Ormándi, Hegedűs, Jelasity 2013), which used
Pegasos' ``1 / (lambda * t)`` step keyed on the age.

Specs (``--lr-schedule``), ``lr`` being the base rate and ``t`` the age:

``constant``        ``lr``
``inverse:TAU``     ``lr * TAU / (TAU + t)``: halved after TAU samples, ~1/t later (Pegasos-like)
``sqrt:TAU``        ``lr * sqrt(TAU / (TAU + t))``
``cosine:HORIZON``  ``lr * (FLOOR + (1 - FLOOR) * (1 + cos(pi * min(t / HORIZON, 1))) / 2)``,
                    with ``FLOOR = 0.01``: a model older than HORIZON samples keeps 1% of ``lr``
                    (it never stops learning). In the simulator a bare ``cosine`` takes the
                    age a model reaches at the end of the run as its horizon.

TAU and HORIZON are in samples (one step of batch 32 adds 32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gossip.errors import ConfigError

SCHEDULES = ("constant", "inverse", "sqrt", "cosine")
COSINE_FLOOR = 0.01


@dataclass(frozen=True)
class LRSchedule:
    """A parsed schedule: ``factor(age)`` multiplies the base learning rate."""

    kind: str = "constant"
    scale: float = 0.0  # TAU (inverse, sqrt) or HORIZON (cosine); 0 for constant / bare cosine

    @classmethod
    def parse(cls, spec: str) -> LRSchedule:
        kind, _, arg = spec.strip().partition(":")
        if kind not in SCHEDULES:
            raise ConfigError(
                f"unknown learning-rate schedule {spec!r}; choose one of: constant, "
                "inverse:TAU, sqrt:TAU, cosine[:HORIZON] (TAU, HORIZON in samples)"
            )
        if kind == "constant":
            if arg:
                raise ConfigError(f"lr schedule {spec!r}: constant takes no parameter")
            return cls()
        if not arg and kind == "cosine":
            return cls("cosine")
        try:
            scale = float(arg)
        except ValueError:
            scale = -1.0
        if not 0 < scale < math.inf:
            raise ConfigError(
                f"lr schedule {spec!r}: {kind}:N needs a positive number of samples, "
                f"e.g. {kind}:2000"
            )
        return cls(kind, scale)

    @property
    def needs_horizon(self) -> bool:
        """A bare ``cosine``: the runtime must supply the horizon (:meth:`with_horizon`)."""
        return self.kind == "cosine" and self.scale == 0

    def with_horizon(self, samples: float) -> LRSchedule:
        return LRSchedule(self.kind, max(float(samples), 1.0)) if self.needs_horizon else self

    def factor(self, age: float) -> float:
        """The multiplier of the base learning rate for a model of ``age`` samples."""
        t = max(float(age), 0.0)
        if self.kind == "constant":
            return 1.0
        if self.kind == "inverse":
            return self.scale / (self.scale + t)
        if self.kind == "sqrt":
            return math.sqrt(self.scale / (self.scale + t))
        if self.needs_horizon:
            raise ConfigError(
                "lr schedule 'cosine' needs a horizon on a node: use cosine:SAMPLES, "
                "e.g. cosine:200000"
            )
        progress = min(t / self.scale, 1.0)
        return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))

    def __str__(self) -> str:
        return self.kind if self.scale == 0 else f"{self.kind}:{self.scale:g}"
