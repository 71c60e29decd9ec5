"""The configuration of one simulation: one frozen dataclass, buildable from flags or TOML."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossip.errors import ConfigError
from peers.config_file import config_from_toml

if TYPE_CHECKING:  # the CLI imports this module for --help: keep torch out of it
    from gossip.learner import LearnerConfig
    from peers.peer import PeerConfig
    from sim.network import NetworkConfig

SAMPLERS = ("neighbours", "neighbours-balanced[:MIX]", "uniform")
ALGORITHMS = ("gossip", "fedavg")

# One line of help per field: the CLI flags and the README are generated from it.
FIELD_HELP: dict[str, str] = {
    "algorithm": "gossip, or fedavg: the FedAvg baseline (a server and --peers clients) on the same data, model, seeds and network",
    "clients_per_round": "fedavg: clients drawn per round, one round per period (0 = every online client)",
    "prox_mu": "fedavg: FedProx's proximal term mu (0 = plain FedAvg)",
    "peers": "number of peers",
    "topology": "graph the peers gossip over (see `gossip-sim topologies`)",
    "sampler": "neighbours: gossip along topology edges; neighbours-balanced[:MIX]: along edges, Sinkhorn-weighted towards one model a period for every peer, MIX (default 0.5) of plain neighbour choice kept; uniform: any peer; cyclon:C:L or newscast:C: dynamic partial views, bootstrapped from the topology",
    "sample_period": "seconds between a peer's view exchanges with a dynamic sampler (0 = the gossip period)",
    "allow_disconnected": "accept a disconnected topology instead of refusing it",
    "init": "shared: every peer starts from one model (gossip learning); independent: each from its own random model (consensus experiments, e.g. with --local-steps 0)",
    "dataset": "digits, mnist, fashion-mnist, cifar10, cifar100, mnist1d, shakespeare, npz:PATH, leaf:DIR",
    "data_dir": "directory holding the dataset files (default: the dataset's usual place)",
    "download": "download the dataset if missing (mnist, fashion-mnist, cifar10/100; needs internet)",
    "partition": "iid, dirichlet:ALPHA, shards:K or natural",
    "model": "logreg, mlp, cnn, resnet18 or charlstm, sized by NAME:KEY=VALUE,... (e.g. mlp:hidden=100,layers=1; gossip-sim models lists the options)",
    "merge": "age-weighted, average, replace, none (peers train alone), or robust: clipped[:MULT], trimmed-mean[:K], median",
    "screen": "norm screen: refuse received models whose norm exceeds this many times the honest reference (0 = off)",
    "screen_low": "norm screen's lower bound: also refuse received models whose norm is below this fraction of the honest norms (0 = none; default 0.5, or 0 with --init independent, whose averaging shrinks norms by design)",
    "screen_distance": "distance screen: refuse received models further than this many times the other senders' median distance (0 = off)",
    "age_guard": "cap, refuse or off: received ages may add at most a refilling credit to a peer's age",
    "attack": "none or KIND:FRACTION of peers gossiping poison: sign-flip, random, huge, age-inflation, alie, ipm",
    "mode": "push, pull or push-pull",
    "train_on": "receive (merge then train), timer (train once per period) or both",
    "order": "training on receipt: merge-train (merge, then train) or train-merge (train, then merge)",
    "merge_k": "received models merged at once (K > 1: they wait for K, or for the timer's step)",
    "local_steps": "SGD steps per update",
    "batch_size": "samples per local step",
    "lr": "learning rate (the base of --lr-schedule)",
    "lr_schedule": "learning rate by the model's age (samples seen): constant, inverse:TAU, sqrt:TAU or cosine[:HORIZON] (bare: the age at the end of the run)",
    "momentum": "SGD momentum (scaled by the local weight at each merge)",
    "momentum_mode": "local (heavy ball) or quasi-global (the buffer follows the model's motion, merges included)",
    "weight_decay": "L2 weight decay",
    "optimizer": "sgd or adam",
    "periods": "run length in gossip periods",
    "period": "gossip period in virtual seconds",
    "jitter": "relative jitter of each period, in [0, 1)",
    "delay": "one-way delay: D, uniform:LO:HI or exponential:MEAN (seconds)",
    "loss": "probability that a message is lost",
    "bandwidth": "bytes per second per message, 0 = unlimited",
    "codec": "off (hand models over in memory), fp32, fp16 or int8 (really encode and decode)",
    "partitions": "network partitions: none or split:START:END[:GROUPS],...",
    "churn": "none, markov:ONLINE:SESSION, crash:T:FRACTION, crash-recover:T:FRACTION:DOWNTIME, join:T:COUNT",
    "train_cost": "virtual seconds one local training step takes",
    "eval_every": "evaluate every this many periods",
    "eval_peers": "peers evaluated at each point (0 = all)",
    "eval_samples": "test samples each evaluation uses: a fixed random subset (0 = the whole test split)",
    "seed": "the seed all randomness derives from",
    "threads": "torch CPU threads (1 is fastest for small models and reproducible)",
    "device": "cpu, cuda, cuda:N or auto",
    "engine": "asyncio (every peer an asyncio program), batched (stacked parameters, same results) or auto",
}


# The classic protocol's learning settings (the defaults until the accurate profile): one
# SGD step per period at a constant lr 0.5 for 200 periods. ``SimConfig(**CLASSIC)``.
CLASSIC: dict[str, Any] = {"local_steps": 1, "lr": 0.5, "lr_schedule": "constant", "periods": 200}


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulation run (and nothing that does not: no paths to
    outputs, no wall clock), so ``config.json`` is enough to rerun it bit for bit.

    algorithm: ``gossip``, or ``fedavg`` (:mod:`sim.fedavg`, with clients_per_round and
    prox_mu; local_steps is E). peers: number of peers. topology: graph spec (``gossip-sim topologies``).
    sampler: ``neighbours`` (gossip along the topology's edges) or ``uniform`` (any peer).
    dataset / data_dir / partition: the data and how it is split over peers.
    model / merge / mode / train_on / local_steps / batch_size / lr / optimizer: learning.
    screen / age_guard: the defences of every peer; attack: who gossips poison, and which.
    periods / period / jitter: run length is ``periods * period`` virtual seconds.
    delay / loss / bandwidth / codec / partitions / churn: the network and its failures.
    train_cost: virtual seconds per local training step.
    eval_every: periods between evaluations. eval_peers: peers evaluated (0 = all).
    eval_samples: size of the fixed random test subset evaluated on (0 = all).
    seed: the only source of randomness. threads: torch CPU threads (1 keeps runs fast
    and bit-for-bit reproducible). engine: ``asyncio``, ``batched`` (:mod:`sim.engines`) or
    ``auto`` (batched when it supports the configuration).

    The learning defaults (3 local steps at lr 0.8, cosine by age, 300 periods) are the
    accurate profile: the default job ends within 2 points of centralized training, and the
    norm screen's lower bound keeps it robust. :data:`CLASSIC` is the original protocol
    (one step at lr 0.5, constant, 200 periods): a third of the work, about 4 points lower.
    """

    algorithm: str = "gossip"
    clients_per_round: int = 10
    prox_mu: float = 0.0
    peers: int = 100
    topology: str = "regular:4"
    sampler: str = "neighbours"
    sample_period: float = 0.0
    allow_disconnected: bool = False
    init: str = "shared"
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    partition: str = "iid"
    model: str = "mlp"
    merge: str = "age-weighted"
    screen: float = 10.0
    screen_low: float | None = None
    screen_distance: float = 4.0
    age_guard: str = "cap"
    attack: str = "none"
    mode: str = "push"
    train_on: str = "timer"
    order: str = "merge-train"
    merge_k: int = 1
    local_steps: int = 3
    batch_size: int = 32
    lr: float = 0.8
    lr_schedule: str = "cosine"
    momentum: float = 0.0
    momentum_mode: str = "local"
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    periods: int = 300
    period: float = 1.0
    jitter: float = 0.1
    delay: str = "uniform:0.01:0.1"
    loss: float = 0.0
    bandwidth: float = 0.0
    codec: str = "off"
    partitions: str = "none"
    churn: str = "none"
    train_cost: float = 0.0
    eval_every: int = 10
    eval_peers: int = 0
    eval_samples: int = 0
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    engine: str = "asyncio"

    def __post_init__(self) -> None:
        from gossip.models import parse_model_spec

        parse_model_spec(self.model)
        if self.engine not in ("auto", "asyncio", "batched"):
            raise ConfigError(
                f"unknown engine {self.engine!r}; choose one of: auto, asyncio, batched"
            )
        if self.peers < (1 if self.algorithm == "fedavg" else 2):
            raise ConfigError(
                f"a simulation needs at least 2 peers (FedAvg: 1 client), got {self.peers}"
            )
        if self.periods < 1 or self.eval_every < 1:
            raise ConfigError("periods and eval_every must be at least 1")
        if self.eval_peers < 0 or self.eval_samples < 0 or self.threads < 1:
            raise ConfigError("eval_peers and eval_samples must be >= 0 (0 = all) and threads >= 1")
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(
                f"unknown algorithm {self.algorithm!r}; choose one of: {', '.join(ALGORITHMS)}"
            )
        if self.init not in ("shared", "independent"):
            raise ConfigError(f"unknown init {self.init!r}; choose shared or independent")
        if self.init != "shared" and self.algorithm != "gossip":
            raise ConfigError("--init independent is for gossip (FedAvg's server holds one model)")
        if self.clients_per_round < 0 or not 0 <= self.prox_mu < float("inf"):
            raise ConfigError("clients_per_round must be >= 0 (0 = all) and prox_mu >= 0")
        if self.prox_mu > 0 and self.optimizer != "sgd":
            raise ConfigError("the proximal term (--prox-mu) needs --optimizer sgd")
        from sampling.balanced import parse_balanced
        from sampling.cyclon import is_dynamic, parse_sampler

        if is_dynamic(self.sampler):
            parse_sampler(self.sampler)
        elif parse_balanced(self.sampler) is None and self.sampler not in SAMPLERS:
            raise ConfigError(
                f"unknown sampler {self.sampler!r}; choose one of: {', '.join(SAMPLERS)}, "
                "cyclon:C:L, newscast:C"
            )
        if not self.sample_period >= 0:
            raise ConfigError(
                f"sample_period must be >= 0 (0 = the gossip period), got {self.sample_period}"
            )
        from gossip.partition import parse_partition
        from gossip.robust.attacks import AttackSpec
        from sim.churn import parse_churn
        from sim.topology import parse_topology

        parse_topology(self.topology)
        parse_partition(self.partition)
        parse_churn(self.churn)
        AttackSpec.parse(self.attack)
        self.peer_config()
        self.learner_config()
        self.network_config()

    def peer_config(self) -> PeerConfig:
        from gossip.age_guard import AgeGuard
        from peers.peer import PeerConfig

        return PeerConfig(
            age_guard=AgeGuard(self.age_guard),
            screen=self.screen,
            screen_low=self.norm_screen_low,
            screen_distance=self.screen_distance,
            period=self.period,
            jitter=self.jitter,
            sample_period=self.sample_period,
            mode=self.mode,
            merge=self.merge,
            local_steps=self.local_steps,
            train_on=self.train_on,
            order=self.order,
            merge_k=self.merge_k,
            train_cost=self.train_cost,
        )

    def learner_config(
        self, step_samples: float | None = None, horizon: float | None = None
    ) -> LearnerConfig:
        """The peers' learner. A bare ``cosine`` schedule ends at ``horizon`` samples (the
        simulator passes the age the peers reach, :func:`sim.runner.cosine_horizon`), else
        at :meth:`final_age` of ``step_samples`` (samples one step sees: the batch size, or
        less when shards are smaller)."""
        from gossip.learner import LearnerConfig
        from gossip.schedule import LRSchedule

        schedule = LRSchedule.parse(self.lr_schedule).with_horizon(
            horizon if horizon is not None else self.final_age(step_samples or self.batch_size)
        )
        return LearnerConfig(
            optimizer=self.optimizer, lr=self.lr, lr_schedule=str(schedule),
            momentum=self.momentum, weight_decay=self.weight_decay,
            batch_size=self.batch_size, device=self.device, momentum_mode=self.momentum_mode,
        )  # fmt: skip

    def final_age(self, step_samples: float) -> float:
        """The samples one peer trains on over the run: trainings per period times samples
        per training times periods. Ages grow faster than that (a merge takes the larger
        age, and the next step adds to it): see :func:`sim.runner.cosine_horizon`."""
        receipts = 2.0 if self.mode == "push-pull" else 1.0
        trainings = receipts * (self.train_on != "timer") + (self.train_on != "receive")
        return trainings * self.local_steps * step_samples * self.periods

    def network_config(self) -> NetworkConfig:
        from sim.network import NetworkConfig

        return NetworkConfig(
            delay=self.delay,
            loss=self.loss,
            bandwidth=self.bandwidth,
            codec=self.codec,
            partitions=self.partitions,
        )

    @property
    def duration(self) -> float:
        return self.periods * self.period

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def norm_screen_low(self) -> float:
        """The norm screen's lower bound: ``screen_low``, or by default 0.5 with a shared
        initial model and 0 with independent ones. Averaging independent models shrinks
        their norms by design (two uncorrelated models average to 0.71 of their norm), and
        a lower bound then refused honest models: a third slower consensus on ``regular:4``
        with ``--local-steps 0``."""
        if self.screen_low is not None:
            return self.screen_low
        return 0.5 if self.init == "shared" else 0.0

    def replace(self, **changes: Any) -> SimConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> SimConfig:
        """Read the same fields from a TOML file (top level or a ``[sim]`` table);
        ``overrides`` (flags given on the command line) win."""
        return config_from_toml(cls, path, "sim", overrides)
