"""Uniform sampling over a static list of known peers, and topology neighbours."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from sampling.base import PeerSampler


class UniformSampler(PeerSampler):
    """Any known peer other than oneself, uniformly at random (the full-mesh idealisation).

    Peers reported as failed are skipped for ``failure_backoff`` selections, so that a dead
    peer does not eat a share of gossip forever while it stays in the view.
    """

    name = "uniform"

    def __init__(
        self, self_id: str, peers: Iterable[str], rng: np.random.Generator, failure_backoff: int = 0
    ) -> None:
        self.self_id = self_id
        self._peers = tuple(p for p in dict.fromkeys(peers) if p != self_id)
        self._rng = rng
        self._backoff = failure_backoff
        self._suspended: dict[str, int] = {}

    def known_peers(self) -> Sequence[str]:
        return self._peers

    def select(self) -> str | None:
        if not self._peers:
            return None
        if self._suspended:
            for p in list(self._suspended):
                self._suspended[p] -= 1
                if self._suspended[p] <= 0:
                    del self._suspended[p]
            live = [p for p in self._peers if p not in self._suspended]
            if live:
                return live[int(self._rng.integers(len(live)))]
        return self._peers[int(self._rng.integers(len(self._peers)))]

    def report_failure(self, peer_id: str) -> None:
        if self._backoff > 0 and peer_id in self._peers:
            self._suspended[peer_id] = self._backoff

    def report_alive(self, peer_id: str) -> None:
        self._suspended.pop(peer_id, None)


class NeighbourSampler(UniformSampler):
    """A uniformly random neighbour in a fixed topology (the peer's adjacency list)."""

    name = "neighbours"
