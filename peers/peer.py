"""The gossip learning peer: one asyncio program, the same in simulation and in reality.

Every period Δ (with jitter) the peer trains on its local data (``train_on="timer"``, the
default), asks its sampler for a peer and pushes its current model through its transport
(or pulls, or both). Received models go into a bounded inbox; a single worker takes them
one at a time (or ``merge_k`` at once) and merges them (age-weighted by default); with
``train_on="receive"`` (the original protocol) it also trains after each merge. After every change the peer *publishes* an immutable snapshot of its model,
which is what it sends and what pull requests get, so sending never copies the model and
never races with training.

Heavy compute goes through a :class:`Compute` runner: a worker thread in a real node (the
event loop stays responsive), inline in the simulator, optionally costing virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

import numpy as np
import torch

from gossip.age_guard import AgeGuard
from gossip.errors import ConfigError
from gossip.learner import Learner
from gossip.robust.attacks import Attacker, AttackSpec
from gossip.robust.merger import Merger, parse_merge_spec
from gossip.robust.screen import DistanceScreen, NormScreen
from peers.transport import ModelMessage, ModelSnapshot, SendOutcome, Transport
from sampling.base import PeerSampler
from sampling.cyclon import ViewSampler
from sampling.views import ViewExchange

T = TypeVar("T")
log = logging.getLogger("gossip.peer")
MODES = ("push", "pull", "push-pull")
TRAIN_ON = ("receive", "timer", "both")
ORDERS = ("merge-train", "train-merge")


@dataclass(frozen=True)
class PeerConfig:
    """How a peer gossips.

    period: seconds between gossip rounds of this peer (Δ). jitter: each wait is
    ``period * (1 + jitter * U(-1, 1))``; the first wait is uniform in ``[0, period)`` so that
    peers are not synchronised. mode: ``push`` (default), ``pull`` or ``push-pull``.
    merge: merge rule name. local_steps / local_epochs: training per update (epochs wins
    when set). train_on: ``receive`` (merge then train on every received model, the
    original protocol), ``timer`` (merge on receipt, train once per period before sending)
    or ``both``. order: for training on receipt, ``merge-train`` (merge, then train: the
    original protocol) or ``train-merge`` (train, then merge the received model into the
    result). merge_k: received models merged at once (1: each as it arrives; K > 1: they wait
    until K have arrived, or until the timer's training step, and are merged in one
    age-weighted average). inbox_size: received models waiting to be merged; beyond it, refused as
    ``busy`` (HTTP 429 in a real node). train_cost: virtual seconds one training step takes
    in the simulator (real nodes take what they take). age_guard: how implausibly large
    received ages are treated (see :mod:`gossip.age_guard`). screen / screen_distance: the
    norm and distance screens' factors (:mod:`gossip.robust.screen`; 0 = off); screen_low:
    the norm screen's lower bound (a fraction of the honest norms; 0 = none). window: distinct recent senders the screen
    and the robust merge rules remember. attack: ``none`` or an attack kind
    (:mod:`gossip.robust.attacks`): this peer then gossips poison instead of its model.
    """

    period: float = 1.0
    jitter: float = 0.1
    sample_period: float = 0.0
    mode: str = "push"
    merge: str = "age-weighted"
    local_steps: int = 1
    local_epochs: float | None = None
    train_on: str = "timer"
    order: str = "merge-train"
    merge_k: int = 1
    inbox_size: int = 16
    train_cost: float = 0.0
    age_guard: AgeGuard = field(default_factory=AgeGuard)
    screen: float = 10.0
    screen_low: float = 0.5
    screen_distance: float = 4.0
    window: int = 8
    attack: str = "none"

    def __post_init__(self) -> None:
        if not self.sample_period >= 0:
            raise ConfigError(
                f"sample period must be >= 0 (0: the gossip period), got {self.sample_period}"
            )
        if not self.period > 0:
            raise ConfigError(f"gossip period must be positive, got {self.period}")
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.mode not in MODES:
            raise ConfigError(
                f"unknown gossip mode {self.mode!r}; choose one of: {', '.join(MODES)}"
            )
        if self.order not in ORDERS:
            raise ConfigError(f"unknown order {self.order!r}; choose one of: {', '.join(ORDERS)}")
        if self.merge_k < 1:
            raise ConfigError(f"--merge-k must be at least 1 model, got {self.merge_k}")
        if self.train_on not in TRAIN_ON:
            raise ConfigError(
                f"unknown train_on {self.train_on!r}; choose one of: {', '.join(TRAIN_ON)}"
            )
        if self.local_steps < 0 or self.inbox_size < 1 or self.train_cost < 0:
            raise ConfigError("local_steps and train_cost must be >= 0 and inbox_size >= 1")
        if self.window < 1:
            raise ConfigError(f"window must be at least 1 sender, got {self.window}")
        for name in ("screen", "screen_distance"):
            value = getattr(self, name)
            if not (value == 0 or 1 <= value < float("inf")):
                raise ConfigError(f"{name} factor must be 0 (off) or >= 1, got {value}")
        if not 0 <= self.screen_low < 1:
            raise ConfigError(
                f"screen_low must be in [0, 1) (0: no lower bound), got {self.screen_low}"
            )
        parse_merge_spec(self.merge)  # validates the name
        AttackSpec.parse(self.attack, need_fraction=False)


@dataclass
class PeerCounters:
    """Everything a peer does, counted."""

    pushes: int = 0
    pulls: int = 0
    send_failed: int = 0
    send_rejected: int = 0
    received: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    merges: int = 0
    age_capped: int = 0
    rollbacks: int = 0
    errors: int = 0
    train_steps: int = 0
    samples_trained: int = 0
    view_exchanges: int = 0  # peer sampling: exchanges started,
    view_failed: int = 0  # of which unanswered (the target left the view),
    view_requests: int = 0  # and requests answered for others

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {k: v for k, v in vars(self).items() if k != "rejected"}
        out["rejected"] = dict(sorted(self.rejected.items()))
        return out


class Compute(Protocol):
    """Runs a peer's heavy work (merge + train, evaluation)."""

    async def run(self, fn: Callable[[], T], cost: float = 0.0) -> T: ...


