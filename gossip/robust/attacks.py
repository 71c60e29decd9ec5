"""Attacks: the poison a Byzantine peer gossips instead of its model.

An attacker is an ordinary peer (it receives, merges and trains like the others, so it keeps
an honest-looking model and age) whose *published* model, what it pushes and what pulls get,
is replaced by poison computed from what it has seen: its own model and the latest model of
each recent distinct sender. It knows nothing else (no omniscience), so the same attacker
runs in the simulator and as a real node.

Kinds (``--attack KIND:FRACTION`` in the simulator, ``--attack KIND`` on a node):

``sign-flip``      ``-w``: the model negated.
``random``         i.i.d. N(0, 1) values.
``huge``           every value 1e30 (finite in float32, absurd as a model).
``age-inflation``  its own model, claiming age 2**52.
``alie``           "A little is enough" (Baruch et al. 2019): ``mu - z * sigma`` coordinate-wise
                   over the models seen, with ``z`` from the paper's formula for ``n`` peers
                   of which ``f`` are attackers (``z = 1`` when they are not known).
``ipm``            Inner product manipulation (Xie et al. 2020) on models: ``-eps * mu``,
                   ``eps = 0.1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

from gossip.errors import ConfigError
from gossip.robust.window import SenderWindow

ATTACKS = ("sign-flip", "random", "huge", "age-inflation", "alie", "ipm")
HUGE_VALUE = 1e30
INFLATED_AGE = 2**52
IPM_EPSILON = 0.1


@dataclass(frozen=True)
class AttackSpec:
    """``KIND:FRACTION`` (simulator) or ``KIND`` (a node, fraction 1): who attacks, how."""

    kind: str = "none"
    fraction: float = 0.0

    @classmethod
    def parse(cls, spec: str, *, need_fraction: bool = True) -> AttackSpec:
        if not spec or spec == "none":
            return cls()
        kind, _, frac = spec.partition(":")
        if kind not in ATTACKS:
            raise ConfigError(
                f"unknown attack {kind!r} in {spec!r}; choose one of: {', '.join(ATTACKS)}"
            )
        if not need_fraction:
            if frac:
                raise ConfigError(f"attack {spec!r}: a node takes KIND only, e.g. sign-flip")
            return cls(kind, 1.0)
        try:
            fraction = float(frac)
        except ValueError:
            fraction = -1.0
        if not 0 <= fraction < 1:
            raise ConfigError(
                f"attack {spec!r} is not KIND:FRACTION with FRACTION in [0, 1), e.g. sign-flip:0.1"
            )
        return cls(kind, fraction)

    @property
    def active(self) -> bool:
        return self.kind != "none"


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z: ``s = floor(n/2 + 1) - f`` supporters needed, ``z = Phi^-1((n-s)/n)``."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0 < p < 1:
        return 1.0
    return NormalDist().inv_cdf(p)


class Attacker:
    """The poison of one attacker peer; feed it what the peer receives with :meth:`observe`."""

    def __init__(
        self, kind: str, seed: int, *, peers: int = 0, attackers: int = 0, window: int = 8
    ) -> None:
        if kind not in ATTACKS:
            raise ConfigError(f"unknown attack {kind!r}; choose one of: {', '.join(ATTACKS)}")
        self.kind = kind
        self.generator = torch.Generator().manual_seed(seed)
        self.z = alie_z(peers, attackers) if peers > 0 else 1.0
        self.seen: SenderWindow[torch.Tensor] = SenderWindow(window)

    def observe(self, sender: str, flat: torch.Tensor) -> None:
        """Remember the latest model of ``sender`` (a reference; it must not be mutated)."""
        if self.kind in ("alie", "ipm"):
            self.seen.put(sender, flat)

    def poison(self, own: torch.Tensor, age: int) -> tuple[torch.Tensor, int]:
        """What the attacker publishes instead of ``(own, age)``."""
        k = self.kind
        if k == "sign-flip":
            return -own, age
        if k == "random":
            noise = torch.randn(own.shape, generator=self.generator, dtype=own.dtype)
            return noise.to(own.device), age
        if k == "huge":
            return torch.full_like(own, HUGE_VALUE), age
        if k == "age-inflation":
            return own, INFLATED_AGE
        models = torch.stack([own, *(m.to(own.device, own.dtype) for m in self.seen.values())])
        mu = models.mean(dim=0)
        if k == "ipm":
            return -IPM_EPSILON * mu, age
        sigma = models.std(dim=0, correction=0)  # alie
        return mu - self.z * sigma, age
