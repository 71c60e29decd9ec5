"""The batched engine: the asyncio engine's simulation, computed over stacked parameters.

Three passes (DESIGN.md, "Batched engine"): :mod:`.schedule` replays the event order and
everything that does not depend on model values; :mod:`.waves` groups the operations into
waves; :mod:`.compute` executes each wave as a few tensor operations over ``[N, P]`` and
evaluates at the barriers. :func:`unsupported` names the first option it cannot run yet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import nn

from gossip.codec import MessageMeta, encode
from gossip.datasets import Dataset
from gossip.errors import GossipError
from gossip.models import build_model_for, parse_model_spec
from gossip.schedule import COSINE_FLOOR, LRSchedule
from gossip.state import ModelSchema, ModelState
from sampling.balanced import is_time_varying
from sampling.cyclon import is_dynamic
from sim.config import SimConfig
from sim.engines.batched.compute import StackedPeers
from sim.engines.batched.schedule import Schedule, build_schedule
from sim.engines.batched.waves import plan_waves
from sim.network import NetworkStats
from sim.observer import make_record

Record = dict[str, Any]
Progress = Callable[[float, Record | None], None]

_MERGES = ("age-weighted", "average", "replace", "none")


def unsupported(config: SimConfig) -> str | None:
    """Why the batched engine cannot run ``config`` (naming the option), or None."""
    checks: list[tuple[bool, str]] = [
        (config.algorithm != "gossip", f"--algorithm {config.algorithm}"),
        (config.mode != "push", f"--mode {config.mode} (push only)"),
        (config.train_on != "timer", f"--train-on {config.train_on} (timer only)"),
        (config.merge_k != 1, f"--merge-k {config.merge_k}"),
        (config.merge not in _MERGES, f"--merge {config.merge} (robust rules)"),
        (config.screen != 0, "the norm screen (pass --screen 0)"),
        (config.screen_distance != 0, "the distance screen (pass --screen-distance 0)"),
        (config.attack != "none", f"--attack {config.attack}"),
        (config.churn != "none", f"--churn {config.churn}"),
        (is_dynamic(config.sampler), f"--sampler {config.sampler} (dynamic views)"),
        (config.sampler.startswith("neighbours-balanced"), f"--sampler {config.sampler}"),
        (config.init != "shared", f"--init {config.init}"),
        (is_time_varying(config.topology), f"--topology {config.topology} (time-varying)"),
        (config.codec not in ("off",), f"--codec {config.codec}"),
        (config.train_cost != 0, f"--train-cost {config.train_cost:g}"),
        (config.optimizer != "sgd", f"--optimizer {config.optimizer}"),
        (config.momentum != 0, f"--momentum {config.momentum:g}"),
        (config.partition == "natural", "--partition natural (per-peer local tests)"),
        (parse_model_spec(config.model)[0] == "charlstm", "--model charlstm (recurrent layers)"),
    ]
    for failed, option in checks:
        if failed:
            return option
    return None


def _learning_rates(
    config: SimConfig,
    lr: float,
    lr_schedule: LRSchedule,
    schedule: Schedule,
    parts: list[np.ndarray],
) -> Callable[[np.ndarray], np.ndarray]:
    """TRAIN events -> ``[k, steps]`` learning rates: step ``s`` of a round that starts at
    age ``t`` runs at ``lr * factor(t + s * batch)``, as the peer's learner computes it."""
    steps = config.local_steps
    if lr_schedule.kind == "constant":
        return lambda events: np.full((len(events), steps), lr)
    batch = np.array([min(config.batch_size, len(p)) for p in parts], dtype=np.int64)

    def rates(events: np.ndarray) -> np.ndarray:
        start = schedule.age_before[events]
        b = batch[schedule.events.peer[events]]
        ages = start[:, None] + np.arange(steps)[None, :] * b[:, None]
        return lr * lr_factors(lr_schedule, ages)

    return rates


def lr_factors(lr_schedule: LRSchedule, ages: np.ndarray) -> np.ndarray:
    """:meth:`LRSchedule.factor` of every age, bit for bit, without a Python call per age
    (that was per-peer Python work inside every wave): the same IEEE operations in the same
    order over float64 arrays; the cosine through ``math.cos``, whose rounding numpy's own
    ``cos`` need not share."""
    kind, scale = lr_schedule.kind, lr_schedule.scale
    t = np.maximum(ages.astype(np.float64), 0.0)
    if kind == "constant":
        return np.ones_like(t)
    if kind == "inverse":
        return np.asarray(scale / (scale + t))
    if kind == "sqrt":
        return np.sqrt(scale / (scale + t))
    if lr_schedule.needs_horizon:
        lr_schedule.factor(0)  # raises the schedule's own one-line error
    angle = (math.pi * np.minimum(t / scale, 1.0)).ravel().tolist()
    cos = np.fromiter(map(math.cos, angle), dtype=np.float64, count=len(angle)).reshape(t.shape)
    return np.asarray(COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + cos))


def _model_supported(module: nn.Module) -> str | None:
    for m in module.modules():
        if isinstance(m, nn.Dropout | nn.modules.batchnorm._BatchNorm | nn.RNNBase):
            return f"the model's {type(m).__name__} layer"
    if any(True for _ in module.buffers()):
        return "a model with buffers"
    return None


