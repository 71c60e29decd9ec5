"""Cyclon (Voulgaris, Gavidia, van Steen, 2005) and Newscast (Jelasity et al., 2003/2007):
gossip-based peer sampling over partial views, as pure state machines.

Both keep a view of at most ``c`` descriptors and gossip targets are drawn uniformly from
it. Each exchange cycle a peer calls :meth:`start_exchange`, the runtime carries the
request to the target, which answers it with :meth:`handle_request`, and the reply comes
back to :meth:`handle_reply`. A target that cannot be reached is dropped from the view
(:meth:`report_failure`), so dead peers leave views as exchanges with them fail.

* **Cyclon** ages every entry by one, picks the *oldest* entry Q, removes it and sends Q its
  own fresh descriptor plus ``l - 1`` random others. Q answers with ``l`` random entries of
  its own. Each side then adds what it received (never itself, never a peer it already
  holds), filling empty slots first and then replacing the entries it sent. The oldest-first
  choice bounds how long a dead peer's descriptor can survive, and the swap keeps every
  peer's in-degree close to ``c``.
* **Newscast** ages every entry by one, sends a random view member its ``c/2 - 1``
  freshest entries plus its own fresh descriptor, which answers likewise; both sides keep the
  ``c`` freshest descriptors of their view and what they received (one per peer, the
  freshest).

Safety (see :func:`sampling.views.check_exchange`): a message that carries more than the
sampler's own exchange length, the same peer twice, a stale sender or a fresh claim about
another peer is refused and counted in ``refused``; a reply nobody asked for is ignored.
Received entries never replace more than the exchange length, so a peer that answers every
exchange with only itself holds at most one entry of each view it reaches.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from gossip.errors import ConfigError
from sampling.base import PeerSampler
from sampling.views import Descriptor, ExchangeRefused, KeyOf, ViewExchange, check_exchange

_SAVED_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_SAVED_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]{1,255}")
_SAVED_KEY = re.compile(r"ed25519:[A-Za-z0-9+/]{43}=")  # base64 of 32 bytes


class ViewSampler(PeerSampler):
    """What Cyclon and Newscast share: the view, target selection, failure handling."""

    name = "view"

    def __init__(
        self,
        me: Descriptor,
        seeds: Iterable[Descriptor],
        rng: np.random.Generator,
        view_size: int,
        exchange: int,
    ) -> None:
        if view_size < 1 or not 1 <= exchange <= view_size:
            raise ValueError(
                f"view size {view_size} and exchange length {exchange}: need 1 <= l <= c"
            )
        self.me = me.at_age(0)
        self.c = view_size
        self.l = exchange
        self.rng = rng
        self.view: dict[str, Descriptor] = {}
        self.seeds = tuple(seeds)
        self._bootstrap()
        self.rebootstraps = 0
        self.pending: dict[str, tuple[str, ...]] = {}
        # Cyclon takes its exchange's target out of the view until the answer: kept here so
        # that a checkpoint taken meanwhile still knows it.
        self.away: dict[str, Descriptor] = {}
        self.refused: Counter[str] = Counter()
        self.exchanges = 0

    def _bootstrap(self) -> None:
        for d in self.seeds:
            if (
                d.peer_id != self.me.peer_id
                and d.peer_id not in self.view
                and len(self.view) < self.c
            ):
                self.view[d.peer_id] = self._heard(d)

    def _refill(self) -> None:
        """An empty view starts again from the seeds it was given (a node that came up
        before its seed, or outlived its whole view, would otherwise stay alone for ever)."""
        if not self.view and self.seeds:
            self._bootstrap()
            self.rebootstraps += 1

    # ----------------------------------------------------------------- PeerSampler

    @property
    def self_id(self) -> str:
        return self.me.peer_id

    def known_peers(self) -> Sequence[str]:
        return tuple(self.view)

    def select(self) -> str | None:
        self._refill()
        if not self.view:
            return None
        ids = tuple(self.view)
        return ids[int(self.rng.integers(len(ids)))]

    def report_failure(self, peer_id: str) -> None:
        """A peer we could not reach leaves the view (and any exchange with it is over)."""
        self.view.pop(peer_id, None)
        self.pending.pop(peer_id, None)
        self.away.pop(peer_id, None)

    def descriptors(self) -> list[Descriptor]:
        return list(self.view.values())

    def saved_view(self, key_of: KeyOf | None = None) -> list[str]:
        """The view as ``"ID ADDRESS"`` strings (what a checkpoint keeps), with the peers out
        for an exchange whose answer has not come, up to c in all. With ``key_of`` (id ->
        the key bound to it, or None), a bound id is saved as ``"ID ADDRESS KEY"`` (address
        ``-`` when there is none) so that its binding comes back with it."""
        held = list(self.view.values())
        held += [d for k, d in self.away.items() if k not in self.view][: self.c - len(held)]
        out = []
        for d in held:
            key = key_of(d.peer_id) if key_of is not None else None
            out.append(f"{d.peer_id} {d.address or '-'} {key}" if key else
                       f"{d.peer_id} {d.address}".strip())  # fmt: skip
        return out

    def restore_view(self, saved: Iterable[str]) -> list[Descriptor]:
        """Take back a :meth:`saved_view` (entries that do not parse are skipped; at most
        c, never itself); returns the descriptors restored, with their saved keys."""
        restored = []
        for text in saved:
            parts = text.split(" ")
            if len(parts) > 3 or not _SAVED_ID.fullmatch(parts[0]) or parts[0] == self.self_id:
                continue
            address = parts[1] if len(parts) >= 2 else ""
            key = parts[2] if len(parts) == 3 else ""
            if len(parts) == 3 and not _SAVED_KEY.fullmatch(key):
                continue
            if len(parts) == 3 and address == "-":
                address = ""
            elif address and not _SAVED_URL.fullmatch(address):
                continue
            restored.append(Descriptor(parts[0], address, 1, key))
        if restored:
            self.view = {}
            for d in restored[: self.c]:
                self.view.setdefault(d.peer_id, d)
        return list(self.view.values()) if restored else []

    # ----------------------------------------------------------------- the exchange

    def start_exchange(self) -> tuple[str, ViewExchange] | None:
        """The next exchange: (target, request), or None with an empty view."""
        raise NotImplementedError

    def handle_request(
        self, msg: ViewExchange, sender_id: str | None = None
    ) -> ViewExchange | None:
        """Answer a request (None: refused) and take in what it brought."""
        raise NotImplementedError

    def handle_reply(self, msg: ViewExchange, sender_id: str | None = None) -> bool:
        """Take in the answer to our request (False: unasked or refused)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- helpers

    def _sample(self, candidates: list[Descriptor], k: int) -> list[Descriptor]:
        if k <= 0 or not candidates:
            return []
        if k >= len(candidates):
            picks = self.rng.permutation(len(candidates))
        else:
            picks = self.rng.choice(len(candidates), size=k, replace=False)
        return [candidates[int(i)] for i in picks]

    def _check(self, msg: ViewExchange, sender_id: str | None) -> bool:
        try:
            check_exchange(msg, self.l, sender_id)
        except ExchangeRefused as refused:
            self.refused[refused.reason] += 1
            return False
        return True

    def _request_ok(self, msg: ViewExchange, sender_id: str | None) -> bool:
        if msg.reply:
            self.refused["unexpected_reply"] += 1
            return False
        return self._check(msg, sender_id)

    def _asked(self, msg: ViewExchange, sender_id: str | None) -> str | None:
        """Who answered, if we asked them (else counted and None)."""
        source = sender_id if sender_id is not None else msg.sender.peer_id
        if not msg.reply or source not in self.pending:
            self.refused["unexpected_reply"] += 1
            return None
        return source

    def _age_all(self) -> None:
        self.view = {k: d.aged() for k, d in self.view.items()}

    @staticmethod
    def _heard(d: Descriptor) -> Descriptor:
        """A descriptor as held by another peer: at least one hop old (only its owner sends
        age 0, so a view never holds, or passes on, another peer's age-0 descriptor)."""
        return d if d.age > 0 else d.at_age(1)


