"""Observers: what a simulation records at every evaluation point.

A record is a flat JSON object; ``metrics.jsonl`` holds one per line. Everything in it is a
function of the configuration and seed alone (no wall clock), so two runs with the same seed
write byte-identical files.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from gossip.learner import evaluate_model
from gossip.state import ModelState
from peers.peer import Peer
from sampling.cyclon import ViewSampler
from sim.network import NetworkStats, SimNetwork


def consensus_distance(flats: Sequence[torch.Tensor]) -> float:
    """Mean squared distance of the peer models to their average, ``mean_i ||w_i - w̄||²``.

    Streams over the peers in float64 with one reused buffer: a thousand models are never
    stacked (that was memory-bound and allocated hundreds of MB per evaluation).
    """
    if not flats:
        return float("nan")
    total = torch.zeros_like(flats[0], dtype=torch.float64)
    for f in flats:
        total.add_(f)
    mean = total.div_(len(flats))
    diff = torch.empty_like(mean)
    sq = 0.0
    for f in flats:
        torch.sub(f, mean, out=diff)
        sq += float(torch.dot(diff, diff))
    return sq / len(flats)


def network_record(s: NetworkStats) -> dict[str, Any]:
    """The message accounting of a record (gossip and FedAvg count alike)."""
    return {
        "messages_sent": s.sent,
        "messages_delivered": s.delivered,
        "messages_dropped": sum(s.dropped.values()),
        "messages_rejected": sum(s.rejected.values()),
        "messages_in_flight": s.in_flight,
        "dropped_by_reason": dict(sorted(s.dropped.items())),
        "rejected_by_reason": dict(sorted(s.rejected.items())),
        "bytes_sent": s.bytes_sent,
    }


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q, method="linear"))


def _round(x: float, digits: int = 6) -> float | None:
    """JSON-safe: a non-finite value is null (json would write NaN / Infinity, not JSON)."""
    return round(x, digits) if math.isfinite(x) else None


class MetricsObserver:
    """Evaluates a fixed set of peers on the test split and reads the counters."""

    def __init__(
        self,
        peers: Sequence[Peer],
        network: SimNetwork,
        x_test: torch.Tensor,
        y_test: torch.Tensor,
        eval_indices: Sequence[int],
        attackers: Sequence[int] = (),
        local_tests: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.peers = list(peers)
        # Per evaluated peer, the test samples of its own groups (natural partitions).
        self.local_tests = local_tests or {}
        self.attackers = frozenset(attackers)
        self.network = network
        self.x_test = x_test
        self.y_test = y_test
        self.eval_indices = list(eval_indices)
        self._scratch: tuple[torch.nn.Module, ModelState] | None = None

    def average_model_accuracy(self) -> tuple[float, float]:
        """(accuracy, loss) of the average of the online honest peers' models (all honest
        peers when none is online): what the peers would reach if they agreed, the yardstick
        of how much each peer's own model lags behind the collective one."""
        online = self.network.online
        members = [
            p for i, p in enumerate(self.peers) if i not in self.attackers and p.peer_id in online
        ] or [p for i, p in enumerate(self.peers) if i not in self.attackers]
        if not members:
            return float("nan"), float("nan")
        if self._scratch is None:
            module = copy.deepcopy(members[0].learner.model)
            self._scratch = (module, ModelState.bind(module))
        module, state = self._scratch
        total = torch.zeros_like(members[0].learner.state.flat, dtype=torch.float64)
        for p in members:
            total.add_(p.learner.state.flat)
        state.load_flat(total.div_(len(members)).to(state.flat.dtype), 0)
        stats = evaluate_model(module, self.x_test, self.y_test, members[0].learner.device)
        return stats.accuracy, stats.loss

    def record(self, time: float, period: int) -> dict[str, Any]:
        accs, losses, honest_accs = [], [], []
        for i in self.eval_indices:
            learner = self.peers[i].learner
            stats = evaluate_model(learner.model, self.x_test, self.y_test, learner.device)
            accs.append(stats.accuracy)
            losses.append(stats.loss)
            if i not in self.attackers:
                honest_accs.append(stats.accuracy)
        local = [
            evaluate_model(self.peers[i].learner.model, x, y, self.peers[i].learner.device).accuracy
            for i, (x, y) in self.local_tests.items()
            if i not in self.attackers and len(y)
        ]
        consensus = consensus_distance([p.learner.state.flat for p in self.peers])
        honest_flats = [
            p.learner.state.flat for i, p in enumerate(self.peers) if i not in self.attackers
        ]
        counters = [p.counters for p in self.peers]
        acc_avg, loss_avg = self.average_model_accuracy()
        record = make_record(
            time, period, accs, losses, honest_accs, local,
            consensus=consensus,
            consensus_honest=consensus_distance(honest_flats) if self.attackers else consensus,
            ages=[p.learner.state.age for p in self.peers],
            stats=self.network.stats,
            merges=sum(c.merges for c in counters),
            age_capped=sum(c.age_capped for c in counters),
            rollbacks=sum(c.rollbacks for c in counters),
            train_steps=sum(c.train_steps for c in counters),
            peers_online=len(self.network.online),
            acc_avgmodel=acc_avg,
            loss_avgmodel=loss_avg,
        )  # fmt: skip
        samplers = [p.sampler for p in self.peers]
        if samplers and all(isinstance(x, ViewSampler) for x in samplers):
            record.update(self.overlay(samplers))  # type: ignore[arg-type]
        return record

    def overlay(self, samplers: list[ViewSampler]) -> dict[str, Any]:
        """The dynamic overlay among online peers, and the view-exchange traffic."""
        from sim.overlay import overlay_metrics

        online = self.network.online
        ids = [p.peer_id for p in self.peers]
        alive = np.array([i in online for i in ids], dtype=bool)
        m = overlay_metrics(samplers, alive, ids=ids)
        keep = ("view_indegree_mean", "view_indegree_std", "view_dead_links",
                "overlay_components", "overlay_clustering")  # fmt: skip
        return {**{k: m[k] for k in keep}, **self.network.views.as_dict()}


