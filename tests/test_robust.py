"""Laws of the robust merge rules, the norm screen and the attacks (pure, fast)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gossip.errors import ConfigError
from gossip.robust.attacks import ATTACKS, HUGE_VALUE, INFLATED_AGE, Attacker, AttackSpec, alie_z
from gossip.robust.merger import Merger, MergeSpec, parse_merge_spec
from gossip.robust.rules import clip_toward, coordinate_median, lower_median, trimmed_mean
from gossip.robust.screen import OUTLIER, NormScreen
from gossip.robust.window import SenderWindow

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


def vectors(n: int = 6) -> st.SearchStrategy[torch.Tensor]:
    return st.lists(finite, min_size=n, max_size=n).map(lambda v: torch.tensor(v))


@given(vectors(), vectors(), st.floats(0, 1e6))
def test_no_outlier_moves_the_model_by_more_than_the_radius(
    w_l: torch.Tensor, w_r: torch.Tensor, radius: float
) -> None:
    out = clip_toward(w_l, w_r, radius)
    scale = float(torch.maximum(w_l.abs(), w_r.abs()).max())  # float32 rounding of w_l + step
    assert float(torch.linalg.vector_norm(out - w_l)) <= radius * (1 + 1e-5) + 1e-3 + 1e-6 * scale


@given(vectors(), vectors())
def test_clip_within_the_radius_is_the_received_model(w_l: torch.Tensor, w_r: torch.Tensor) -> None:
    dist = float(torch.linalg.vector_norm(w_r - w_l))
    scale = float(torch.maximum(w_l.abs(), w_r.abs()).max())  # float32 cancellation
    torch.testing.assert_close(
        clip_toward(w_l, w_r, dist * 2 + 1), w_r, atol=1e-3 + 1e-6 * scale, rtol=1e-5
    )


def test_clip_takes_a_batch_dimension_and_refuses_overflow() -> None:
    w_l = torch.zeros(3, 4)
    w_r = torch.stack([torch.ones(4), torch.full((4,), 10.0), torch.full((4,), 3e38)])
    out = clip_toward(w_l, w_r, torch.tensor([4.0, 2.0, 1.0]))
    torch.testing.assert_close(out[0], torch.ones(4))  # within radius: unchanged
    assert math.isclose(float(out[1].norm()), 2.0, rel_tol=1e-6)
    assert torch.equal(out[2], torch.zeros(4))  # an overflowing distance contributes nothing


@given(st.integers(1, 7), vectors())
def test_identical_inputs_are_a_no_op(n: int, w: torch.Tensor) -> None:
    stacked = w.expand(n, -1)
    assert torch.equal(coordinate_median(stacked), w)
    torch.testing.assert_close(trimmed_mean(stacked, 1), w)
    assert torch.equal(clip_toward(w, w.clone(), 1.0), w)


@given(st.integers(0, 3), st.lists(vectors(4), min_size=1, max_size=9))
# Found by hypothesis in CI: the float32 mean of three 699051.625 is 699051.6875.
@example(k=0, models=[torch.tensor([0.0, 699051.625, 0.0, 0.0])] * 3)
def test_aggregates_stay_within_each_coordinates_range(k: int, models: list[torch.Tensor]) -> None:
    stacked = torch.stack(models)
    lo, hi = stacked.min(0).values, stacked.max(0).values
    # A float32 mean of up to 9 values rounds by a few ulps of the largest: the slack is
    # relative (an absolute 1e-3 failed on the example above).
    slack = 1e-3 + 1e-6 * stacked.abs().max(0).values
    for out in (coordinate_median(stacked), trimmed_mean(stacked, k)):
        assert bool((out >= lo - slack).all() and (out <= hi + slack).all())


@given(st.integers(1, 3), st.lists(vectors(4), min_size=1, max_size=6), vectors(4))
@settings(max_examples=50)
def test_k_outliers_cannot_push_a_trimmed_mean_outside_the_honest_range(
    k: int, honest: list[torch.Tensor], direction: torch.Tensor
) -> None:
    liars = [direction * 1e6 + 1e9 * (-1) ** i for i in range(k)]
    stacked = torch.stack([*honest, *liars])
    if stacked.shape[0] <= 2 * k:
        return  # the median regime, tested above
    h = torch.stack(honest)
    out = trimmed_mean(stacked, k)
    assert bool((out >= h.min(0).values - 1e-2).all() and (out <= h.max(0).values + 1e-2).all())


def test_trimmed_mean_weights_sum_to_one() -> None:
    """A constant shift of every input shifts the aggregate by the same constant."""
    models = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    for fn in (coordinate_median, lambda m: trimmed_mean(m, 2)):
        torch.testing.assert_close(fn(models + 3.0), fn(models) + 3.0)


def test_lower_median() -> None:
    assert lower_median([3.0, 1.0, 2.0]) == 2.0
    assert lower_median([1.0, 100.0]) == 1.0  # never the mean of an honest and a hostile value
    assert math.isnan(lower_median([]))


def test_sender_window_keeps_the_latest_of_distinct_senders() -> None:
    w: SenderWindow[int] = SenderWindow(2)
    w.put("a", 1)
    w.put("b", 2)
    w.put("a", 3)  # a again: refreshed, not duplicated
    w.put("c", 4)  # evicts b, the least recent
    assert list(w) == ["a", "c"] and w.values() == [3, 4] and w.values(exclude="a") == [4]
    with pytest.raises(ValueError):
        SenderWindow(0)


# --------------------------------------------------------------------------- merger


def test_parse_merge_specs() -> None:
    assert parse_merge_spec("clipped") == MergeSpec("clipped", 1.0)
    assert parse_merge_spec("clipped:2.5") == MergeSpec("clipped", 2.5)
    assert parse_merge_spec("trimmed-mean") == MergeSpec("trimmed-mean", 1)
    assert parse_merge_spec("trimmed-mean:3") == MergeSpec("trimmed-mean", 3)
    assert str(parse_merge_spec("trimmed-mean:3")) == "trimmed-mean:3"
    assert parse_merge_spec("median") == MergeSpec("median")


@pytest.mark.parametrize(
    "spec", ["krum", "clipped:0", "clipped:-1", "clipped:x", "trimmed-mean:0",
             "trimmed-mean:1.5", "median:2", "age-weighted:1", "clipped:inf"],
)  # fmt: skip
def test_bad_merge_specs_are_one_line(spec: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_merge_spec(spec)
    assert "\n" not in str(e.value)


def test_clipped_merge_bounds_one_message_by_the_adaptive_radius() -> None:
    merger = Merger("clipped")
    w = torch.zeros(4)
    for i, d in enumerate([1.0, 2.0, 3.0]):  # honest senders at distances 1, 2, 3
        merger._distances.put(f"h{i}", d)
    huge = torch.full((4,), 1e6)
    before = w.clone()
    age = merger.merge_(w, 100, huge, 100, "mallory")
    assert age == 100 and merger.last_radius == 2.0  # lower median of 1, 2, 3, 2e6
    # age weight 1/2 of a step clipped to length 2
    assert math.isclose(float((w - before).norm()), 1.0, rel_tol=1e-5)


def test_clipped_equals_age_weighted_within_the_radius() -> None:
    merger = Merger("clipped")
    w = torch.zeros(3)
    assert merger.merge_(w, 10, torch.ones(3), 30, "a") == 30  # first: radius = its distance
    torch.testing.assert_close(w, torch.full((3,), 0.75))


def test_clipped_ignores_an_overflowing_model() -> None:
    merger = Merger("clipped")
    w = torch.ones(3)
    merger.merge_(w, 10, torch.full((3,), 3e38), 10, "a")
    assert torch.equal(w, torch.ones(3))


@pytest.mark.parametrize("spec", ["median", "trimmed-mean:1"])
def test_window_rules_use_the_latest_model_of_each_sender(spec: str) -> None:
    merger = Merger(spec, window=4)
    w = torch.zeros(2)
    merger.merge_(w, 1, torch.full((2,), 1.0), 1, "a")
    merger.merge_(w, 1, torch.full((2,), 2.0), 1, "b")
    merger.merge_(w, 1, torch.full((2,), 1e9), 1, "mallory")
    # local (whatever it became), 1, 2, 1e9: the liar does not decide
    assert float(w.max()) <= 2.0
    merger.merge_(w, 1, torch.full((2,), 1e9), 5, "mallory")  # pushing again takes no 2nd seat
    assert len(merger._models) == 3 and float(w.max()) <= 2.0


@pytest.mark.parametrize("spec", ["age-weighted", "clipped", "median", "trimmed-mean:1"])
def test_merging_identical_models_is_a_no_op(spec: str) -> None:
    merger = Merger(spec)
    w = torch.arange(5.0)
    for sender in "abc":
        merger.merge_(w, 10, torch.arange(5.0), 10, sender)
    assert torch.equal(w, torch.arange(5.0))


# --------------------------------------------------------------------------- screen


def test_screen_refuses_absurd_norms_and_lets_honest_ones_through() -> None:
    screen = NormScreen(factor=10.0)
    assert screen.check("h1", 5.0, 6.0, 100) is None
    assert screen.check("mallory", 5.0, 1e30, 100) == OUTLIER
    assert screen.check("mallory", 5.0, math.inf, 100) == OUTLIER
    assert screen.check("mallory", 5.0, math.nan, 100) == OUTLIER
    assert screen.check("h2", 5.0, 49.0, 100) is None


def test_screen_boundary_is_factor_times_reference() -> None:
    screen = NormScreen(factor=10.0, floor_rms=0.0)
    assert screen.check("a", 2.0, 20.0, 1) is None  # at the limit
    fresh = NormScreen(factor=10.0, floor_rms=0.0)
    assert fresh.check("a", 2.0, 20.001, 1) == OUTLIER  # just past it


def test_an_attacker_cannot_vouch_for_itself() -> None:
    screen = NormScreen(factor=10.0, floor_rms=0.0)
    for _ in range(5):
        assert screen.check("mallory", 1.0, 1e6, 1) == OUTLIER


def test_a_zero_model_is_not_locked_out() -> None:
    """A newcomer whose model is all zeros has no scale: the first honest sender's norm,
    recorded although refused, opens the screen for the next one."""
    screen = NormScreen(factor=10.0, floor_rms=0.0)
    assert screen.check("h1", 0.0, 50.0, 100) == OUTLIER
    assert screen.check("h2", 0.0, 50.0, 100) is None
    assert screen.check("h1", 0.0, 50.0, 100) is None


def test_a_small_but_scaled_model_needs_the_other_senders() -> None:
    screen = NormScreen(factor=10.0, floor_rms=0.0)
    for s in ("h1", "h2"):
        assert screen.check(s, 1.0, 50.0, 100) == OUTLIER
    assert screen.check("h3", 1.0, 50.0, 100) is None  # median of 1, 50, 50


def test_a_minority_cannot_raise_the_reference() -> None:
    screen = NormScreen(factor=10.0, floor_rms=0.0)
    for s in ("h1", "h2", "h3"):
        screen.check(s, 5.0, 5.0, 1)
    screen.check("m1", 5.0, 1e6, 1)
    screen.check("m2", 5.0, 1e6, 1)
    assert screen.check("m3", 5.0, 1e6, 1) == OUTLIER


def test_screen_off() -> None:
    assert NormScreen(factor=0).check("m", 1.0, math.inf, 1) is None
    with pytest.raises(ValueError):
        NormScreen(factor=0.5)


# --------------------------------------------------------------------------- attacks


def test_attack_specs() -> None:
    assert AttackSpec.parse("none") == AttackSpec()
    assert AttackSpec.parse("sign-flip:0.2") == AttackSpec("sign-flip", 0.2)
    assert AttackSpec.parse("ipm", need_fraction=False) == AttackSpec("ipm", 1.0)
    for bad in ("flip:0.1", "sign-flip", "sign-flip:1", "sign-flip:-0.1", "huge:x"):
        with pytest.raises(ConfigError) as e:
            AttackSpec.parse(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        AttackSpec.parse("huge:0.1", need_fraction=False)


def test_alie_z_follows_the_paper() -> None:
    # n = 50, f = 12 (Baruch et al.'s example): s = 14, z = Phi^-1(36/50) ~ 0.58
    assert math.isclose(alie_z(50, 12), 0.5828, abs_tol=1e-3)


@pytest.mark.parametrize("kind", ATTACKS)
def test_every_attack_makes_finite_poison_of_the_right_shape(kind: str) -> None:
    attacker = Attacker(kind, seed=1, peers=100, attackers=10)
    own = torch.linspace(-1, 1, 10)
    for i in range(3):
        attacker.observe(f"h{i}", own + i)
    flat, age = attacker.poison(own, 7)
    assert flat.shape == own.shape and bool(torch.isfinite(flat).all())
    assert age == (INFLATED_AGE if kind == "age-inflation" else 7)
    if kind == "sign-flip":
        assert torch.equal(flat, -own)
    if kind == "huge":
        assert float(flat.min()) == pytest.approx(HUGE_VALUE)
    if kind == "ipm":
        torch.testing.assert_close(flat, -0.1 * (own + 0.75))  # mean of own, own+0..2


# --------------------------------------------------------------------------- distance screen


def test_distance_screen_refuses_models_far_from_what_other_senders_send() -> None:
    from gossip.robust.screen import DistanceScreen

    screen = DistanceScreen(factor=4.0, floor_rel=0.01)  # first contacts: up to 4% of 100
    for s, d in (("h1", 1.0), ("h2", 1.2), ("h3", 0.9)):
        assert screen.check(s, 100.0, d) is None
    assert screen.check("mallory", 100.0, 4.0 * 1.0) is None  # at the limit (median 1.0)
    assert screen.check("mallory2", 100.0, 4.0 * 1.0 + 1e-3) == OUTLIER  # just past it
    assert screen.check("h1", 100.0, math.inf) == OUTLIER


def test_distance_screen_floor_and_first_contact() -> None:
    from gossip.robust.screen import DistanceScreen

    first = DistanceScreen(factor=4.0, floor_rel=0.2)
    assert first.check("a", 10.0, 8.0) is None  # 80% of our norm: allowed with no reference
    assert DistanceScreen(factor=4.0, floor_rel=0.2).check("a", 10.0, 8.01) == OUTLIER
    # -w is 200% of our norm away: refused at first contact, recorded
    leaf = DistanceScreen(factor=4.0, floor_rel=0.2)
    assert leaf.check("only", 10.0, 20.0) == OUTLIER
    # a leaf that hears one sender compares it with its own previous distance
    assert leaf.check("only", 10.0, 21.0) is None


def test_the_local_model_votes_with_its_motion() -> None:
    """Three of four senders hostile: without the local vote their distances decide."""
    from gossip.robust.screen import DistanceScreen

    screen = DistanceScreen(factor=4.0, floor_rel=0.0)
    screen.check("h", 100.0, 1.0)
    for m in ("m1", "m2"):
        screen.check(m, 100.0, 50.0)
    assert screen.check("m3", 100.0, 50.0) is None  # [1, 50, 50]: the liars decide
    voted = DistanceScreen(factor=4.0, floor_rel=0.0)
    voted.observe_motion(0.5)
    voted.check("h", 100.0, 1.0)
    for m in ("m1", "m2"):
        voted.check(m, 100.0, 50.0)
    assert voted.check("m3", 100.0, 50.0) == OUTLIER  # [1, 1, 50, 50]: lower median 1
    voted.observe_motion(math.nan)  # ignored
    assert voted.motion == 0.5


# --------------------------------------------------------------------------- lower bound


def test_screen_refuses_a_shrunk_model_below_low_times_the_honest_norm() -> None:
    """ipm's -0.1 mu has a tenth of the honest norm; the bound is low x min(local, median)."""
    screen = NormScreen(factor=10.0, low=0.5)
    for i in range(4):
        assert screen.check(f"h{i}", 10.0, 10.0, 100) is None
    assert screen.check("mallory", 10.0, 1.0, 100) == OUTLIER
    assert screen.check("h5", 10.0, 5.0, 100) is None  # at the bound
    assert screen.check("h6", 10.0, 4.99, 100) == OUTLIER
    assert NormScreen(factor=10.0, low=0.0).check("mallory", 10.0, 1e-9, 100) is None