class CyclonSampler(ViewSampler):
    """Cyclon with view size ``c`` and shuffle length ``l``."""

    name = "cyclon"

    def __init__(
        self,
        me: Descriptor,
        seeds: Iterable[Descriptor],
        rng: np.random.Generator,
        view_size: int = 20,
        shuffle: int = 5,
    ) -> None:
        super().__init__(me, seeds, rng, view_size, shuffle)

    def start_exchange(self) -> tuple[str, ViewExchange] | None:
        """The next shuffle: (target, request), or None with an empty view."""
        self._refill()
        if not self.view:
            return None
        self._age_all()
        oldest = max(self.view.values(), key=lambda d: d.age)
        del self.view[oldest.peer_id]
        others = self._sample(list(self.view.values()), self.l - 1)
        self.pending[oldest.peer_id] = tuple(d.peer_id for d in others)
        self.away[oldest.peer_id] = oldest
        while len(self.away) > self.c:  # answers that never came
            self.away.pop(next(iter(self.away)))
        self.exchanges += 1
        return oldest.peer_id, ViewExchange(self.me, (self.me, *others))

    def handle_request(
        self, msg: ViewExchange, sender_id: str | None = None
    ) -> ViewExchange | None:
        """Answer a shuffle with ``l`` random entries, then take in what it brought."""
        if not self._request_ok(msg, sender_id):
            return None
        candidates = [d for d in self.view.values() if d.peer_id != msg.sender.peer_id]
        answer = self._sample(candidates, self.l)
        self._merge(msg.entries, [d.peer_id for d in answer])
        return ViewExchange(self.me, tuple(answer), reply=True)

    def handle_reply(self, msg: ViewExchange, sender_id: str | None = None) -> bool:
        """Take in the answer of the peer we shuffled with (an unasked reply is ignored)."""
        source = self._asked(msg, sender_id)
        if source is None:
            return False
        if not self._check(msg, sender_id):
            self.pending.pop(source, None)
            self.away.pop(source, None)
            return False
        sent = list(self.pending.pop(source))
        self.away.pop(source, None)
        self._merge(msg.entries, sent)
        return True

    def _merge(self, received: Iterable[Descriptor], sent: list[str]) -> None:
        for d in received:
            if d.peer_id == self.me.peer_id or d.peer_id in self.view:
                continue
            if len(self.view) < self.c:
                self.view[d.peer_id] = self._heard(d)
                continue
            while sent and sent[0] not in self.view:
                sent.pop(0)
            if not sent:
                break
            del self.view[sent.pop(0)]
            self.view[d.peer_id] = self._heard(d)


