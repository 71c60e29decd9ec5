"""Both simulation engines on the same runs, and the stacked-kernel limit they are held to.

Each row runs one configuration (push, training on the timer, screens off so that the batched
engine applies, synthetic 64-feature 10-class data with 16 samples per peer, uniform
sampling, codec off, one torch thread, evaluation of 10 peers at the start and the end) on
the ``asyncio`` engine and on the ``batched`` one, and reports peer updates per second (an
update: one received model merged; every peer also takes one SGD step per period), wall
time including the build, and their ratio. The **limit** is a bare batched loop without any
gossip: every iteration, one SGD step for all N peers plus one ``lerp`` of every row toward
another row, i.e. N updates, the step computed three ways: ``vmap(grad(functional_call))``,
the engine's own dense-stack kernel, and for logreg a kernel written out in the loop (two
``bmm``). ``batched / limit`` is against the fastest of them.
Medians of ``--repeat`` interleaved runs; asyncio is skipped above ``--asyncio-max`` peers.

    python benchmarks/bench_engine.py
    python benchmarks/bench_engine.py --models logreg --peers 1000 10000 100000 --periods 10
"""

from __future__ import annotations

import argparse
import statistics
import time
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
from sim.engines.batched.kernels import DenseStack
from sim.runner import run_simulation

SAMPLES_PER_PEER = 16
console = Console(width=max(150, Console().width))


def config(model: str, peers: int, periods: int, engine: str) -> SimConfig:
    return SimConfig(
        peers=peers, topology="ring", sampler="uniform", model=model, dataset="synthetic",
        batch_size=SAMPLES_PER_PEER, local_steps=1, lr=0.1, screen=0, screen_distance=0,
        codec="off", periods=periods, eval_every=periods, eval_peers=10, threads=1,
        engine=engine,
    )  # fmt: skip


def engine_rate(model: str, peers: int, periods: int, engine: str) -> dict[str, float]:
    data = synthetic_dataset(SAMPLES_PER_PEER * peers)
    start = time.perf_counter()
    result = run_simulation(config(model, peers, periods, engine), dataset=data)
    wall = time.perf_counter() - start
    merges = result.final["merges"]
    return {"rate": merges / wall, "wall": wall, "updates": merges}


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
    start = time.perf_counter()
    for _ in range(iterations):
        if kernel == "vmap":
            grads = g_fn(params(w), x, y)
            g = torch.cat([grads[n].reshape(peers, -1) for n, _, _ in specs], dim=1)
        elif kernel == "dense":  # the engine's own kernel for Linear/ReLU stacks
            assert dense is not None
            g = dense.grad(w, x, y, mask)
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
    parser.add_argument("--models", nargs="+", default=["logreg", "mlp"])
    parser.add_argument("--peers", nargs="+", type=int, default=[1000, 10000])
    parser.add_argument("--periods", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--asyncio-max", type=int, default=10000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = Table(title=f"engines, {args.periods} periods, medians of {args.repeat} (updates/s)")
    for col in ("model", "peers", "asyncio", "batched", "batched / asyncio", "limit (vmap)",
                "limit (dense)", "limit (by hand)", "batched / limit", "wall asyncio s",
                "wall batched s"):  # fmt: skip
        table.add_column(col, justify="right")
    rows: list[dict[str, Any]] = []
    for model in args.models:
        for n in args.peers:
            runs: dict[str, list[dict[str, float]]] = {"asyncio": [], "batched": []}
            limits: dict[str, list[float]] = {"vmap": [], "dense": [], "kernel": []}
            for _ in range(args.repeat):  # interleaved
                if n <= args.asyncio_max:
                    runs["asyncio"].append(engine_rate(model, n, args.periods, "asyncio"))
                runs["batched"].append(engine_rate(model, n, args.periods, "batched"))
                limits["vmap"].append(limit_rate(model, n, 10, "vmap"))
                limits["dense"].append(limit_rate(model, n, 10, "dense"))
                if model == "logreg":
                    limits["kernel"].append(limit_rate(model, n, 10, "kernel"))
                console.print(f"  {model} {n}: done one repeat", style="dim")
            med = {
                k: statistics.median(r["rate"] for r in v) if v else None for k, v in runs.items()
            }
            wall = {
                k: statistics.median(r["wall"] for r in v) if v else None for k, v in runs.items()
            }
            lim = {k: statistics.median(v) if v else None for k, v in limits.items()}
            best = max(x for x in lim.values() if x)
            rows.append(
                {"model": model, "peers": n, **med, **{f"limit_{k}": v for k, v in lim.items()}}
            )
            table.add_row(
                model, f"{n:,}", _f(med["asyncio"]), _f(med["batched"]),
                _r(med["batched"], med["asyncio"]), _f(lim["vmap"]), _f(lim["dense"]),
                _f(lim["kernel"]),
                _r(med["batched"], best), _f(wall["asyncio"], 1), _f(wall["batched"], 1),
            )  # fmt: skip
    console.print(table)


def _f(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _r(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


if __name__ == "__main__":
    main()