class InlineCompute:
    """Simulation: run at once on the loop, then let ``cost`` virtual seconds pass."""

    async def run(self, fn: Callable[[], T], cost: float = 0.0) -> T:
        result = fn()
        if cost > 0:
            await asyncio.sleep(cost)
        return result


class ThreadCompute:
    """Real node: one worker thread, so training never blocks the event loop and merges and
    training steps of this peer never run concurrently."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gossip-compute")

    async def run(self, fn: Callable[[], T], cost: float = 0.0) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class Peer:
    """A gossip learning peer: a learner with its aged model, a sampler and a transport."""

    def __init__(
        self,
        peer_id: str,
        learner: Learner,
        sampler: PeerSampler,
        transport: Transport,
        config: PeerConfig,
        rng: np.random.Generator,
        compute: Compute | None = None,
        attacker: Attacker | None = None,
    ) -> None:
        self.peer_id = peer_id
        self.learner = learner
        self.sampler = sampler
        self.transport = transport
        self.config = config
        self.rng = rng
        self.compute: Compute = compute or InlineCompute()
        self.merger = Merger(config.merge, config.window)
        self.screen = NormScreen(config.screen, config.window, low=config.screen_low)
        self.distance_screen = DistanceScreen(config.screen_distance, config.window)
        self.allowance = config.age_guard.allowance(*self._training_rate())
        attack = AttackSpec.parse(config.attack, need_fraction=False)
        if attacker is None and attack.active:
            attacker = Attacker(attack.kind, int(rng.integers(2**63)), window=config.window)
        self.attacker = attacker
        self.counters = PeerCounters()
        self._inbox: asyncio.Queue[tuple[ModelMessage, float]] | None = None
        # Received models waiting for merge_k - 1 others (and when each arrived).
        self._pending: list[ModelMessage] = []
        self._pending_times: list[float] = []
        # Receive-to-merge latencies (loop seconds) of the most recent merges.
        self.merge_latencies: deque[float] = deque(maxlen=4096)
        self._tasks: list[asyncio.Task[None]] = []
        self._good_norm: float | None = None
        self._good = self._make_snapshot()
        # The last published model that a training step produced (or the initial one): what
        # a failed training step rolls back to. A merge may leave a finite but absurd model
        # that only the next step turns non-finite (with --train-on timer that step comes
        # later): rolling back to the merged model would leave a peer that fails every step.
        self._trained = self._good
        self._snapshot = self._outgoing(self._good)
        transport.attach(self)

    def _training_rate(self) -> tuple[float, float]:
        """(samples trained per second, samples per update) in an honest steady state: the
        age guard's default credit is derived from them."""
        c = self.config
        n = len(self.learner.data)
        batch = min(self.learner.config.batch_size, n) if n else self.learner.config.batch_size
        per_update = float(
            c.local_steps * batch if c.local_epochs is None else max(batch, c.local_epochs * n)
        )
        updates = (2.0 if c.mode == "push-pull" else 1.0) + (c.train_on != "receive")
        return updates * max(per_update, 1.0) / c.period, max(per_update, 1.0)

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        """Start the gossip loop and the inbox worker on the running event loop."""
        if self._tasks:
            return
        self._inbox = asyncio.Queue(maxsize=self.config.inbox_size)
        self._tasks = [
            asyncio.create_task(self._gossip_loop(), name=f"gossip:{self.peer_id}"),
            asyncio.create_task(self._inbox_loop(), name=f"inbox:{self.peer_id}"),
        ]
        if isinstance(self.sampler, ViewSampler):
            self._tasks.append(
                asyncio.create_task(self._sampling_loop(), name=f"sampling:{self.peer_id}")
            )

    async def stop(self) -> None:
        """Stop gossiping (a crash or a departure): pending inbox messages are lost, the
        model and age are kept (crash-recover resumes from them)."""
        tasks, self._tasks, self._inbox = self._tasks, [], None
        self._pending, self._pending_times = [], []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def run(self) -> None:
        """Run until cancelled."""
        self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

    # ------------------------------------------------------------------ receiving

    def offer(self, message: ModelMessage) -> str | None:
        """Called by the transport with a decoded, validated model. None if queued, else why
        not: ``offline``, ``outlier`` (the norm screen), ``age_inflation`` (the age guard's
        ``refuse`` policy) or ``busy`` (full inbox). A refused message changes nothing."""
        self.counters.received += 1
        reason: str | None = None
        if self._inbox is None:
            reason = "offline"
        elif self.merger.merges:
            reason = self._screen(message)
        if reason is None and self.allowance.policy == "refuse":
            now = asyncio.get_running_loop().time()
            reason = self.allowance.check(message.age, self.learner.state.age, now)[1]
        if reason is None:
            assert self._inbox is not None
            if self._inbox.full():
                reason = "busy"
            else:
                self._inbox.put_nowait((message, asyncio.get_running_loop().time()))
        if reason is None:
            self.counters.accepted += 1
            self.sampler.report_alive(message.sender)
        else:
            self.counters.rejected[reason] += 1
        return reason

    def _screen(self, message: ModelMessage) -> str | None:
        """The outlier screens, against the last published honest model (immutable, so the
        worker may keep training meanwhile)."""
        reason = None
        if self.screen.enabled:
            norm = float(torch.linalg.vector_norm(message.flat))
            reason = self.screen.check(
                message.sender, self._local_norm(), norm, message.flat.numel()
            )
        if reason is None and self.distance_screen.enabled:
            good = self._good.flat
            distance = float(
                torch.dist(message.flat.to(device=good.device, dtype=good.dtype), good)
            )
            reason = self.distance_screen.check(message.sender, self._local_norm(), distance)
        return reason

    def _local_norm(self) -> float:
        """Norm of the last published honest model (cached: snapshots are immutable)."""
        if self._good_norm is None:
            self._good_norm = float(torch.linalg.vector_norm(self._good.flat))
        return self._good_norm

    def published(self) -> ModelSnapshot:
        return self._snapshot

    def republish(self) -> None:
        """Publish the current model again (after it was changed from outside, e.g. restored):
        it is also what a failed training step rolls back to."""
        self._publish()
        self._trained = self._good

    # ------------------------------------------------------------------ work

    def _make_snapshot(self) -> ModelSnapshot:
        flat, age = self.learner.state.snapshot()
        return ModelSnapshot(self.peer_id, flat, age)

    def _publish(self) -> None:
        """Snapshot the model after a change: the honest copy is kept to roll back to; an
        attacker publishes poison made from it instead."""
        previous, self._good = self._good, self._make_snapshot()
        self._good_norm = None
        if self.distance_screen.enabled:
            self.distance_screen.observe_motion(float(torch.dist(self._good.flat, previous.flat)))
        self._snapshot = self._outgoing(self._good)

    def _outgoing(self, good: ModelSnapshot) -> ModelSnapshot:
        """What this peer sends: its model, or the attacker's poison made from it."""
        if self.attacker is None:
            return good
        flat, age = self.attacker.poison(good.flat, good.age)
        return ModelSnapshot(self.peer_id, flat, age)

    def _train(self) -> bool:
        """One training update; False when the peer does not train (0 steps)."""
        c = self.config
        if c.local_steps == 0 and c.local_epochs is None:
            return False
        stats = self.learner.train(steps=c.local_steps, epochs=c.local_epochs)
        self.counters.train_steps += stats.steps
        self.counters.samples_trained += stats.samples
        return True

    def _commit_or_roll_back(self, trained: bool) -> None:
        """Publish the new model if it is finite; otherwise restore a good one.

        Whatever a merge or a training step produced (an absurd model that got through, a
        learning rate that diverges), a peer is never left with a dead model: a failed merge
        goes back to the last published model, a failed training step to the last model a
        training step produced (the merges since then may be what made it fail)."""
        state = self.learner.state
        # Sum first (one pass, no bool tensor); only an inf sum needs the full check, since a
        # sum of finite values may overflow.
        flat = state.flat
        if bool(torch.isfinite(flat.sum())) or bool(torch.isfinite(flat).all()):
            self._publish()
            if trained:
                self._trained = self._good
            return
        self.counters.rollbacks += 1
        target = self._trained if trained else self._good
        state.load_flat(target.flat, target.age)
        self.learner.reset_optimizer_state()
        if trained and target is not self._good:
            self._publish()

    def _merge(self, messages: list[ModelMessage], now: float) -> None:
        """Merge received models into the local one: one at a time, or (``merge_k > 1``)
        all at once."""
        if not messages:
            return
        state = self.learner.state
        incoming: list[tuple[torch.Tensor, int, str]] = []
        for message in messages:
            # Received models are decoded to float32 on the CPU; the local model may live on
            # a GPU or in another precision.
            flat = message.flat.to(
                device=state.flat.device, dtype=state.flat.dtype, non_blocking=True
            )
            if self.attacker is not None:
                self.attacker.observe(message.sender, flat)
            incoming.append((flat, message.age, message.sender))
        if not self.merger.merges:
            return
        before = state.age
        bounded: list[tuple[torch.Tensor, int, str]] = []
        # The age guard: received ages may add at most the credit to ours (no ratchet).
        bound = self.allowance.bound(before, now) if self.allowance.policy != "off" else None
        for flat, age, sender in incoming:
            if bound is not None and age > bound:
                age = bound
                self.counters.age_capped += 1
            bounded.append((flat, age, sender))
        if len(bounded) == 1:
            flat, age, sender = bounded[0]
            state.age = self.merger.merge_(state.flat, before, flat, age, sender)
        else:
            state.age = self.merger.merge_many_(state.flat, before, bounded)
        self.learner.merged(self.merger.last_weight)
        self.allowance.spend(before, state.age)
        self.counters.merges += len(bounded)

    def _merge_and_train(self, messages: list[ModelMessage], now: float) -> None:
        # With the ``none`` rule the receipt still triggers training, so that peers training
        # alone get exactly as many steps as gossiping ones: a fair baseline.
        trains = self.config.train_on in ("receive", "both")
        if trains and self.config.order == "train-merge":
            # Train first, then merge: the published model is an average, not the result of a
            # step on the local shard (which a skewed shard pulls away from the others).
            trained = self._train()
            self._merge(messages, now)
        else:
            self._merge(messages, now)
            trained = trains and self._train()
        self._commit_or_roll_back(trained)

    def _train_and_publish(self, now: float) -> None:
        # Models still waiting for merge_k company are merged before the timer's step.
        pending, self._pending = self._pending, []
        self._merge(pending, now)
        trained = self._train()
        if trained or pending:
            self._commit_or_roll_back(trained)

    def _train_cost(self) -> float:
        return self.config.train_cost * self.config.local_steps

    def _receive_cost(self) -> float:
        """Virtual seconds an update on receipt takes: a training step, or nothing."""
        return self._train_cost() if self.config.train_on in ("receive", "both") else 0.0

    async def _inbox_loop(self) -> None:
        inbox = self._inbox
        assert inbox is not None
        loop = asyncio.get_running_loop()
        k = self.config.merge_k
        while True:
            message, received_at = await inbox.get()
            self._pending.append(message)
            self._pending_times.append(received_at)
            if len(self._pending) < k:
                continue
            batch, self._pending = self._pending, []
            times, self._pending_times = self._pending_times, []
            work = partial(self._merge_and_train, batch, loop.time())
            await self.compute.run(work, self._receive_cost())
            self.merge_latencies.extend(loop.time() - t for t in times)
            # Merged: drop them now, not when the next batch is formed (a node's received
            # models may be views of its upload buffers, lent until they are gone).
            del message, batch, work

    async def _gossip_loop(self) -> None:
        c = self.config
        await asyncio.sleep(c.period * float(self.rng.random()))
        while True:
            try:
                if c.train_on in ("timer", "both"):
                    now = asyncio.get_running_loop().time()
                    times, self._pending_times = self._pending_times, []
                    await self.compute.run(
                        partial(self._train_and_publish, now), self._train_cost()
                    )
                    self.merge_latencies.extend(now - t for t in times)
                target = self.sampler.select()
                if target is not None:
                    await self._exchange(target)
            except Exception as e:  # a bug or a failing component must not end gossip silently
                self.counters.errors += 1
                log.warning(
                    "peer %s: gossip round failed: %s: %.200s", self.peer_id, type(e).__name__, e
                )
            await asyncio.sleep(
                c.period * (1.0 + c.jitter * (2.0 * float(self.rng.random()) - 1.0))
            )

    # ------------------------------------------------------------------ peer sampling

    def handle_sample(self, sender: str, request: ViewExchange) -> ViewExchange | None:
        """Answer a view exchange with the dynamic sampler (None without one, or refused)."""
        if not isinstance(self.sampler, ViewSampler) or not self.running:
            return None
        self.counters.view_requests += 1
        return self.sampler.handle_request(request, sender)

    async def _sampling_loop(self) -> None:
        """Every sample period, one view exchange (Cyclon, Newscast): a target that does
        not answer leaves the view. Its waits draw from the sampler's own generator, so that
        a dynamic sampler changes nothing that the gossip loop draws."""
        sampler = self.sampler
        assert isinstance(sampler, ViewSampler)
        c = self.config
        period = c.sample_period or c.period
        await asyncio.sleep(period * float(sampler.rng.random()))
        while True:
            try:
                started = sampler.start_exchange()
                if started is not None:
                    target, request = started
                    self.counters.view_exchanges += 1
                    reply = await self.transport.sample(target, request)
                    if reply is None:
                        self.counters.view_failed += 1
                        sampler.report_failure(target)
                    else:
                        sampler.handle_reply(reply, target)
            except Exception as e:  # as in the gossip loop: count, log briefly, go on
                self.counters.errors += 1
                log.warning(
                    "peer %s: view exchange failed: %s: %.200s", self.peer_id, type(e).__name__, e
                )
            await asyncio.sleep(
                period * (1.0 + c.jitter * (2.0 * float(sampler.rng.random()) - 1.0))
            )

    async def _exchange(self, target: str) -> None:
        if self.config.mode in ("push", "push-pull"):
            self.counters.pushes += 1
            outcome = await self.transport.push(target, self._snapshot)
            if outcome is SendOutcome.FAILED:
                self.counters.send_failed += 1
                self.sampler.report_failure(target)
            elif outcome is SendOutcome.REJECTED:
                self.counters.send_rejected += 1
        if self.config.mode in ("pull", "push-pull"):
            self.counters.pulls += 1
            message = await self.transport.pull(target)
            if message is None:
                self.counters.send_failed += 1
                self.sampler.report_failure(target)
            else:
                self.offer(message)