def test_lower_bound_cannot_be_lowered_by_a_minority_or_by_the_sender_itself() -> None:
    screen = NormScreen(factor=10.0, low=0.5)
    for i in range(3):
        screen.check(f"h{i}", 10.0, 10.0, 100)
    for _ in range(3):  # each attempt is recorded; the sender's own record never votes
        for i in range(3):
            assert screen.check(f"m{i}", 10.0, 1.0, 100) == OUTLIER
    # 3 small of 7 votes (local + 6 senders): the upper median is honest
    assert screen.check("m9", 10.0, 1.0, 100) == OUTLIER
    assert screen.check("h0", 10.0, 9.0, 100) is None


def test_absurd_senders_cannot_lift_the_lower_bound_above_honest_models() -> None:
    """A leaf hearing one honest sender and hostile huge ones: the local norm caps the bound,
    so an honest model at least low x our norm passes however the votes lie."""
    screen = NormScreen(factor=10.0, low=0.5)
    for i in range(5):
        screen.check(f"huge{i}", 10.0, 1e30, 100)
    assert screen.check("honest", 10.0, 6.0, 100) is None


def test_a_zero_local_model_refuses_nothing_by_the_lower_bound() -> None:
    screen = NormScreen(factor=10.0, low=0.5)
    assert screen.lower_reference("a", 0.0) == 0.0
    screen.check("h1", 0.0, 0.0, 100)
    assert screen.check("h2", 0.0, 0.0, 100) is None


@pytest.mark.parametrize("low", [-0.1, 1.0, math.nan])
def test_screen_low_out_of_range_is_refused(low: float) -> None:
    with pytest.raises(ValueError, match="screen low"):
        NormScreen(low=low)
