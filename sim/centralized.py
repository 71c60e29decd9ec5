"""The reference line: the same model trained on all the training data in one place."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gossip.datasets import Dataset, load_dataset
from gossip.errors import GossipError
from gossip.learner import Learner, LocalData
from gossip.models import build_model_for
from gossip.schedule import LRSchedule
from sim.config import SimConfig


@dataclass(frozen=True)
class CentralizedResult:
    accuracy: float
    loss: float
    epochs: int
    steps: int
    wall_s: float
    curve: tuple[tuple[int, float], ...]  # (epoch, test accuracy)
    records: tuple[dict[str, Any], ...] = ()  # one per epoch, with the keys of a sim record


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
    n = len(data.y_train)
    batch = min(config.batch_size, n)
    # A bare cosine schedule spans the whole run: epochs of whole batches.
    horizon = epochs * -(-n // batch) * batch
    learner_config = dataclasses.replace(
        config.learner_config(),
        lr_schedule=str(LRSchedule.parse(config.lr_schedule).with_horizon(horizon)),
    )
    learner = Learner(
        model, LocalData(data.x_train, data.y_train), learner_config, seed=config.seed
    )
    x_test, y_test = data.x_test.to(learner.device), data.y_test.to(learner.device)
    start = time.perf_counter()
    curve, steps, records = [], 0, []
    for epoch in range(0, epochs + 1):
        if epoch:
            steps += learner.train(epochs=1).steps
        stats = learner.evaluate(x_test, y_test)
        acc = round(stats.accuracy, 6)
        loss = round(stats.loss, 6) if math.isfinite(stats.loss) else None
        records.append({
            "epoch": epoch, "time": epoch, "steps": steps, "samples_seen": learner.state.age,
            "lr": learner.lr, "acc_mean": acc, "acc_min": acc, "acc_max": acc,
            "acc_p10": acc, "acc_p50": acc, "acc_p90": acc, "acc_avgmodel": acc, "loss_mean": loss,
        })  # fmt: skip
        if epoch:
            curve.append((epoch, acc))
        if loss is None:
            raise GossipError(
                f"centralized training diverged in epoch {epoch}: the test loss is not "
                f"finite; lower --lr (now {config.lr:g}) or use --lr-schedule"
            )
    final = learner.evaluate(x_test, y_test)
    return CentralizedResult(
        final.accuracy, final.loss, epochs, steps, time.perf_counter() - start, tuple(curve),
        tuple(records),
    )  # fmt: skip


def write_centralized(result: CentralizedResult, config: SimConfig, out: Path) -> None:
    """The files a simulation writes: metrics.jsonl (one record per epoch), config.json,
    summary.json and accuracy.png."""
    from sim.plots import plot_run

    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.jsonl").open("w") as f:
        for record in result.records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    (out / "config.json").write_text(json.dumps(config.as_dict(), indent=2, sort_keys=True) + "\n")
    summary = {
        "centralized": True, "accuracy": result.accuracy, "loss": result.loss,
        "epochs": result.epochs, "steps": result.steps, "wall_s": round(result.wall_s, 3),
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    plot_run(list(result.records), out, title=f"centralized {config.model} on {config.dataset}")
