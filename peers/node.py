"""One real gossip learning node: the Peer behind an HTTP server, with durable state.

``Node.start()`` loads this node's data and model, restores the newest valid checkpoint,
starts the HTTP server and the gossip loop; ``Node.stop()`` stops accepting, lets the merge
in progress finish, writes a final checkpoint and closes connections. Training and
evaluation run in one worker thread so that the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
import zlib
from typing import Any

import numpy as np
import torch
from aiohttp import web

from gossip.datasets import Dataset, load_dataset
from gossip.errors import ConfigError, GossipError
from gossip.learner import Learner, LearnerConfig, LocalData
from gossip.models import build_model_for
from gossip.partition import partition, partition_generator
from gossip.seeding import peer_stream, peer_torch_seed
from peers.auth import AuthConfig, MessageSigner, MessageVerifier, load_key_file
from peers.checkpoint import CheckpointStore
from peers.http_transport import HttpConfig, HttpTransport
from peers.node_config import NodeConfig
from peers.peer import Peer, ThreadCompute
from peers.peersfile import find_self, load_peers, others, public_keys
from peers.server import NodeServer
from sampling.uniform import UniformSampler

log = logging.getLogger("gossip.node")


def local_data(config: NodeConfig) -> tuple[Dataset, np.ndarray | None]:
    """This node's dataset and the indices of its shard (None: all training rows)."""
    if config.data is not None:
        return load_dataset(f"npz:{config.data}", seed=config.seed), None
    data = load_dataset(
        config.dataset, root=config.data_dir, download=config.download, seed=config.seed
    )
    if config.num_nodes is None or config.node_index is None:
        return data, None
    # Every node computes the same partition from the shared seed and takes its own part.
    parts = partition(
        data.y_train.numpy(), config.num_nodes, config.partition, partition_generator(config.seed),
        groups=data.groups_train,
    )  # fmt: skip
    return data, parts[config.node_index]


def server_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(
            f"cannot load TLS certificate/key ({config.tls_cert}, {config.tls_key}): {e}"
        ) from None
    return ctx


def client_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    if not config.tls_ca:
        return None
    try:
        return ssl.create_default_context(cafile=config.tls_ca)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load TLS CA file {config.tls_ca}: {e}") from None