@dataclass
class BatchedNetwork:
    """What :func:`sim.runner.summarise` reads of a network."""

    stats: NetworkStats
    schema: ModelSchema


@dataclass
class BatchedRun:
    """A finished batched simulation, shaped like :class:`sim.runner.World` for the summary
    and the report (``dataset``, ``parts``, ``graph``, ``network``, ``attackers``)."""

    config: SimConfig
    dataset: Dataset
    parts: list[np.ndarray]
    graph: nx.Graph
    network: BatchedNetwork
    peers_state: StackedPeers
    schedule: Schedule
    waves: int
    pool_size: int
    schedule_s: float
    attackers: list[int]


def run_batched(
    config: SimConfig, dataset: Dataset | None = None, progress: Progress | None = None
) -> tuple[list[Record], BatchedRun]:
    """Run ``config`` on the batched engine (see :func:`unsupported` first)."""
    from sim.runner import Diverged, build_setup, evaluation_times, gossip_learner_config

    reason = unsupported(config)
    if reason is not None:
        raise GossipError(f"the batched engine does not support {reason} yet; use --engine asyncio")
    torch.set_num_threads(config.threads)
    setup = build_setup(config, dataset)
    data, parts, device = setup.data, setup.parts, setup.device
    module = build_model_for(config.model, data, config.seed)
    why = _model_supported(module)
    if why is not None:
        raise GossipError(f"the batched engine does not support {why} yet; use --engine asyncio")
    state = ModelState.bind(module)
    schema = state.schema
    init = state.flat.detach().clone()
    probe = MessageMeta("p" * 8, 10**9, "n" * 12, 0.0, schema.hash, "fp32")
    message_bytes = len(encode(torch.zeros(schema.numel), schema, probe))
    learner_cfg = gossip_learner_config(config, setup)
    lr_schedule = LRSchedule.parse(learner_cfg.lr_schedule)
    neighbours = (
        None
        if config.sampler == "uniform"
        else [sorted(setup.graph.neighbors(i)) for i in range(config.peers)]
    )
    # The stacked peers are built on a second thread while this one plans: their build is
    # tensor copies that release the GIL (the parameters repeated N times, the shards laid
    # out by peer: 0.04 s at 10,000 logreg peers, on fresh pages), the schedule is numpy.
    with ThreadPoolExecutor(1, thread_name_prefix="gossip-build") as pool:
        building = pool.submit(
            StackedPeers, module, init, parts, data.x_train, data.y_train, config.batch_size,
            config.weight_decay, 0, device,
        )  # fmt: skip
        start = time.perf_counter()
        schedule = build_schedule(
            config, parts, neighbours, lr_schedule, message_bytes, evaluation_times(config)
        )
        plan = plan_waves(schedule, config.peers)
        schedule_s = time.perf_counter() - start
        stacked = building.result()
    stacked.reserve_pool(plan.pool_size)
    lrs = _learning_rates(config, learner_cfg.lr, lr_schedule, schedule, parts)
    x_test, y_test = setup.x_test.to(device), setup.y_test.to(device)
    network = BatchedNetwork(NetworkStats(), schema)
    records: list[Record] = []

    def evaluate(index: int) -> None:
        snap = schedule.evals[index]
        bad = stacked.nonfinite_peers()
        if bad:
            raise GossipError(
                f"peer p{bad[0]}'s model became non-finite by period {snap.period}; the batched "
                "engine does not roll models back yet: lower --lr or use --engine asyncio"
            )
        accs, losses = stacked.evaluate(setup.eval_idx, x_test, y_test)
        acc_avg, loss_avg = stacked.average_model_stats(x_test, y_test)
        consensus = stacked.consensus()
        record = make_record(
            snap.time, snap.period, accs.tolist(), losses.tolist(), accs.tolist(), [],
            consensus=consensus, consensus_honest=consensus, ages=snap.ages,
            stats=snap.network, merges=snap.merges, age_capped=snap.age_capped, rollbacks=0,
            train_steps=snap.train_steps, peers_online=config.peers,
            acc_avgmodel=acc_avg, loss_avgmodel=loss_avg,
        )  # fmt: skip
        records.append(record)
        network.stats = snap.network
        if progress is not None:
            progress(snap.time, record)
        if 2 * record["loss_nonfinite"] >= max(record["peers_evaluated"], 1):
            raise Diverged(
                f"training diverged at period {snap.period}: {record['loss_nonfinite']} of "
                f"{record['peers_evaluated']} peers' test loss is not finite; lower --lr "
                f"(now {config.lr:g}) or use --lr-schedule",
                records,
            )

    for wave in plan.waves:
        for index in wave.evals_before:
            evaluate(index)
        stacked.run_wave(wave, schedule, lrs)
    for index in plan.evals_after:
        evaluate(index)
    run = BatchedRun(
        config, data, parts, setup.graph, network, stacked, schedule, len(plan.waves),
        plan.pool_size, schedule_s, setup.attackers,
    )  # fmt: skip
    return records, run
