"""The configuration of a real node: one frozen dataclass, from CLI flags or a TOML file.

Kept free of heavy imports so that ``gossip-node --help`` answers at once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossip.age_guard import AgeGuard
from gossip.errors import ConfigError
from peers.config_file import config_from_toml

if TYPE_CHECKING:
    from gossip.learner import LearnerConfig
    from peers.peer import PeerConfig

NODE_HELP: dict[str, str] = {
    "peers": "peers file: one peer per line (host:port, then optionally an id and ed25519:PUBKEY); the node skips its own entry",
    "host": "address to listen on (0.0.0.0 for all interfaces)",
    "port": "port to listen on",
    "id": "this node's id (default: its entry in the peers file, else host:port)",
    "advertise": "the URL other peers reach this node at (to find its own entry in the peers file, and what a dynamic sampler tells others; default http://HOST:PORT)",
    "sampler": "uniform over the peers file, or a dynamic partial view bootstrapped from it: cyclon:C:L or newscast:C (the peers file may then list only a few seeds)",
    "sample_period": "seconds between view exchanges of a dynamic sampler (0 = the gossip period)",
    "dataset": "named dataset to take this node's shard of (testbeds): digits, fashion-mnist, ...",
    "data_dir": "directory holding the dataset files",
    "download": "download the dataset if missing (mnist, fashion-mnist, cifar10/100; needs internet)",
    "partition": "how the named dataset is split over --num-nodes: iid, dirichlet:A, shards:K, natural",
    "node_index": "this node's shard number, 0..num-nodes-1",
    "num_nodes": "number of shards the named dataset is split into",
    "data": "this machine's own data: an .npz file with x, y (and x_test, y_test)",
    "model": "logreg, mlp, cnn, resnet18 or charlstm, sized by NAME:KEY=VALUE,... e.g. mlp:hidden=100,layers=1 (the same on every node)",
    "merge": "age-weighted, average, replace, none, or robust: clipped[:MULT], trimmed-mean[:K], median",
    "mode": "push, pull or push-pull",
    "period": "seconds between gossip rounds",
    "jitter": "relative jitter of the period, in [0, 1)",
    "local_steps": "SGD steps per training",
    "order": "training on receipt: merge-train (merge, then train) or train-merge (train, then merge)",
    "merge_k": "pushed models merged at once (K > 1: they wait for K, or for the timer's step)",
    "train_on": "when to train: timer (once per period, before pushing; what others send cannot speed it up or starve it), receive (after each merged push, the original protocol) or both",
    "batch_size": "samples per local step",
    "lr": "learning rate",
    "lr_schedule": "learning rate by the model's age (samples seen): constant, inverse:TAU, sqrt:TAU or cosine:HORIZON",
    "momentum": "SGD momentum (scaled by the local weight at each merge)",
    "momentum_mode": "local (heavy ball) or quasi-global (the buffer follows the model's motion, merges included)",
    "weight_decay": "L2 weight decay",
    "optimizer": "sgd or adam",
    "eval_every": "evaluate on the test split every this many periods (0: never)",
    "device": "auto (cuda when available), cpu, cuda or cuda:N",
    "codec": "wire codec of pushed models: fp32, fp16 or int8",
    "inbox_size": "received models waiting to be merged; beyond it pushes get HTTP 429",
    "age_guard": "cap, refuse or off: received ages may add at most a refilling credit to this node's age",
    "checkpoint_dir": "directory for periodic atomic checkpoints; a restarted node resumes from it",
    "checkpoint_every": "seconds between checkpoints",
    "auth_key_file": "key file: a shared HMAC key (hex) or this node's ed25519 private key",
    "auth_window": "seconds a message timestamp may differ from this node's clock",
    "tls_cert": "TLS certificate (PEM) to serve HTTPS",
    "tls_key": "TLS private key (PEM)",
    "tls_ca": "CA bundle to verify https:// peers (default: the system's)",
    "connect_timeout": "seconds to connect to a peer",
    "read_timeout": "seconds to read a response, or a request body (slow senders are cut off)",
    "log_format": "text or json (one object per line)",
    "status_every": "seconds between status log lines",
    "seed": "seed of the shared partition, the initial model and this node's randomness",
    "threads": "torch CPU threads (0: torch's default; use 1 when several nodes share a machine)",
    "event_loop": "auto (uvloop when installed: pip install 'gossip-learning[fast]'), asyncio or uvloop",
    "header_timeout": "seconds a request's headers may take (from the connection's start, or their first byte on a kept-alive connection); idle connections are closed after twice this",
    "max_connections": "open HTTP connections; beyond it new ones are closed at once (kept below the open-file limit)",
    "max_requests": "HTTP requests handled at once; beyond it requests get HTTP 503",
    "screen": "norm screen: refuse pushed models whose norm exceeds this many times the honest reference (0 = off)",
    "screen_low": "norm screen's lower bound: also refuse pushed models whose norm is below this fraction of the honest norms (0 = no lower bound)",
    "screen_distance": "distance screen: refuse pushed models further than this many times the other senders' median distance (0 = off)",
    "attack": "robustness testing only: none, or an attack kind (sign-flip, random, huge, age-inflation, alie, ipm) this node then gossips instead of its model",
    "max_uploads": "pushed model bodies read at once (each into a buffer of the largest message size, which an accepted model keeps until merged); beyond it pushes get HTTP 503",
    "max_connections_per_ip": "open HTTP connections from one remote address (IPv6: one /64); beyond it its new ones are closed at once, so that one client cannot take all of --max-connections",
}


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node is started with (the CLI flags; a TOML file holds the same fields)."""

    peers: str = "peers.txt"
    host: str = "127.0.0.1"
    port: int = 8000
    id: str | None = None
    advertise: str | None = None
    sampler: str = "uniform"
    sample_period: float = 0.0
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    partition: str = "iid"
    node_index: int | None = None
    num_nodes: int | None = None
    data: str | None = None
    model: str = "mlp"
    merge: str = "age-weighted"
    mode: str = "push"
    period: float = 1.0
    jitter: float = 0.1
    local_steps: int = 1
    train_on: str = "timer"
    order: str = "merge-train"
    merge_k: int = 1
    batch_size: int = 32
    lr: float = 0.1
    lr_schedule: str = "constant"
    momentum: float = 0.0
    momentum_mode: str = "local"
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    eval_every: int = 10
    device: str = "auto"
    codec: str = "fp32"
    inbox_size: int = 16
    age_guard: str = "cap"
    checkpoint_dir: str | None = None
    checkpoint_every: float = 30.0
    auth_key_file: str | None = None
    auth_window: float = 60.0
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    connect_timeout: float = 3.0
    read_timeout: float = 30.0
    log_format: str = "text"
    status_every: float = 10.0
    event_loop: str = "auto"
    seed: int = 0
    threads: int = 0
    header_timeout: float = 10.0
    max_connections: int = 512
    max_requests: int = 64
    max_uploads: int = 8
    screen: float = 10.0
    screen_low: float = 0.5
    screen_distance: float = 4.0
    attack: str = "none"
    max_connections_per_ip: int = 64

    def __post_init__(self) -> None:
        from sampling.cyclon import is_dynamic, parse_sampler

        if is_dynamic(self.sampler):
            parse_sampler(self.sampler)
        elif self.sampler != "uniform":
            raise ConfigError(
                f"unknown --sampler {self.sampler!r}; use uniform, cyclon:C:L or newscast:C"
            )
        if not self.sample_period >= 0:
            raise ConfigError(f"--sample-period must be >= 0, got {self.sample_period}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be in 1..65535, got {self.port}")
        if (self.node_index is None) != (self.num_nodes is None):
            raise ConfigError(
                "give --node-index and --num-nodes together (this node's shard of the dataset)"
            )
        if self.num_nodes is not None and self.num_nodes < 1:
            raise ConfigError(f"--num-nodes must be at least 1, got {self.num_nodes}")
        if (
            self.num_nodes is not None
            and self.node_index is not None
            and not 0 <= self.node_index < self.num_nodes
        ):
            raise ConfigError(
                f"--node-index must be in 0..{self.num_nodes - 1}, got {self.node_index}"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("give --tls-cert and --tls-key together")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format must be text or json, got {self.log_format!r}")
        if self.checkpoint_every <= 0 or self.eval_every < 0 or self.status_every <= 0:
            raise ConfigError(
                "--checkpoint-every and --status-every must be > 0, --eval-every >= 0"
            )
        # Every number in range and every name known now, in one line, not a failure later.
        for name, number in (
            ("period", self.period), ("lr", self.lr), ("checkpoint_every", self.checkpoint_every),
            ("status_every", self.status_every), ("auth_window", self.auth_window),
            ("connect_timeout", self.connect_timeout), ("read_timeout", self.read_timeout),
        ):  # fmt: skip
            if not (math.isfinite(number) and number > 0):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be a finite number > 0, got {number}")
        for name, count, least in (
            ("batch_size", self.batch_size, 1), ("inbox_size", self.inbox_size, 1),
            ("local_steps", self.local_steps, 0), ("eval_every", self.eval_every, 0),
            ("threads", self.threads, 0),
        ):  # fmt: skip
            if count < least:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be at least {least}, got {count}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"--jitter must be in [0, 1), got {self.jitter}")
        if self.event_loop not in ("auto", "asyncio", "uvloop"):
            raise ConfigError(
                f"--event-loop must be auto, asyncio or uvloop, got {self.event_loop!r}"
            )
        if not 0 <= self.seed < 2**64:
            raise ConfigError(f"--seed must be in 0..2**64-1, got {self.seed}")
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device):
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        from gossip.partition import parse_partition  # numpy only

        parse_partition(self.partition)
        self.peer_config()  # checks --mode, --merge, --age-guard, screens, --attack (imports torch)
        self.learner_config()  # --momentum, --weight-decay, --lr-schedule
        from gossip.schedule import LRSchedule

        if LRSchedule.parse(self.lr_schedule).needs_horizon:
            raise ConfigError(
                "--lr-schedule cosine needs a horizon on a node: cosine:SAMPLES, e.g. cosine:200000"
            )
        from gossip.codec import CODECS
        from gossip.learner import OPTIMIZERS
        from gossip.models import parse_model_spec

        parse_model_spec(self.model)
        for name, value, known in (
            ("codec", self.codec, CODECS), ("optimizer", self.optimizer, OPTIMIZERS),
        ):  # fmt: skip
            if value not in known:
                raise ConfigError(f"--{name} must be one of {', '.join(known)}, got {value!r}")
        if not 0 < self.header_timeout < float("inf"):  # (also refuses NaN)
            raise ConfigError(
                f"--header-timeout must be a finite number > 0, got {self.header_timeout}"
            )
        for flag, limit in (
            ("--max-connections", self.max_connections), ("--max-requests", self.max_requests),
            ("--max-uploads", self.max_uploads),
            ("--max-connections-per-ip", self.max_connections_per_ip),
        ):  # fmt: skip
            if limit < 1:
                raise ConfigError(f"{flag} must be at least 1, got {limit}")

    def learner_config(self) -> LearnerConfig:
        from gossip.learner import LearnerConfig

        return LearnerConfig(
            optimizer=self.optimizer, lr=self.lr, lr_schedule=self.lr_schedule,
            momentum=self.momentum, weight_decay=self.weight_decay,
            batch_size=self.batch_size, device=self.device, momentum_mode=self.momentum_mode,
        )  # fmt: skip

    def peer_config(self) -> PeerConfig:
        from peers.peer import PeerConfig

        return PeerConfig(
            period=self.period, jitter=self.jitter, sample_period=self.sample_period,
            mode=self.mode, merge=self.merge,
            local_steps=self.local_steps, train_on=self.train_on, order=self.order,
            merge_k=self.merge_k, inbox_size=self.inbox_size,
            age_guard=AgeGuard(self.age_guard),
            screen=self.screen, screen_low=self.screen_low,
            screen_distance=self.screen_distance, attack=self.attack,
        )  # fmt: skip

    def replace(self, **changes: Any) -> NodeConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> NodeConfig:
        """Read the same fields from a TOML file (top level or a ``[node]`` table);
        ``overrides`` (flags given on the command line) win."""
        return config_from_toml(cls, path, "node", overrides)
