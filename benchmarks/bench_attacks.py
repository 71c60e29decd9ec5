"""Byzantine robustness: every merge rule against every attack, next to the clean run.

Each cell is the mean over ``--seeds`` (default 0 1 2) of one simulation each (by default the
README's default job: 100 peers, ``regular:4``, ``digits`` IID, ``mlp``, its periods) with a
fraction of the peers gossiping poison (``--attack KIND:FRACTION``); the figure is the mean
accuracy of the *honest* peers at the end (``acc_honest_mean``), with their minimum and
consensus distance per seed in the CSV. The clean column is the same runs without attackers
(a single run's final accuracy moves by a point or two with the seed: lr 0.5 is noisy). Cells run on a process pool (``--workers``, default the
number of cores); each finished cell is appended to ``cells.jsonl`` in ``--out`` and a rerun
skips the cells already there. Writes ``attacks.csv`` and ``attacks.md`` to ``--out``.

    python benchmarks/bench_attacks.py
    python benchmarks/bench_attacks.py --rules clipped median --attacks alie ipm --fractions 0.2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
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
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="any other SimConfig field for every cell, e.g. --set mode=push --set lr=0.5",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-attacks"))
    args = parser.parse_args()
    settings: dict[str, Any] = {
        "peers": args.peers, "periods": args.periods, "topology": args.topology,
        "eval_every": args.periods,
    }  # fmt: skip
    for item in args.set:
        name, _, text = item.partition("=")
        if name not in SimConfig.field_names():
            parser.error(f"--set {item}: {name!r} is not a SimConfig field")
        kind = type(getattr(default, name))
        settings[name] = kind(text) if kind is not bool else text.lower() in ("1", "true")
    columns = ["none"] + [f"{a}:{f:g}" for f in args.fractions for a in args.attacks]
    jobs = [(r, a, seed) for r in args.rules for a in columns for seed in args.seeds]
    console = Console(stderr=True)
    # Resumable: every finished cell is appended to cells.jsonl at once, and cells already
    # there (same settings) are not run again, so a long grid survives an interruption.
    args.out.mkdir(parents=True, exist_ok=True)
    done_file = args.out / "cells.jsonl"
    key = json.dumps(settings, sort_keys=True)
    done: dict[tuple[str, str, int], dict[str, Any]] = {}
    if done_file.exists():
        for line in done_file.read_text().splitlines():
            row = json.loads(line)
            if row.pop("settings", None) == key:
                done[(row["rule"], row["attack"], row["seed"])] = row
    todo = [job for job in jobs if job not in done]
    console.print(f"{len(jobs) - len(todo)} of {len(jobs)} cells already in {done_file}")
    with ProcessPoolExecutor(args.workers) as pool, done_file.open("a") as log:
        futures = {pool.submit(cell, r, a, seed, settings): (r, a, seed) for r, a, seed in todo}
        for i, future in enumerate(as_completed(futures), 1):
            r = future.result()
            done[futures[future]] = r
            log.write(json.dumps({**r, "settings": key}) + "\n")
            log.flush()
            console.print(
                f"[{i}/{len(todo)}] {r['rule']:15s} {r['attack']:18s} seed {r['seed']} "
                f"honest acc {r['acc_honest_mean']:.4f} (min {r['acc_honest_min']:.4f})"
            )
    rows = [done[job] for job in jobs]
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
