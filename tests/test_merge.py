"""Laws of the merge rules, checked as properties over random models and ages."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.errors import ConfigError
from gossip.merge import MERGE_RULES, AgeWeightedMerge, get_merge_rule

ages = st.integers(min_value=0, max_value=10**9)
dims = st.integers(min_value=1, max_value=64)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
rule_names = st.sampled_from(sorted(MERGE_RULES))


def _vec(seed: int, d: int, batch: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, d, generator=g)


@given(rule_names, ages, ages, dims, seeds)
def test_merging_a_model_with_itself_changes_nothing(
    name: str, tl: int, tr: int, d: int, seed: int
) -> None:
    w = _vec(seed, d)
    merged, _ = get_merge_rule(name).merge(w, tl, w.clone(), tr)
    assert torch.equal(merged, w)


@given(rule_names, ages, ages)
def test_weights_lie_in_unit_interval(name: str, tl: int, tr: int) -> None:
    # The merge is the convex combination (1 - a_r) w_l + a_r w_r: weights sum to one.
    a_r = get_merge_rule(name).weights(torch.tensor(float(tl)), torch.tensor(float(tr)))
    assert 0.0 <= float(a_r) <= 1.0


@given(ages, ages, dims, seeds)
def test_age_weighted_matches_formula(tl: int, tr: int, d: int, seed: int) -> None:
    wl, wr = _vec(seed, d), _vec(seed + 1, d)
    merged, t = AgeWeightedMerge().merge(wl, tl, wr, tr)
    both_unaged = tl + tr == 0
    expected = (wl + wr) / 2 if both_unaged else (tl * wl.double() + tr * wr.double()) / (tl + tr)
    torch.testing.assert_close(merged.double(), expected.double(), rtol=1e-5, atol=1e-5)
    assert int(t) == max(tl, tr)


@given(st.integers(min_value=1, max_value=10**9), dims, seeds)
def test_zero_age_side_contributes_nothing(t: int, d: int, seed: int) -> None:
    wl, wr = _vec(seed, d), _vec(seed + 1, d) * 1e6
    rule = AgeWeightedMerge()
    assert torch.equal(rule.merge(wl, t, wr, 0)[0], wl)
    assert torch.equal(rule.merge(wl, 0, wr, t)[0], wr)


@given(rule_names, ages, ages)
def test_result_age_is_max_except_none(name: str, tl: int, tr: int) -> None:
    w = torch.zeros(3)
    _, t = get_merge_rule(name).merge(w, tl, w, tr)
    assert int(t) == (tl if name == "none" else max(tl, tr))


def test_replace_takes_the_older_model() -> None:
    rule = get_merge_rule("replace")
    wl, wr = torch.zeros(4), torch.ones(4)
    assert torch.equal(rule.merge(wl, 5, wr, 9)[0], wr)
    assert torch.equal(rule.merge(wl, 9, wr, 5)[0], wl)


def test_average_ignores_ages() -> None:
    merged, t = get_merge_rule("average").merge(torch.zeros(2), 1, torch.full((2,), 4.0), 1000)
    assert torch.equal(merged, torch.full((2,), 2.0))
    assert int(t) == 1000


def test_none_keeps_local_model_and_age() -> None:
    rule = get_merge_rule("none")
    w = torch.arange(3.0)
    merged, t = rule.merge(w, 7, torch.ones(3), 100)
    assert torch.equal(merged, w) and int(t) == 7
    assert not rule.merges


@given(rule_names, st.lists(st.tuples(ages, ages), min_size=1, max_size=8), dims, seeds)
@settings(max_examples=50)
def test_batched_merge_equals_per_row_merge(
    name: str, age_pairs: list[tuple[int, int]], d: int, seed: int
) -> None:
    rule = get_merge_rule(name)
    b = len(age_pairs)
    wl, wr = _vec(seed, d, (b,)), _vec(seed + 1, d, (b,))
    tl = torch.tensor([p[0] for p in age_pairs], dtype=torch.float64)
    tr = torch.tensor([p[1] for p in age_pairs], dtype=torch.float64)
    merged, t = rule.merge(wl, tl, wr, tr)
    for i, (a, c) in enumerate(age_pairs):
        row, row_t = rule.merge(wl[i], a, wr[i], c)
        assert torch.equal(merged[i], row)
        assert float(t[i]) == float(row_t)


@given(rule_names, ages, ages, dims, seeds)
@settings(max_examples=50)
def test_in_place_merge_equals_pure_merge(name: str, tl: int, tr: int, d: int, seed: int) -> None:
    rule = get_merge_rule(name)
    wl, wr = _vec(seed, d), _vec(seed + 1, d)
    expected, expected_t = rule.merge(wl, tl, wr, tr)
    t = rule.merge_(wl, tl, wr, tr)
    torch.testing.assert_close(wl, expected, rtol=0, atol=1e-6)
    assert float(t) == float(expected_t)


def test_in_place_batched_merge() -> None:
    rule = AgeWeightedMerge()
    wl, wr = torch.zeros(2, 3), torch.ones(2, 3)
    t = rule.merge_(wl, torch.tensor([1.0, 3.0]), wr, torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(wl, torch.tensor([[0.75] * 3, [0.25] * 3]))
    assert t.tolist() == [3.0, 3.0]


def test_unknown_rule_is_one_clear_line() -> None:
    with pytest.raises(ConfigError) as e:
        get_merge_rule("median")
    assert "age-weighted" in str(e.value) and "\n" not in str(e.value)