class Node:
    """A running gossip learning node."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        entries = load_peers(config.peers)
        me = find_self(
            entries,
            peer_id=config.id,
            host=config.host,
            port=config.port,
            advertised=config.advertise,
        )
        self.node_id = config.id or (me.peer_id if me else f"{config.host}:{config.port}")
        self.others = others(entries, me)
        self.dataset, shard = local_data(config)
        learner_config = LearnerConfig(
            optimizer=config.optimizer,
            lr=config.lr,
            batch_size=config.batch_size,
            device=config.device,
        )
        model = build_model_for(config.model, self.dataset, config.seed)
        indices = None if shard is None else torch.as_tensor(shard)
        local = LocalData(self.dataset.x_train, self.dataset.y_train, indices)
        # Node i draws what simulated peer i draws; without a node index, an index from the id.
        index = config.node_index
        if index is None:
            index = (1 << 20) + zlib.crc32(self.node_id.encode())
        self.learner = Learner(
            model, local, learner_config, seed=peer_torch_seed(config.seed, index)
        )
        self.schema = self.learner.state.schema
        keys = load_key_file(config.auth_key_file) if config.auth_key_file else None
        auth = (
            keys.auth_config(public_keys(entries), config.auth_window)
            if keys
            else AuthConfig(public_keys=public_keys(entries), window_s=config.auth_window)
        )
        self.transport = HttpTransport(
            self.node_id,
            {e.peer_id: e.url for e in self.others},
            self.schema,
            HttpConfig(config.connect_timeout, config.read_timeout, codec=config.codec),
            MessageSigner(auth),
            MessageVerifier(auth),
            client_ssl_context(config),
        )
        rng = np.random.default_rng(peer_stream(config.seed, index))
        self.sampler = UniformSampler(
            self.node_id, [e.peer_id for e in self.others], rng, failure_backoff=3
        )
        self.compute = ThreadCompute()
        self.peer = Peer(
            self.node_id,
            self.learner,
            self.sampler,
            self.transport,
            config.peer_config(),
            rng,
            self.compute,
        )
        self.store = CheckpointStore(config.checkpoint_dir) if config.checkpoint_dir else None
        self.started_at = time.monotonic()
        self.last_eval: tuple[float, float] | None = None  # (accuracy, loss)
        self.restored_from: str | None = None
        self.server = NodeServer(self.peer, self.transport, self.status)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ state

    def status(self) -> dict[str, Any]:
        c = self.peer.counters
        acc, loss = self.last_eval if self.last_eval else (None, None)
        lat = sorted(self.peer.merge_latencies)
        return {
            "id": self.node_id,
            "age": self.learner.state.age,
            "accuracy": acc,
            "loss": loss,
            "messages_sent": c.pushes - c.send_failed,
            "messages_received": c.received,
            "messages_rejected": sum(c.rejected.values()),
            "rejected_by_reason": dict(sorted(c.rejected.items())),
            "merges": c.merges,
            "train_steps": c.train_steps,
            "send_failed": c.send_failed,
            "peers_known": len(self.sampler.known_peers()),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "schema": self.schema.hash,
            "local_samples": len(self.learner.data),
            "restored_from": self.restored_from,
            "merge_latency_p50_s": lat[len(lat) // 2] if lat else None,
        }

    def restore(self) -> None:
        if self.store is None:
            return
        ckpt = self.store.load_latest(self.schema.hash)
        for path, why in self.store.skipped:
            log.warning("checkpoint %s skipped: %s", path.name, why)
        if ckpt is None:
            return
        self.learner.state.load_flat(ckpt.flat.to(self.learner.state.flat.device), ckpt.age)
        for key, value in ckpt.counters.items():
            if isinstance(value, int) and isinstance(getattr(self.peer.counters, key, None), int):
                setattr(self.peer.counters, key, value)
        self.peer.republish()
        self.restored_from = f"checkpoint {ckpt.seq}"
        log.info("resumed from checkpoint %d: age %d", ckpt.seq, ckpt.age)

    def checkpoint(self) -> None:
        if self.store is None:
            return
        flat, age = self.learner.state.snapshot()
        if not bool(torch.isfinite(flat).all()):
            log.error("model has non-finite values; checkpoint skipped (the last good one is kept)")
            return
        counters = {k: v for k, v in self.peer.counters.as_dict().items() if isinstance(v, int)}
        self.store.save(
            flat.cpu(),
            age,
            self.schema.hash,
            list(self.sampler.known_peers()),
            counters,
            time.time(),
        )

    def evaluate(self) -> None:
        stats = self.learner.evaluate(self.dataset.x_test, self.dataset.y_test)
        self.last_eval = (round(stats.accuracy, 6), round(stats.loss, 6))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.restore()
        await self.transport.start()
        self._runner = web.AppRunner(self.server.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.config.host,
            self.config.port,
            ssl_context=server_ssl_context(self.config),
        )
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            await self.transport.close()
            raise GossipError(
                f"cannot listen on {self.config.host}:{self.config.port} ({e.strerror}); pick another --port or --host"
            ) from None
        self.peer.start()
        self._tasks = [asyncio.create_task(self._periodic())]
        log.info(
            "node %s listening on %s:%d with %d peers, %d local samples",
            self.node_id, self.config.host, self.config.port, len(self.others), len(self.learner.data),
        )  # fmt: skip

    async def _periodic(self) -> None:
        """Evaluation, checkpoints and a status line, each on its own schedule."""
        c = self.config
        eval_period = c.eval_every * c.period if c.eval_every else math.inf
        next_eval, next_ckpt, next_status = eval_period, c.checkpoint_every, c.status_every
        start = time.monotonic()
        while True:
            await asyncio.sleep(min(next_eval, next_ckpt, next_status) - (time.monotonic() - start))
            now = time.monotonic() - start
            if now >= next_eval:
                await self.compute.run(self.evaluate)
                next_eval += eval_period
            if now >= next_ckpt:
                await self.compute.run(self.checkpoint)
                next_ckpt += c.checkpoint_every
            if now >= next_status:
                s = self.status()
                log.info(
                    "age %d acc %s merges %d sent %d received %d rejected %d",
                    s["age"], s["accuracy"], s["merges"], s["messages_sent"], s["messages_received"], s["messages_rejected"],
                    extra={"status": s},
                )  # fmt: skip
                next_status += c.status_every

    async def stop(self) -> None:
        """Stop accepting, finish the merge in progress, write a final checkpoint, close."""
        if self._runner is not None:
            await self._runner.cleanup()  # no new requests; in-flight handlers finish
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.peer.stop()
        await asyncio.to_thread(self.compute.shutdown)  # waits for a running merge/step
        self.checkpoint()
        await self.transport.close()
        log.info("node %s stopped at age %d", self.node_id, self.learner.state.age)
