"""``gossip-sim``: run, compare and inspect gossip learning simulations.

Every :class:`~sim.config.SimConfig` field is a flag of ``run``, ``compare`` and
``centralized`` (generated from the dataclass, so flags, TOML files and config.json always
agree). Heavy imports (torch, the simulator) happen inside the commands, so that
``gossip-sim --help`` answers at once.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from gossip.errors import GossipError
from peers.cli_options import ConfigOpt, given_on_command_line, with_dataclass_options
from sim.config import FIELD_HELP, SimConfig

F = typing.TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    invoke_without_command=True,
    help="Simulate gossip learning: hundreds to thousands of peers in one process, in virtual time.",
    pretty_exceptions_enable=False,
)


def with_config_options(fn: F) -> F:
    """Add one flag per SimConfig field to a command; they arrive in ``**config_fields``."""
    return with_dataclass_options(SimConfig, FIELD_HELP, "Simulation")(fn)


def build_config(
    ctx: typer.Context, config_file: Path | None, values: dict[str, Any], **forced: Any
) -> SimConfig:
    """SimConfig from defaults < TOML file < flags given on the command line < ``forced``."""
    given = given_on_command_line(ctx, values)
    if config_file is not None:
        return SimConfig.from_toml(config_file, **given, **forced)
    return SimConfig(**{**values, **forced})


def _default_out(kind: str) -> Path:
    return Path("runs") / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _fail(e: GossipError) -> typing.NoReturn:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(2)


OutOpt = Annotated[
    Path | None, typer.Option("--out", help="output directory (default: runs/<kind>-<time>)")
]


@app.callback()
def main_callback(ctx: typer.Context) -> None:
    """With no command, run the default simulation (100 peers learning digits by gossip)."""
    if ctx.invoked_subcommand is None:
        run(ctx, config_file=None, out=None, baseline=True, quiet=False)


@app.command()
@with_config_options
def run(
    ctx: typer.Context,
    config_file: ConfigOpt = None,
    out: OutOpt = None,
    baseline: Annotated[bool, typer.Option(help="also train the centralized reference")] = True,
    quiet: Annotated[bool, typer.Option(help="no progress output")] = False,
    **config_fields: Any,
) -> None:
    """Run one simulation; write metrics.jsonl, config.json, summary.json and plots."""
    from sim.report import run_with_report

    values = config_fields or {f.name: f.default for f in fields(SimConfig)}
    try:
        config = build_config(ctx, config_file, values)
        run_with_report(config, out or _default_out("sim"), baseline=baseline, quiet=quiet)
    except GossipError as e:
        _fail(e)


@app.command()
@with_config_options
def compare(
    ctx: typer.Context,
    topologies: Annotated[
        str,
        typer.Option(help="comma-separated topologies to compare, e.g. complete,ring,regular:4"),
    ] = "",
    merges: Annotated[
        str, typer.Option(help="comma-separated merge rules to compare instead")
    ] = "",
    config_file: ConfigOpt = None,
    out: OutOpt = None,
    baseline: Annotated[bool, typer.Option(help="also train the centralized reference")] = True,
    **config_fields: Any,
) -> None:
    """Run the same scenario over several topologies (or merge rules); one table, one plot."""
    from sim.report import compare_with_report

    try:
        if bool(topologies) == bool(merges):
            raise GossipError(
                "give exactly one of --topologies or --merges, e.g. --topologies complete,ring"
            )
        config = build_config(ctx, config_file, config_fields)
        field, values = ("topology", topologies) if topologies else ("merge", merges)
        variants = [v.strip() for v in values.split(",") if v.strip()]
        compare_with_report(
            config, field, variants, out or _default_out("compare"), baseline=baseline
        )
    except GossipError as e:
        _fail(e)


@app.command()
@with_config_options
def centralized(
    ctx: typer.Context,
    epochs: Annotated[int, typer.Option(help="passes over the whole training set")] = 30,
    config_file: ConfigOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="also write metrics.jsonl, config.json, summary.json, PNG"),
    ] = None,
    **config_fields: Any,
) -> None:
    """Train the same model on all the data in one place: the reference line."""
    from sim.report import centralized_with_report

    try:
        centralized_with_report(build_config(ctx, config_file, config_fields), epochs, out)
    except GossipError as e:
        _fail(e)


@app.command()
def overlay(
    peers: Annotated[int, typer.Option(help="peers in the overlay")] = 1000,
    sampler: Annotated[str, typer.Option(help="cyclon:C:L or newscast:C")] = "cyclon:20:5",
    bootstrap: Annotated[str, typer.Option(help="topology of the initial views")] = "ring",
    cycles: Annotated[int, typer.Option(help="view-exchange cycles")] = 50,
    seed: Annotated[int, typer.Option(help="the one seed")] = 0,
    loss: Annotated[float, typer.Option(help="probability a request or reply is lost")] = 0.0,
    crash: Annotated[float, typer.Option(help="fraction of peers that crash")] = 0.0,
    crash_at: Annotated[int, typer.Option(help="the cycle before which they crash")] = 0,
    attacker: Annotated[
        bool, typer.Option(help="peer 0 answers every exchange with itself")
    ] = False,
    attempts: Annotated[int, typer.Option(help="exchange tries a cycle after failures")] = 3,
    pushes: Annotated[int, typer.Option(help="model pushes a cycle to view members")] = 0,
    out: OutOpt = None,
) -> None:
    """Peer sampling on its own: how a dynamic overlay (Cyclon, Newscast) evolves, heals and
    resists a hub attacker, cycle by cycle; writes metrics.jsonl, config.json, summary.json."""
    from rich.console import Console
    from rich.table import Table

    from sim.overlay import OverlayConfig, run_overlay, write_overlay_run

    console = Console()
    try:
        config = OverlayConfig(peers, sampler, bootstrap, cycles, seed, loss, crash, crash_at,
                               attacker, attempts, pushes)  # fmt: skip
        every = max(1, cycles // 10)

        def show(cycle: int, r: dict[str, Any]) -> None:
            if cycle % every == 0 or cycle == cycles:
                console.print(
                    f"  cycle {cycle:4d}: in-degree std {r['view_indegree_std']:.2f}, dead links "
                    f"{r['view_dead_links']:.1%}, components {r['overlay_components']}",
                    style="dim", highlight=False,
                )  # fmt: skip

        records = run_overlay(config, progress=show)
        target = out or _default_out("overlay")
        summary = write_overlay_run(config, records, target)
    except GossipError as e:
        _fail(e)
    final = summary["final"]
    table = Table(title=f"overlay {sampler}, {peers} peers, {cycles} cycles -> {target}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("view_size_mean", "view_indegree_mean", "view_indegree_std", "view_dead_links",
                "overlay_components", "overlay_clustering", "attacker_share"):  # fmt: skip
        table.add_row(key, f"{final[key]:.4g}")
    table.add_row("random c-out in-degree std", f"{summary['random_out_indegree_std']:.4g}")
    if summary["cycles_to_heal"] is not None or crash > 0:
        table.add_row("cycles to < 1% dead links", str(summary["cycles_to_heal"]))
    console.print(table)


@app.command()
@with_config_options
def sweep(
    ctx: typer.Context,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            help="an axis FIELD=V1,V2 over any simulation field (repeat for more axes; separate"
            " values by ';' when they hold commas)",
        ),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="runs per cell, seeds --seed .. --seed + K - 1 (default 1)")
    ] = None,
    target: Annotated[
        float | None, typer.Option(help="accuracy for periods_to_target (e.g. 0.85)")
    ] = None,
    workers: Annotated[int, typer.Option(help="runs at once (1: one after another here)")] = 2,
    executor: Annotated[str, typer.Option(help="process (a local pool) or ray")] = "process",
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray cluster: auto or HOST:PORT (default: a local Ray instance)"),
    ] = None,
    config_file: ConfigOpt = None,
    out: OutOpt = None,
    **config_fields: Any,
) -> None:
    """Run a grid of simulations x seeds (resumable), on a process pool or a Ray cluster;
    write results.csv, aggregate.csv and the convergence report (report.md + PNGs). In a
    --config TOML file the axes, seeds and target go in a [sweep] table."""
    from sim.experiments.executors import make_executor
    from sim.experiments.grid import grid_from_options, make_plan, sweep_file
    from sim.experiments.sweep import run_sweep
    from sim.report import sweep_table

    try:
        given = given_on_command_line(ctx, config_fields)
        axes: dict[str, list[Any]] = {}
        options: dict[str, Any] = {}
        if config_file is not None:
            fixed, axes, options = sweep_file(config_file)
            base = SimConfig(**{**fixed, **given})
        else:
            base = SimConfig(**config_fields)
        for name, values in grid_from_options(grid or []).items():
            axes[name] = values  # the command line wins over the file
        plan = make_plan(
            base, axes,
            seeds if seeds is not None else int(options.get("seeds", 1)),
            target if target is not None else options.get("target"),
        )  # fmt: skip
        where = out or _default_out("sweep")
        result = run_sweep(plan, where, make_executor(executor, workers, ray_address))
    except GossipError as e:
        _fail(e)
    from rich.console import Console

    console = Console()
    console.print(sweep_table(result.plan, result.aggregates))
    console.print(
        f"{result.ran} runs in {result.wall_s:.1f} s; results: {where}/results.csv,"
        " aggregate.csv, report.md",
        highlight=False,
    )


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="a sweep's output directory")],
    target: Annotated[
        float | None, typer.Option(help="accuracy for periods_to_target (default: the sweep's)")
    ] = None,
) -> None:
    """(Re)write a sweep's results.csv, aggregate.csv and report.md from its run files."""
    from dataclasses import replace

    from rich.console import Console

    from sim.experiments.analysis import aggregate
    from sim.experiments.report import write_report
    from sim.experiments.sweep import (
        aggregate_columns,
        load_sweep,
        result_columns,
        write_csv,
    )
    from sim.report import sweep_table

    try:
        plan, rows = load_sweep(directory)
        if target is not None:  # the rows are analysed again from the run files
            plan, rows = load_sweep(directory, replace(plan, target=target))
        agg = aggregate(rows, list(plan.grid))
        write_csv(directory / "results.csv", rows, result_columns(plan))
        write_csv(directory / "aggregate.csv", agg, aggregate_columns(plan))
        path = write_report(directory, plan, rows, agg)
    except GossipError as e:
        _fail(e)
    Console().print(sweep_table(plan, agg))
    typer.echo(f"{len(rows)} runs; report: {path}")


@app.command()
def topologies() -> None:
    """List the topologies and their parameters."""
    from sim.topology import TOPOLOGIES

    for info in TOPOLOGIES.values():
        name = f"{info.name}{':' + info.params if info.params else ''}"
        typer.echo(f"{name:28s} {info.description}")


@app.command()
def datasets() -> None:
    """List the datasets, where they are looked for and how to get them."""
    from gossip.datasets import DATASETS

    for name, info in DATASETS.items():
        typer.echo(
            f"{name:14s} {info.description}\n{'':14s} from: {info.default_location}; get: {info.how_to_get}"
        )


@app.command()
def models() -> None:
    """List the models."""
    from gossip.models import MODELS

    for name, info in MODELS.items():
        options = ", ".join(f"{k}={v}" for k, v in info.options.items()) or "no options"
        typer.echo(f"{name:10s} {info.description} ({options})")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
