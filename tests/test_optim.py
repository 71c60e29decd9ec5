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
