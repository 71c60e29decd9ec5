"""Build and run one simulation: dataset, partition, topology, peers, network, churn, observer.

All randomness derives from ``config.seed`` through one ``numpy.random.SeedSequence``, split
into independent streams (partition, topology, network, churn, evaluation sample, one per
peer), so a run is reproducible bit for bit and changing, say, the loss rate does not change
which data each peer holds.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch

from gossip import seeding
from gossip.datasets import Dataset, load_dataset
from gossip.errors import GossipError
from gossip.learner import Learner, LearnerConfig, LocalData, resolve_device
from gossip.memory import frozen_heap, trim_heap
from gossip.models import build_model_for
from gossip.partition import label_distribution, partition, partition_generator
from gossip.robust.attacks import Attacker, AttackSpec
from gossip.seeding import generator, peer_stream, peer_torch_seed
from gossip.state import ModelSchema
from peers.peer import Peer
from sampling.balanced import (
    OnePeerExponentialSampler,
    WeightedNeighbourSampler,
    balanced_push_matrix,
    is_time_varying,
    neighbour_push_matrix,
    parse_balanced,
    push_gap,
    rate_summary,
    receive_rates,
)
from sampling.base import PeerSampler
from sampling.cyclon import ViewSampler, is_dynamic
from sampling.uniform import NeighbourSampler, UniformSampler
from sim.churn import ChurnController, parse_churn
from sim.clock import run_virtual
from sim.config import SimConfig
from sim.network import SimNetwork
from sim.observer import MetricsObserver
from sim.topology import build_topology, graph_properties

if TYPE_CHECKING:
    from sim.engines.batched import BatchedRun
    from sim.fedavg import FedAvgRun

Record = dict[str, Any]
Progress = Callable[[float, Record | None], None]  # (virtual time, new record or None)


@dataclass
class World:
    """Everything one simulation consists of, built and ready to run."""

    config: SimConfig
    dataset: Dataset
    parts: list[np.ndarray]
    graph: nx.Graph
    peers: list[Peer]
    network: SimNetwork
    churn: ChurnController
    observer: MetricsObserver
    attackers: list[int] = field(default_factory=list)
    push: sp.csr_array | None = None  # the balanced sampler's push matrix, when it is used


@dataclass
class SimResult:
    config: SimConfig
    records: list[Record]
    summary: dict[str, Any]
    world: World | FedAvgRun | BatchedRun = field(repr=False)

    @property
    def final(self) -> Record:
        return self.records[-1]


class Diverged(GossipError):
    """The peers' loss became non-finite: the run stops with one line that says so (and
    the records so far are still written)."""

    def __init__(self, message: str, records: list[Record]) -> None:
        super().__init__(message)
        self.records = records

    def __reduce__(self) -> tuple[type[Diverged], tuple[str, list[Record]]]:
        return (Diverged, (str(self), self.records))  # picklable across a process pool


def peer_id(i: int) -> str:
    return f"p{i}"


def choose_attackers(config: SimConfig) -> list[int]:
    """The peers that gossip poison: ``round(fraction * peers)`` of them, from the seed."""
    spec = AttackSpec.parse(config.attack)
    count = round(spec.fraction * config.peers) if spec.active else 0
    if count == 0:
        return []
    rng = generator(config.seed, seeding.ATTACK)
    return sorted(rng.choice(config.peers, count, replace=False).tolist())


def dynamic_sampler(config: SimConfig, ids: list[str], graph: nx.Graph, i: int) -> ViewSampler:
    """Peer ``i``'s Cyclon/Newscast sampler (see :func:`sim.overlay.dynamic_sampler_for`)."""
    from sim.overlay import dynamic_sampler_for

    return dynamic_sampler_for(config.sampler, ids, graph, i, config.seed)


