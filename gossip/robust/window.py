"""The most recent value received from each of the last ``size`` distinct senders.

Robust statistics over a peer's recent messages must count *senders*, not messages: a peer
that pushes ten times should not hold ten places in a median. The window keeps one entry
per sender (its latest), evicting the sender heard from least recently when full.

Distinct senders are only as distinct as their identities: without authentication a single
attacker can claim many sender names (see the README's threat model).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class SenderWindow(Generic[V]):
    """``sender -> latest value`` for at most ``size`` senders, least recent first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self.size = size
        self._items: OrderedDict[str, V] = OrderedDict()

    def put(self, sender: str, value: V) -> None:
        self._items.pop(sender, None)
        self._items[sender] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def values(self, exclude: str | None = None) -> list[V]:
        return [v for s, v in self._items.items() if s != exclude]

    def get(self, sender: str) -> list[V]:
        """``[value]`` of ``sender`` if it is in the window, else ``[]``."""
        return [self._items[sender]] if sender in self._items else []

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
