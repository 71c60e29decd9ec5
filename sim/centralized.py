"""The reference line: the same model trained on all the training data in one place."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from gossip.datasets import Dataset, load_dataset
from gossip.learner import Learner, LocalData
from gossip.models import build_model_for
from sim.config import SimConfig


@dataclass(frozen=True)
class CentralizedResult:
    accuracy: float
    loss: float
    epochs: int
    steps: int
    wall_s: float
    curve: tuple[tuple[int, float], ...]  # (epoch, test accuracy)


def train_centralized(
    config: SimConfig, epochs: int = 30, dataset: Dataset | None = None
) -> CentralizedResult:
    """Train ``config.model`` with ``config``'s optimizer, learning rate and batch size on
    the whole training split for ``epochs`` epochs; report test accuracy after each."""
    torch.set_num_threads(config.threads)
    data = dataset or load_dataset(
        config.dataset, root=config.data_dir, download=config.download, seed=config.seed
    )
    model = build_model_for(config.model, data, config.seed)
    learner = Learner(
        model, LocalData(data.x_train, data.y_train), config.learner_config(), seed=config.seed
    )
    x_test, y_test = data.x_test.to(learner.device), data.y_test.to(learner.device)
    start = time.perf_counter()
    curve, steps = [], 0
    for epoch in range(1, epochs + 1):
        steps += learner.train(epochs=1).steps
        curve.append((epoch, round(learner.evaluate(x_test, y_test).accuracy, 6)))
    final = learner.evaluate(x_test, y_test)
    return CentralizedResult(
        final.accuracy, final.loss, epochs, steps, time.perf_counter() - start, tuple(curve)
    )
