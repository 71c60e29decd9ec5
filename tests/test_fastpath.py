"""The hand-written Linear/ReLU step gives autograd's loss and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gossip.fastpath import LinearStackStep
from gossip.learner import Learner, LearnerConfig, LocalData
from gossip.models import build_model
from gossip.optim import FlatSGD
from gossip.state import ModelState


def _with_flat_grads(model: nn.Module) -> FlatSGD:
    return FlatSGD(model, ModelState.bind(model), lr=0.1)


@pytest.mark.parametrize("name", ["logreg", "mlp"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (40,)])
def test_gradients_equal_autograd(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, 10, generator_seed=3)
    opt = _with_flat_grads(model)
    step = LinearStackStep.build(model)
    assert step is not None
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, *shape, generator=g), torch.randint(0, 10, (32,), generator=g)
    opt.zero_grad()
    expected_loss = nn.functional.cross_entropy(model(x), y)
    expected_loss.backward()
    expected = opt.grad.clone()
    opt.grad.fill_(123.0)  # the fast step must overwrite, not accumulate
    loss = step.loss_and_grads(x, y)
    torch.testing.assert_close(loss, expected_loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opt.grad, expected, rtol=1e-4, atol=1e-6)


def test_only_plain_linear_relu_stacks_qualify() -> None:
    assert LinearStackStep.build(_model_with_grads(nn.Sequential(nn.Linear(3, 2)))) is not None
    assert (
        LinearStackStep.build(
            _model_with_grads(nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 2)))
        )
        is None
    )
    assert (
        LinearStackStep.build(_model_with_grads(nn.Sequential(nn.Linear(3, 2), nn.ReLU()))) is None
    )
    assert LinearStackStep.build(_model_with_grads(build_model("cnn", (1, 8, 8), 10))) is None
    assert LinearStackStep.build(nn.Sequential(nn.Linear(3, 2))) is None  # no flat gradients


def _model_with_grads(model: nn.Module) -> nn.Module:
    _with_flat_grads(model)
    return model


def test_learner_trajectory_matches_the_autograd_path() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(200, 64, generator=g), torch.randint(0, 10, (200,), generator=g)
    learners = [
        Learner(
            build_model("mlp", (64,), 10),
            LocalData(x, y),
            LearnerConfig(lr=0.1, device="cpu", fast_path=fast),
            seed=5,
        )
        for fast in (True, False)
    ]
    assert learners[0]._fast is not None and learners[1]._fast is None
    for learner in learners:
        learner.train(steps=20)
    torch.testing.assert_close(learners[0].state.flat, learners[1].state.flat, rtol=1e-4, atol=1e-5)
