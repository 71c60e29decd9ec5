"""FlatSGD gives the same trajectory as torch.optim.SGD, with one vector op per step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gossip.optim import FlatSGD
from gossip.state import ModelState


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


@pytest.mark.parametrize(
    ("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.0, 0.01), (0.5, 0.1)]
)
def test_flat_sgd_matches_torch_sgd(momentum: float, weight_decay: float) -> None:
    ref, ours = _model(), _model()
    ref_opt = torch.optim.SGD(
        ref.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay
    )
    state = ModelState.bind(ours)
    opt = FlatSGD(ours, state, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
        ref_opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        ref_opt.step()
        opt.zero_grad()
        nn.functional.cross_entropy(ours(x), y).backward()
        opt.step()
    expected = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    torch.testing.assert_close(state.flat, expected, rtol=1e-5, atol=1e-6)


def test_gradients_are_views_of_the_flat_gradient() -> None:
    model = _model()
    state = ModelState.bind(model)
    opt = FlatSGD(model, state, lr=0.1)
    model(torch.randn(2, 5)).sum().backward()
    assert float(opt.grad.abs().sum()) > 0
    opt.zero_grad()
    assert all(float(p.grad.abs().sum()) == 0 for p in model.parameters() if p.grad is not None)


def test_buffers_are_neither_trained_nor_decayed() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, track_running_stats=True))
    state = ModelState.bind(model)
    opt = FlatSGD(model, state, lr=0.1, weight_decay=0.5)
    mean_view = dict(state.views())["1.running_mean"]
    mean_view.fill_(3.0)
    opt.zero_grad()
    opt.step()
    assert torch.all(mean_view == 3.0)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])  # the fast path, and autograd
def test_learners_sharing_one_gradient_buffer_train_exactly_as_with_their_own(
    model_name: str,
) -> None:
    from gossip.learner import Learner, LearnerConfig, LocalData
    from gossip.models import build_model

    torch.manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    config = LearnerConfig(lr=0.3, momentum=0.5, weight_decay=1e-3, device="cpu", batch_size=8)

    def learners(shared: torch.Tensor | None) -> list[Learner]:
        out = []
        for k in range(3):
            model = build_model(model_name, (1, 8, 8), 10, generator_seed=k)
            data = LocalData(x, y, torch.arange(k * 10, k * 10 + 14))
            out.append(Learner(model, data, config, seed=k, grad_buffer=shared))
        return out

    alone = learners(None)
    numel = alone[0].state.flat.numel()
    together = learners(torch.zeros(numel))
    assert together[0].optimizer.grad is together[2].optimizer.grad  # type: ignore[union-attr]
    for _ in range(4):  # steps interleave across learners, never within one
        for a, b in zip(alone, together, strict=True):
            a.train(steps=2)
            b.train(steps=2)
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a.state.flat, b.state.flat)


def test_a_shared_gradient_buffer_must_match_the_parameters() -> None:
    model = _model()
    state = ModelState.bind(model)
    with pytest.raises(ValueError, match="must match the flat parameters"):
        FlatSGD(model, state, lr=0.1, grad=torch.zeros(state.flat.numel() + 1))
    with pytest.raises(ValueError, match="must match"):
        FlatSGD(model, state, lr=0.1, grad=torch.zeros(state.flat.numel(), dtype=torch.float64))
