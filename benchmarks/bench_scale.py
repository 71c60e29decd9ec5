"""Scale of the per-peer simulator: wall time and memory of many peers on ``digits``.

Each configuration (by default 1,000 peers with ``logreg`` and 300 with ``mlp``, 100 periods,
evaluating all peers every 25 periods, one torch thread, other settings at their SimConfig
defaults) runs in a fresh subprocess, so that its peak RSS is its own. Reported: build and
run wall time, peak RSS (``getrusage``), and the memory each peer adds (RSS after building
the peers minus RSS before, divided by the peer count) next to the size of its model
(``schema.numel * 4`` bytes), and "tensors / model": the bytes of every distinct tensor
storage alive after the build (the dataset's excluded) per peer, over the model size: what
the peers' tensors hold, without the allocator's and Python's overhead that RSS adds. A peer
holds its parameters and one published snapshot (the simulator's peers share one gradient
buffer) plus the index tensor of its shard and a few Python objects; its data is a view
into the one shared dataset, which the "shared data" column checks.

    python benchmarks/bench_scale.py
    python benchmarks/bench_scale.py --configs logreg:2000 mlp:500 --periods 50
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

DEFAULT_CONFIGS = ("logreg:1000", "mlp:300")


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def peak_rss() -> int:
    """Peak resident set size of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def child(model: str, peers: int, periods: int, eval_every: int, dataset: str) -> dict[str, Any]:
    """Build and run one configuration in this process; return its measurements."""
    rss_start = current_rss()
    import torch

    from gossip.datasets import load_dataset
    from sim.config import SimConfig
    from sim.runner import build_world, run_world

    torch.set_num_threads(1)
    rss_imports = current_rss()
    config = SimConfig(
        peers=peers,
        model=model,
        dataset=dataset,
        periods=periods,
        eval_every=eval_every,
        eval_peers=0,
        threads=1,
        local_steps=1,  # one step a period at a constant rate: the figures per update
        lr=0.5,
        lr_schedule="constant",
    )
    data = load_dataset(config.dataset, root=config.data_dir, seed=config.seed)
    rss_before = current_rss()
    start = time.perf_counter()
    world = build_world(config, data)
    build_s = time.perf_counter() - start
    rss_built = current_rss()

    x_ptr = data.x_train.untyped_storage().data_ptr()
    shared = sum(p.learner.data.x.untyped_storage().data_ptr() == x_ptr for p in world.peers)
    index_bytes = sum(
        0 if p.learner.data.indices is None else p.learner.data.indices.nbytes for p in world.peers
    )
    tensors = tensor_bytes(exclude=data_pointers(data))
    result = run_world(world)
    return {
        "model": model,
        "peers": peers,
        "periods": periods,
        "model_bytes": world.network.schema.numel * 4,
        "index_bytes_per_peer": index_bytes / peers,
        "build_s": build_s,
        "run_s": float(result.summary["wall_s"]),
        "updates": int(result.final["merges"]),
        "acc_mean": result.final["acc_mean"],
        "rss_start": rss_start,
        "rss_imports": rss_imports,
        "rss_before_build": rss_before,
        "rss_built": rss_built,
        "rss_end": current_rss(),
        "peak_rss": peak_rss(),
        "shared_data": shared,
        "tensor_bytes_built": tensors,
    }


def data_pointers(data: Any) -> set[int]:
    """Storages of the dataset's tensors (shared by all peers: not a peer's own)."""
    import torch

    found = set()
    for value in vars(data).values():
        if isinstance(value, torch.Tensor):
            found.add(value.untyped_storage().data_ptr())
    return found


def tensor_bytes(exclude: set[int]) -> int:
    """Bytes of every distinct tensor storage alive in this process, but ``exclude``: what
    the peers' tensors hold, without the allocator's and Python's overhead that RSS adds."""
    import gc

    import torch

    sizes: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            sizes[storage.data_ptr()] = storage.nbytes()
    return sum(n for ptr, n in sizes.items() if ptr not in exclude)


def run_child(spec: str, periods: int, eval_every: int, dataset: str) -> dict[str, Any]:
    model, _, peers = spec.partition(":")
    if not peers.isdigit():
        raise SystemExit(f"config {spec!r} is not MODEL:PEERS, e.g. logreg:1000")
    cmd = [sys.executable, __file__, "--child", model, peers, str(periods), str(eval_every)]
    cmd += ["--dataset", dataset]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{spec} failed:\n{out.stderr.strip()}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def kib(n: float) -> str:
    return f"{n / 2**10:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="MODEL:PEERS, one per run"
    )
    parser.add_argument("--periods", type=int, default=100, help="gossip periods per run")
    parser.add_argument("--eval-every", type=int, default=25, help="periods between evaluations")
    parser.add_argument("--dataset", default="digits", help="dataset of every run")
    parser.add_argument(
        "--child",
        nargs=4,
        metavar=("MODEL", "PEERS", "PERIODS", "EVAL_EVERY"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()

    if args.child:
        model, peers, periods, eval_every = args.child
        print(json.dumps(child(model, int(peers), int(periods), int(eval_every), args.dataset)))
        return

    console = Console(width=max(150, Console().width))
    console.print(
        f"{args.dataset}, {args.periods} periods, evaluation of all peers every "
        f"{args.eval_every} periods, 1 torch thread, SimConfig defaults otherwise; "
        "one fresh process per configuration"
    )
    time_table = Table(title="wall time")
    for col in ("model", "peers", "updates", "build s", "run s", "updates/s", "final acc"):
        time_table.add_column(col, justify="left" if col == "model" else "right")
    mem_table = Table(title="memory (MiB unless marked)")
    for col in (
        "model",
        "peers",
        "RSS at start",
        "+ torch, sim",
        "+ dataset",
        "+ peers built",
        "peak RSS",
        "per peer KiB",
        "model KiB",
        "per peer / model",
        "tensors / model",
        "per peer − 2 models − index KiB",
        "shared data",
    ):
        mem_table.add_column(col, justify="left" if col == "model" else "right")
    for spec in args.configs:
        r = run_child(spec, args.periods, args.eval_every, args.dataset)
        n = r["peers"]
        per_peer = (r["rss_built"] - r["rss_before_build"]) / n
        rest = per_peer - 2 * r["model_bytes"] - r["index_bytes_per_peer"]
        time_table.add_row(
            r["model"],
            f"{n:,}",
            f"{r['updates']:,}",
            f"{r['build_s']:.2f}",
            f"{r['run_s']:.2f}",
            f"{r['updates'] / r['run_s']:,.0f}",
            f"{r['acc_mean']:.3f}",
        )
        mem_table.add_row(
            r["model"],
            f"{n:,}",
            mib(r["rss_start"]),
            mib(r["rss_imports"]),
            mib(r["rss_before_build"]),
            mib(r["rss_built"]),
            mib(r["peak_rss"]),
            kib(per_peer),
            kib(r["model_bytes"]),
            f"{per_peer / r['model_bytes']:.2f}",
            f"{r['tensor_bytes_built'] / n / r['model_bytes']:.2f}",
            kib(rest),
            f"{r['shared_data']}/{n}",
        )
    console.print(time_table)
    console.print(mem_table)


if __name__ == "__main__":
    main()
