"""Peer-updates per second of the per-peer simulator (the real asyncio Peer on virtual time).

One update is one received model: an age-weighted merge plus one local SGD step on a
minibatch of 32, then publishing a snapshot. The run uses one torch thread, the in-memory
transport (codec off) and a synthetic 64-feature, 10-class dataset with 40 samples per peer
(``digits`` has too few samples for 1,000 peers of 32). Evaluation happens only at the start
and the end of each run; its time (test accuracy of ``eval_peers`` peers plus the consensus
distance over all peers) is measured apart and left out of the update rate. Build time is
left out too. Each configuration runs ``--repeat`` times; the table shows medians.

    python benchmarks/bench_updates.py                 # logreg and mlp, 100 and 1,000 peers
    python benchmarks/bench_updates.py --profile       # plus a cProfile of mlp at 1,000 peers
    python benchmarks/bench_updates.py --models mlp --peers 1000 --repeat 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from gossip.datasets import Dataset
from sim.config import SimConfig
from sim.runner import World, build_world, run_world

FEATURES = 64
CLASSES = 10
SAMPLES_PER_PEER = 40
TEST_SAMPLES = 1000
# Updates per measurement by model: a few seconds each on one core of a small machine.
DEFAULT_UPDATES = {"logreg": 20_000, "mlp": 8_000}
# Targets at 1,000 peers (updates per second) and the allowed growth of µs/update from
# 100 to 1,000 peers.
TARGET_RATE = {"logreg": 5_000.0, "mlp": 2_500.0}
TARGET_SCALING = 1.25

console = Console(width=max(150, Console().width))  # wide tables also when piped


def synthetic_dataset(num_train: int, seed: int = 0) -> Dataset:
    """Gaussian blobs: ``CLASSES`` random centres in ``FEATURES`` dimensions, unit noise."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, FEATURES, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, CLASSES, (n,), generator=g)
        return centres[y] + torch.randn(n, FEATURES, generator=g), y

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(TEST_SAMPLES)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, CLASSES, (FEATURES,))


def make_config(model: str, peers: int, updates: int, topology: str) -> SimConfig:
    # Every peer receives about one model per period.
    periods = max(2, math.ceil(updates / peers))
    return SimConfig(
        peers=peers,
        topology=topology,
        model=model,
        batch_size=32,
        local_steps=1,
        lr=0.5,
        lr_schedule="constant",
        # An update = a merge and the SGD step it triggers, as measured before the timer
        # became the default (with the timer, a period costs the same merge + step).
        train_on="receive",
        codec="off",
        periods=periods,
        eval_every=periods,  # evaluate at the start and the end only
        eval_peers=10,
        threads=1,
    )


@dataclass(frozen=True)
class Measurement:
    build_s: float
    wall_s: float  # summary["wall_s"]: the whole simulated run, evaluations included
    eval_s: float  # of which evaluation (observer records)
    updates: int

    @property
    def gossip_s(self) -> float:
        return self.wall_s - self.eval_s

    @property
    def rate(self) -> float:
        return self.updates / self.gossip_s

    @property
    def us_per_update(self) -> float:
        return 1e6 * self.gossip_s / self.updates


def _time_observer(world: World) -> list[float]:
    """Wrap the observer's ``record`` (on this instance only) to add up its wall time."""
    spent = [0.0]
    record: Callable[[float, int], dict[str, Any]] = world.observer.record

    def timed(t: float, period: int) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            return record(t, period)
        finally:
            spent[0] += time.perf_counter() - start

    world.observer.record = timed  # type: ignore[method-assign, assignment]
    return spent


def measure(config: SimConfig, dataset: Dataset) -> Measurement:
    start = time.perf_counter()
    world = build_world(config, dataset)
    build_s = time.perf_counter() - start
    spent = _time_observer(world)
    result = run_world(world)
    wall = float(result.summary["wall_s"])
    return Measurement(build_s, wall, spent[0], int(result.final["merges"]))


