"""gossip-sim sweep: the grid, the analysis, resumable runs, executors that agree, the report."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from gossip.errors import ConfigError
from sim.cli import app
from sim.config import SimConfig
from sim.experiments.analysis import (
    aggregate,
    consensus_decay_rate,
    mean_ci,
    periods_to_target,
    rank_correlation,
    theoretical_rate,
)
from sim.experiments.executors import InlineExecutor, ProcessExecutor, make_executor
from sim.experiments.grid import coerce, grid_from_options, make_plan, parse_grid_option, sweep_file
from sim.experiments.sweep import load_sweep, run_sweep

runner = CliRunner()
TINY = SimConfig(peers=8, topology="ring", model="logreg", periods=4, eval_every=2)


# ------------------------------------------------------------------------------ grid


def test_grid_values_take_the_type_of_their_field() -> None:
    assert parse_grid_option("lr=0.1,0.5") == ("lr", [0.1, 0.5])
    assert parse_grid_option("peers=10,20") == ("peers", [10, 20])
    assert parse_grid_option("allow-disconnected=true,false") == (
        "allow_disconnected",
        [True, False],
    )
    assert parse_grid_option("data_dir=none,/tmp") == ("data_dir", [None, "/tmp"])
    # values that hold commas are separated by ';'
    assert parse_grid_option("partitions=none;split:1:2,split:3:4") == (
        "partitions",
        ["none", "split:1:2,split:3:4"],
    )
    assert coerce("topology", " ring ") == "ring"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("lr", "expected FIELD=V1,V2"),
        ("=1,2", "expected FIELD=V1,V2"),
        ("lr=", "expected FIELD=V1,V2"),
        ("bogus=1,2", "not a simulation field"),
        ("seed=1,2", "--seeds"),
        ("peers=ten", "'ten' is not an integer"),
        ("lr=fast", "'fast' is not a number"),
        ("allow_disconnected=yes", "not true or false"),
        ("lr=0.1,0.1", "given twice"),
    ],
)
def test_bad_grid_options_are_one_line(option: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_grid_option(option)


def test_an_axis_given_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        grid_from_options(["lr=0.1", "lr=0.2"])


def test_the_plan_is_cells_times_seeds_in_named_directories() -> None:
    plan = make_plan(TINY.replace(seed=5), {"topology": ["ring", "regular:2"], "lr": [0.1, 0.5]},
                     seeds=2, target=0.5)  # fmt: skip
    runs = plan.runs()
    assert len(runs) == 8
    assert [r.seed for r in runs[:2]] == [5, 6]
    assert runs[0].path == "runs/topology=ring__lr=0.1/seed-5"
    assert runs[2].path == "runs/topology=ring__lr=0.5/seed-5"
    assert runs[4].path == "runs/topology=regular_2__lr=0.1/seed-5"
    assert runs[4].config.topology == "regular:2" and runs[4].config.seed == 5
    assert runs[7].config.lr == 0.5 and runs[7].config.seed == 6


def test_cells_whose_directories_collide_are_refused() -> None:
    with pytest.raises(ConfigError, match="share the directory"):
        make_plan(TINY, {"data_dir": ["a:b", "a/b"]}, seeds=1, target=None)


def test_a_bad_cell_stops_the_plan_before_any_run() -> None:
    with pytest.raises(ConfigError, match=r"grid cell \{'topology': 'nonsense'\}"):
        make_plan(TINY, {"topology": ["ring", "nonsense"]}, seeds=1, target=None)
    with pytest.raises(ConfigError, match="--seeds must be at least 1"):
        make_plan(TINY, {}, seeds=0, target=None)
    with pytest.raises(ConfigError, match="--target"):
        make_plan(TINY, {}, seeds=1, target=1.5)


def test_a_sweep_file_holds_fixed_fields_axes_and_options(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text(
        'peers = 8\nmodel = "logreg"\n\n[sweep]\ntopology = ["ring", "complete"]\n'
        "lr = [1, 0.5]\nseeds = 3\ntarget = 0.8\n"
    )
    fixed, grid, options = sweep_file(path)
    assert fixed == {"peers": 8, "model": "logreg"}
    assert grid == {"topology": ["ring", "complete"], "lr": [1.0, 0.5]}
    assert isinstance(grid["lr"][0], float)
    assert options == {"seeds": 3, "target": 0.8}
    path.write_text('[sweep]\ntopology = "ring"\n')
    with pytest.raises(ConfigError, match="must be a non-empty array"):
        sweep_file(path)
    path.write_text("[sweep]\npeers = [8, 'x']\n")
    with pytest.raises(ConfigError, match="items must be an integer"):
        sweep_file(path)
    path.write_text("[sweep]\nbogus = [1]\n")
    with pytest.raises(ConfigError, match="not a simulation field"):
        sweep_file(path)


# -------------------------------------------------------------------------- analysis


def test_periods_to_target_is_the_first_evaluation_at_the_target() -> None:
    records = [{"time": 10.0, "acc_mean": 0.5}, {"time": 20.0, "acc_mean": 0.85},
               {"time": 30.0, "acc_mean": 0.8}, {"time": 40.0, "acc_mean": 0.9}]  # fmt: skip
    assert periods_to_target(records, 0.85, period=2.0) == 10.0
    assert periods_to_target(records, 0.95, period=1.0) is None


def test_the_decay_rate_of_an_exponential_is_recovered_from_its_peak_on() -> None:
    rate = 0.37
    records = [{"time": 0.0, "consensus": 1e-3}]  # before the peak: ignored
    records += [{"time": t, "consensus": 5.0 * math.exp(-rate * t)} for t in range(1, 12)]
    assert consensus_decay_rate(records, period=1.0) == pytest.approx(rate, rel=1e-9)
    # periods of 2 s: the rate is per period
    halved = [{"time": 2 * r["time"], "consensus": r["consensus"]} for r in records]
    assert consensus_decay_rate(halved, period=2.0) == pytest.approx(rate, rel=1e-9)
    assert consensus_decay_rate(records[:3], period=1.0) is None  # peak + 1 point only


def test_theoretical_rate() -> None:
    assert theoretical_rate(0.0) == 0.0
    assert theoretical_rate(0.5) == pytest.approx(-2 * math.log(0.5))
    assert theoretical_rate(1.0) == math.inf


def test_mean_ci_is_students_t_interval() -> None:
    xs = [1.0, 2.0, 4.0, None]
    mean, half, n = mean_ci(xs)
    expected = stats.t.ppf(0.975, 2) * np.std([1, 2, 4], ddof=1) / math.sqrt(3)
    assert (mean, n) == (pytest.approx(7 / 3), 3) and half == pytest.approx(expected)
    assert mean_ci([3.0]) == (3.0, None, 1)
    assert mean_ci([None]) == (None, None, 0)


def test_aggregate_groups_by_cell_and_counts_targets_reached() -> None:
    rows = [
        {"topology": "ring", "seed": 0, "status": "ok", "periods_to_target": 10.0, "acc_mean": 0.8},
        {"topology": "ring", "seed": 1, "status": "ok", "periods_to_target": None, "acc_mean": 0.7},
        {"topology": "star", "seed": 0, "status": "failed", "periods_to_target": None},
    ]
    agg = {a["topology"]: a for a in aggregate(rows, ["topology"])}
    assert agg["ring"]["runs"] == 2 and agg["ring"]["periods_to_target_n"] == 1
    assert agg["ring"]["acc_mean"] == pytest.approx(0.75)
    assert agg["star"]["failed"] == 1 and agg["star"]["acc_mean"] is None


def test_rank_correlation() -> None:
    rows = [{"x": float(i), "y": float(-i * i)} for i in range(6)]
    rho, p, n = rank_correlation(rows, "x", "y")
    assert rho == pytest.approx(-1.0) and n == 6 and p < 0.01
    assert rank_correlation(rows[:2], "x", "y")[0] is None
    assert rank_correlation([{"x": 1.0, "y": float(i)} for i in range(5)], "x", "y")[0] is None


# ---------------------------------------------------------------------------- sweeps


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_a_sweep_writes_runs_results_aggregates_and_report(tmp_path: Path) -> None:
    plan = make_plan(TINY, {"topology": ["ring", "complete"]}, seeds=2, target=0.05)
    result = run_sweep(plan, tmp_path, InlineExecutor(), quiet=True)
    assert result.ran == 4
    rows = _read(tmp_path / "results.csv")
    assert [(r["topology"], r["seed"]) for r in rows] == [
        ("ring", "0"), ("ring", "1"), ("complete", "0"), ("complete", "1"),
    ]  # fmt: skip
    assert all(r["status"] == "ok" for r in rows)
    assert float(rows[2]["spectral_gap"]) == pytest.approx(1.0)
    assert float(rows[0]["spectral_gap"]) < 0.5
    assert rows[0]["periods_to_target"] == "0.0"  # 5% on digits: at the evaluation at t = 0
    agg = _read(tmp_path / "aggregate.csv")
    assert [a["topology"] for a in agg] == ["ring", "complete"] and agg[0]["runs"] == "2"
    run_dir = tmp_path / "runs" / "topology=ring" / "seed-1"
    for name in ("config.json", "metrics.jsonl", "summary.json", "row.json", "accuracy.png"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 1
    report = (tmp_path / "report.md").read_text()
    assert "| 1 | complete |" in report and "What predicts speed" in report
    assert (tmp_path / "periods_vs_gap.png").is_file()


def test_a_sweep_resumes_and_grows_without_running_finished_runs_again(tmp_path: Path) -> None:
    plan = make_plan(TINY, {"topology": ["ring"]}, seeds=1, target=None)
    run_sweep(plan, tmp_path, InlineExecutor(), quiet=True)
    first = (tmp_path / "results.csv").read_text()
    metrics = tmp_path / "runs" / "topology=ring" / "seed-0" / "metrics.jsonl"
    stamp = metrics.stat().st_mtime_ns
    again = run_sweep(plan, tmp_path, InlineExecutor(), quiet=True)
    assert again.ran == 0 and (tmp_path / "results.csv").read_text() == first
    grown = make_plan(TINY, {"topology": ["ring", "complete"]}, seeds=2, target=None)
    result = run_sweep(grown, tmp_path, InlineExecutor(), quiet=True)
    assert result.ran == 3 and len(result.rows) == 4
    assert metrics.stat().st_mtime_ns == stamp  # the finished run was not touched
    # A run without its row.json (interrupted) is run again.
    (tmp_path / "runs" / "topology=complete" / "seed-1" / "row.json").unlink()
    assert run_sweep(grown, tmp_path, InlineExecutor(), quiet=True).ran == 1


def test_a_run_directory_of_another_configuration_is_refused(tmp_path: Path) -> None:
    run_sweep(make_plan(TINY, {}, seeds=1, target=None), tmp_path, InlineExecutor(), quiet=True)
    other = make_plan(TINY.replace(lr=0.1), {}, seeds=1, target=None)
    with pytest.raises(ConfigError, match=r"another configuration .*lr.* new --out"):
        run_sweep(other, tmp_path, InlineExecutor(), quiet=True)


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    # regular:3 on 7 peers: n*K odd, refused when the graph is built (not by the config)
    plan = make_plan(TINY.replace(peers=7), {"topology": ["regular:3", "ring"]}, 1, None)
    result = run_sweep(plan, tmp_path, InlineExecutor(), quiet=True)
    by_topology = {r["topology"]: r for r in result.rows}
    assert by_topology["regular:3"]["status"] == "failed"
    assert "regular" in by_topology["regular:3"]["error"]
    assert by_topology["ring"]["status"] == "ok"
    assert "## Failed runs" in (tmp_path / "report.md").read_text()


def test_the_process_pool_gives_the_same_results_as_inline(tmp_path: Path) -> None:
    plan = make_plan(TINY, {"topology": ["ring", "complete"]}, seeds=1, target=0.05)
    run_sweep(plan, tmp_path / "inline", InlineExecutor(), quiet=True)
    run_sweep(plan, tmp_path / "pool", ProcessExecutor(2), quiet=True)
    inline = (tmp_path / "inline" / "results.csv").read_text()
    assert inline == (tmp_path / "pool" / "results.csv").read_text()
    for name in ("metrics.jsonl", "config.json"):
        run = Path("runs/topology=complete/seed-0") / name
        assert (tmp_path / "inline" / run).read_bytes() == (tmp_path / "pool" / run).read_bytes()


@pytest.mark.slow
def test_ray_gives_the_same_results_as_the_process_pool(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    plan = make_plan(TINY, {"topology": ["ring", "complete"]}, seeds=2, target=0.05)
    run_sweep(plan, tmp_path / "pool", ProcessExecutor(2), quiet=True)
    run_sweep(plan, tmp_path / "ray", make_executor("ray", 2), quiet=True)
    assert (tmp_path / "ray" / "results.csv").read_text() == (
        tmp_path / "pool" / "results.csv"
    ).read_text()


def test_executor_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--workers must be at least 1"):
        make_executor("process", 0)
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        make_executor("dask", 2)
    with pytest.raises(ConfigError, match="--ray-address needs --executor ray"):
        make_executor("process", 2, "auto")
    assert isinstance(make_executor("process", 1), InlineExecutor)


# ------------------------------------------------------------------------------- CLI


def test_the_sweep_and_report_commands(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    args = ["sweep", "--grid", "topology=ring,complete", "--seeds", "1", "--peers", "8",
            "--model", "logreg", "--periods", "4", "--eval-every", "2", "--workers", "1",
            "--target", "0.05", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 runs in" in result.output and (out / "report.md").is_file()
    plan, rows = load_sweep(out)
    assert plan.base.peers == 8 and plan.target == 0.05 and len(rows) == 2
    # The report again, for another target, from the run files alone.
    result = runner.invoke(app, ["report", str(out), "--target", "0.99"])
    assert result.exit_code == 0, result.output
    assert all(r["periods_to_target"] == "" for r in _read(out / "results.csv"))
    # Each run is re-runnable alone from its config.json, to the same metrics.
    run_dir = out / "runs" / "topology=complete" / "seed-0"
    again = tmp_path / "again"
    result = runner.invoke(app, ["run", "--config", str(run_dir / "config.json"),
                                 "--no-baseline", "--quiet", "--out", str(again)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (again / "metrics.jsonl").read_text() == (run_dir / "metrics.jsonl").read_text()


@pytest.mark.parametrize(
    "args",
    [
        ["sweep", "--grid", "bogus=1"],
        ["sweep", "--grid", "topology=ring", "--seeds", "0"],
        ["sweep", "--executor", "dask"],
        ["report", "/nonexistent/dir"],
    ],
)
def test_bad_sweep_input_is_one_clear_line(tmp_path: Path, args: list[str]) -> None:
    result = runner.invoke(
        app, [*args, *(["--out", str(tmp_path / "x")] if args[0] == "sweep" else [])]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output


def test_the_report_reads_back_every_run_whatever_the_axis_order(tmp_path: Path) -> None:
    # "topology" before "lr": not alphabetical, so a plan file with sorted keys would name
    # other directories and find none of the runs
    plan = make_plan(TINY, {"topology": ["ring", "complete"], "lr": [0.5, 0.1]}, 1, None)
    run_sweep(plan, tmp_path, InlineExecutor(), quiet=True)
    again, rows = load_sweep(tmp_path)
    assert list(again.grid) == ["topology", "lr"] and again.grid["lr"] == [0.5, 0.1]
    assert [(r["topology"], r["lr"]) for r in rows] == [
        ("ring", 0.5), ("ring", 0.1), ("complete", 0.5), ("complete", 0.1),
    ]  # fmt: skip
