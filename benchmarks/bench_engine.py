"""Both simulation engines on the same runs, and the stacked-kernel limit they are held to.

Each row runs one configuration (push, training on the timer, screens off so that the batched
engine applies, synthetic 64-feature 10-class data with 16 samples per peer, uniform
sampling, codec off, one torch thread, evaluation of 10 peers at the start and the end) on
the ``asyncio`` engine and on the ``batched`` one, and reports peer updates per second (an
update: one received model merged; every peer also takes one SGD step per period), wall
time including the build, and their ratio. The **limit** is a bare batched loop without any
gossip: every iteration, one SGD step for all N peers plus one ``lerp`` of every row toward
another row, i.e. N updates, the step computed three ways: ``vmap(grad(functional_call))``,
the engine's own dense-stack kernel (in chunks of rows through preallocated buffers, as the
engine runs it), and for logreg a kernel written out in the loop (two ``bmm``).
``batched / limit`` is against the fastest of them. Every measurement runs in a fresh
process; rows go to ``--out`` (JSON Lines) as they finish.
Medians of ``--repeat`` interleaved runs; asyncio is skipped above ``--asyncio-max`` peers.

    python benchmarks/bench_engine.py
    python benchmarks/bench_engine.py --models logreg --peers 1000 10000 100000 --periods 10
    python benchmarks/bench_engine.py --models mlp:hidden=100,layers=1 --peers 10000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_updates import synthetic_dataset
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.func import functional_call, grad, vmap

from gossip.models import build_model_for
from gossip.state import exchanged_tensors
from sim.config import SimConfig
from sim.engines.batched.compute import CHUNK_FLOATS
from sim.engines.batched.kernels import DenseStack
from sim.runner import run_simulation

SAMPLES_PER_PEER = 16
GOSSIPY_MLP = "mlp:hidden=100,layers=1"  # 64-100-10: 7,510 parameters (the 2NN: 55,210)
console = Console(width=max(150, Console().width))


def config(model: str, peers: int, periods: int, engine: str) -> SimConfig:
    return SimConfig(
        peers=peers, topology="ring", sampler="uniform", model=model, dataset="synthetic",
        batch_size=SAMPLES_PER_PEER, local_steps=1, lr=0.1, lr_schedule="constant", screen=0,
        screen_distance=0, codec="off", periods=periods, eval_every=periods, eval_peers=10, threads=1,
        engine=engine,
    )  # fmt: skip


def engine_rate(model: str, peers: int, periods: int, engine: str) -> dict[str, float]:
    data = synthetic_dataset(SAMPLES_PER_PEER * peers)
    start = time.perf_counter()
    result = run_simulation(config(model, peers, periods, engine), dataset=data)
    wall = time.perf_counter() - start
    merges = result.final["merges"]
    out = {"rate": merges / wall, "wall": wall, "updates": merges}
    if engine == "batched":
        run = result.world
        numel = run.peers_state.W.shape[1]  # type: ignore[union-attr]
        out["in_flight_per_peer"] = run.pool_size / peers  # type: ignore[union-attr]
        out["model_bytes"] = 4 * numel
    return out


def measure(kind: str, model: str, peers: int, periods: int) -> dict[str, Any]:
    """One measurement in a fresh process (so that one run's memory never inflates the
    next's, and a run that does not fit is reported instead of killing the benchmark)."""
    command = [sys.executable, __file__, "--one", json.dumps([kind, model, peers, periods])]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        why = "killed (out of memory?)" if done.returncode < 0 else done.stderr.strip()[-200:]
        return {"error": why}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _one(spec: str) -> None:
    kind, model, peers, periods = json.loads(spec)
    torch.set_num_threads(1)
    if kind in ("asyncio", "batched"):
        out: dict[str, Any] = engine_rate(model, peers, periods, kind)
    else:
        out = {"rate": limit_rate(model, peers, 10, kind)}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def limit_rate(model: str, peers: int, iterations: int, kernel: str) -> float:
    """Updates per second of a bare batched loop: a step and a merge per peer per iteration."""
    data = synthetic_dataset(SAMPLES_PER_PEER * peers)
    module = build_model_for(model, data, 0)
    specs = [(n, t.shape, t.numel()) for n, t in exchanged_tensors(module)]
    width = sum(s[2] for s in specs)
    w = torch.randn(peers, width) * 0.01
    x = data.x_train.reshape(peers, SAMPLES_PER_PEER, -1)
    y = data.y_train.reshape(peers, SAMPLES_PER_PEER)
    partner = torch.randperm(peers)

    def params(flats: torch.Tensor) -> dict[str, torch.Tensor]:
        out, o = {}, 0
        for name, shape, numel in specs:
            out[name] = flats[:, o : o + numel].view(flats.shape[0], *shape)
            o += numel
        return out

    def loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(module, p, (xb,)), yb)

    g_fn = vmap(grad(loss))
    onehot = nn.functional.one_hot(y, 10).float()
    dense = DenseStack.of(module, [n for n, _, _ in specs])
    mask = torch.ones(peers, SAMPLES_PER_PEER)
    # Chunks of rows through two preallocated buffers (as the engine does): a fresh [N, P]
    # temporary per operation page-faults once it is large (an mlp at 1,000 peers: 220 MB),
    # and chunks of the engine's size (CHUNK_FLOATS) stay in the cache.
    chunk = max(16, CHUNK_FLOATS // width)
    gbuf, pbuf = torch.empty(chunk, width), torch.empty(chunk, width)
    start = 0.0
    for it in range(iterations + 1):  # the first is a warm-up (vmap imports torch._dynamo)
        if it == 1:
            start = time.perf_counter()
        if kernel == "vmap":
            grads = g_fn(params(w), x, y)
            g = torch.cat([grads[n].reshape(peers, -1) for n, _, _ in specs], dim=1)
        elif kernel == "dense":  # the engine's own kernel, in chunks through fixed buffers
            assert dense is not None
            for lo in range(0, peers, chunk):
                hi = min(lo + chunk, peers)
                rows, k = w[lo:hi], hi - lo
                g = dense.grad(rows, x[lo:hi], y[lo:hi], mask[lo:hi], out=gbuf[:k])
                rows.add_(g, alpha=-0.1)
                torch.index_select(w, 0, partner[lo:hi], out=pbuf[:k])
                rows.lerp_(pbuf[:k], 0.5)
            continue
        else:  # logreg by hand: logits = x W^T + b, dL/dlogits = (softmax - onehot) / n
            weight = w[:, :640].view(peers, 10, 64)
            logits = torch.baddbmm(w[:, 640:].unsqueeze(1), x, weight.transpose(1, 2))
            e = (logits - logits.amax(-1, keepdim=True)).exp_()  # softmax(-1) is 6x slower
            d = (e.div_(e.sum(-1, keepdim=True)) - onehot) / SAMPLES_PER_PEER
            g = torch.cat([torch.bmm(d.transpose(1, 2), x).reshape(peers, -1), d.sum(1)], 1)
        w -= 0.1 * g
        w.lerp_(w.index_select(0, partner), 0.5)
    return peers * iterations / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["logreg", GOSSIPY_MLP, "mlp"],
        help=f"model specs (default: logreg, {GOSSIPY_MLP} = the issue's and gossipy's "
        "64-100-10, and mlp = the 2NN 64-200-200-10)",
    )
    parser.add_argument("--peers", nargs="+", type=int, default=[1000, 10000])
    parser.add_argument("--periods", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--asyncio-max", type=int, default=10000)
    parser.add_argument("--limit-max", type=int, default=100000, help="no limit loop above")
    parser.add_argument("--out", default="runs/bench-engine.jsonl", help="JSON Lines, a row each")
    parser.add_argument("--kinds", nargs="+", default=["batched", "asyncio", "vmap", "dense",
                        "kernel"], help="which measurements (engines and limit loops)")  # fmt: skip
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        _one(args.one)
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"engines, {args.periods} periods, medians of {args.repeat} (updates/s)")
    for col in ("model", "peers", "asyncio", "batched", "batched / asyncio", "limit (vmap)",
                "limit (dense)", "limit (by hand)", "batched / limit", "wall asyncio s",
                "wall batched s", "µs / update", "in flight / peer", "RSS asyncio MiB",
                "RSS batched MiB"):  # fmt: skip
        if col == "model":  # a spec such as mlp:hidden=100,layers=1 stays on one line
            table.add_column(col, no_wrap=True, min_width=max(map(len, args.models)))
        else:
            table.add_column(col, justify="right")
    for model in args.models:
        for n in args.peers:
            kinds = ["batched"] + (["asyncio"] if n <= args.asyncio_max else [])
            if n <= args.limit_max:
                kinds += ["vmap", "dense"] + (["kernel"] if model == "logreg" else [])
            kinds = [k for k in kinds if k in args.kinds]
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
            for r in range(args.repeat):  # interleaved
                for kind in kinds:
                    runs[kind].append(measure(kind, model, n, args.periods))
                console.print(f"  {model} {n}: repeat {r + 1} of {args.repeat}", style="dim")
            row = _row(model, n, runs)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            best = max([row[f"limit_{k}"] or 0 for k in ("vmap", "dense", "kernel")]) or None
            table.add_row(
                model, f"{n:,}", _f(row["asyncio"]), _f(row["batched"]),
                _r(row["batched"], row["asyncio"]), _f(row["limit_vmap"]), _f(row["limit_dense"]),
                _f(row["limit_kernel"]), _r(row["batched"], best), _f(row["wall_asyncio"], 1),
                _f(row["wall_batched"], 1),
                _f(1e6 / row["batched"] if row["batched"] else None, 1),
                _f(row["in_flight_per_peer"], 2), _f(row["rss_asyncio"]), _f(row["rss_batched"]),
            )  # fmt: skip
            console.print(f"  {json.dumps(row)}", style="dim")
    console.print(table)
    console.print(f"rows in {out}")


def _row(model: str, n: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def med(kind: str, key: str) -> float | None:
        values = [r[key] for r in runs.get(kind, []) if key in r]
        return statistics.median(values) if values else None

    errors = {k: r["error"] for k, v in runs.items() for r in v if "error" in r}
    return {
        "model": model, "peers": n, "asyncio": med("asyncio", "rate"),
        "batched": med("batched", "rate"), "limit_vmap": med("vmap", "rate"),
        "limit_dense": med("dense", "rate"), "limit_kernel": med("kernel", "rate"),
        "wall_asyncio": med("asyncio", "wall"), "wall_batched": med("batched", "wall"),
        "in_flight_per_peer": med("batched", "in_flight_per_peer"),
        "rss_asyncio": med("asyncio", "peak_rss_mib"), "rss_batched": med("batched", "peak_rss_mib"),
        "errors": errors,
    }  # fmt: skip


def _f(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _r(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


if __name__ == "__main__":
    main()
