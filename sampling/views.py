"""Partial views for gossip-based peer sampling: descriptors, view-exchange messages, checks.

A **descriptor** names a peer (id, address, and its public key when keys are used) with an
**age**: how many exchange cycles ago its owner created it. A **view exchange** is one
message of a shuffle (Cyclon) or a view merge (Newscast): the sender's own fresh descriptor
and some entries of its view. The samplers are pure state machines over these objects (no
I/O, no clock, randomness from an explicit generator), so the simulator and the real node
drive the same code; the runtime only carries the messages.

:func:`parse_exchange` reads one from JSON (the body of ``POST /v1/sample``) and refuses,
with a reason a node counts, anything that is not exactly the schema, longer than the
sampler allows, or that tries to inflate freshness (see :func:`check_exchange`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

MAX_ID = 128
MAX_ADDRESS = 255
MAX_KEY = 512
MAX_AGE = 1 << 30
_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class ExchangeRefused(ValueError):
    """A view exchange that is refused; ``reason`` is the counter it is filed under."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Descriptor:
    """One entry of a view: who, where, and how old this news of them is (in cycles)."""

    peer_id: str
    address: str = ""
    age: int = 0
    key: str = ""

    def aged(self, by: int = 1) -> Descriptor:
        return Descriptor(self.peer_id, self.address, min(self.age + by, MAX_AGE), self.key)

    def at_age(self, age: int) -> Descriptor:
        return Descriptor(self.peer_id, self.address, age, self.key)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.peer_id, "age": self.age}
        if self.address:
            out["address"] = self.address
        if self.key:
            out["key"] = self.key
        return out


@dataclass(frozen=True)
class ViewExchange:
    """A request (``reply`` False) or the answer to one."""

    sender: Descriptor
    entries: tuple[Descriptor, ...] = field(default_factory=tuple)
    reply: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "sender": self.sender.to_json(),
            "entries": [d.to_json() for d in self.entries],
            "reply": self.reply,
        }


def _descriptor(obj: Any, where: str) -> Descriptor:
    if not isinstance(obj, Mapping):
        raise ExchangeRefused("schema", f"{where} is not an object")
    unknown = set(obj) - {"id", "address", "age", "key"}
    if unknown:
        raise ExchangeRefused("schema", f"{where} has unknown field {sorted(unknown)[0]!r}")
    peer_id, address, age, key = obj.get("id"), obj.get("address", ""), obj.get("age"), obj.get(
        "key", ""
    )  # fmt: skip
    if not isinstance(peer_id, str) or not _ID.fullmatch(peer_id):
        raise ExchangeRefused("schema", f"{where}.id must be 1-{MAX_ID} characters [A-Za-z0-9._:-]")
    if not isinstance(address, str) or len(address) > MAX_ADDRESS:
        raise ExchangeRefused("schema", f"{where}.address must be a string of <= {MAX_ADDRESS}")
    if not isinstance(key, str) or len(key) > MAX_KEY:
        raise ExchangeRefused("schema", f"{where}.key must be a string of <= {MAX_KEY}")
    if isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= MAX_AGE:
        raise ExchangeRefused("schema", f"{where}.age must be an integer in [0, {MAX_AGE}]")
    return Descriptor(peer_id, address, age, key)


def parse_exchange(obj: Any, max_entries: int) -> ViewExchange:
    """A :class:`ViewExchange` from decoded JSON, checked (see :func:`check_exchange`)."""
    if not isinstance(obj, Mapping):
        raise ExchangeRefused("schema", "the body is not a JSON object")
    unknown = set(obj) - {"sender", "entries", "reply"}
    if unknown:
        raise ExchangeRefused("schema", f"unknown field {sorted(unknown)[0]!r}")
    entries = obj.get("entries")
    if not isinstance(entries, list):
        raise ExchangeRefused("schema", "entries must be a list")
    if len(entries) > max_entries:
        raise ExchangeRefused("too_many", f"{len(entries)} entries, at most {max_entries}")
    reply = obj.get("reply", False)
    if not isinstance(reply, bool):
        raise ExchangeRefused("schema", "reply must be true or false")
    msg = ViewExchange(
        _descriptor(obj.get("sender"), "sender"),
        tuple(_descriptor(e, f"entries[{i}]") for i, e in enumerate(entries)),
        reply,
    )
    check_exchange(msg, max_entries)
    return msg


def check_exchange(msg: ViewExchange, max_entries: int, sender_id: str | None = None) -> None:
    """Refuse what no honest sampler sends: more than ``max_entries`` entries, the same peer
    twice, a sender descriptor that is not fresh (age 0) or not the authenticated sender, and
    another peer's descriptor claimed fresh (only a peer itself creates age-0 news of itself:
    a hub attacker that stamps its entries fresh to win Newscast's freshest-first merge)."""
    if len(msg.entries) > max_entries:
        raise ExchangeRefused("too_many", f"{len(msg.entries)} entries, at most {max_entries}")
    if msg.sender.age != 0:
        raise ExchangeRefused("stale_sender", "the sender's own descriptor must have age 0")
    if sender_id is not None and msg.sender.peer_id != sender_id:
        raise ExchangeRefused("wrong_sender", "the sender descriptor is not the sender")
    ids = [d.peer_id for d in msg.entries]
    if len(set(ids)) != len(ids):
        raise ExchangeRefused("duplicate", "an entry appears twice")
    for d in msg.entries:
        if d.age == 0 and d.peer_id != msg.sender.peer_id:
            raise ExchangeRefused("fresh_claim", f"entry {d.peer_id} claims age 0")


KeyOf = Callable[[str], "str | None"]


def check_keys(msg: ViewExchange, key_of: KeyOf) -> ViewExchange:
    """The exchange as this peer takes it in, given ``key_of(id)``: the key it has bound
    ``id`` to, as descriptor text (``ed25519:<base64>``), or None.

    A descriptor whose key contradicts a binding refuses the whole exchange (``wrong_key``):
    called after the exchange is authenticated, so its sender is bound already where keys
    are used, and an honest sender only sends keys it has bound itself (:func:`with_keys`).
    The key of an id not bound here is dropped, not kept as news: only a peer's own signed
    message binds its id, and an unverified key passed on could make honest peers'
    exchanges refused wherever the real key is bound."""
    entries = []
    for d in (msg.sender, *msg.entries):
        bound = key_of(d.peer_id)
        if d.key and bound is not None and d.key != bound:
            raise ExchangeRefused("wrong_key", f"{d.peer_id} is bound to another key")
        entries.append(d if bound is not None or not d.key else replace(d, key=""))
    return ViewExchange(entries[0], tuple(entries[1:]), msg.reply)


def with_keys(msg: ViewExchange, key_of: KeyOf) -> ViewExchange:
    """The exchange as this peer sends it: every descriptor carries the key this peer has
    bound its id to, and no other (the sender's own descriptor keeps its own key)."""

    def keyed(d: Descriptor) -> Descriptor:
        return replace(d, key=key_of(d.peer_id) or "")

    sender = msg.sender if msg.sender.key else keyed(msg.sender)
    return ViewExchange(sender, tuple(keyed(d) for d in msg.entries), msg.reply)
