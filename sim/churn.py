"""Churn: peers leaving and coming back, crashing and recovering, in virtual time.

Specs (comma-separated to combine):

``markov:ONLINE:SESSION``
    Two-state Markov churn: every peer alternates online sessions of mean ``SESSION``
    seconds and offline spells of mean ``SESSION * (1 - ONLINE) / ONLINE`` (both exponential),
    so that a fraction ``ONLINE`` of the peers is online on average; peers start in the
    stationary distribution.
``crash:T:FRACTION``
    At time ``T`` a random ``FRACTION`` of the peers crash and never come back (crash-stop).
``crash-recover:T:FRACTION:DOWNTIME``
    At time ``T`` a random ``FRACTION`` of the peers crash and come back ``DOWNTIME``
    seconds later with the model and age they had (crash-recover from their last state).
``join:T:COUNT``
    The last ``COUNT`` peers are offline until time ``T``, then join with fresh models (as
    newcomers; with a dynamic sampler they bootstrap from their topology neighbours, which
    by then have dropped them from their views after failed pushes).

An offline peer neither sends nor receives: messages reaching it are dropped as
``offline``, and those waiting in its inbox are lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gossip.errors import ConfigError
from peers.peer import Peer
from sim.network import SimNetwork


@dataclass(frozen=True)
class ChurnRule:
    kind: str  # markov | crash | crash-recover | join
    a: float  # markov: online fraction; crash*, join: time
    b: float  # markov: mean session; crash*: fraction; join: count
    c: float = 0.0  # crash-recover: downtime


_ARITY = {"markov": 2, "crash": 2, "crash-recover": 3, "join": 2}
_EXAMPLE = "markov:0.8:20, crash:50:0.1, crash-recover:30:0.2:10 or join:40:10"


def parse_churn(spec: str) -> tuple[ChurnRule, ...]:
    """Parse a churn spec; ``none`` or empty means no churn."""
    if not spec or spec == "none":
        return ()
    rules = []
    for item in spec.split(","):
        kind, *nums = item.strip().split(":")
        if kind not in _ARITY:
            raise ConfigError(f"unknown churn {kind!r} in {item!r}; use none, {_EXAMPLE}")
        try:
            values = [float(x) for x in nums]
        except ValueError:
            raise ConfigError(f"churn {item!r} has a non-numeric value; e.g. {_EXAMPLE}") from None
        if len(values) != _ARITY[kind]:
            raise ConfigError(
                f"churn {item!r}: {kind} takes {_ARITY[kind]} numbers; e.g. {_EXAMPLE}"
            )
        rule = ChurnRule(kind, *values)
        if kind == "markov" and not (0 < rule.a <= 1 and rule.b > 0):
            raise ConfigError(f"churn {item!r}: ONLINE must be in (0, 1] and SESSION > 0")
        if kind == "join":
            if not (rule.a >= 0 and rule.b >= 1 and rule.b == int(rule.b)):
                raise ConfigError(f"churn {item!r}: T >= 0 and COUNT a whole number >= 1")
        elif kind != "markov" and not (rule.a >= 0 and 0 <= rule.b <= 1 and rule.c >= 0):
            raise ConfigError(f"churn {item!r}: T >= 0, FRACTION in [0, 1], DOWNTIME >= 0")
        rules.append(rule)
    return tuple(rules)


class ChurnController:
    """Applies churn rules to the peers of one simulation."""

    def __init__(
        self,
        rules: Sequence[ChurnRule],
        peers: Sequence[Peer],
        network: SimNetwork,
        rng: np.random.Generator,
    ) -> None:
        self.rules = tuple(rules)
        self.peers = list(peers)
        self.network = network
        self.rng = rng
        self.crashed: set[int] = set()  # crash-stopped for good
        n = len(self.peers)
        joining = [int(r.b) for r in self.rules if r.kind == "join"]
        if joining and max(joining) >= n:
            raise ConfigError(f"churn join: COUNT must be below the {n} peers")
        self.waiting: set[int] = set()  # not joined yet
        for count in joining:
            self.waiting |= set(range(n - count, n))
        self._tasks: set[asyncio.Task[None]] = set()

    def initially_online(self) -> list[bool]:
        """Stationary start for Markov churn; everyone online otherwise."""
        online = [True] * len(self.peers)
        for rule in self.rules:
            if rule.kind == "markov":
                online = [bool(self.rng.random() < rule.a) for _ in self.peers]
        return [up and i not in self.waiting for i, up in enumerate(online)]

    def start(self) -> None:
        """Bring the initial peers online and schedule every churn event."""
        loop = asyncio.get_running_loop()
        online = self.initially_online()
        for i, up in enumerate(online):
            if up:
                self.set_online(i, True)
        for rule in self.rules:
            if rule.kind == "markov":
                for i, up in enumerate(online):
                    self._schedule_markov(loop, rule, i, up)
            elif rule.kind == "join":
                loop.call_at(rule.a, self._join, int(rule.b))
            else:
                loop.call_at(rule.a, self._crash, rule)

    def _schedule_markov(
        self, loop: asyncio.AbstractEventLoop, rule: ChurnRule, i: int, up: bool
    ) -> None:
        mean = rule.b if up else rule.b * (1 - rule.a) / rule.a
        if mean <= 0:
            return  # ONLINE == 1: never leaves
        loop.call_later(float(self.rng.exponential(mean)), self._flip, rule, i, not up)

    def _join(self, count: int) -> None:
        n = len(self.peers)
        for i in range(n - count, n):
            if i in self.waiting:
                self.waiting.discard(i)
                self.set_online(i, True)

    def _flip(self, rule: ChurnRule, i: int, up: bool) -> None:
        if i in self.crashed:
            return
        if i in self.waiting:  # not joined yet: its sessions start when it joins
            self._schedule_markov(asyncio.get_running_loop(), rule, i, up)
            return
        self.set_online(i, up)
        self._schedule_markov(asyncio.get_running_loop(), rule, i, up)

    def _crash(self, rule: ChurnRule) -> None:
        candidates = [
            i for i in range(len(self.peers)) if i not in self.crashed and i not in self.waiting
        ]
        k = round(rule.b * len(self.peers))
        victims = sorted(
            self.rng.choice(candidates, size=min(k, len(candidates)), replace=False).tolist()
        )
        for i in victims:
            self.set_online(i, False)
            if rule.kind == "crash":
                self.crashed.add(i)
            else:
                asyncio.get_running_loop().call_later(rule.c, self._recover, i)

    def _recover(self, i: int) -> None:
        if i not in self.crashed:
            self.set_online(i, True)

    def set_online(self, i: int, up: bool) -> None:
        peer = self.peers[i]
        if up:
            self.network.online.add(peer.peer_id)
            peer.start()
        else:
            self.network.online.discard(peer.peer_id)
            task = asyncio.get_running_loop().create_task(peer.stop())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def online_count(self) -> int:
        return len(self.network.online)
