"""Quasi-global momentum (Lin et al., ICML 2021): the buffer follows the model's whole motion
between training rounds, merges included. Checked against a replay of the formula by hand."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from gossip.errors import ConfigError
from gossip.learner import Learner, LearnerConfig, LocalData
from sim.config import SimConfig


def _learner(config: LearnerConfig) -> Learner:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, generator=g)
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).long()
    return Learner(nn.Linear(3, 2), LocalData(x, y), config, seed=2)


@pytest.mark.parametrize("schedule", ["constant", "inverse:64"])
def test_the_buffer_is_the_motion_between_rounds_merges_included(schedule: str) -> None:
    beta, lr, steps = 0.6, 0.2, 2
    base: dict[str, Any] = dict(lr=lr, lr_schedule=schedule, batch_size=16, device="cpu")
    qg = _learner(LearnerConfig(momentum=beta, momentum_mode="quasi-global", **base))
    plain = _learner(LearnerConfig(**base))  # same data, batches and start: gives the gradients
    other = torch.linspace(-1.0, 1.0, qg.state.flat.numel())
    x = qg.state.flat.clone()
    m: torch.Tensor | None = None
    start: torch.Tensor | None = None
    lr_sum = 0.0
    for round_ in range(4):
        if round_ >= 2:  # a merge between rounds moves the model: part of the motion
            qg.state.flat.lerp_(other, 0.5)
            x.lerp_(other, 0.5)
        if start is not None:
            motion = (start - x) / lr_sum
            m = (1 - beta) * motion if m is None else beta * m + (1 - beta) * motion
        start, lr_sum = x.clone(), 0.0
        for s in range(steps):
            plain.state.age = qg.state.age + 16 * s  # the age, hence the rate, of this step
            rate = plain.lr
            plain.state.flat.copy_(x)
            plain.train(steps=1)
            g = (x - plain.state.flat) / rate
            x = x - rate * (g if m is None else g + beta * m)
            lr_sum += rate
        qg.train(steps=steps)
        torch.testing.assert_close(qg.state.flat, x, rtol=1e-5, atol=1e-6)
    assert m is not None and qg._qg_momentum is not None
    torch.testing.assert_close(qg._qg_momentum, m, rtol=1e-5, atol=1e-6)


def test_it_differs_from_local_momentum_and_survives_a_merge_unscaled() -> None:
    cfg: dict[str, Any] = dict(lr=0.2, momentum=0.9, batch_size=16, device="cpu")
    qg = _learner(LearnerConfig(momentum_mode="quasi-global", **cfg))
    local = _learner(LearnerConfig(**cfg))
    for learner in (qg, local):
        learner.train(steps=2)
        learner.train(steps=2)
    assert not torch.allclose(qg.state.flat, local.state.flat)
    assert qg._qg_momentum is not None
    before = qg._qg_momentum.clone()
    qg.merged(0.5)  # the motion a merge causes enters at the next round, nothing is scaled
    torch.testing.assert_close(qg._qg_momentum, before)


def test_a_roll_back_forgets_the_buffer() -> None:
    qg = _learner(LearnerConfig(lr=0.2, momentum=0.5, momentum_mode="quasi-global",
                                batch_size=16, device="cpu"))  # fmt: skip
    qg.train(steps=1)
    qg.train(steps=1)
    assert qg._qg_momentum is not None
    qg.reset_optimizer_state()
    assert qg._qg_momentum is None and qg._qg_start is None


@pytest.mark.parametrize(
    "kw",
    [
        {"momentum_mode": "quasi-global"},  # no momentum
        {"momentum_mode": "quasi-global", "momentum": 0.5, "optimizer": "adam"},
        {"momentum_mode": "global", "momentum": 0.5},
    ],
)
def test_bad_settings_are_one_line(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as e:
        LearnerConfig(**kw)  # type: ignore[arg-type]
    assert "\n" not in str(e.value) and "momentum" in str(e.value)


def test_the_simulator_hands_it_to_the_learner() -> None:
    config = SimConfig(momentum=0.5, momentum_mode="quasi-global")
    assert config.learner_config().momentum_mode == "quasi-global"


def test_the_node_hands_it_to_the_learner() -> None:
    from peers.node_config import NodeConfig

    config = NodeConfig(momentum=0.5, momentum_mode="quasi-global")
    assert config.learner_config().momentum_mode == "quasi-global"
