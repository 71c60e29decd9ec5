"""The age-inflation guard bounds what one lying peer can do."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip.age_guard import AgeGuard
from gossip.errors import ConfigError
from gossip.merge import AgeWeightedMerge

ages = st.integers(0, 10**15)


@given(ages, ages)
def test_plausible_ages_pass_unchanged(local: int, received: int) -> None:
    guard = AgeGuard()
    if received <= 2 * local + 10_000:
        assert guard.check(received, local) == (received, None)


@given(ages, ages)
def test_cap_bounds_the_weight_of_any_claim(local: int, received: int) -> None:
    age, note = AgeGuard(policy="cap", factor=2.0, slack=0).check(received, max(local, 1))
    assert age is not None
    weight = AgeWeightedMerge().weight(max(local, 1), age)
    assert weight <= 2 / 3 + 1e-12  # factor / (1 + factor)
    assert (note == "age_capped") == (received > 2 * max(local, 1))


def test_refuse_and_off() -> None:
    assert AgeGuard(policy="refuse").check(10**12, 100) == (None, "age_inflation")
    assert AgeGuard(policy="off").check(10**12, 100) == (10**12, None)


def test_a_newcomer_catches_up_in_few_merges() -> None:
    guard, age, merges = AgeGuard(), 0, 0
    while age < 10**7:
        age = max(age, guard.check(10**7, age)[0] or 0)
        merges += 1
    assert merges <= 12


@pytest.mark.parametrize("kw", [{"policy": "ignore"}, {"factor": 0.5}, {"slack": -1}])
def test_bad_settings(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        AgeGuard(**kw)  # type: ignore[arg-type]
