"""Model state: one flat buffer shared with the module, a stable schema hash, the age."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gossip.state import ModelSchema, ModelState, TensorSpec


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_bind_keeps_values_and_outputs() -> None:
    model = _model()
    x = torch.randn(5, 4)
    before = model(x).detach().clone()
    expected = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    state = ModelState.bind(model, age=3)
    assert torch.equal(state.flat, expected)
    assert torch.equal(model(x), before)
    assert state.age == 3 and state.schema.numel == 4 * 3 + 3 + 3 * 2 + 2


def test_flat_and_parameters_share_memory_both_ways() -> None:
    model = _model()
    state = ModelState.bind(model)
    state.flat.fill_(0.5)
    assert all(torch.all(p == 0.5) for p in model.parameters())
    with torch.no_grad():
        model[0].weight.add_(1.0)  # type: ignore[operator]
    assert torch.all(state.flat[:12] == 1.5)


def test_optimizer_steps_update_flat() -> None:
    model = _model()
    state = ModelState.bind(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = state.flat.clone()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert not torch.equal(state.flat, before)


def test_views_are_named_in_schema_order() -> None:
    state = ModelState.bind(_model())
    names = [n for n, _ in state.views()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [s.name for s in state.schema.specs] == names
    assert state.schema.offsets == (0, 12, 15, 21, 23)


def test_schema_hash_is_stable_and_discriminating() -> None:
    a = ModelSchema.from_module(_model(0))
    b = ModelSchema.from_module(_model(1))  # same architecture, other values
    assert a.hash == b.hash and len(a.hash) == 32
    c = ModelSchema.from_module(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3)))
    assert c.hash != a.hash
    renamed = ModelSchema((TensorSpec("w", (2,)),))
    assert renamed.hash != ModelSchema((TensorSpec("v", (2,)),)).hash
    # A pinned value: changing the hash breaks compatibility between deployed peers.
    assert ModelSchema((TensorSpec("w", (2, 3)),)).hash == "f55ebc1153079f66a62ac2a4833daae5"


def test_floating_buffers_are_exchanged_integer_buffers_are_not() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    state = ModelState.bind(model)
    names = [s.name for s in state.schema.specs]
    assert "1.running_mean" in names and "1.num_batches_tracked" not in names


def test_load_flat_and_snapshot() -> None:
    state = ModelState.bind(_model())
    snap, age = state.snapshot()
    state.load_flat(torch.zeros_like(state.flat), age=9)
    assert state.age == 9 and float(state.flat.abs().sum()) == 0.0
    assert float(snap.abs().sum()) > 0 and age == 0


def test_param_hash_detects_any_change() -> None:
    state = ModelState.bind(_model())
    h = state.param_hash()
    state.flat[5] = torch.nextafter(state.flat[5], torch.tensor(10.0))
    assert state.param_hash() != h


def test_bad_flat_length_is_refused() -> None:
    schema = ModelSchema((TensorSpec("w", (2,)),))
    with pytest.raises(ValueError):
        ModelState(schema, torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_precisions_keep_their_dtype(dtype: torch.dtype) -> None:
    model = _model().to(dtype)
    state = ModelState.bind(model)
    assert state.flat.dtype == dtype
    assert state.schema.specs[0].dtype == str(dtype).removeprefix("torch.")
    state.flat.fill_(0.25)
    assert all(torch.all(p == 0.25) for p in model.parameters())


def test_mixed_dtypes_are_refused() -> None:
    model = _model()
    model[2].to(torch.float64)  # type: ignore[operator]
    with pytest.raises(ValueError, match="share one flat buffer"):
        ModelState.bind(model)
