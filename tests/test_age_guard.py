"""The age guard bounds what lying peers can do to a node's age, and cannot be ratcheted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip.age_guard import BURST_UPDATES, RATE_FACTOR, AgeAllowance, AgeGuard
from gossip.codec import MAX_AGE
from gossip.errors import ConfigError

ages = st.integers(0, MAX_AGE)
claims = st.lists(st.tuples(st.integers(0, MAX_AGE), st.floats(0, 50)), max_size=60)


def _merge(allowance: AgeAllowance, local: int, claimed: int, now: float) -> int:
    """What the Peer does with a received age: cap it, take the max, spend the credit."""
    used, _ = allowance.check(claimed, local, now)
    assert used is not None
    merged = max(local, used)
    allowance.spend(local, merged)
    return merged


@given(ages, claims, st.floats(0, 1000), st.floats(0, 10**6))
def test_no_sequence_of_claims_grows_the_age_faster_than_the_credit(
    start: int, pushes: list[tuple[int, float]], rate: float, burst: float
) -> None:
    """The law: merged-age growth over [t1, t2] <= burst + rate * (t2 - t1), for any pushes."""
    allowance = AgeGuard("cap", rate=rate, burst=burst).allowance(1.0, 1.0)
    age, now = start, 0.0
    for claimed, wait in pushes:
        now += wait
        age = _merge(allowance, age, claimed, now)
        assert age - start <= burst + rate * now + 1e-6


def test_forty_lies_do_not_ratchet() -> None:
    """The reported attack: 40 pushes claiming 2**53 took a victim from 4,832 to 2e15."""
    allowance = AgeGuard().allowance(samples_per_second=32.0, samples_per_update=32.0)
    age = 4_832
    for i in range(40):
        age = _merge(allowance, age, 2**53 - 1, now=float(i))  # one lie per second
    # At most the burst (10 updates) plus 39 s of credit at 4x the training rate.
    assert age <= 4_832 + BURST_UPDATES * 32 + RATE_FACTOR * 32 * 39
    assert age < 20_000


def test_plausible_ages_pass_unchanged_and_cost_credit() -> None:
    allowance = AgeGuard("cap", rate=10.0, burst=100.0).allowance(1.0, 1.0)
    assert allowance.check(150, 100, now=0.0) == (150, None)
    allowance.spend(100, 150)
    assert allowance.credit == 50
    assert allowance.check(151, 100, now=0.0) == (150, "age_capped")
    assert allowance.check(151, 100, now=0.1) == (151, None)  # one sample refilled
    allowance.spend(100, 80)  # an older model adds nothing and costs nothing
    assert allowance.credit == pytest.approx(51)


def test_credit_is_bounded_by_the_burst() -> None:
    allowance = AgeGuard("cap", rate=10.0, burst=100.0).allowance(1.0, 1.0)
    allowance.check(0, 0, now=0.0)
    assert allowance.bound(0, now=10**6) == 100


def test_clock_going_backwards_refills_nothing() -> None:
    allowance = AgeGuard("cap", rate=10.0, burst=100.0).allowance(1.0, 1.0)
    allowance.spend(0, 100)
    allowance.check(0, 0, now=5.0)
    allowance.check(0, 0, now=1.0)
    assert allowance.bound(0, now=5.0) == 0


def test_refuse_and_off() -> None:
    refuse = AgeGuard(policy="refuse", rate=0.0, burst=100.0).allowance(1.0, 1.0)
    assert refuse.check(10**12, 100, now=0.0) == (None, "age_inflation")
    assert refuse.check(200, 100, now=0.0) == (200, None)
    off = AgeGuard(policy="off").allowance(1.0, 1.0)
    assert off.check(10**12, 100, now=0.0) == (10**12, None)
    off.spend(100, 10**12)
    assert off.credit == off.burst


def test_defaults_follow_the_training_rate() -> None:
    allowance = AgeGuard().allowance(samples_per_second=64.0, samples_per_update=32.0)
    assert allowance.rate == RATE_FACTOR * 64 and allowance.burst == BURST_UPDATES * 32


def test_a_newcomer_catches_up_at_the_credit_rate() -> None:
    """A node of age 0 among peers of age 10**6 reaches them at `rate` (its model is adopted
    at once; only its age lags)."""
    allowance = AgeGuard("cap", rate=1000.0, burst=10_000.0).allowance(1.0, 1.0)
    age, t = 0, 0.0
    while age < 10**6:
        t += 1.0
        age = _merge(allowance, age, 10**6, t)
    assert t <= (10**6 - 10_000) / 1000 + 1


@pytest.mark.parametrize(
    "kw", [{"policy": "ignore"}, {"rate": -1.0}, {"burst": -1.0}, {"rate": float("inf")}]
)
def test_bad_settings(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as e:
        AgeGuard(**kw)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"policy": "ignore"}, "unknown age guard 'ignore'; choose one of: cap, refuse, off"),
        ({"rate": -1.0}, "age guard rate must be a finite number >= 0, got -1.0"),
        ({"burst": float("nan")}, "age guard burst must be a finite number >= 0, got nan"),
    ],
)
def test_bad_settings_say_what_and_how_to_fix(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        AgeGuard(**kw)  # type: ignore[arg-type]
    assert str(e.value) == message


def test_zero_rate_and_burst_are_allowed() -> None:
    allowance = AgeGuard(rate=0.0, burst=0.0).allowance(1.0, 1.0)
    assert allowance.check(11, 10, now=5.0) == (10, "age_capped")
