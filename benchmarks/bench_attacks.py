"""Byzantine robustness: every merge rule against every attack, next to the clean run.

Each cell is the mean over ``--seeds`` (default 0 1 2) of one simulation each (by default the
README's default job: 100 peers, ``regular:4``, ``digits`` IID, ``mlp``, its periods) with a
fraction of the peers gossiping poison (``--attack KIND:FRACTION``); the figure is the mean
accuracy of the *honest* peers at the end (``acc_honest_mean``), with their minimum and
consensus distance per seed in the CSV. The clean column is the same runs without attackers
(a single run's final accuracy moves by a point or two with the seed: lr 0.5 is noisy). Cells run on a process pool (``--workers``, default the
number of cores). Writes ``attacks.csv`` and ``attacks.md`` to ``--out``.

    python benchmarks/bench_attacks.py
    python benchmarks/bench_attacks.py --rules clipped median --attacks alie ipm --fractions 0.2
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RULES = ("age-weighted", "clipped", "trimmed-mean:1", "median")
ATTACKS = ("sign-flip", "random", "huge", "age-inflation", "alie", "ipm")


def cell(rule: str, attack: str, seed: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Run one simulation; return its final honest-peer figures."""
    import torch

    from sim.config import SimConfig
    from sim.runner import run_simulation

    torch.set_num_threads(1)
    start = time.perf_counter()
    result = run_simulation(SimConfig(merge=rule, attack=attack, seed=seed, **settings))
    final = result.final
    return {
        "rule": rule,
        "attack": attack,
        "seed": seed,
        "acc_honest_mean": final["acc_honest_mean"],
        "acc_honest_min": final["acc_honest_min"],
        "consensus_honest": final["consensus_honest"],
        "age_max": final["age_max"],
        "rejected": sum(final["rejected_by_reason"].values()),
        "rollbacks": final["rollbacks"],
        "wall_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", nargs="+", default=list(RULES))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.2])
    from sim.config import SimConfig

    default = SimConfig()
    parser.add_argument("--peers", type=int, default=default.peers)
    parser.add_argument("--periods", type=int, default=default.periods)
    parser.add_argument("--topology", default=default.topology)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-attacks"))
    args = parser.parse_args()
    settings = {
        "peers": args.peers, "periods": args.periods, "topology": args.topology,
        "eval_every": args.periods,
    }  # fmt: skip
    columns = ["none"] + [f"{a}:{f:g}" for f in args.fractions for a in args.attacks]
    jobs = [(r, a, seed) for r in args.rules for a in columns for seed in args.seeds]
    console = Console(stderr=True)
    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(cell, r, a, seed, settings) for r, a, seed in jobs]
        for i, future in enumerate(futures, 1):
            rows.append(future.result())
            r = rows[-1]
            console.print(
                f"[{i}/{len(jobs)}] {r['rule']:15s} {r['attack']:18s} seed {r['seed']} "
                f"honest acc {r['acc_honest_mean']:.4f} (min {r['acc_honest_min']:.4f})"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "attacks.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    runs: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        runs.setdefault((r["rule"], r["attack"]), []).append(r["acc_honest_mean"])
    acc = {key: sum(v) / len(v) for key, v in runs.items()}
    table = Table(
        title=f"honest accuracy, {args.peers} peers, {args.topology}, {args.periods} periods, "
        f"mean of seeds {' '.join(map(str, args.seeds))}"
    )
    table.add_column("rule")
    for c in columns:
        table.add_column("clean" if c == "none" else c, justify="right")
    md = ["| rule | " + " | ".join("clean" if c == "none" else c for c in columns) + " |"]
    md.append("|---" * (len(columns) + 1) + "|")
    for rule in args.rules:
        cells = [f"{acc[(rule, c)]:.3f}" for c in columns]
        table.add_row(rule, *cells)
        md.append(f"| {rule} | " + " | ".join(cells) + " |")
    Console().print(table)
    (args.out / "attacks.md").write_text("\n".join(md) + "\n")
    print(f"wrote {args.out / 'attacks.csv'} and {args.out / 'attacks.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
