"""The screens, the robust rules' kernels and the sender window, one rule at a time.

Exact values on inputs small enough to compute by hand: the defaults, each bound at and past
its edge, which values vote in a reference and which do not, the motion average, and what is
recorded for a non-finite value. Measured by ``.ci/mutation robust.screen robust.rules
robust.window``.
"""

from __future__ import annotations

import math

import pytest
import torch

from gossip.robust.rules import clip_toward, trimmed_mean
from gossip.robust.screen import OUTLIER, DistanceScreen, NormScreen
from gossip.robust.window import SenderWindow

# --------------------------------------------------------------------------- norm screen


def test_norm_screen_defaults() -> None:
    screen = NormScreen()
    assert (screen.factor, screen.norms.size, screen.floor_rms) == (10.0, 8, 0.1)


def test_norm_screen_default_lower_bound_is_half() -> None:
    assert NormScreen().low == 0.5


def test_lower_bound_excludes_the_senders_own_record() -> None:
    """Local 10, b's 2, mallory's earlier 1: without mallory the upper median of [2, 10] is
    10, the bound 0.5 x min(10, 10) = 5. Mallory's own 1 would make it [1, 2, 10] -> 2."""
    screen = NormScreen(factor=10.0, low=0.5)
    screen.check("b", 10.0, 2.0, 100)  # refused (below 5), but recorded
    screen.check("mallory", 10.0, 1.0, 100)
    assert screen.lower_reference("mallory", 10.0) == 10.0
    assert screen.lower_reference("c", 10.0) == 2.0  # a third sender hears both votes
    assert screen.check("mallory", 10.0, 1.5, 100) == OUTLIER


def test_lower_bound_applies_to_local_norms_below_one() -> None:
    """Nothing special about a norm of 1: a local model of norm 0.8 bounds at 0.4."""
    screen = NormScreen(factor=10.0, low=0.5)
    assert screen.lower_reference("a", 0.8) == 0.8
    assert screen.check("a", 0.8, 0.1, 100) == OUTLIER
    assert screen.check("b", 0.8, 0.4, 100) is None


def test_low_zero_has_no_lower_bound_even_for_an_overflowing_local_norm() -> None:
    """A float32 norm can overflow to inf; 0 x inf is NaN, which would refuse everything."""
    screen = NormScreen(factor=10.0, low=0.0)
    assert screen.check("a", math.inf, 1.0, 100) is None


@pytest.mark.parametrize("cls", [NormScreen, DistanceScreen])
@pytest.mark.parametrize("factor", [0.0, 1.0, 1.5])
def test_a_factor_of_0_1_or_more_is_accepted(cls: type, factor: float) -> None:
    assert cls(factor=factor).factor == factor


@pytest.mark.parametrize(
    ("cls", "word"), [(NormScreen, "screen factor"), (DistanceScreen, "distance screen factor")]
)
@pytest.mark.parametrize("factor", [0.5, 0.999, math.inf, math.nan, -1.0])
def test_a_factor_between_0_and_1_or_not_finite_is_refused(
    cls: type, word: str, factor: float
) -> None:
    with pytest.raises(ValueError) as info:
        cls(factor=factor)
    assert str(info.value) == f"{word} must be 0 (off) or >= 1, got {factor}"


def test_the_floor_grows_with_the_square_root_of_the_parameter_count() -> None:
    screen = NormScreen(floor_rms=0.5)
    assert screen.reference("x", 0.0, 16) == 2.0  # 0.5 * sqrt(16)
    assert NormScreen(floor_rms=0.0).reference("x", 0.0, 16) == 0.0


def test_the_local_norm_is_a_lower_bound_of_the_reference() -> None:
    screen = NormScreen(floor_rms=0.0)
    screen.check("a", 50.0, 1.0, 1)
    # The median of (50, 1) is 1, but the local model's own norm bounds the reference.
    assert screen.reference("b", 50.0, 1) == 50.0


def test_the_senders_own_norm_does_not_vote() -> None:
    screen = NormScreen(floor_rms=0.0)
    screen.check("a", 0.0, 2.0, 1)
    screen.check("b", 0.0, 10.0, 1)
    assert screen.reference("a", 0.0, 1) == 10.0  # only b's norm
    assert screen.reference("b", 0.0, 1) == 2.0  # only a's norm


def test_a_sender_cannot_open_the_screen_for_itself() -> None:
    screen = NormScreen(factor=10.0, floor_rms=0.0)
    assert screen.check("m", 0.0, 1000.0, 1) == OUTLIER  # recorded although refused
    assert screen.check("m", 0.0, 50.0, 1) == OUTLIER  # its own 1000 does not vote


