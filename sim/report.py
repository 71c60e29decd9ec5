"""What ``gossip-sim`` shows a person: progress as it runs, a result table, files on disk."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gossip.errors import GossipError
from sim.centralized import CentralizedResult, train_centralized, write_centralized
from sim.config import SimConfig
from sim.plots import plot_comparison, plot_run
from sim.runner import (
    Record,
    SimResult,
    build_world,
    describe_run,
    run_batched_simulation,
    run_world,
)

console = Console()


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _status_line(record: Record) -> str:
    return (
        f"t={record['time']:>7.1f}  acc mean {_fmt(record['acc_mean'], 3)} "
        f"(min {_fmt(record['acc_min'], 3)}, max {_fmt(record['acc_max'], 3)})  "
        f"consensus {record['consensus']:.3g}  msgs {record['messages_sent']:,}  online {record['peers_online']}"
    )


def simulate_with_progress(
    config: SimConfig, out: Path | None, quiet: bool = False, label: str = ""
) -> SimResult:
    """Run with a live progress bar (virtual time, mean accuracy) and a status line per
    evaluation; when the output is not a terminal, only the status lines are printed."""
    from sim.engines import choose_engine
    from sim.engines.batched import unsupported

    engine, why_not = choose_engine(config)
    run: Callable[[Callable[[float, Record | None], None] | None], SimResult]
    if engine == "batched":
        reason = unsupported(config)
        if reason is not None:  # asked for by name: refused before any output
            raise GossipError(
                f"the batched engine does not support {reason} yet; use --engine asyncio"
            )

        def run(on: Callable[[float, Record | None], None] | None) -> SimResult:
            return run_batched_simulation(config, out, on)
    else:
        world = build_world(config)  # user errors (data, topology) surface here, before output

        def run(on: Callable[[float, Record | None], None] | None) -> SimResult:
            return run_world(world, out, on, why_not=why_not)

    if quiet:
        return run(None)
    console.print(
        f"[bold]gossip-sim[/] {describe_run(config)}, {config.periods} periods -> {out}",
        highlight=False,
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("t={task.completed:.0f}/{task.total:.0f}s"),
        TextColumn("acc {task.fields[acc]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label or "gossip", total=config.duration, acc="-")

        def on_progress(t: float, record: Record | None) -> None:
            progress.update(task, completed=t)
            if record is not None:
                progress.update(task, acc=_fmt(record["acc_mean"], 3))
                progress.console.print(_status_line(record), highlight=False)

        return run(on_progress)


def last_mean(records: list[Record], key: str, count: int = 5) -> float | None:
    """Mean of ``key`` over the last ``count`` evaluations (one is noisy at a high lr)."""
    values = [r[key] for r in records[-count:] if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def result_table(result: SimResult, central: CentralizedResult | None) -> Table:
    final, summary = result.final, result.summary
    table = Table(title=describe_run(result.config), show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows: list[tuple[str, Any]] = [
        ("virtual time (s)", f"{final['time']:.1f}"),
        ("peer accuracy mean", final["acc_mean"]),
        ("peer accuracy min", final["acc_min"]),
        ("peer accuracy max", final["acc_max"]),
        (
            "peer accuracy p10 / p50 / p90",
            f"{_fmt(final['acc_p10'])} / {_fmt(final['acc_p50'])} / {_fmt(final['acc_p90'])}",
        ),
        ("peer accuracy mean, last 5 evaluations", last_mean(result.records, "acc_mean")),
        ("accuracy of the peers' average model", final["acc_avgmodel"]),
    ]
    if central is not None:
        rows.append((f"centralized baseline ({central.epochs} epochs)", central.accuracy))
    rows += [
        ("mean test loss", final["loss_mean"]),
        ("consensus distance", f"{final['consensus']:.4g}"),
        ("age mean (samples seen)", f"{final['age_mean']:,.0f}"),
        (
            "messages sent / delivered",
            f"{final['messages_sent']:,} / {final['messages_delivered']:,}",
        ),
        (
            "messages dropped / rejected",
            f"{final['messages_dropped']:,} / {final['messages_rejected']:,}",
        ),
        ("MB sent", f"{final['bytes_sent'] / 1e6:,.1f}"),
        ("peers online", final["peers_online"]),
        ("engine", summary.get("engine", "asyncio")),
        ("wall time (s)", f"{summary['wall_s']:.1f}"),
        ("peer updates per second", f"{summary['peer_updates_per_s'] or 0:,.0f}"),
    ]
    for name, value in rows:
        table.add_row(name, _fmt(value))
    return table


def run_with_report(
    config: SimConfig, out: Path, baseline: bool = True, quiet: bool = False
) -> SimResult:
    result = simulate_with_progress(config, out, quiet=quiet)
    central = train_centralized(config, dataset=result.world.dataset) if baseline else None
    if central is not None:
        summary = {
            **result.summary,
            "centralized": {"accuracy": central.accuracy, "epochs": central.epochs},
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        plot_run(result.records, out, title=describe_run(config), baseline=central.accuracy)
    console.print(result_table(result, central))
    console.print(
        f"results: {out}/metrics.jsonl, summary.json, accuracy.png, consensus.png", highlight=False
    )
    return result


def compare_with_report(
    config: SimConfig, field: str, variants: list[str], out: Path, baseline: bool = True
) -> None:
    """Run ``config`` once per value of ``field``; write compare.csv, compare.png, per-run dirs."""
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[Record]] = {}
    rows = []
    dataset = None
    for value in variants:
        variant = config.replace(**{field: value})
        safe = value.replace(":", "_").replace("/", "_")
        result = simulate_with_progress(variant, out / safe, label=f"{field}={value}")
        dataset = result.world.dataset
        runs[value] = result.records
        f, g = result.final, result.summary["graph"]
        rows.append(
            {
                field: value,
                "acc_mean": f["acc_mean"],
                "acc_min": f["acc_min"],
                "acc_max": f["acc_max"],
                "consensus": f["consensus"],
                "messages_sent": f["messages_sent"],
                "bytes_sent": f["bytes_sent"],
                "spectral_gap": g.get("spectral_gap"),
                "diameter": g.get("diameter"),
                "wall_s": result.summary["wall_s"],
            }
        )
    central = train_centralized(config, dataset=dataset) if baseline else None
    with (out / "compare.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_comparison(
        runs,
        out,
        title=f"{config.peers} peers, {config.dataset}, {config.model}",
        baseline=central.accuracy if central else None,
    )
    table = Table(
        title=f"compare {field}: {config.peers} peers, {config.dataset}/{config.partition}, {config.model}"
    )
    shown = {field: field, "acc_mean": "acc mean", "acc_min": "min", "acc_max": "max",
             "consensus": "consensus", "messages_sent": "msgs", "spectral_gap": "gap",
             "diameter": "diam", "wall_s": "wall s"}  # fmt: skip
    for label in shown.values():
        table.add_column(label, justify="right")
    for row in rows:
        table.add_row(*(_fmt(row[k], 3) if k != "consensus" else f"{row[k]:.3g}" for k in shown))
    console.print(table)
    if central is not None:
        console.print(f"centralized baseline: {central.accuracy:.4f}")
    console.print(
        f"results: {out}/compare.csv, compare.png and one directory per run", highlight=False
    )


def centralized_with_report(
    config: SimConfig, epochs: int, out: Path | None = None
) -> CentralizedResult:
    start = time.perf_counter()
    result = train_centralized(config, epochs=epochs)
    if out is not None:
        write_centralized(result, config, out)
    table = Table(title=f"centralized {config.model} on {config.dataset}")
    table.add_column("epoch", justify="right")
    table.add_column("test accuracy", justify="right")
    for epoch, acc in result.curve:
        if epoch in (1, 2, 5) or epoch % 10 == 0 or epoch == epochs:
            table.add_row(str(epoch), f"{acc:.4f}")
    console.print(table)
    console.print(
        f"final accuracy {result.accuracy:.4f}, loss {result.loss:.4f}, {result.steps} steps, {time.perf_counter() - start:.1f}s"
    )
    if out is not None:
        console.print(f"results: {out}/metrics.jsonl, summary.json, accuracy.png", highlight=False)
    return result


def sweep_table(plan: Any, aggregates: list[dict[str, Any]]) -> Table:
    """The sweep's cells ranked by periods to target (then accuracy), means ± 95% CI."""
    from sim.experiments.report import _pm, _rank_key

    axes = list(plan.grid)
    table = Table(
        title=f"sweep: {len(aggregates)} cells x {len(plan.seeds)} seeds, {plan.base.peers} peers,"
        f" {plan.base.dataset}, {plan.base.model}"
    )
    for label in (*(axes or ["run"]), "gap", "recv CV", "periods to target", "decay rate",
                  "acc (last 5)"):  # fmt: skip
        table.add_column(label, justify="right")
    for agg in sorted(aggregates, key=_rank_key):
        reached = f" ({agg.get('periods_to_target_n', 0)}/{agg['runs']})" if plan.target else ""
        table.add_row(
            *(str(agg.get(a)) for a in axes or ["runs"]),
            _pm(agg, "spectral_gap", 3), _pm(agg, "receive_rate_cv", 2),
            _pm(agg, "periods_to_target", 3) + reached, _pm(agg, "consensus_decay_rate", 3),
            _pm(agg, "acc_last5", 3),
        )  # fmt: skip
    return table
