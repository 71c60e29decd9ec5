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
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from gossip import seeding
from gossip.datasets import Dataset, load_dataset
from gossip.errors import ConfigError, GossipError
from gossip.learner import Learner, LocalData
from gossip.models import build_model_for
from gossip.partition import partition, partition_generator
from gossip.seeding import peer_stream, peer_torch_seed
from peers.auth import (
    AuthConfig,
    MessageSigner,
    MessageVerifier,
    format_public_key,
    load_key_file,
    parse_public_key,
    public_key_of,
    restart_floor,
)
from peers.checkpoint import CheckpointStore, counters_snapshot, restore_counters
from peers.http_transport import HttpConfig, HttpTransport
from peers.node_config import NodeConfig
from peers.peer import Peer, ThreadCompute
from peers.peersfile import find_self, load_peers, others, public_keys
from peers.server import NodeServer, ServerLimits
from sampling.base import PeerSampler
from sampling.cyclon import ViewSampler, build_view_sampler, is_dynamic
from sampling.uniform import UniformSampler
from sampling.views import Descriptor

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
        learner_config = config.learner_config()
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
        # A node with its own Ed25519 key and a dynamic sampler meets peers its file does not
        # list: it binds their ids to the keys they announce on first use (peers.auth).
        learn = keys is not None and keys.kind == "ed25519" and is_dynamic(config.sampler)
        auth = (
            keys.auth_config(public_keys(entries), config.auth_window, learn_keys=learn)
            if keys
            else AuthConfig(public_keys=public_keys(entries), window_s=config.auth_window)
        )
        # Its replay floor is raised in start(), from the newest checkpoint (see peers.auth).
        self.verifier = MessageVerifier(auth)
        self._previous_run: tuple[float | None, bool] = (None, True)  # (high water, clean stop)
        self.transport = HttpTransport(
            self.node_id,
            {e.peer_id: e.url for e in self.others},
            self.schema,
            HttpConfig(config.connect_timeout, config.read_timeout, codec=config.codec),
            MessageSigner(auth),
            self.verifier,
            client_ssl_context(config),
        )
        rng = np.random.default_rng(peer_stream(config.seed, index))
        self.sampler: PeerSampler
        if is_dynamic(config.sampler):
            sampling_rng = np.random.default_rng(
                seeding.stream(config.seed, seeding.SAMPLING_FIRST + index)
            )
            advertised = (config.advertise or f"http://{config.host}:{config.port}").rstrip("/")
            private = auth.private_key
            own_key = format_public_key(public_key_of(private)) if learn and private else ""
            own = Descriptor(self.node_id, advertised, key=own_key)
            seeds = [Descriptor(e.peer_id, e.url, 1) for e in self.others]
            self.sampler = build_view_sampler(config.sampler, own, seeds, sampling_rng)
        else:
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
        limits = ServerLimits(
            config.header_timeout, config.max_connections, config.max_requests, config.max_uploads,
            max_connections_per_ip=config.max_connections_per_ip,
        )  # fmt: skip
        self.server = NodeServer(self.peer, self.transport, self.status, limits)
        self._tasks: list[asyncio.Task[None]] = []
        self.task_errors: Counter[str] = Counter()  # failures of periodic steps, by kind

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
            "rollbacks": c.rollbacks,
            "merges": c.merges,
            "train_steps": c.train_steps,
            "send_failed": c.send_failed,
            "peers_known": len(self.sampler.known_peers()),
            # The dynamic view (at most C ids); the static peers file is not repeated here.
            "view": sorted(self.sampler.known_peers()) if is_dynamic(self.config.sampler) else None,
            "sampler": self.config.sampler,
            "view_exchanges": c.view_exchanges,
            "view_failed": c.view_failed,
            "view_requests": c.view_requests,
            "sample_refused": dict(sorted(self.transport.sample_refused.items())),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "schema": self.schema.hash,
            "local_samples": len(self.learner.data),
            "restored_from": self.restored_from,
            "merge_latency_p50_s": lat[len(lat) // 2] if lat else None,
            "http": self.server.http_status(),
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
        if isinstance(self.sampler, ViewSampler):  # the view it had, addresses and keys
            restored = self.sampler.restore_view(ckpt.sampler_view)
            self.transport.learn_addresses(restored)
            for d in restored:
                raw = parse_public_key(d.key) if self.verifier.config.learn_keys else None
                if raw is not None:
                    self.verifier.bind(d.peer_id, raw)
        ignored = restore_counters(self.peer.counters, ckpt.counters)
        if ignored:
            log.info("checkpoint counters not restored (unknown or wrong type): %s", ignored)
        self._previous_run = (ckpt.auth_high_water, ckpt.clean_stop)
        self.peer.republish()
        self.restored_from = f"checkpoint {ckpt.seq}"
        log.info("resumed from checkpoint %d: age %d", ckpt.seq, ckpt.age)

    def checkpoint(
        self, counters: dict[str, Any] | None = None, *, clean_stop: bool = False
    ) -> None:
        """Write a checkpoint. ``counters``: a :func:`counters_snapshot` taken on the event
        loop (which keeps received == accepted + rejected; default: taken now).
        ``clean_stop``: this node accepts nothing after it (the final one)."""
        if self.store is None:
            return
        if counters is None:
            counters = counters_snapshot(self.peer.counters)
        flat, age = self.learner.state.snapshot()
        if not bool(torch.isfinite(flat).all()):
            log.error("model has non-finite values; checkpoint skipped (the last good one is kept)")
            return
        high_water = self.verifier.high_water  # read last: it covers all accepted so far
        self.store.save(
            flat.cpu(),
            age,
            self.schema.hash,
            self.sampler.saved_view(self.transport.key_text)
            if isinstance(self.sampler, ViewSampler)
            else list(self.sampler.known_peers()),
            counters,
            time.time(),
            auth_high_water=high_water if math.isfinite(high_water) else None,
            clean_stop=clean_stop,
        )

    def evaluate(self) -> None:
        stats = self.learner.evaluate(self.dataset.x_test, self.dataset.y_test)
        self.last_eval = (round(stats.accuracy, 6), round(stats.loss, 6))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.restore()
        high_water, clean_stop = self._previous_run
        window = self.verifier.config.window_s
        self.verifier.raise_floor(
            restart_floor(
                start=time.time(), window_s=window, high_water=high_water, clean_stop=clean_stop
            )
        )
        if self.verifier.config.require and self.store is not None:
            if not clean_stop:
                log.warning(
                    "the previous run did not stop cleanly: for up to %g s (--auth-window),"
                    " messages it may have accepted are refused as stale",
                    window,
                )
            # Marks this run as started: a crash before its next checkpoint is seen as one.
            self.checkpoint()
        await self.transport.start()
        try:
            await self.server.start(
                self.config.host, self.config.port, server_ssl_context(self.config)
            )
        except OSError as e:
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
        """Evaluation, checkpoints and a status line, each on its own schedule. A step that
        fails is logged (see :meth:`_step_failed`) and tried again at its next time: one
        failure (a full disk, say) never ends the loop."""
        c = self.config
        eval_period = c.eval_every * c.period if c.eval_every else math.inf
        next_eval, next_ckpt, next_status = eval_period, c.checkpoint_every, c.status_every
        start = time.monotonic()
        while True:
            await asyncio.sleep(min(next_eval, next_ckpt, next_status) - (time.monotonic() - start))
            now = time.monotonic() - start
            if now >= next_eval:
                next_eval = _next_time(next_eval, eval_period, now)
                await self._guarded("evaluation", partial(self.compute.run, self.evaluate))
            if now >= next_ckpt:
                next_ckpt = _next_time(next_ckpt, c.checkpoint_every, now)
                counters = counters_snapshot(self.peer.counters)  # on the loop: consistent
                write = partial(self.checkpoint, counters)
                await self._guarded("checkpoint", partial(self.compute.run, write))
            if now >= next_status:
                next_status = _next_time(next_status, c.status_every, now)
                await self._guarded("status", self._log_status)

    async def _log_status(self) -> None:
        s = self.status()
        log.info(
            "age %d acc %s merges %d sent %d received %d rejected %d",
            s["age"], s["accuracy"], s["merges"], s["messages_sent"], s["messages_received"], s["messages_rejected"],
            extra={"status": s},
        )  # fmt: skip

    async def _guarded(self, what: str, step: Callable[[], Awaitable[object]]) -> None:
        """Run one periodic step; an exception is counted and logged, never raised."""
        try:
            await step()
        except Exception as e:  # any failure: log it and keep the node going
            self._step_failed(what, e)

    def _step_failed(self, what: str, error: Exception) -> None:
        """Log a failed step: the first failure of each kind with its traceback, repeats
        only at the 2nd, 4th, 8th, ... time (bounded, however long it keeps failing)."""
        kind = f"{what}: {type(error).__name__}"
        self.task_errors[kind] += 1
        n = self.task_errors[kind]
        if n == 1:
            log.error(
                "%s failed: %s; retrying at its next time", what, error,
                exc_info=not isinstance(error, GossipError),
            )  # fmt: skip
        elif n & (n - 1) == 0:
            log.error("%s failed again (%d times so far): %s", what, n, error)

    async def stop(self) -> None:
        """Stop accepting, finish the merge in progress, write a final checkpoint, close."""
        await self.server.stop()  # no new requests; in-flight handlers finish
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.peer.stop()
        await asyncio.to_thread(self.compute.shutdown)  # waits for a running merge/step
        self.checkpoint(clean_stop=True)  # after the last accept: its high water is exact
        await self.transport.close()
        log.info("node %s stopped at age %d", self.node_id, self.learner.state.age)


def _next_time(scheduled: float, period: float, now: float) -> float:
    """The next time of a step due at ``scheduled`` every ``period``, after ``now`` (times
    missed while a step ran long are skipped, not run back to back)."""
    if math.isinf(period):
        return math.inf
    return scheduled + period * (1 + math.floor((now - scheduled) / period))
