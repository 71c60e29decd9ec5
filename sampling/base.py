"""The peer sampling interface: which peer to gossip with next."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence


class PeerSampler(ABC):
    """Chooses gossip targets for one peer.

    ``select`` returns a peer id or None when no peer is known. Transports report outcomes
    back (``report_failure`` / ``report_alive``) so that a sampler can avoid dead peers.
    Implementations take randomness from an explicit seeded ``numpy.random.Generator``.
    """

    name: str = "base"

    @abstractmethod
    def select(self) -> str | None:
        """The next peer to contact, or None if there is none."""

    @abstractmethod
    def known_peers(self) -> Sequence[str]:
        """The peers this sampler currently knows about (its view)."""

    def report_failure(self, peer_id: str) -> None:  # noqa: B027 (optional hook)
        """The peer could not be reached."""

    def report_alive(self, peer_id: str) -> None:  # noqa: B027 (optional hook)
        """The peer answered or sent us something."""
