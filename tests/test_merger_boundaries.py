"""The merge pipeline at its edges: exact merged vectors on hand-computable inputs, the ages,
``last_weight`` and ``last_radius`` after each kind of merge, the sender windows, and the exact
error messages of ``--merge``. Measured by ``.ci/mutation robust.merger``.

Models are float64 with power-of-two distances and ages, so every expected value is exact."""

from __future__ import annotations

import math

import pytest
import torch

from gossip.errors import ConfigError
from gossip.merge import MERGE_RULES, AgeWeightedMerge
from gossip.robust.merger import Merger, MergeSpec, parse_merge_spec


def vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def assert_exact(w: torch.Tensor, *values: float) -> None:
    assert w.dtype == torch.float64 and w.shape == (len(values),)
    assert w.tolist() == list(values)


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("age-weighted", "age-weighted"),
        ("average", "average"),
        ("replace", "replace"),
        ("none", "none"),
        ("median", "median"),
        ("clipped", "clipped:1"),
        ("clipped:1.5", "clipped:1.5"),
        ("trimmed-mean", "trimmed-mean:1"),
        ("trimmed-mean:2", "trimmed-mean:2"),
    ],
)
def test_str_shows_the_parameter_of_the_rules_that_take_one(spec: str, text: str) -> None:
    assert str(parse_merge_spec(spec)) == text


def test_specs_without_a_parameter_and_surrounding_blanks() -> None:
    assert parse_merge_spec(" median ") == MergeSpec("median", 0.0)
    assert parse_merge_spec("none") == MergeSpec("none", 0.0)
    assert parse_merge_spec("clipped:0.25") == MergeSpec("clipped", 0.25)