class SharedGradients:
    """One gradient buffer per parameter layout, for learners that step one at a time."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._buffers: dict[tuple[str, str], torch.Tensor] = {}

    def get(self, model: torch.nn.Module, device: torch.device) -> torch.Tensor | None:
        if not self.enabled:
            return None
        schema = ModelSchema.from_module(model)
        key = (schema.hash, str(device))
        if key not in self._buffers:
            self._buffers[key] = torch.zeros(schema.numel, dtype=torch.float32, device=device)
        return self._buffers[key]


def topology_sampler(
    config: SimConfig,
    ids: list[str],
    graph: nx.Graph,
    i: int,
    rng: np.random.Generator,
    push: sp.csr_array | None = None,
) -> PeerSampler:
    """Peer ``i``'s sampler. ``push``: the balanced push matrix (:func:`balanced_push_matrix`),
    computed once for all peers when the sampler is ``neighbours-balanced[:MIX]``."""
    if config.sampler == "uniform":
        return UniformSampler(ids[i], ids, rng)
    if is_dynamic(config.sampler):
        return dynamic_sampler(config, ids, graph, i)
    if is_time_varying(config.topology):
        return OnePeerExponentialSampler(ids, i)
    if parse_balanced(config.sampler) is not None:
        assert push is not None
        row = push[[i], :]
        return WeightedNeighbourSampler(
            ids[i], [ids[j] for j in row.indices], row.data.tolist(), rng
        )
    return NeighbourSampler(ids[i], [ids[j] for j in sorted(graph.neighbors(i))], rng)


def receive_rate_summary(
    config: SimConfig, graph: nx.Graph, push: sp.csr_array | None = None
) -> dict[str, float | None] | None:
    """The expected models per period each peer receives under ``config``'s sampler when
    every peer pushes once a period (mean, coefficient of variation, share below 0.5, min,
    max, push gap); None for dynamic samplers, whose views change. ``push``: the balanced
    push matrix the run already built (Sinkhorn is not run twice)."""
    n = graph.number_of_nodes()
    if is_dynamic(config.sampler) or config.algorithm != "gossip" or n == 0:
        return None
    if config.sampler == "uniform" or is_time_varying(config.topology):
        # every peer equally likely / a permutation a period (push gap: the complete graph's)
        gap = 0.5 * n / (n - 1) if config.sampler == "uniform" and n > 1 else None
        return {**rate_summary(np.ones(n)), "push_gap": gap}
    mix = parse_balanced(config.sampler)
    if mix is None:
        push = neighbour_push_matrix(graph)
    elif push is None:
        push = balanced_push_matrix(graph, mix)
    return {**rate_summary(receive_rates(push)), "push_gap": push_gap(push)}


@dataclass
class Setup:
    """What both engines derive from a configuration before any peer exists: the data, the
    overlay, each peer's shard, the evaluated peers and test rows, and the attackers. Each
    comes from its own seeded stream, so both engines see exactly the same ones."""

    data: Dataset
    graph: nx.Graph
    parts: list[np.ndarray]
    device: torch.device
    eval_idx: list[int]
    x_test: torch.Tensor
    y_test: torch.Tensor
    attackers: list[int]


def build_setup(config: SimConfig, dataset: Dataset | None = None) -> Setup:
    """The data, topology, partition, evaluation set and attackers of ``config``."""
    rng_topo, rng_eval = (
        generator(config.seed, key) for key in (seeding.TOPOLOGY, seeding.EVALUATION)
    )
    rng_part = partition_generator(config.seed)  # exactly as real nodes draw it
    data = dataset or load_dataset(
        config.dataset, root=config.data_dir, download=config.download, seed=config.seed
    )
    graph = build_topology(
        config.topology, config.peers, rng_topo, allow_disconnected=config.allow_disconnected
    )
    parts = partition(
        data.y_train.numpy(), config.peers, config.partition, rng_part, groups=data.groups_train
    )
    k = config.eval_peers
    eval_idx = (
        list(range(config.peers))
        if k == 0 or k >= config.peers
        else sorted(rng_eval.choice(config.peers, k, replace=False).tolist())
    )
    x_test, y_test = data.x_test, data.y_test
    if 0 < config.eval_samples < len(y_test):
        # Drawn after the evaluated peers, from the same stream: a fixed subset for the run.
        rows = np.sort(rng_eval.choice(len(y_test), config.eval_samples, replace=False))
        x_test, y_test = x_test[torch.as_tensor(rows)], y_test[torch.as_tensor(rows)]
    device = resolve_device(config.device)
    return Setup(data, graph, parts, device, eval_idx, x_test, y_test, choose_attackers(config))


def build_world(config: SimConfig, dataset: Dataset | None = None) -> World | FedAvgRun:
    """Create the peers of ``config`` (optionally on an already loaded dataset); with
    ``algorithm = fedavg`` the FedAvg server and clients on the same data and network."""
    if config.algorithm == "fedavg":
        from sim.fedavg import build_fedavg

        return build_fedavg(config, dataset)
    torch.set_num_threads(config.threads)
    rng_net, rng_churn = (generator(config.seed, key) for key in (seeding.NETWORK, seeding.CHURN))
    setup = build_setup(config, dataset)
    data, graph, parts, device = setup.data, setup.graph, setup.parts, setup.device
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    ids = [peer_id(i) for i in range(config.peers)]
    network: SimNetwork | None = None
    peers: list[Peer] = []
    peer_cfg, learner_cfg = config.peer_config(), gossip_learner_config(config, setup)
    attackers = setup.attackers
    attack = AttackSpec.parse(config.attack)
    mix = parse_balanced(config.sampler)
    push = balanced_push_matrix(graph, mix) if mix is not None else None
    shared_grads = SharedGradients(enabled=config.optimizer == "sgd")
    for i in range(config.peers):
        torch_seed = peer_torch_seed(config.seed, i)
        # shared: one initial model for all (Gossip Learning); independent: each its own
        model = build_model_for(
            config.model, data, config.seed if config.init == "shared" else torch_seed
        )
        local = LocalData(x_train, y_train, torch.as_tensor(parts[i], device=device))
        # The peers step one at a time in this thread: one gradient buffer serves them all
        # (a model size less per peer; see gossip.optim.FlatSGD).
        learner = Learner(model, local, learner_cfg, seed=torch_seed,
                          grad_buffer=shared_grads.get(model, device))  # fmt: skip
        if network is None:
            network = SimNetwork(config.network_config(), learner.state.schema, rng_net)
        rng = np.random.default_rng(peer_stream(config.seed, i))
        sampler = topology_sampler(config, ids, graph, i, rng, push)
        attacker = None
        if i in attackers:
            attacker = Attacker(
                attack.kind, torch_seed, peers=config.peers, attackers=len(attackers),
                window=peer_cfg.window,
            )  # fmt: skip
        transport = network.transport(ids[i])
        peers.append(Peer(ids[i], learner, sampler, transport, peer_cfg, rng, attacker=attacker))
    assert network is not None
    churn = ChurnController(parse_churn(config.churn), peers, network, rng_churn)
    observer = MetricsObserver(
        peers, network, setup.x_test.to(device), setup.y_test.to(device), setup.eval_idx,
        attackers=attackers,
        local_tests=local_tests(data, parts, setup.eval_idx, device)
        if config.partition == "natural" else None,
    )  # fmt: skip
    # Every peer's build freed model-sized temporaries that glibc would keep resident (0.57
    # model sizes a peer for an mlp): hand them back (see gossip.memory.trim_heap).
    trim_heap()
    return World(config, data, parts, graph, peers, network, churn, observer, attackers, push)


# How much faster than one peer's own training ages grow, measured (100 peers, regular:4,
# 50 to 400 periods): a merge takes the larger age and the next step adds to it, so the age
# front moves a training step per hop. Timer training: 1.97 (push-pull) to 2.1 (push); on
# receipt: 2.9. Used where the schedule pass cannot replay the run (see cosine_horizon).
AGE_GROWTH = {"timer": 2.0, "both": 2.0, "receive": 3.0}


def cosine_horizon(config: SimConfig, setup: Setup) -> float:
    """The mean age the peers reach at the end of the run: the horizon of a bare ``cosine``
    schedule, so that it ends with the run (not halfway: ages grow about twice as fast as
    the samples one peer trains on). Exact from the batched engine's schedule pass where it
    can replay the run's events (push, timer training, one model merged at a time; the
    screens, attacks and codec are left out: they change no age in an honest run; a robust
    rule ages like age-weighted merging), else
    :data:`AGE_GROWTH` times :meth:`SimConfig.final_age`."""
    import dataclasses

    from gossip.merge import MERGE_RULES
    from gossip.schedule import LRSchedule
    from sim.engines.batched.schedule import build_schedule

    step = mean_step_samples(config, setup.parts)
    # The robust rules (clipped, trimmed-mean, median) all return max(t_l, t_r), the age
    # age-weighted merging gives: the replay ages with that.
    merge = config.merge if config.merge in MERGE_RULES else "age-weighted"
    replayable = dataclasses.replace(
        config, screen=0, screen_distance=0, attack="none", codec="off", lr_schedule="constant",
        train_cost=0.0, merge=merge,
    )  # fmt: skip
    if (
        config.mode == "push"
        and config.train_on == "timer"
        and config.merge_k == 1
        and (config.churn == "none")
        and not is_dynamic(config.sampler)
    ):
        neighbours = (
            None
            if config.sampler == "uniform"
            else [sorted(setup.graph.neighbors(i)) for i in range(config.peers)]
        )
        schedule = build_schedule(
            replayable, setup.parts, neighbours, LRSchedule.parse("constant"), 1,
            [(0.0, 0), (config.duration, config.periods)],
        )  # fmt: skip
        return max(float(schedule.evals[-1].ages.mean()), 1.0)
    return AGE_GROWTH[config.train_on] * config.final_age(step)


def gossip_learner_config(config: SimConfig, setup: Setup) -> LearnerConfig:
    """The peers' learner config (a bare ``cosine`` ends at :func:`cosine_horizon`)."""
    from gossip.schedule import LRSchedule

    horizon = (
        cosine_horizon(config, setup)
        if LRSchedule.parse(config.lr_schedule).needs_horizon
        else None
    )
    return config.learner_config(mean_step_samples(config, setup.parts), horizon)