class NewscastSampler(ViewSampler):
    """Newscast with view size ``c``: exchanges of the c/2 freshest, keeping the c freshest."""

    name = "newscast"

    def __init__(
        self,
        me: Descriptor,
        seeds: Iterable[Descriptor],
        rng: np.random.Generator,
        view_size: int = 20,
    ) -> None:
        # Each side sends its c/2 freshest (itself included), as in the peer sampling
        # framework of Jelasity et al. (2007): sending the whole view makes both sides keep
        # the same c freshest, views converge within groups and the overlay splits into
        # closed cliques (measured: 3 to 6 components at 1,000 peers, c = 20).
        super().__init__(me, seeds, rng, view_size, max(1, view_size // 2))

    def start_exchange(self) -> tuple[str, ViewExchange] | None:
        self._refill()
        if not self.view:
            return None
        self._age_all()
        target = self.select()
        assert target is not None
        self.pending[target] = ()
        self.exchanges += 1
        entries = self._freshest(exclude=target)
        return target, ViewExchange(self.me, (self.me, *entries))

    def handle_request(
        self, msg: ViewExchange, sender_id: str | None = None
    ) -> ViewExchange | None:
        if not self._request_ok(msg, sender_id):
            return None
        mine = self._freshest(exclude=msg.sender.peer_id)
        answer = ViewExchange(self.me, (self.me, *mine), reply=True)
        self._merge(msg.entries)
        return answer

    def handle_reply(self, msg: ViewExchange, sender_id: str | None = None) -> bool:
        source = self._asked(msg, sender_id)
        if source is None:
            return False
        del self.pending[source]
        if not self._check(msg, sender_id):
            return False
        self._merge(msg.entries)
        return True

    def _freshest(self, exclude: str) -> list[Descriptor]:
        """The l - 1 freshest entries other than ``exclude`` (ties in view order)."""
        others = [d for d in self.view.values() if d.peer_id != exclude]
        return sorted(others, key=lambda d: d.age)[: self.l - 1]

    def _merge(self, received: Iterable[Descriptor]) -> None:
        best = dict(self.view)
        for d in received:
            if d.peer_id == self.me.peer_id:
                continue
            d = self._heard(d)
            held = best.get(d.peer_id)
            if held is None or d.age < held.age:
                best[d.peer_id] = d
        # The c freshest; ties broken at random (not by id, which an attacker could choose).
        items = list(best.values())
        order = self.rng.permutation(len(items))
        ranked = sorted((items[int(i)] for i in order), key=lambda d: d.age)
        self.view = {d.peer_id: d for d in ranked[: self.c]}


DYNAMIC = ("cyclon", "newscast")


def parse_sampler(spec: str) -> tuple[str, int, int]:
    """``cyclon:C:L`` or ``newscast:C`` -> (kind, c, l); one-line errors otherwise."""
    parts = spec.split(":")
    kind = parts[0]
    try:
        nums = [int(x) for x in parts[1:]]
    except ValueError:
        raise ConfigError(f"sampler {spec!r}: C and L must be integers, e.g. cyclon:20:5") from None
    if kind == "cyclon" and len(nums) in (0, 1, 2):
        c = nums[0] if nums else 20
        length = nums[1] if len(nums) > 1 else max(1, c // 4)
    elif kind == "newscast" and len(nums) in (0, 1):
        c = nums[0] if nums else 20
        length = c
    else:
        raise ConfigError(f"unknown dynamic sampler {spec!r}; use cyclon:C:L or newscast:C")
    if c < 1 or not 1 <= length <= c:
        raise ConfigError(f"sampler {spec!r}: need a view size C >= 1 and 1 <= L <= C")
    return kind, c, length


def is_dynamic(spec: str) -> bool:
    """Whether a sampler spec names a dynamic (view-exchanging) sampler."""
    return spec.split(":")[0] in DYNAMIC


def build_view_sampler(
    spec: str, me: Descriptor, seeds: Iterable[Descriptor], rng: np.random.Generator
) -> ViewSampler:
    """The sampler ``cyclon:C:L`` or ``newscast:C`` names, seeded with ``seeds``."""
    kind, c, length = parse_sampler(spec)
    if kind == "cyclon":
        return CyclonSampler(me, seeds, rng, c, length)
    return NewscastSampler(me, seeds, rng, c)