CHOICES = (
    "choose one of: age-weighted, average, replace, none, clipped[:MULT], trimmed-mean[:K], median"
)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("krum", f"unknown merge rule 'krum'; {CHOICES}"),
        ("Median", f"unknown merge rule 'Median'; {CHOICES}"),
        ("clipped:x", "merge 'clipped:x': clipped:MULT needs a positive number, e.g. clipped:1.5"),
        ("clipped:0", "merge 'clipped:0': clipped:MULT needs a positive number, e.g. clipped:1.5"),
        (
            "clipped:inf",
            "merge 'clipped:inf': clipped:MULT needs a positive number, e.g. clipped:1.5",
        ),
        ("trimmed-mean:1.5", "merge 'trimmed-mean:1.5': trimmed-mean:K needs an integer K >= 1"),
        ("trimmed-mean:-1", "merge 'trimmed-mean:-1': trimmed-mean:K needs an integer K >= 1"),
        ("trimmed-mean:0", "merge 'trimmed-mean:0': trimmed-mean:K needs an integer K >= 1"),
        ("median:2", "merge rule 'median' takes no parameter, got 'median:2'"),
        (" none:1", "merge rule 'none' takes no parameter, got ' none:1'"),
    ],
)
def test_error_messages_are_exact(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_merge_spec(spec)
    assert str(e.value) == message


# --------------------------------------------------------------------------- construction


def test_a_parsed_spec_is_taken_as_it_is() -> None:
    spec = MergeSpec("clipped", 2.0)
    merger = Merger(spec)
    assert merger.spec is spec
    w = vec(0.0, 0.0)
    merger.merge_(w, 1, vec(8.0, 0.0), 1, "a")  # radius 2 * 8: no clipping
    assert merger.last_radius == 16.0 and merger.last_weight == 0.5
    assert_exact(w, 4.0, 0.0)


@pytest.mark.parametrize("spec", ["age-weighted", "none", "clipped", "median", "trimmed-mean"])
def test_a_fresh_merger_has_merged_nothing(spec: str) -> None:
    merger = Merger(spec)
    assert merger.last_radius is None
    assert type(merger.last_weight) is float and merger.last_weight == 0.0
    w = vec(1.0, 2.0)
    assert merger.merge_many_(w, 7, []) == 7  # nothing received: nothing changes
    assert_exact(w, 1.0, 2.0)
    assert merger.last_radius is None and merger.last_weight == 0.0


@pytest.mark.parametrize(
    ("spec", "merges"),
    [("age-weighted", True), ("average", True), ("replace", True), ("none", False),
     ("clipped", True), ("trimmed-mean:2", True), ("median", True)],
)  # fmt: skip
def test_merges_and_the_rule_of_each_spec(spec: str, merges: bool) -> None:
    merger = Merger(spec)
    assert merger.merges is merges
    name = merger.spec.name
    if name in MERGE_RULES:
        assert merger.rule is MERGE_RULES[name]
    else:  # the robust rules fall back on age-weighting
        assert isinstance(merger.rule, AgeWeightedMerge)


def test_the_default_window_holds_eight_senders() -> None:
    merger = Merger("clipped")
    w = vec(0.0, 0.0)
    # s0 is the least recent of nine senders: evicted, its distance 100 no longer counts
    for i, d in enumerate([100.0, 1.0, 1.0, 1.0, 1.0, 4.0, 4.0, 4.0, 4.0]):
        merger.merge_(w, 1, vec(d, 0.0), 0, f"s{i}")  # remote age 0: records, moves nothing
    assert_exact(w, 0.0, 0.0)
    assert len(merger._distances) == 8 and list(merger._distances) == [f"s{i}" for i in range(1, 9)]
    merger.merge_(w, 1, vec(16.0, 0.0), 1, "m")
    assert merger.last_radius == 1.0  # lower median of 1, 1, 1, 1, 4, 4, 4, 4
    assert merger.last_weight == 1 / 32  # age weight 1/2 of a step clipped to 1/16
    assert_exact(w, 0.5, 0.0)
    median = Merger("median")
    for i in range(9):
        median.merge_(w, 1, vec(float(i), 0.0), 0, f"s{i}")
    assert len(median._models) == 8 and list(median._models) == [f"s{i}" for i in range(1, 9)]


# --------------------------------------------------------------------------- merge_: classic


def test_merge_of_the_classic_rules_sets_the_remote_weight() -> None:
    merger = Merger("age-weighted")
    w = vec(0.0, 0.0)
    age = merger.merge_(w, 10, vec(4.0, 4.0), 30, "a")
    assert age == 30 and type(age) is int
    assert merger.last_weight == 0.75
    assert_exact(w, 3.0, 3.0)
    average = Merger("average")
    w = vec(0.0, 0.0)
    assert average.merge_(w, 10, vec(4.0, 4.0), 30, "a") == 30
    assert average.last_weight == 0.5
    assert_exact(w, 2.0, 2.0)
    replace = Merger("replace")
    w = vec(1.0, 1.0)
    assert replace.merge_(w, 30, vec(4.0, 4.0), 10, "a") == 30  # younger: kept
    assert replace.last_weight == 0.0
    assert_exact(w, 1.0, 1.0)


def test_merge_with_none_keeps_the_model_its_age_and_no_weight() -> None:
    merger = Merger("none")
    w = vec(1.0, 2.0)
    age = merger.merge_(w, 10, vec(4.0, 4.0), 30, "a")
    assert age == 10 and type(age) is int
    assert merger.last_weight == 0.0
    assert_exact(w, 1.0, 2.0)


# --------------------------------------------------------------------------- merge_many_


def test_merge_many_with_none_keeps_the_model_and_the_local_age() -> None:
    merger = Merger("none")
    w = vec(1.0, 2.0)
    age = merger.merge_many_(w, 5, [(vec(9.0, 9.0), 9, "a"), (vec(3.0, 3.0), 20, "b")])
    assert age == 5 and type(age) is int
    assert merger.last_weight == 0.0
    assert_exact(w, 1.0, 2.0)


def test_merge_many_median_takes_the_messages_one_at_a_time() -> None:
    merger = Merger("median")
    w = vec(0.0, 10.0)
    received = [(vec(4.0, 2.0), 30, "a"), (vec(8.0, -2.0), 10, "b")]
    age = merger.merge_many_(w, 30, received)
    # a: median of [0, 10], [4, 2] is [0, 2]; weight 30/60: w = [0, 6], age 30
    # b: median of [0, 6], [4, 2], [8, -2] is [4, 2]; weight 10/40: w = [1, 5]
    assert age == 30 and type(age) is int
    assert_exact(w, 1.0, 5.0)
    assert merger.last_weight == 0.625  # 1 - (1 - 1/2) * (1 - 1/4)
    assert list(merger._models) == ["a", "b"]


def test_merge_many_trimmed_mean_exact() -> None:
    merger = Merger("trimmed-mean:1")
    w = vec(0.0)
    received = [(vec(1.0), 0, "a"), (vec(2.0), 0, "b"), (vec(100.0), 4, "c")]
    # a, b: remote age 0 against 4, nothing moves; c: trimmed mean of 0, 1, 2, 100 is 1.5
    assert merger.merge_many_(w, 4, received) == 4
    assert merger.last_weight == 0.5
    assert_exact(w, 0.75)


def test_merge_many_clipped_radius_comes_from_the_other_senders() -> None:
    merger = Merger("clipped")
    w = vec(0.0, 0.0)
    received = [(vec(0.0, 8.0), 0, "a"), (vec(8.0, 0.0), 0, "b"), (vec(0.0, 32.0), 1, "m")]
    age = merger.merge_many_(w, 1, received)
    assert age == 1 and type(age) is int
    assert merger.last_radius == 8.0  # lower median of a's 8 and b's 8, not m's 32
    assert merger.last_weight == 0.125  # 1 - 1 * 1 * (1 - 1/2 * 8/32)
    assert_exact(w, 0.0, 4.0)
    assert list(merger._distances) == ["a", "b", "m"]


def test_merge_clipped_records_each_sender_under_its_name() -> None:
    merger = Merger("clipped")
    w = vec(0.0, 0.0)
    merger.merge_(w, 1, vec(0.0, 8.0), 0, "a")
    merger.merge_(w, 1, vec(8.0, 0.0), 0, "b")
    assert merger.merge_(w, 1, vec(0.0, 32.0), 1, "m") == 1
    assert merger.last_radius == 8.0 and merger.last_weight == 0.125
    assert_exact(w, 0.0, 4.0)
    assert list(merger._distances) == ["a", "b", "m"]


def test_replace_many_takes_the_oldest_wherever_it_is() -> None:
    merger = Merger("replace")
    w = vec(0.0, 0.0)
    age = merger.merge_many_(w, 10, [(vec(1.0, 1.0), 30, "a"), (vec(2.0, 2.0), 5, "b")])
    assert age == 30 and merger.last_weight == 1.0
    assert_exact(w, 1.0, 1.0)
    w = vec(0.0, 0.0)
    merger.merge_many_(w, 10, [(vec(1.0, 1.0), 30, "a"), (vec(2.0, 2.0), 30, "b")])
    assert_exact(w, 1.0, 1.0)  # a tie among the received: the first


def test_replace_many_keeps_the_local_model_when_all_are_younger() -> None:
    merger = Merger("replace")
    w = vec(7.0, 7.0)
    age = merger.merge_many_(w, 50, [(vec(1.0, 1.0), 30, "a"), (vec(2.0, 2.0), 5, "b")])
    assert age == 50 and type(age) is int
    assert merger.last_weight == 0.0
    assert_exact(w, 7.0, 7.0)


def test_replace_many_takes_a_model_as_old_as_the_local_one() -> None:
    merger = Merger("replace")
    w = vec(7.0, 7.0)
    age = merger.merge_many_(w, 30, [(vec(1.0, 1.0), 30, "a"), (vec(2.0, 2.0), 5, "b")])
    assert age == 30 and merger.last_weight == 1.0
    assert_exact(w, 1.0, 1.0)


def test_average_many_ignores_the_ages() -> None:
    merger = Merger("average")
    w = vec(0.0, 0.0)
    age = merger.merge_many_(w, 100, [(vec(3.0, 3.0), 1, "a"), (vec(6.0, 6.0), 1000, "b")])
    assert age == 1000 and type(age) is int
    torch.testing.assert_close(w, vec(3.0, 3.0), rtol=0, atol=1e-15)
    assert merger.last_weight == pytest.approx(2 / 3, rel=1e-15)


def test_age_weighted_many_with_a_total_age_of_one() -> None:
    merger = Merger("age-weighted")
    w = vec(0.0, 0.0)
    assert merger.merge_many_(w, 0, [(vec(4.0, 4.0), 1, "a")]) == 1  # all of the received
    assert merger.last_weight == 1.0
    assert_exact(w, 4.0, 4.0)
    w = vec(2.0, 2.0)
    assert merger.merge_many_(w, 1, [(vec(4.0, 4.0), 0, "a")]) == 1  # none of it
    assert merger.last_weight == 0.0
    assert_exact(w, 2.0, 2.0)


# --------------------------------------------------------------------------- clipped


def test_clipped_a_sender_does_not_vouch_for_itself() -> None:
    merger = Merger("clipped")
    w = vec(0.0, 0.0)
    merger.merge_(w, 1, vec(1.0, 0.0), 0, "a")
    assert merger.last_radius == 1.0
    # a again, now at 8: its own earlier distance 1 does not count, it is the only sender
    merger.merge_(w, 1, vec(8.0, 0.0), 1, "a")
    assert merger.last_radius == 8.0 and merger.last_weight == 0.5
    assert_exact(w, 4.0, 0.0)
    assert list(merger._distances) == ["a"]


def test_clipped_first_radius_is_mult_times_the_own_distance() -> None:
    merger = Merger("clipped:0.5")
    w = vec(0.0, 0.0)
    assert merger.merge_(w, 1, vec(8.0, 0.0), 1, "a") == 1
    assert merger.last_radius == 4.0
    assert merger.last_weight == 0.25  # 1/2 * 4/8
    assert_exact(w, 2.0, 0.0)


def test_clipped_never_stretches_a_short_step() -> None:
    merger = Merger("clipped")
    w = vec(0.0, 0.0)
    merger.merge_(w, 1, vec(8.0, 0.0), 0, "b")
    merger.merge_(w, 1, vec(2.0, 0.0), 1, "a")  # radius 8 > distance 2
    assert merger.last_radius == 8.0 and merger.last_weight == 0.5
    assert_exact(w, 1.0, 0.0)


def test_clipped_clips_distances_below_one() -> None:
    merger = Merger("clipped")
    w = vec(0.0, 0.0)
    merger.merge_(w, 1, vec(0.25, 0.0), 0, "b")
    merger.merge_(w, 1, vec(0.5, 0.0), 1, "a")  # radius 0.25: half the step
    assert merger.last_radius == 0.25 and merger.last_weight == 0.25
    assert_exact(w, 0.125, 0.0)


def test_clipped_an_identical_model_gets_the_age_weight() -> None:
    merger = Merger("clipped")
    w = vec(1.0, 2.0)
    assert merger.merge_(w, 10, vec(1.0, 2.0), 30, "a") == 30
    assert merger.last_radius == 0.0 and merger.last_weight == 0.75
    assert_exact(w, 1.0, 2.0)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_clipped_an_unusable_model_weighs_nothing_and_is_not_recorded(bad: float) -> None:
    merger = Merger("clipped")
    w = vec(0.0, 0.0)
    merger.merge_(w, 1, vec(8.0, 0.0), 1, "a")
    assert merger.last_radius == 8.0 and merger.last_weight == 0.5
    assert merger.merge_(w, 4, vec(bad, 0.0), 6, "m") == 6
    assert merger.last_radius == 0.0 and merger.last_weight == 0.0
    assert type(merger.last_radius) is float and type(merger.last_weight) is float
    assert_exact(w, 4.0, 0.0)
    assert list(merger._distances) == ["a"]


def test_clipped_an_overflowing_float32_model_weighs_nothing() -> None:
    merger = Merger("clipped")
    w = torch.ones(3)
    merger.merge_many_(w, 10, [(torch.full((3,), 3e38), 10, "a")])
    assert merger.last_radius == 0.0 and merger.last_weight == 0.0
    assert w.dtype == torch.float32 and torch.equal(w, torch.ones(3))