def mean_step_samples(config: SimConfig, parts: Sequence[np.ndarray]) -> float:
    """Samples one training step sees, on average over the peers (the batch size, or less
    when shards are smaller): the unit of a bare ``cosine`` schedule's horizon."""
    sizes = [len(part) for part in parts]
    return float(np.mean([min(config.batch_size, n) for n in sizes if n] or [1]))


def local_tests(
    data: Dataset, parts: list[np.ndarray], peers: Sequence[int], device: torch.device
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per peer, the test samples of the groups its training data comes from (datasets with
    ``groups_test``, e.g. shakespeare's roles, under the ``natural`` partition): empty for
    datasets without test groups."""
    if data.groups_test is None or data.groups_train is None:
        return {}
    out = {}
    for i in peers:
        own = np.unique(data.groups_train[parts[i]])
        rows = torch.as_tensor(np.flatnonzero(np.isin(data.groups_test, own)))
        out[i] = (data.x_test[rows].to(device), data.y_test[rows].to(device))
    return out


def evaluation_times(config: SimConfig) -> list[tuple[float, int]]:
    """(virtual time, period) of every evaluation point, from 0 to the end inclusive."""
    periods = [*range(0, config.periods, config.eval_every), config.periods]
    return [(p * config.period, p) for p in periods]


async def _simulate(world: World, progress: Progress | None) -> list[Record]:
    loop = asyncio.get_running_loop()
    world.churn.start()
    records: list[Record] = []
    ticker = None
    if progress is not None:

        async def tick() -> None:
            while True:
                await asyncio.sleep(world.config.period)
                progress(loop.time(), None)

        ticker = asyncio.create_task(tick())
    for t, period in evaluation_times(world.config):
        await asyncio.sleep(max(0.0, t - loop.time()))
        record = world.observer.record(loop.time(), period)
        records.append(record)
        if progress is not None:
            progress(loop.time(), record)
        # One peer whose logits overflow is counted (loss_nonfinite); half of them: stop.
        if 2 * record["loss_nonfinite"] >= max(record["peers_evaluated"], 1):
            await asyncio.gather(*(p.stop() for p in world.peers))
            raise Diverged(
                f"training diverged at period {period}: {record['loss_nonfinite']} of "
                f"{record['peers_evaluated']} peers' test loss is not finite; lower --lr "
                f"(now {world.config.lr:g}) or use --lr-schedule",
                records,
            )
    if ticker is not None:
        ticker.cancel()
    await asyncio.gather(*(p.stop() for p in world.peers))
    return records


def summarise(
    world: World | FedAvgRun | BatchedRun, records: list[Record], wall_s: float
) -> dict[str, Any]:
    final = records[-1]
    merges = final["merges"]
    dist = label_distribution(world.dataset.y_train.numpy(), world.parts, world.dataset.num_classes)
    return {
        "final": final,
        "wall_s": round(wall_s, 3),
        "peer_updates": merges,
        "peer_updates_per_s": round(merges / wall_s, 1) if wall_s > 0 else None,
        "graph": graph_properties(world.graph),
        "receive_rate": receive_rate_summary(
            world.config, world.graph, getattr(world, "push", None)
        ),
        "dataset": world.dataset.describe(),
        "samples_per_peer": {
            "min": int(dist.sum(1).min()),
            "mean": float(dist.sum(1).mean()),
            "max": int(dist.sum(1).max()),
        },
        "classes_per_peer_mean": float((dist > 0).sum(1).mean()),
        "message_accounting_balanced": world.network.stats.balanced(),
        "attackers": [peer_id(i) for i in world.attackers],
        "schema_hash": world.network.schema.hash,
    }


def run_simulation(
    config: SimConfig,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    dataset: Dataset | None = None,
) -> SimResult:
    """Run one simulation; with ``out_dir``, write metrics.jsonl, config.json, summary.json
    and the plots there. The engine is ``config.engine`` (``auto``: batched when it supports
    the configuration, see :mod:`sim.engines`); the summary says which one ran."""
    from sim.engines import choose_engine

    engine, why_not = choose_engine(config)
    # The imports' objects out of the collector's full passes (see gossip.memory.frozen_heap).
    with frozen_heap():
        if engine == "batched":
            return run_batched_simulation(config, out_dir, progress, dataset)
        return run_world(build_world(config, dataset), out_dir, progress, why_not=why_not)


def run_batched_simulation(
    config: SimConfig,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    dataset: Dataset | None = None,
) -> SimResult:
    from sim.engines.batched import run_batched

    start = time.perf_counter()
    try:
        records, run = run_batched(config, dataset, progress)
    except Diverged as e:
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            with (out / "metrics.jsonl").open("w") as f:
                for record in e.records:
                    f.write(json.dumps(record, sort_keys=True) + "\n")
        raise
    wall = time.perf_counter() - start
    summary = summarise(run, records, wall)
    summary["engine"] = "batched"
    summary["batched"] = {
        "waves": run.waves,
        "snapshot_pool": run.pool_size,
        "schedule_s": round(run.schedule_s, 3),
    }
    result = SimResult(config, records, summary, run)
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


def run_world(
    world: World | FedAvgRun,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    *,
    why_not: str | None = None,
) -> SimResult:
    """Run an already built world (see :func:`build_world`) on the asyncio engine;
    ``why_not``: why ``--engine auto`` did not pick the batched one (for the summary)."""
    config = world.config
    # The world (thousands of modules, tensors, tasks) lives for the whole run: freeze it out
    # of the cyclic garbage collector, whose full passes would otherwise scan it again and
    # again and make each update cost more the more peers there are (after collecting the
    # build's garbage, which would otherwise be frozen with it). Through frozen_heap, which
    # nests, so that a caller's own (run_simulation's) is not undone when this returns.
    gc.collect()  # (inside run_simulation's frozen_heap this scans only the build)
    try:
        with frozen_heap():
            start = time.perf_counter()
            simulation = (
                _simulate(world, progress) if isinstance(world, World) else world.simulate(progress)
            )
            records = run_virtual(simulation)
    except Diverged as e:
        if out_dir is not None:
            partial = SimResult(config, e.records, summarise(world, e.records, 0.0), world)
            write_outputs(partial, Path(out_dir))
        raise
    wall = time.perf_counter() - start
    summary = summarise(world, records, wall)
    summary["engine"] = "asyncio"
    if why_not is not None:
        summary["batched_unsupported"] = why_not
    result = SimResult(config, records, summary, world)
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


def write_outputs(result: SimResult, out: Path) -> None:
    """metrics.jsonl (deterministic), config.json (to rerun), summary.json (with wall time), PNGs."""
    write_run_files(out, result.config, result.records, result.summary)


def write_run_files(
    out: Path, config: SimConfig, records: Sequence[Record], summary: dict[str, Any]
) -> None:
    """The files of one run, from its parts (a sweep's driver writes what workers return)."""
    from sim.plots import plot_run

    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.jsonl").open("w") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    (out / "config.json").write_text(json.dumps(config.as_dict(), indent=2, sort_keys=True) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if records:
        plot_run(records, out, title=describe_run(config))


def describe_run(config: SimConfig) -> str:
    if config.algorithm == "fedavg":
        clients = config.clients_per_round or "all"
        prox = f", FedProx mu={config.prox_mu:g}" if config.prox_mu else ""
        return (
            f"FedAvg, {config.peers} clients ({clients} per round, {config.local_steps} local "
            f"steps{prox}), {config.dataset}/{config.partition}, {config.model}"
        )
    return (
        f"{config.peers} peers, {config.topology}, {config.dataset}/{config.partition}, "
        f"{config.model}, merge={config.merge}"
    )
