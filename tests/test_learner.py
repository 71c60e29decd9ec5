"""The learner: training raises the age by samples seen, is deterministic, uses local data."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gossip.errors import ConfigError
from gossip.learner import Learner, LearnerConfig, LocalData, evaluate_model, resolve_device


def _blobs(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well-separated Gaussian classes in 2-D."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + (y.float() * 4 - 2).unsqueeze(1)
    return x, y


def _learner(
    config: LearnerConfig | None = None, seed: int = 1, **data_kw: torch.Tensor
) -> Learner:
    torch.manual_seed(0)
    x, y = _blobs()
    model = nn.Linear(2, 2)
    return Learner(
        model, LocalData(x, y, **data_kw), config or LearnerConfig(device="cpu"), seed=seed
    )


def test_train_increases_age_by_samples_seen() -> None:
    learner = _learner(LearnerConfig(batch_size=16, device="cpu"))
    stats = learner.train(steps=5)
    assert (stats.steps, stats.samples, learner.state.age) == (5, 80, 80)
    stats = learner.train(epochs=1)
    # ceil(200 / 16) = 13 full batches: an epoch is rounded up to whole batches.
    assert stats.samples == 208 and learner.state.age == 288


def test_training_learns_and_evaluate_reports_accuracy() -> None:
    learner = _learner(LearnerConfig(lr=0.1, batch_size=20, device="cpu"))
    x, y = _blobs(seed=9)
    before = learner.evaluate(x, y)
    learner.train(epochs=3)
    after = learner.evaluate(x, y)
    assert after.loss < before.loss
    assert after.accuracy > 0.95
    assert after.samples == 200


def test_training_changes_the_flat_state_in_place() -> None:
    learner = _learner()
    flat = learner.state.flat
    before = flat.clone()
    learner.train(steps=1)
    assert learner.state.flat is flat and not torch.equal(flat, before)


def test_merge_through_flat_changes_the_model() -> None:
    learner = _learner()
    x, _ = _blobs()
    learner.state.flat.zero_()
    logits = learner.model(x[:3])
    assert torch.equal(logits, torch.zeros_like(logits))


def test_deterministic_given_seed() -> None:
    a, b, c = _learner(seed=3), _learner(seed=3), _learner(seed=4)
    for learner in (a, b, c):
        learner.train(steps=7)
    assert torch.equal(a.state.flat, b.state.flat)
    assert not torch.equal(a.state.flat, c.state.flat)


def test_trains_only_on_its_own_rows() -> None:
    # Identical inputs; label 1 only on this peer's rows. Seeing any other row would pull
    # the prediction towards 0.
    x = torch.zeros(100, 2)
    y = torch.zeros(100, dtype=torch.long)
    mine = torch.arange(0, 100, 10)
    y[mine] = 1
    torch.manual_seed(0)
    learner = Learner(nn.Linear(2, 2), LocalData(x, y, mine), LearnerConfig(lr=0.5, device="cpu"))
    assert len(learner.data) == 10
    learner.train(steps=20)
    assert learner.evaluate(x, torch.ones_like(y)).accuracy == 1.0
    assert learner.state.age == 20 * 10


def test_adam_is_selectable() -> None:
    learner = _learner(LearnerConfig(optimizer="adam", lr=0.01, device="cpu"))
    assert isinstance(learner.optimizer, torch.optim.Adam)
    learner.train(steps=2)
    assert learner.state.age == 64


def test_empty_local_data_trains_nothing() -> None:
    learner = _learner(indices=torch.empty(0, dtype=torch.long))
    stats = learner.train(steps=3)
    assert stats.samples == 0 and learner.state.age == 0 and math.isnan(stats.loss)


def test_evaluate_on_empty_set() -> None:
    stats = evaluate_model(
        nn.Linear(2, 2), torch.empty(0, 2), torch.empty(0, dtype=torch.long), torch.device("cpu")
    )
    assert stats.samples == 0 and math.isnan(stats.accuracy)


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize("kw", [{"optimizer": "lbfgs"}, {"lr": 0.0}, {"batch_size": 0}])
def test_bad_config_is_one_line(kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as e:
        LearnerConfig(**kw)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_cuda() -> None:
    learner = _learner(LearnerConfig(device="cuda"))
    learner.train(steps=3)
    assert learner.state.flat.device.type == "cuda" and learner.state.age == 96
