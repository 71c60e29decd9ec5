"""The peer sampling service against its targets: convergence, self-healing, a hub attacker.

For each sampler (``--samplers``, default ``cyclon:20:5 newscast:20``), on ``--peers``
(1,000) peers from a ring bootstrap, medians over ``--seeds``:

* **converge**: after 30 cycles, the in-degree standard deviation against a random c-out
  graph's (the ideal), components, clustering;
* **heal**: converge for 30 cycles, crash 50% of the peers, then count the cycles until
  fewer than 1% of view entries point to crashed peers, and the components at the end
  (``pushes`` = 0: view exchanges only; 1: plus one gossip-learning push a cycle, whose
  failures drop the target too);
* **attack**: peer 0 answers every exchange with only itself and pushes only itself to a
  random peer every cycle; the share of all view entries that point to it after 50 cycles
  (its fair share is 1/N; the most it could hold, one entry in every view, is 1/c).

Writes ``sampling.jsonl`` (one row per run) to ``--out``.

    python benchmarks/bench_sampling.py
    python benchmarks/bench_sampling.py --samplers cyclon:20:5 --seeds 0 1 2 --peers 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sim.overlay import OverlayConfig, parse_sampler, run_overlay, summarise_overlay

console = Console(width=max(140, Console().width))


def one(name: str, config: OverlayConfig) -> dict[str, Any]:
    start = time.perf_counter()
    records = run_overlay(config)
    summary = summarise_overlay(config, records)
    final = summary["final"]
    return {
        "scenario": name, "sampler": config.sampler, "seed": config.seed,
        "peers": config.peers, "pushes": config.pushes,
        "indegree_std": final["view_indegree_std"],
        "random_std": summary["random_out_indegree_std"],
        "components": final["overlay_components"], "clustering": final["overlay_clustering"],
        "dead_links": final["view_dead_links"], "cycles_to_heal": summary["cycles_to_heal"],
        "attacker_share": final["attacker_share"], "wall_s": time.perf_counter() - start,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samplers", nargs="+", default=["cyclon:20:5", "newscast:20"])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench-sampling")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for spec in args.samplers:
        parse_sampler(spec)
        for seed in args.seeds:
            base = {"peers": args.peers, "sampler": spec, "seed": seed}
            runs = [
                ("converge", OverlayConfig(cycles=30, **base)),
                ("heal", OverlayConfig(cycles=60, crash=0.5, crash_at=31, pushes=0, **base)),
                ("heal", OverlayConfig(cycles=60, crash=0.5, crash_at=31, pushes=1, **base)),
                ("attack", OverlayConfig(cycles=50, attacker=True, **base)),
            ]
            for name, config in runs:
                row = one(name, config)
                rows.append(row)
                with (out / "sampling.jsonl").open("a") as f:
                    f.write(json.dumps(row) + "\n")
                console.print(f"  {name} {spec} seed {seed}: {row}", style="dim", highlight=False)
    table = Table(
        title=f"peer sampling, {args.peers} peers from a ring, medians of {len(args.seeds)} seeds"
    )
    for col in ("sampler", "in-degree std at 30", "random c-out", "ratio", "components",
                "clustering", "cycles to <1% dead (exchanges)", "(+1 push)", "components after",
                "attacker share at 50", "1/N", "1/c"):  # fmt: skip
        table.add_column(col, justify="right")

    def med(spec: str, name: str, key: str, pushes: int | None = None) -> float | None:
        values = [r[key] for r in rows if r["sampler"] == spec and r["scenario"] == name
                  and (pushes is None or r["pushes"] == pushes)]  # fmt: skip
        if any(v is None for v in values):
            return None  # some seed never healed within the run
        return statistics.median(values) if values else None

    for spec in args.samplers:
        _, c, _ = parse_sampler(spec)
        std, rnd = med(spec, "converge", "indegree_std"), med(spec, "converge", "random_std")
        heal0, heal1 = (
            med(spec, "heal", "cycles_to_heal", 0),
            med(spec, "heal", "cycles_to_heal", 1),
        )
        table.add_row(
            spec, f"{std:.2f}", f"{rnd:.2f}", f"{std / rnd:.2f}" if std and rnd else "-",
            f"{med(spec, 'converge', 'components'):.0f}", f"{med(spec, 'converge', 'clustering'):.3f}",
            "never" if heal0 is None else f"{heal0:.0f}", "never" if heal1 is None else f"{heal1:.0f}",
            f"{med(spec, 'heal', 'components', 1):.0f}",
            f"{med(spec, 'attack', 'attacker_share'):.4f}", f"{1 / args.peers:.4f}", f"{1 / c:.3f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"rows in {out / 'sampling.jsonl'}")


if __name__ == "__main__":
    main()
