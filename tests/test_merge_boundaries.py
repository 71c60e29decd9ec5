"""The merge rules at their edges: shapes and dtypes of the batched weights, mixed scalar and
tensor ages, fractional ages, the in-place paths, a rule that defines only ``weights``, and
the error message. Measured by ``.ci/mutation merge``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from gossip.errors import ConfigError
from gossip.merge import (
    MERGE_RULES,
    AgeWeightedMerge,
    MergeRule,
    NoMerge,
    get_merge_rule,
)

RULES = pytest.mark.parametrize("name", sorted(MERGE_RULES))


@RULES
@pytest.mark.parametrize("side", ["local", "remote"])
def test_weights_broadcast_a_scalar_age_against_a_batch(name: str, side: str) -> None:
    rule = MERGE_RULES[name]
    batch = torch.tensor([0.0, 1.0, 5.0], dtype=torch.float64)
    scalar = torch.tensor(2.0, dtype=torch.float64)
    a_r = rule.weights(scalar, batch) if side == "remote" else rule.weights(batch, scalar)
    assert a_r.shape == (3,)
    assert a_r.dtype == torch.float64


@RULES
def test_weights_of_scalars_are_float64_scalars(name: str) -> None:
    one = torch.tensor(1.0, dtype=torch.float64)
    a_r = MERGE_RULES[name].weights(one, one)
    assert a_r.shape == () and a_r.dtype == torch.float64


def test_age_weighted_with_fractional_ages_below_one() -> None:
    # Ages are sample counts, but the rule is defined for any non-negative weights: a total
    # below one is divided by itself, not by a stand-in.
    rule = AgeWeightedMerge()
    t = torch.tensor(0.25, dtype=torch.float64)
    assert float(rule.weights(t, t)) == 0.5
    assert float(rule.weights(torch.tensor(0.0, dtype=torch.float64), t)) == 1.0


def test_age_weighted_scalar_weight_at_a_total_of_one() -> None:
    rule = AgeWeightedMerge()
    assert rule.weight(0, 1) == 1.0
    assert rule.weight(1, 0) == 0.0
    assert rule.weight(0, 0) == 0.5


@pytest.mark.parametrize("batched", ["local", "remote"])
def test_in_place_merge_with_one_batched_age(batched: str) -> None:
    rule = AgeWeightedMerge()
    w_l, w_r = torch.zeros(2, 3), torch.ones(2, 3)
    ages = torch.tensor([1.0, 3.0], dtype=torch.float64)
    if batched == "local":
        t = rule.merge_(w_l, ages, w_r, 1)
        expected = [0.5, 0.25]
    else:
        t = rule.merge_(w_l, 1, w_r, ages)
        expected = [0.5, 0.75]
    assert isinstance(t, torch.Tensor) and t.tolist() == [1.0, 3.0]
    torch.testing.assert_close(w_l[:, 0], torch.tensor(expected))


def test_in_place_merge_with_plain_ages_returns_a_float() -> None:
    w_l, w_r = torch.zeros(3), torch.ones(3)
    t = AgeWeightedMerge().merge_(w_l, 1, w_r, 3)
    assert isinstance(t, float) and t == 3.0
    torch.testing.assert_close(w_l, torch.full((3,), 0.75))


def test_none_in_place_keeps_a_batch_of_ages_and_returns_plain_ages_as_float() -> None:
    rule = NoMerge()
    w_l, w_r = torch.zeros(2, 3), torch.ones(2, 3)
    ages = torch.tensor([4.0, 9.0], dtype=torch.float64)
    assert rule.merge_(w_l, ages, w_r, torch.tensor([1.0, 1.0])) is ages
    t = rule.merge_(w_l, 4, w_r, 9)
    assert isinstance(t, float) and t == 4.0
    assert bool((w_l == 0).all())


def test_ages_follow_the_models_device() -> None:
    # The meta device stands in for a GPU here: the merged ages live where the models do.
    w = torch.empty(2, 3, device="meta")
    _, t = AgeWeightedMerge().merge(w, 3, w, 5)
    assert t.device.type == "meta"


def test_a_rule_that_defines_only_weights_gets_a_scalar_weight() -> None:
    # A plugged-in rule only has to define ``weights`` (batched); ``weight`` follows from it.
    @dataclass(frozen=True)
    class Thirds(MergeRule):
        name: str = "thirds"

        def weights(self, t_l: torch.Tensor, t_r: torch.Tensor) -> torch.Tensor:
            two, one = (torch.tensor(x, dtype=torch.float64) for x in (2 / 3, 1 / 3))
            return torch.where(t_r > t_l, two, one)

    rule = Thirds()
    assert rule.weight(1, 2) == pytest.approx(2.0 / 3.0, abs=0)
    assert rule.weight(2, 1) == pytest.approx(1.0 / 3.0, abs=0)
    w_l, w_r = torch.zeros(3), torch.full((3,), 3.0)
    assert rule.merge_(w_l, 1, w_r, 2) == 2.0
    torch.testing.assert_close(w_l, torch.full((3,), 2.0))


def test_unknown_rule_message_lists_the_rules() -> None:
    with pytest.raises(ConfigError) as e:
        get_merge_rule("median")
    assert str(e.value) == (
        "unknown merge rule 'median'; choose one of: age-weighted, average, replace, none"
    )


def test_a_plugged_in_rule_sees_ages_in_float64() -> None:
    # Ages above 2**24 differ by one sample: float32 could not tell them apart.
    @dataclass(frozen=True)
    class Newer(MergeRule):
        name: str = "newer"

        def weights(self, t_l: torch.Tensor, t_r: torch.Tensor) -> torch.Tensor:
            return (t_r >= t_l).to(torch.float64)

    assert Newer().weight(2**25, 2**25 + 1) == 1.0
    assert Newer().weight(2**25 + 1, 2**25) == 0.0  # float32 would round 2**25 + 1 down
    assert Newer().weight(2**25 + 1, 2**25 + 1) == 1.0
