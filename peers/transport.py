"""The interface between a Peer and the network, shared by the real node and the simulator.

A :class:`Transport` moves model snapshots between peers. The real node implements it with
aiohttp (HTTP push/pull), the simulator with an in-memory network in virtual time. The Peer
itself never knows which one it has.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import torch

from sampling.views import ViewExchange


@dataclass(frozen=True)
class ModelSnapshot:
    """An immutable published model: the flat parameters (never mutated after publishing)
    and the age they had. Sending the same snapshot to several peers shares its memory."""

    sender: str
    flat: torch.Tensor
    age: int


@dataclass(frozen=True)
class ModelMessage:
    """A received model, validated by the codec (or handed over in memory by the simulator)."""

    sender: str
    age: int
    flat: torch.Tensor
    nbytes: int


class SendOutcome(StrEnum):
    """What became of a push, as far as the sender can tell."""

    SENT = "sent"  # handed to the network (the simulator learns the rest later)
    DELIVERED = "delivered"  # the receiver accepted it (HTTP 2xx)
    REJECTED = "rejected"  # the receiver refused it (HTTP 4xx, or busy)
    FAILED = "failed"  # unreachable, timed out, connection refused


class ModelSink(Protocol):
    """What a transport hands received models to: the local Peer."""

    peer_id: str

    def offer(self, message: ModelMessage) -> str | None:
        """Take a received model into the inbox; None if accepted, else the reject reason."""

    def published(self) -> ModelSnapshot:
        """The current model for pull requests."""


class Transport(ABC):
    """Sends snapshots to peers and fetches theirs; delivers incoming ones to a sink."""

    @abstractmethod
    def attach(self, sink: ModelSink) -> None:
        """Register the local peer that receives models."""

    @abstractmethod
    async def push(self, dest: str, snapshot: ModelSnapshot) -> SendOutcome:
        """Send ``snapshot`` to ``dest``. Never raises for network trouble: returns FAILED."""

    @abstractmethod
    async def pull(self, dest: str) -> ModelMessage | None:
        """Fetch ``dest``'s current model; None if it cannot be had."""

    async def sample(self, dest: str, request: ViewExchange) -> ViewExchange | None:
        """Carry a view exchange to ``dest`` and return its answer; None when it cannot be
        had (unreachable, lost, refused). Transports without peer sampling have none."""
        return None