def make_record(
    time: float,
    period: int,
    accs: Sequence[float],
    losses: Sequence[float],
    honest_accs: Sequence[float],
    local: Sequence[float],
    *,
    consensus: float,
    consensus_honest: float,
    ages: Sequence[int] | np.ndarray,
    stats: NetworkStats,
    merges: int,
    age_capped: int,
    rollbacks: int,
    train_steps: int,
    peers_online: int,
    acc_avgmodel: float,
    loss_avgmodel: float,
) -> dict[str, Any]:
    """One evaluation record from what was measured (both engines write it through here, so
    their records have the same fields, rounded the same way)."""
    acc = np.asarray(accs, dtype=np.float64)
    finite = [float(x) for x in losses if math.isfinite(x)]
    honest = np.asarray(honest_accs, dtype=np.float64) if len(honest_accs) else np.full(1, np.nan)
    age = np.asarray(ages, dtype=np.float64)
    return {
        "time": round(time, 9),
        "period": period,
        "acc_mean": _round(float(acc.mean())),
        "acc_min": _round(float(acc.min())),
        "acc_max": _round(float(acc.max())),
        "acc_p10": _round(_percentile(acc, 10)),
        "acc_p50": _round(_percentile(acc, 50)),
        "acc_p90": _round(_percentile(acc, 90)),
        # Over the peers whose loss is finite; how many are not is counted beside it.
        "loss_mean": _round(float(np.mean(finite))) if finite else None,
        "loss_nonfinite": len(losses) - len(finite),
        "acc_honest_mean": _round(float(honest.mean())),
        "acc_honest_min": _round(float(honest.min())),
        "acc_avgmodel": _round(acc_avgmodel),
        # Each peer on the test samples of its own groups (LEAF's per-user accuracy).
        "acc_local_mean": _round(float(np.mean(local))) if len(local) else None,
        "acc_local_min": _round(float(np.min(local))) if len(local) else None,
        "loss_avgmodel": _round(loss_avgmodel),
        "consensus": _round(consensus, 9),
        "consensus_honest": _round(consensus_honest, 9),
        "age_mean": _round(float(age.mean()), 3),
        "age_min": int(age.min()),
        "age_max": int(age.max()),
        **network_record(stats),
        "merges": merges,
        "age_capped": age_capped,
        "rollbacks": rollbacks,
        "train_steps": train_steps,
        "peers_online": peers_online,
        "peers_evaluated": len(accs),
    }
