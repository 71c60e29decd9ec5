"""Cyclon and Newscast as pure state machines, their messages, and the overlay they build."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from gossip.errors import ConfigError
from sampling.cyclon import CyclonSampler, NewscastSampler
from sampling.views import (
    Descriptor,
    ExchangeRefused,
    ViewExchange,
    check_keys,
    parse_exchange,
    with_keys,
)
from sim.overlay import (
    OverlayConfig,
    overlay_metrics,
    parse_sampler,
    random_out_graph_indegree_std,
    run_overlay,
)


def _d(i: int, age: int = 1) -> Descriptor:
    return Descriptor(f"p{i}", f"10.0.0.{i}:80", age)


def _cyclon(me: int, seeds: list[int], c: int = 4, length: int = 2, seed: int = 0) -> CyclonSampler:
    return CyclonSampler(_d(me, 0), [_d(i) for i in seeds], np.random.default_rng(seed), c, length)


# ------------------------------------------------------------------ messages


def _wire(msg: ViewExchange) -> Any:
    return json.loads(json.dumps(msg.to_json()))


def test_an_exchange_round_trips_through_json() -> None:
    msg = ViewExchange(_d(1, 0), (_d(1, 0), _d(2, 3), Descriptor("p3", key="k" * 44, age=2)))
    assert parse_exchange(_wire(msg), 5) == msg


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.update(entries=[{"id": f"p{i}", "age": 1} for i in range(6)]), "too_many"),
        (lambda o: o["entries"].append(dict(o["entries"][-1])), "duplicate"),
        (lambda o: o["sender"].update(age=1), "stale_sender"),
        (lambda o: o["entries"][1].update(age=0), "fresh_claim"),
        (lambda o: o["entries"][1].update(age=-1), "schema"),
        (lambda o: o["entries"][1].update(age=True), "schema"),
        (lambda o: o["entries"][1].update(id=""), "schema"),
        (lambda o: o["entries"][1].update(id="x" * 129), "schema"),
        (lambda o: o["entries"][1].update(id="p 2"), "schema"),
        (lambda o: o["entries"][1].update(extra=1), "schema"),
        (lambda o: o["entries"][1].update(address="a" * 256), "schema"),
        (lambda o: o.update(more=1), "schema"),
        (lambda o: o.update(entries={}), "schema"),
        (lambda o: o.update(reply="yes"), "schema"),
        (lambda o: o.update(sender=[1]), "schema"),
    ],
)
def test_each_rule_of_an_exchange_refuses_alone(mutate: Any, reason: str) -> None:
    obj = _wire(ViewExchange(_d(1, 0), (_d(1, 0), _d(2, 3))))
    assert parse_exchange(obj, 5)  # valid before the one change
    mutate(obj)
    with pytest.raises(ExchangeRefused) as refused:
        parse_exchange(obj, 5)
    assert refused.value.reason == reason


def test_the_entry_limit_is_exact() -> None:
    entries = tuple(_d(i, 2) for i in range(2, 7))
    obj = _wire(ViewExchange(_d(1, 0), entries))
    assert len(parse_exchange(obj, 5).entries) == 5
    with pytest.raises(ExchangeRefused, match="too_many"):
        parse_exchange(obj, 4)


def test_a_non_object_body_is_refused() -> None:
    with pytest.raises(ExchangeRefused, match="schema"):
        parse_exchange([1, 2], 5)


# ------------------------------------------------------------------ Cyclon


def test_cyclon_seeds_never_hold_itself_nor_a_peer_twice_nor_more_than_c() -> None:
    s = CyclonSampler(_d(0, 0), [_d(0), _d(1), _d(1), _d(2), _d(3), _d(4), _d(5)],
                      np.random.default_rng(0), 4, 2)  # fmt: skip
    assert list(s.known_peers()) == ["p1", "p2", "p3", "p4"]


def test_cyclon_shuffles_with_its_oldest_entry_and_removes_it() -> None:
    s = CyclonSampler(_d(0, 0), [_d(1, 5), _d(2, 9), _d(3, 1)], np.random.default_rng(0), 4, 2)
    target, request = s.start_exchange()  # type: ignore[misc]
    assert target == "p2" and "p2" not in s.known_peers()
    assert request.sender.peer_id == "p0" and request.entries[0] == s.me
    assert len(request.entries) == 2 and not request.reply
    assert all(d.age >= 2 for d in s.descriptors())  # every entry aged by one


def test_a_cyclon_swap_exchanges_entries_and_keeps_the_view_size() -> None:
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(1)
    a = CyclonSampler(_d(0, 0), [_d(1, 9), _d(2), _d(3), _d(4)], rng_a, 4, 3)
    b = CyclonSampler(_d(1, 0), [_d(5), _d(6), _d(7), _d(8)], rng_b, 4, 3)
    target, request = a.start_exchange()  # type: ignore[misc]
    assert target == "p1"  # the oldest
    sent = {d.peer_id for d in request.entries} - {"p0"}
    reply = b.handle_request(request, "p0")
    assert reply is not None and reply.reply and len(reply.entries) == 3
    assert "p0" in b.known_peers()  # the initiator's fresh descriptor went in
    assert a.handle_reply(reply, "p1")
    assert len(a.known_peers()) == 4 and len(b.known_peers()) == 4
    received = {d.peer_id for d in reply.entries}
    assert received <= set(a.known_peers())  # what came in replaced what was sent
    assert not (sent & set(a.known_peers())) or len(sent) > len(received)
    assert "p0" not in a.known_peers() and "p1" not in b.known_peers()
    assert all(d.age >= 1 for s in (a, b) for d in s.descriptors())  # no age-0 news of others
    assert not a.handle_reply(reply, "p1")  # the same answer twice is not asked for


def test_an_unasked_reply_and_a_refused_request_change_nothing() -> None:
    s = _cyclon(0, [1, 2, 3])
    before = s.descriptors()
    assert not s.handle_reply(ViewExchange(_d(7, 0), (_d(8), _d(9)), reply=True), "p7")
    flood = ViewExchange(_d(7, 0), tuple(_d(i) for i in range(10, 14)))  # 4 > l = 2
    assert s.handle_request(flood, "p7") is None
    spoofed = ViewExchange(_d(7, 0), (_d(8),))
    assert s.handle_request(spoofed, "p6") is None  # the descriptor is not the sender
    assert s.descriptors() == before
    assert s.refused == {"unexpected_reply": 1, "too_many": 1, "wrong_sender": 1}


def test_a_failed_target_leaves_the_view() -> None:
    s = _cyclon(0, [1, 2, 3])
    target, _ = s.start_exchange()  # type: ignore[misc]
    assert target in s.pending
    s.report_failure(target)  # the exchange timed out: no reply will be taken
    assert target not in s.pending and target not in s.known_peers()
    other = s.known_peers()[0]
    s.report_failure(other)  # a model push to it failed
    assert other not in s.known_peers() and len(s.known_peers()) == 1


def test_cyclon_refuses_a_view_size_or_length_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="need 1 <= l <= c"):
        _cyclon(0, [1], c=2, length=3)


# ------------------------------------------------------------------ Newscast


def test_newscast_keeps_the_c_freshest_one_per_peer() -> None:
    a = NewscastSampler(_d(0, 0), [_d(1, 7), _d(2, 3), _d(3, 9)], np.random.default_rng(0), 3)
    b = NewscastSampler(_d(5, 0), [_d(1, 2), _d(4, 5), _d(6, 8)], np.random.default_rng(1), 3)
    a.view = {"p1": _d(1, 7), "p2": _d(2, 3), "p5": _d(5, 9)}
    target, request = a.start_exchange()  # type: ignore[misc]
    assert target in {"p1", "p2", "p5"}
    if target != "p5":  # make the exchange go to b
        a.pending = {"p5": ()}
        request = ViewExchange(a.me, (a.me, *[d for d in a.descriptors() if d.peer_id != "p5"]))
    reply = b.handle_request(request, "p0")
    assert reply is not None
    assert b.view["p1"].age == 2  # its own fresher copy of p1 wins over a's age-8 one
    assert "p0" in b.view and b.view["p0"].age == 1
    assert len(b.view) == 3
    assert a.handle_reply(reply, "p5")
    assert len(a.view) == 3 and "p0" not in a.view


# ------------------------------------------------------------------ the overlay


def test_sampler_specs_parse_with_defaults_and_one_line_errors() -> None:
    assert parse_sampler("cyclon:20:5") == ("cyclon", 20, 5)
    assert parse_sampler("cyclon:12") == ("cyclon", 12, 3)
    assert parse_sampler("newscast:8") == ("newscast", 8, 8)
    for bad in ("cyclon:5:6", "cyclon:x", "newscast:3:1", "hyparview:5", "cyclon:0"):
        with pytest.raises(ConfigError):
            parse_sampler(bad)


def test_cyclon_from_a_ring_becomes_one_balanced_random_like_component() -> None:
    recs = run_overlay(OverlayConfig(peers=200, sampler="cyclon:10:3", cycles=25, seed=2))
    start, end = recs[0], recs[-1]
    assert start["view_indegree_mean"] == 2.0 and start["overlay_clustering"] == 0.0
    assert end["view_size_mean"] == 10.0 and end["overlay_components"] == 1
    assert end["view_indegree_std"] <= 1.2 * random_out_graph_indegree_std(200, 10)
    assert end["overlay_clustering"] < 0.2


def test_after_half_the_peers_crash_dead_links_leave_the_views() -> None:
    recs = run_overlay(
        OverlayConfig(
            peers=200, sampler="cyclon:10:3", cycles=45, crash=0.5, crash_at=16, pushes=1, seed=1
        )
    )
    assert recs[16]["peers_alive"] == 100 and recs[16]["view_dead_links"] > 0.2
    assert recs[-1]["view_dead_links"] < 0.01 and recs[-1]["overlay_components"] == 1


def test_a_hub_attacker_holds_at_most_one_entry_per_view() -> None:
    recs = run_overlay(OverlayConfig(peers=200, sampler="cyclon:10:3", cycles=30, attacker=True))
    assert recs[-1]["attacker_share"] <= 1 / 10
    assert recs[-1]["overlay_components"] == 1


def test_overlay_metrics_count_dead_links_and_the_attacker() -> None:
    samplers = [_cyclon(i, [(i + 1) % 4, (i + 2) % 4], c=2, length=1) for i in range(4)]
    alive = np.array([True, True, True, False])
    m = overlay_metrics(samplers, alive, attacker=0)
    # views: p0 -> p1 p2; p1 -> p2 p3; p2 -> p3 p0 (p3 is down)
    assert m["view_dead_links"] == pytest.approx(2 / 6)
    assert m["view_indegree_mean"] == pytest.approx(4 / 3)
    assert m["attacker_share"] == pytest.approx(1 / 6)
    assert m["overlay_components"] == 1


def test_newscast_sends_its_half_view_of_freshest_entries() -> None:
    seeds = [_d(i, age) for i, age in zip(range(1, 7), (9, 2, 7, 1, 5, 3), strict=True)]
    s = NewscastSampler(_d(0, 0), seeds, np.random.default_rng(3), 6)
    assert s.l == 3
    target, request = s.start_exchange()  # type: ignore[misc]
    others = [d for d in request.entries if d.peer_id != "p0"]
    assert request.entries[0] == s.me and len(others) == 2
    rest = sorted(d.age for d in s.descriptors() if d.peer_id != target)
    assert sorted(d.age for d in others) == rest[:2]  # the two freshest besides the target
    reply = NewscastSampler(_d(9, 0), [], np.random.default_rng(4), 6).handle_request(request, "p0")
    assert reply is not None and [d.peer_id for d in reply.entries] == ["p9"]


def test_an_emptied_view_starts_again_from_its_seeds() -> None:
    s = _cyclon(0, [1])
    target, _ = s.start_exchange()  # type: ignore[misc]
    s.report_failure(target)  # the seed was not up yet
    assert s.known_peers() == ()
    again = s.start_exchange()
    assert again is not None and again[0] == "p1" and s.rebootstraps == 1
    lone = CyclonSampler(_d(0, 0), [], np.random.default_rng(0), 4, 2)
    assert lone.start_exchange() is None and lone.select() is None


def test_a_saved_view_comes_back_and_hostile_entries_do_not() -> None:
    s = CyclonSampler(_d(0, 0), [_d(1), _d(2), Descriptor("p3")], np.random.default_rng(0), 4, 2)
    saved = s.saved_view()
    assert saved == ["p1 10.0.0.1:80", "p2 10.0.0.2:80", "p3"]
    fresh = CyclonSampler(_d(0, 0), [_d(9)], np.random.default_rng(0), 4, 2)
    good = ["p1 http://10.0.0.1:80", "p3"]
    bad = ["p0 http://me:1", "p 4 x", "p5 file:///etc/passwd", "p6 http://a b", "x" * 200]
    restored = fresh.restore_view(good + bad)
    assert [d.peer_id for d in restored] == ["p1", "p3"]
    assert list(fresh.known_peers()) == ["p1", "p3"]
    assert fresh.restore_view(bad) == [] and list(fresh.known_peers()) == ["p1", "p3"]


def test_a_saved_view_keeps_the_peer_out_for_an_exchange() -> None:
    s = CyclonSampler(_d(0, 0), [_d(1, 5), _d(2, 1)], np.random.default_rng(0), 4, 2)
    target, _ = s.start_exchange()  # type: ignore[misc]
    assert target == "p1" and "p1" not in s.known_peers()
    assert "p1 10.0.0.1:80" in s.saved_view()
    s.report_failure("p1")  # no answer: gone for good
    assert all(not e.startswith("p1 ") for e in s.saved_view())


# ----------------------------------------------------------------------------- keys

KEY_A = "ed25519:" + "A" * 43 + "="
KEY_M = "ed25519:" + "M" * 43 + "="


def _key_of(bound: dict[str, str]):
    return bound.get


def test_check_keys_refuses_a_descriptor_that_contradicts_a_binding() -> None:
    sender = Descriptor("s", "http://s:1", 0, KEY_M)
    msg = ViewExchange(sender, (Descriptor("a", "http://a:1", 1, KEY_M),))
    with pytest.raises(ExchangeRefused) as info:
        check_keys(msg, _key_of({"s": KEY_M, "a": KEY_A}))
    assert info.value.reason == "wrong_key" and "a is bound" in str(info.value)
    # the sender's own descriptor is checked too
    with pytest.raises(ExchangeRefused, match="s is bound"):
        check_keys(ViewExchange(sender, ()), _key_of({"s": KEY_A}))


def test_check_keys_keeps_bound_keys_and_drops_unverified_ones() -> None:
    msg = ViewExchange(
        Descriptor("s", "http://s:1", 0, KEY_M),
        (Descriptor("a", "http://a:1", 1, KEY_A), Descriptor("u", "http://u:1", 2, KEY_M),
         Descriptor("n", "http://n:1", 3)),
        reply=True,
    )  # fmt: skip
    out = check_keys(msg, _key_of({"s": KEY_M, "a": KEY_A}))
    assert [d.key for d in (out.sender, *out.entries)] == [KEY_M, KEY_A, "", ""]
    assert out.reply and [d.age for d in out.entries] == [1, 2, 3]
    assert [d.address for d in out.entries] == ["http://a:1", "http://u:1", "http://n:1"]


def test_with_keys_sends_exactly_the_bound_keys() -> None:
    msg = ViewExchange(
        Descriptor("me", "http://me:1", 0, KEY_A),
        (Descriptor("a", "http://a:1", 1, KEY_M), Descriptor("u", "http://u:1", 2, KEY_M)),
    )
    out = with_keys(msg, _key_of({"a": KEY_A}))
    assert out.sender.key == KEY_A  # its own key stays
    assert [d.key for d in out.entries] == [KEY_A, ""]
    unkeyed = with_keys(ViewExchange(Descriptor("me", "http://me:1"), ()), _key_of({"me": KEY_M}))
    assert unkeyed.sender.key == KEY_M


def test_a_saved_view_keeps_bound_keys_and_restores_them() -> None:
    rng = np.random.default_rng(0)
    sampler = CyclonSampler(Descriptor("me", "http://me:1"), [], rng, 4, 2)
    sampler.view = {
        "a": Descriptor("a", "http://a:1", 1),
        "b": Descriptor("b", "", 1),
        "c": Descriptor("c", "http://c:1", 1),
    }
    saved = sampler.saved_view(_key_of({"a": KEY_A, "b": KEY_M}))
    assert saved == [f"a http://a:1 {KEY_A}", f"b - {KEY_M}", "c http://c:1"]
    again = CyclonSampler(Descriptor("me", "http://me:1"), [], rng, 4, 2)
    restored = {d.peer_id: d for d in again.restore_view(saved)}
    assert (restored["a"].key, restored["a"].address) == (KEY_A, "http://a:1")
    assert (restored["b"].key, restored["b"].address) == (KEY_M, "")
    assert restored["c"].key == ""


@pytest.mark.parametrize(
    "entry", ["a http://a:1 ed25519:short=", "a http://a:1 rsa:" + "A" * 43 + "=",
              f"a http://a:1 {KEY_A} extra", f"a nota-url {KEY_A}", f"a - {KEY_A}x"],
)  # fmt: skip
def test_a_saved_entry_with_a_bad_key_part_is_skipped(entry: str) -> None:
    sampler = CyclonSampler(Descriptor("me", "http://me:1"), [], np.random.default_rng(0), 4, 2)
    assert sampler.restore_view([entry, "b http://b:1"]) == [Descriptor("b", "http://b:1", 1)]