def median_measurement(runs: list[Measurement]) -> Measurement:
    """The run with the median update rate (all its numbers belong to the same run)."""
    ordered = sorted(runs, key=lambda m: m.rate)
    return ordered[(len(ordered) - 1) // 2]


# ----------------------------------------------------------------------------- profile


def _find(stats: dict[Any, Any], path_suffix: str, name: str) -> Any | None:
    for func in stats:
        filename, _, funcname = func
        if funcname == name and filename.replace("\\", "/").endswith(path_suffix):
            return func
    return None


def _cum(stats: dict[Any, Any], func: Any | None) -> float:
    return float(stats[func][3]) if func is not None else 0.0


def _cum_from(stats: dict[Any, Any], func: Any | None, caller: Any | None) -> float:
    """Cumulative time of ``func`` spent in calls made directly by ``caller``."""
    if func is None or caller is None:
        return 0.0
    edge = stats[func][4].get(caller)
    return float(edge[3]) if edge is not None else 0.0


def breakdown(prof: pstats.Stats) -> tuple[list[tuple[str, float]], float]:
    """Disjoint shares of the profiled time as (label, seconds), and the spectral gap's
    part of the summary."""
    st: dict[Any, Any] = prof.stats  # type: ignore[attr-defined]
    train = _find(st, "gossip/learner.py", "train")
    merge_and_train = _find(st, "peers/peer.py", "_merge_and_train")
    call_impl = _find(st, "torch/nn/modules/module.py", "_wrapped_call_impl")
    backward = _find(st, "torch/_tensor.py", "backward")
    # logreg/mlp take the hand-written step (gossip/fastpath.py): forward and backward in one.
    fast_s = _cum(st, _find(st, "gossip/fastpath.py", "loss_and_grads"))  # via no_grad wrapper
    forward_s = _cum_from(st, call_impl, train)
    backward_s = _cum_from(st, backward, train)
    step_s = _cum_from(st, _find(st, "gossip/optim.py", "step"), train)
    step_s += _cum_from(st, _find(st, "gossip/optim.py", "zero_grad"), train)
    batch_s = _cum_from(st, _find(st, "gossip/learner.py", "_next_rows"), train)
    train_s = _cum(st, train)
    merge_s = _cum(st, _find(st, "gossip/merge.py", "merge_"))
    snapshot_s = _cum_from(st, _find(st, "peers/peer.py", "_make_snapshot"), merge_and_train)
    update_s = _cum(st, merge_and_train)
    record_s = _cum(st, _find(st, "sim/observer.py", "record"))
    consensus_s = _cum(st, _find(st, "sim/observer.py", "consensus_distance"))
    summarise_s = _cum(st, _find(st, "sim/runner.py", "summarise"))
    spectral_s = _cum(st, _find(st, "sim/topology.py", "spectral_gap"))
    network_s = _cum(st, _find(st, "sim/network.py", "send"))
    network_s += _cum(st, _find(st, "sim/network.py", "_deliver"))
    select_s = _cum(st, _find(st, "sampling/uniform.py", "select"))
    total = float(prof.total_tt)  # type: ignore[attr-defined]
    rows = [
        ("forward + backward (hand-written fast step)", fast_s),
        ("forward (model + loss, autograd path)", forward_s),
        ("backward (autograd path)", backward_s),
        ("optimizer (zero_grad + step)", step_s),
        ("minibatch (permutation + gather)", batch_s),
        (
            "train(): rest (gather, loss sum)",
            train_s - fast_s - forward_s - backward_s - step_s - batch_s,
        ),
        ("merge (age-weighted lerp_)", merge_s),
        ("snapshot clone (publish)", snapshot_s),
        ("update: rest (counters, partial)", update_s - train_s - merge_s - snapshot_s),
        ("network send/deliver (sim)", network_s),
        ("sampler select", select_s),
        ("evaluation: accuracy", record_s - consensus_s),
        ("evaluation: consensus distance", consensus_s),
        ("after the run: summary (spectral gap)", summarise_s),
    ]
    accounted = update_s + network_s + select_s + record_s + summarise_s
    rows.append(("asyncio loop, tasks, queues (rest)", total - accounted))
    return rows, spectral_s


def profile(model: str, peers: int, updates: int, topology: str, dataset: Dataset) -> None:
    config = make_config(model, peers, updates, topology)
    world = build_world(config, dataset)
    prof = cProfile.Profile()
    prof.enable()
    result = run_world(world)
    prof.disable()
    n = int(result.final["merges"])
    stats = pstats.Stats(prof, stream=io.StringIO())
    console.print(
        f"\n[bold]cProfile[/] of {model}, {peers} peers, {config.periods} periods, {n:,} updates "
        f"(run_world, summary included; profiling inflates Python-heavy parts)"
    )
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(15)
    text = buf.getvalue()
    print(text[text.find("   ncalls") :].rstrip())

    rows, spectral_s = breakdown(stats)
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    table = Table(title=f"where the time goes ({total:.2f} s profiled)")
    table.add_column("part")
    table.add_column("s", justify="right")
    table.add_column("%", justify="right")
    table.add_column("µs/update", justify="right")
    for label, seconds in rows:
        table.add_row(
            label, f"{seconds:.3f}", f"{100 * seconds / total:.1f}", f"{1e6 * seconds / n:.1f}"
        )
    console.print(table)
    console.print(f"(of the summary: spectral gap of the topology {spectral_s:.3f} s)")


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument(
        "--models", nargs="+", default=["logreg", "mlp"], help="models to run (default: logreg mlp)"
    )
    parser.add_argument(
        "--peers", nargs="+", type=int, default=[100, 1000], help="peer counts (default: 100 1000)"
    )
    parser.add_argument(
        "--updates",
        type=int,
        default=None,
        help="updates per measurement (default: logreg 20,000, mlp 8,000)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs per configuration; the median is shown (default: 3)",
    )
    parser.add_argument(
        "--topology", default="regular:4", help="topology of every run (default: regular:4)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also cProfile one run at the largest peer count"
    )
    parser.add_argument(
        "--profile-model", default="mlp", help="model of the profiled run (default: mlp)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    datasets = {n: synthetic_dataset(SAMPLES_PER_PEER * n) for n in args.peers}
    console.print(
        f"synthetic {FEATURES}-feature {CLASSES}-class data, {SAMPLES_PER_PEER} samples per peer "
        f"(iid); batch 32, 1 local step, codec off, 1 torch thread, topology {args.topology}; "
        f"median of {args.repeat} runs (min-max of updates/s in brackets)"
    )
    table = Table(title="peer-updates per second (evaluation and build excluded)")
    for col in ("model", "peers", "periods", "updates", "build s", "wall s", "eval s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for col in ("updates/s", "µs/update", "vs smallest N", "target"):
        table.add_column(col, justify="right")
    smallest = min(args.peers)
    for model in args.models:
        base_us: float | None = None
        for peers in sorted(args.peers):
            updates = args.updates or DEFAULT_UPDATES.get(model, 8_000)
            config = make_config(model, peers, updates, args.topology)
            runs = [measure(config, datasets[peers]) for _ in range(args.repeat)]
            m = median_measurement(runs)
            if peers == smallest:
                base_us = m.us_per_update
            ratio = m.us_per_update / base_us if base_us else float("nan")
            checks = []
            if peers == 1000 and model in TARGET_RATE:
                ok = m.rate >= TARGET_RATE[model]
                checks.append(f"≥{TARGET_RATE[model]:,.0f}/s {'ok' if ok else 'MISSED'}")
            if peers != smallest:
                ok = ratio <= TARGET_SCALING
                checks.append(f"≤{TARGET_SCALING}x {'ok' if ok else 'MISSED'}")
            target = ", ".join(checks)
            spread = sorted(r.rate for r in runs)
            table.add_row(
                model,
                f"{peers:,}",
                str(config.periods),
                f"{m.updates:,}",
                f"{m.build_s:.2f}",
                f"{m.wall_s:.2f}",
                f"{m.eval_s:.2f}",
                f"{m.rate:,.0f} ({spread[0]:,.0f}-{spread[-1]:,.0f})",
                f"{m.us_per_update:.1f}",
                f"{ratio:.2f}",
                target,
            )
    console.print(table)
    if args.profile:
        updates = args.updates or DEFAULT_UPDATES.get(args.profile_model, 8_000)
        peers = max(args.peers)
        profile(args.profile_model, peers, updates, args.topology, datasets[peers])


if __name__ == "__main__":
    main()
