"""FedAvg on the same simulated network: the baseline gossip learning is compared with.

``gossip-sim run --algorithm fedavg --clients-per-round C --local-steps E`` runs federated
averaging (McMahan et al. 2017) over exactly what a gossip run of the same config uses: the
dataset and its partition over ``--peers`` clients, the model and its initialisation, the
learner (optimizer, lr and its schedule, batch size) and each client's batch order (client
``i`` draws what gossip peer ``i`` draws), the simulated network (delay, loss, bandwidth,
codec, partitions) and churn. The hub is one extra node, ``server``, that never fails.

A round starts every ``--period`` (virtual seconds): the server sends its model to ``C``
clients drawn uniformly from those online (all of them with ``C = 0``); a client that
receives it trains ``E`` local steps from it (optionally with FedProx's proximal term,
``--prox-mu``) and sends the result back. The round closes when every reply has arrived, or
at the start of the next round; the new global model is the average of the replies weighted
by the clients' numbers of samples (replies from earlier rounds, known by the round number
that travels with each model, are refused as ``stale``). Every
model transfer, both ways, goes through :class:`~sim.network.SimNetwork` and is counted in
``messages_sent`` and ``bytes_sent`` exactly as gossip's are (``codec`` applies too), so
accuracy can be compared per message sent. ``--topology``, ``--sampler``, ``--merge`` and
the screens do not apply (the server is the topology).

Records have the keys of gossip's: a client holds the global model at the start of every
round, so ``acc_mean`` (and ``acc_avgmodel``) is the global model's test accuracy, and
``consensus`` the spread of the clients' latest local models around their average.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import torch

from gossip import seeding
from gossip.datasets import Dataset, load_dataset
from gossip.errors import ConfigError
from gossip.learner import Learner, LocalData, evaluate_model, resolve_device
from gossip.models import build_model_for
from gossip.partition import partition, partition_generator
from gossip.robust.attacks import AttackSpec
from gossip.seeding import generator, peer_torch_seed
from gossip.state import ModelState
from peers.peer import PeerCounters
from peers.transport import ModelMessage, ModelSnapshot
from sim.churn import ChurnController, parse_churn
from sim.config import SimConfig
from sim.network import SimNetwork
from sim.observer import consensus_distance, network_record

SERVER = "server"
Record = dict[str, Any]
STALE = "stale"
# Keys of the server's stream (client selection); above every peer index, like ATTACK.
FEDAVG_SERVER = (1 << 40) + 1


class FedAvgClient:
    """A client: its learner, and what it does with a global model it receives."""

    def __init__(self, index: int, learner: Learner, run: FedAvgRun) -> None:
        self.index = index
        self.peer_id = f"p{index}"
        self.learner = learner
        self.run = run
        self.counters = PeerCounters()
        self.online = False
        self._tasks: set[asyncio.Task[None]] = set()

    # The churn controller's interface (the one Peer has).
    def start(self) -> None:
        self.online = True

    async def stop(self) -> None:
        """Going offline loses the round being worked on."""
        self.online = False
        tasks, self._tasks = self._tasks, set()
        for t in tasks:
            t.cancel()

    # The network's interface (ModelSink).
    def offer(self, message: ModelMessage) -> str | None:
        self.counters.received += 1
        if not self.online:
            self.counters.rejected["offline"] += 1
            return "offline"
        self.counters.accepted += 1
        task = asyncio.get_running_loop().create_task(self._work(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return None

    def published(self) -> ModelSnapshot:
        flat, age = self.learner.state.snapshot()
        return ModelSnapshot(self.peer_id, flat, age)

    async def _work(self, message: ModelMessage) -> None:
        config = self.run.config
        state = self.learner.state
        state.load_flat(
            message.flat.to(device=state.flat.device, dtype=state.flat.dtype), message.age
        )
        self.learner.reset_optimizer_state()  # each round starts afresh from the global model
        self.learner.set_proximal_center(
            state.flat.clone() if config.prox_mu > 0 else None, config.prox_mu
        )
        stats = self.learner.train(steps=config.local_steps)
        self.counters.train_steps += stats.steps
        self.counters.samples_trained += stats.samples
        if config.train_cost:
            await asyncio.sleep(config.train_cost * config.local_steps)
        if self.online:
            self.counters.pushes += 1
            flat, age = self.learner.state.snapshot()
            # The round travels as the sender's tag, like a round id in a real FL header.
            tag = message.sender.partition("@")[2]
            self.run.network.send(
                self.peer_id, SERVER, ModelSnapshot(f"{self.peer_id}@{tag}", flat, age)
            )


class FedAvgServer:
    """The hub: keeps the global model, runs the rounds, averages the replies."""

    def __init__(self, state: ModelState, run: FedAvgRun, rng: np.random.Generator) -> None:
        self.peer_id = SERVER
        self.state = state
        self.run = run
        self.rng = rng
        self.round = 0
        self.expected: dict[str, int] = {}  # client -> the age its reply to this round has
        self.replies: list[tuple[float, ModelMessage]] = []
        self.done = asyncio.Event()
        self.aggregated = 0  # client models averaged in, over the whole run
        self.stale = 0

    def offer(self, message: ModelMessage) -> str | None:
        client, _, tag = message.sender.partition("@")
        if tag != str(self.round) or self.expected.get(client) != message.age:
            self.stale += 1  # a reply to an earlier round (or not one we asked for)
            return STALE
        weight = float(len(self.run.clients[int(client[1:])].learner.data))
        del self.expected[client]
        self.replies.append((weight, message))
        if not self.expected:
            self.done.set()
        return None

    def published(self) -> ModelSnapshot:
        flat, age = self.state.snapshot()
        return ModelSnapshot(SERVER, flat, age)

    def start_round(self) -> None:
        config = self.run.config
        online = [c for c in self.run.clients if c.online]
        k = config.clients_per_round or len(online)
        chosen = (
            sorted(self.rng.choice(len(online), min(k, len(online)), replace=False).tolist())
            if online
            else []
        )
        self.round += 1
        self.replies, self.done = [], asyncio.Event()
        flat, age = self.state.snapshot()
        snapshot = ModelSnapshot(f"{SERVER}@{self.round}", flat, age)
        self.expected = {}
        for i in chosen:
            client = online[i]
            n = len(client.learner.data)
            steps_samples = config.local_steps * min(client.learner.config.batch_size, n)
            self.expected[client.peer_id] = snapshot.age + (steps_samples if n else 0)
            self.run.network.send(SERVER, client.peer_id, snapshot)
        if not self.expected:
            self.done.set()

    def close_round(self) -> None:
        """Average the replies of this round (weighted by the clients' sample counts)."""
        self.expected = {}
        total = sum(w for w, _ in self.replies)
        if not self.replies or total <= 0:
            return
        mean = torch.zeros_like(self.state.flat, dtype=torch.float64)
        for w, m in self.replies:
            mean.add_(m.flat.to(device=mean.device, dtype=torch.float64), alpha=w / total)
        age = max(m.age for _, m in self.replies)
        self.state.load_flat(mean.to(self.state.flat.dtype), age)
        self.aggregated += len(self.replies)


@dataclass
class FedAvgRun:
    """Everything a FedAvg simulation consists of (the counterpart of runner.World)."""

    config: SimConfig
    dataset: Dataset
    parts: list[np.ndarray]
    graph: nx.Graph
    network: SimNetwork
    x_test: torch.Tensor
    y_test: torch.Tensor
    clients: list[FedAvgClient] = field(default_factory=list)
    attackers: list[int] = field(default_factory=list)
    server: FedAvgServer | None = None
    churn: ChurnController | None = None
    _eval: tuple[torch.nn.Module, torch.device] | None = None

    def record(self, time: float, period: int) -> Record:
        assert self.server is not None and self._eval is not None
        module, device = self._eval
        stats = evaluate_model(module, self.x_test, self.y_test, device)
        s = self.network.stats
        counters = [c.counters for c in self.clients]
        acc = round(stats.accuracy, 6)
        loss = round(stats.loss, 6) if np.isfinite(stats.loss) else None
        ages = np.asarray([self.server.state.age], dtype=np.float64)
        return {
            "time": round(time, 9),
            "period": period,
            "algorithm": "fedavg",
            "round": self.server.round,
            "acc_mean": acc, "acc_min": acc, "acc_max": acc,
            "acc_p10": acc, "acc_p50": acc, "acc_p90": acc,
            "loss_mean": loss,
            "loss_nonfinite": int(loss is None),
            "acc_honest_mean": acc, "acc_honest_min": acc,
            "acc_avgmodel": acc, "loss_avgmodel": loss,
            "consensus": round(consensus_distance([c.learner.state.flat for c in self.clients]), 9),
            "age_mean": float(ages.mean()), "age_min": int(ages.min()), "age_max": int(ages.max()),
            **network_record(s),
            "merges": self.server.aggregated,
            "age_capped": 0,
            "rollbacks": 0,
            "train_steps": sum(c.train_steps for c in counters),
            "peers_online": sum(c.online for c in self.clients),
            "peers_evaluated": 1,
        }  # fmt: skip

    async def simulate(
        self, progress: Callable[[float, Record | None], None] | None
    ) -> list[Record]:
        from sim.runner import Diverged, evaluation_times

        assert self.server is not None and self.churn is not None
        loop = asyncio.get_running_loop()
        self.network.online.add(SERVER)
        self.churn.start()
        records: list[Record] = []
        evals = evaluation_times(self.config)
        server = self.server

        async def rounds() -> None:
            while True:
                server.start_round()
                deadline = loop.time() + self.config.period
                with contextlib.suppress(TimeoutError):  # the round closes at its deadline
                    await asyncio.wait_for(server.done.wait(), self.config.period)
                server.close_round()
                if progress is not None:
                    progress(loop.time(), None)
                await asyncio.sleep(max(0.0, deadline - loop.time()))

        # Evaluations at period boundaries come before the round that starts there.
        task: asyncio.Task[None] | None = None
        try:
            for t, period in evals:
                await asyncio.sleep(max(0.0, t - loop.time()))
                record = self.record(loop.time(), period)
                records.append(record)
                if progress is not None:
                    progress(loop.time(), record)
                if record["loss_mean"] is None:
                    raise Diverged(
                        f"training diverged at period {period}: the global model's test loss "
                        f"is not finite; lower --lr (now {self.config.lr:g}) or use --lr-schedule",
                        records,
                    )
                if task is None:
                    task = loop.create_task(rounds())
        finally:
            if task is not None:
                task.cancel()
            await asyncio.gather(*(c.stop() for c in self.clients))
        return records


def build_fedavg(config: SimConfig, dataset: Dataset | None = None) -> FedAvgRun:
    """The FedAvg counterpart of :func:`sim.runner.build_world` (same data, model, seeds)."""
    if AttackSpec.parse(config.attack).active:
        raise ConfigError("--attack applies to gossip only; run FedAvg with --attack none")
    torch.set_num_threads(config.threads)
    rng_net, rng_churn, rng_eval = (
        generator(config.seed, key) for key in (seeding.NETWORK, seeding.CHURN, seeding.EVALUATION)
    )
    data = dataset or load_dataset(
        config.dataset, root=config.data_dir, download=config.download, seed=config.seed
    )
    parts = partition(
        data.y_train.numpy(), config.peers, config.partition, partition_generator(config.seed),
        groups=data.groups_train,
    )  # fmt: skip
    device = resolve_device(config.device)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    step_samples = float(np.mean([min(config.batch_size, len(p)) for p in parts if len(p)] or [1]))
    learner_cfg = config.learner_config(step_samples)
    global_model = build_model_for(config.model, data, config.seed).to(device)
    state = ModelState.bind(global_model)
    network = SimNetwork(config.network_config(), state.schema, rng_net)
    x_test, y_test = data.x_test, data.y_test
    if 0 < config.eval_samples < len(y_test):
        rows = np.sort(rng_eval.choice(len(y_test), config.eval_samples, replace=False))
        x_test, y_test = x_test[torch.as_tensor(rows)], y_test[torch.as_tensor(rows)]
    run = FedAvgRun(
        config, data, parts, nx.star_graph(config.peers), network,
        x_test.to(device), y_test.to(device),
    )  # fmt: skip
    for i in range(config.peers):  # clients first: their network indices are gossip's
        model = build_model_for(config.model, data, config.seed)
        local = LocalData(x_train, y_train, torch.as_tensor(parts[i], device=device))
        learner = Learner(model, local, learner_cfg, seed=peer_torch_seed(config.seed, i))
        client = FedAvgClient(i, learner, run)
        network.transport(client.peer_id).attach(client)
        run.clients.append(client)
    run.server = FedAvgServer(state, run, generator(config.seed, FEDAVG_SERVER))
    network.transport(SERVER).attach(run.server)
    run.churn = ChurnController(parse_churn(config.churn), run.clients, network, rng_churn)  # type: ignore[arg-type]
    run._eval = (global_model, device)
    return run