def test_no_votes_and_no_floor_give_a_zero_reference() -> None:
    assert NormScreen(floor_rms=0.0).reference("x", 0.0, 1) == 0.0


def test_a_nonfinite_norm_is_recorded_as_infinity() -> None:
    screen = NormScreen(floor_rms=0.0)
    assert screen.check("m", 0.0, math.nan, 1) == OUTLIER
    assert screen.norms.get("m") == [math.inf]
    assert screen.reference("x", 0.0, 1) == math.inf


# --------------------------------------------------------------------------- distance screen


def test_distance_screen_defaults() -> None:
    screen = DistanceScreen()
    assert (screen.factor, screen.distances.size, screen.floor_rel) == (4.0, 8, 0.2)
    assert screen.motion is None


def test_motion_is_a_running_mean_with_weight_one_tenth() -> None:
    screen = DistanceScreen()
    screen.observe_motion(2.0)
    assert screen.motion == 2.0
    screen.observe_motion(4.0)
    assert screen.motion == pytest.approx(0.9 * 2.0 + 0.1 * 4.0, abs=1e-15)
    screen.observe_motion(math.inf)  # ignored
    assert screen.motion == pytest.approx(2.2, abs=1e-15)
    other = DistanceScreen()
    other.observe_motion(2.0)
    other.observe_motion(4.0, weight=0.5)
    assert other.motion == 3.0


def test_the_distance_reference_excludes_the_sender() -> None:
    screen = DistanceScreen(factor=4.0, floor_rel=0.0)
    screen.distances.put("a", 1.0)
    screen.distances.put("b", 10.0)
    assert screen.check("a", 0.0, 20.0) is None  # b's 10 is the reference: limit 40


@pytest.mark.parametrize(("distance", "verdict"), [(20.0, None), (32.0, None), (35.0, OUTLIER)])
def test_the_local_model_votes_with_twice_its_motion(distance: float, verdict: str | None) -> None:
    screen = DistanceScreen(factor=4.0, floor_rel=0.0)
    screen.observe_motion(4.0)
    screen.distances.put("b", 10.0)
    # Votes: b's 10 and 2 * 4 = 8: the lower median is 8, the limit 32.
    assert screen.check("a", 0.0, distance) == verdict


def test_without_any_vote_the_reference_is_the_floor() -> None:
    assert DistanceScreen(floor_rel=0.0).check("a", 0.0, 0.5) == OUTLIER  # reference 0
    assert DistanceScreen(floor_rel=0.2).check("a", 10.0, 8.0) is None  # 4 * 0.2 * 10


def test_a_nonfinite_distance_is_recorded_as_infinity() -> None:
    screen = DistanceScreen()
    assert screen.check("m", 1.0, math.nan) == OUTLIER
    assert screen.distances.get("m") == [math.inf]


# --------------------------------------------------------------------------- rule kernels


def test_clip_radius_is_taken_in_the_models_precision() -> None:
    w_l = torch.zeros(1, 2, dtype=torch.float64)
    w_r = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # distance 5
    out = clip_toward(w_l, w_r, 0.1)
    torch.testing.assert_close(out, w_r * (0.1 / 5.0), rtol=0, atol=0)


def test_clip_toward_a_point_closer_than_one() -> None:
    w_l = torch.zeros(2)
    w_r = torch.tensor([0.3, 0.4])  # distance 0.5
    torch.testing.assert_close(clip_toward(w_l, w_r, 0.25), w_r * 0.5)


def test_a_batch_of_radii_follows_the_models_device() -> None:
    w = torch.empty(2, 3, device="meta")
    out = clip_toward(w, w, torch.tensor([1.0, 2.0]))
    assert out.device.type == "meta" and out.shape == (2, 3)


def test_trimmed_mean_between_2k_and_3k_models_is_trimmed_not_the_median() -> None:
    models = torch.arange(1.0, 7.0).reshape(6, 1)  # 1..6
    assert float(trimmed_mean(models, 2)) == 3.5  # mean of 3 and 4; the lower median is 3


def test_a_negative_trim_says_what_it_got() -> None:
    with pytest.raises(ValueError) as info:
        trimmed_mean(torch.zeros(3, 1), -1)
    assert str(info.value) == "trim k must be >= 0, got -1"


# --------------------------------------------------------------------------- window


def test_a_window_of_one_sender_is_allowed_zero_is_not() -> None:
    window: SenderWindow[int] = SenderWindow(1)
    window.put("a", 1)
    window.put("b", 2)
    assert list(window) == ["b"]
    with pytest.raises(ValueError) as info:
        SenderWindow(0)
    assert str(info.value) == "window size must be at least 1, got 0"
