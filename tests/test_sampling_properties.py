"""View invariants of Cyclon and Newscast under any sequence of exchanges (hypothesis):
a view never holds its owner, never more than c entries, never one peer twice, never
another peer's age-0 news; a refused message changes nothing."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sampling.cyclon import CyclonSampler, NewscastSampler, ViewSampler
from sampling.views import Descriptor, ViewExchange


def _invariants(s: ViewSampler) -> None:
    ids = list(s.known_peers())
    assert s.self_id not in ids
    assert len(ids) <= s.c and len(set(ids)) == len(ids)
    assert all(d.age >= 1 for d in s.descriptors())


ops = st.lists(
    st.tuples(
        st.sampled_from(["start", "request", "reply", "fail", "flood"]),
        st.integers(0, 9),  # which peer
        st.lists(st.tuples(st.integers(0, 14), st.integers(0, 20)), max_size=8),  # entries
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["cyclon", "newscast"]),
    c=st.integers(1, 6),
    seeds=st.lists(st.integers(0, 14), max_size=8),
    program=ops,
    seed=st.integers(0, 2**16),
)
def test_views_keep_their_invariants(
    kind: str, c: int, seeds: list[int], program: list, seed: int
) -> None:
    me = Descriptor("p0")
    rng = np.random.default_rng(seed)
    start = [Descriptor(f"p{i}", age=1) for i in seeds]
    s: ViewSampler = (
        CyclonSampler(me, start, rng, c, max(1, c // 2))
        if kind == "cyclon"
        else NewscastSampler(me, start, rng, c)
    )
    _invariants(s)
    for op, who, raw in program:
        sender = Descriptor(f"p{who}")
        entries = [Descriptor(f"p{i}", age=a) for i, a in dict(raw).items()]
        if op == "start":
            out = s.start_exchange()
            if out is not None:
                target, request = out
                assert target != "p0" and request.sender == s.me
                assert len(request.entries) <= s.l
        elif op == "request":
            before = s.descriptors()
            answer = s.handle_request(ViewExchange(sender, tuple(entries)), sender.peer_id)
            if answer is None:
                assert s.descriptors() == before  # refused: nothing taken in
            else:
                assert answer.reply and len(answer.entries) <= s.l
                assert all(d.peer_id != sender.peer_id for d in answer.entries[1:])
        elif op == "reply":
            before = s.descriptors()
            asked = sender.peer_id in s.pending
            taken = s.handle_reply(ViewExchange(sender, tuple(entries), True), sender.peer_id)
            if not asked:
                assert not taken and s.descriptors() == before
        elif op == "fail":
            s.report_failure(sender.peer_id)
            assert sender.peer_id not in s.pending
            assert sender.peer_id not in s.known_peers() or not s.view
        else:  # a flood: more entries than the exchange length, or a fresh claim
            flood = [Descriptor(f"q{i}", age=1) for i in range(s.l + 1)]
            before = s.descriptors()
            assert s.handle_request(ViewExchange(sender, tuple(flood)), sender.peer_id) is None
            assert s.descriptors() == before
        _invariants(s)
