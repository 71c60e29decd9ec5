"""Run a sweep: every run of a plan once, resumable, with progress, into files.

``<out>/sweep.json`` is the plan; ``<out>/runs/<cell>/seed-<S>/`` holds each run's own
``config.json`` (rerun it alone: ``gossip-sim run --config .../config.json``),
``metrics.jsonl``, ``summary.json``, plots and ``row.json`` (its row of
results.csv, written last: a run without it is run again). ``results.csv`` has one row per
run in plan order, ``aggregate.csv`` one row per cell (means and 95% intervals over seeds),
and ``report.md`` with its PNGs is the convergence report (:mod:`sim.experiments.report`).

Resuming: a sweep started again on the same ``--out`` skips the runs whose ``row.json``
exists, provided their ``config.json`` is the configuration the plan asks for (a different
one is refused: use another ``--out``). The grid may grow between invocations (more values,
more seeds); finished runs are kept.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gossip.errors import ConfigError
from sim.experiments.analysis import GRAPH_COLUMNS, METRICS, RATE_COLUMNS, aggregate, run_row
from sim.experiments.executors import Executor
from sim.experiments.grid import Plan, RunSpec

console = Console()


@dataclass
class SweepResult:
    plan: Plan
    rows: list[dict[str, Any]]
    aggregates: list[dict[str, Any]]
    ran: int  # runs executed now (the others were finished before)
    wall_s: float


def result_columns(plan: Plan) -> list[str]:
    return [*plan.grid, "seed", "status", *GRAPH_COLUMNS, *RATE_COLUMNS, *METRICS, "error"]


def _finished(out: Path, spec: RunSpec) -> dict[str, Any] | None:
    run_dir = out / spec.path
    row_file, config_file = run_dir / "row.json", run_dir / "config.json"
    if not row_file.is_file():
        return None
    try:
        saved = json.loads(config_file.read_text())
        row = json.loads(row_file.read_text())
    except (OSError, ValueError):
        return None  # half-written: run it again
    if saved != json.loads(json.dumps(spec.config.as_dict())):
        changed = sorted(k for k in saved.keys() | spec.config.as_dict().keys()
                         if saved.get(k) != spec.config.as_dict().get(k))  # fmt: skip
        raise ConfigError(
            f"{run_dir} holds a run of another configuration ({', '.join(changed[:3])} differ);"
            " give the sweep a new --out"
        )
    return row if isinstance(row, dict) else None


def _write_run(out: Path, spec: RunSpec, outcome: dict[str, Any], plan: Plan) -> dict[str, Any]:
    from sim.runner import write_run_files

    run_dir = out / spec.path
    write_run_files(run_dir, spec.config, outcome["records"], outcome["summary"])
    row = run_row(spec.cell, spec.seed, outcome["records"], outcome["summary"],
                  spec.config.period, plan.target, outcome["status"])  # fmt: skip
    row["error"] = outcome.get("error", "")
    if outcome["status"] != "crashed":  # a crash may not happen again: leave it to rerun
        (run_dir / "row.json").write_text(json.dumps(row, sort_keys=True) + "\n")
    return row


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})


def aggregate_columns(plan: Plan) -> list[str]:
    cols = [*plan.grid, "runs", "failed"]
    for key in (*GRAPH_COLUMNS, *RATE_COLUMNS, *METRICS):
        cols += [key, f"{key}_ci95", f"{key}_n"]
    return cols


def run_sweep(plan: Plan, out: Path, executor: Executor, *, quiet: bool = False) -> SweepResult:
    """Run every unfinished run of ``plan`` on ``executor``; write results.csv,
    aggregate.csv and the report into ``out``."""
    from sim.experiments.report import write_report

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    specs = plan.runs()
    rows: dict[int, dict[str, Any]] = {}
    for i, spec in enumerate(specs):
        row = _finished(out, spec)
        if row is not None:
            rows[i] = _reanalysed(out, spec, row, plan)
    (out / "sweep.json").write_text(json.dumps(plan.to_json(), indent=2, sort_keys=True) + "\n")
    todo = [i for i in range(len(specs)) if i not in rows]
    if not quiet:
        console.print(
            f"[bold]gossip-sim sweep[/] {len(specs)} runs ({len(specs) // len(plan.seeds)} cells"
            f" x {len(plan.seeds)} seeds), {len(rows)} finished before, {len(todo)} to run on"
            f" {executor.name} -> {out}",
            highlight=False,
        )
    with Progress(
        TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=quiet,
    ) as progress:  # fmt: skip
        task = progress.add_task("sweep", total=len(specs), completed=len(rows))
        try:
            for k, outcome in executor.run([specs[i].config.as_dict() for i in todo]):
                i = todo[k]
                rows[i] = _write_run(out, specs[i], outcome, plan)
                progress.advance(task)
                if not quiet:
                    progress.console.print(_run_line(specs[i], rows[i]), highlight=False)
        finally:
            executor.close()
    ordered = [rows[i] for i in range(len(specs)) if i in rows]
    agg = aggregate(ordered, list(plan.grid))
    write_csv(out / "results.csv", ordered, result_columns(plan))
    write_csv(out / "aggregate.csv", agg, aggregate_columns(plan))
    wall = time.perf_counter() - start
    write_report(out, plan, ordered, agg)
    return SweepResult(plan, ordered, agg, len(todo), wall)


def _reanalysed(out: Path, spec: RunSpec, row: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """A finished run's row, recomputed from its files when the target changed."""
    if plan.target is None or row.get("status") != "ok":
        return row
    try:
        records = [json.loads(line) for line in (out / spec.path / "metrics.jsonl").open()]
        summary = json.loads((out / spec.path / "summary.json").read_text())
    except (OSError, ValueError):
        return row
    fresh = run_row(spec.cell, spec.seed, records, summary, spec.config.period, plan.target)
    fresh["error"] = row.get("error", "")
    return fresh


def _run_line(spec: RunSpec, row: dict[str, Any]) -> str:
    def fmt(x: Any, digits: int = 3) -> str:
        return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)

    if row["status"] != "ok":
        return f"  {spec.label} seed {spec.seed}: {row['status']}: {row.get('error', '')[:160]}"
    return (
        f"  {spec.label} seed {spec.seed}: acc {fmt(row['acc_mean'])}, periods to target"
        f" {fmt(row['periods_to_target'], 0)}, decay rate {fmt(row['consensus_decay_rate'], 4)}"
    )


def load_sweep(out: Path, plan: Plan | None = None) -> tuple[Plan, list[dict[str, Any]]]:
    """A sweep directory's plan (or ``plan``, e.g. with another target) and the rows of its
    finished runs (for ``gossip-sim report``)."""
    path = out / "sweep.json"
    if not path.is_file():
        raise ConfigError(f"{out} is not a sweep directory (no sweep.json); run gossip-sim sweep")
    if plan is None:
        try:
            plan = Plan.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: not a sweep plan ({e})") from None
    rows = []
    for spec in plan.runs():
        row = _finished(out, spec)
        if row is not None:
            rows.append(_reanalysed(out, spec, row, plan))
    return plan, rows
