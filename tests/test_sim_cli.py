"""``gossip-sim`` as a user runs it: flags, TOML, outputs, errors, fast help."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sim.cli import app
from sim.config import SimConfig

runner = CliRunner()
TINY = [
    "--peers",
    "8",
    "--periods",
    "6",
    "--eval-every",
    "3",
    "--model",
    "logreg",
    "--topology",
    "ring",
]


def test_run_writes_outputs_and_prints_the_table(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", *TINY, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "peer accuracy mean" in result.output and "centralized baseline" in result.output
    assert "acc mean" in result.output  # the per-evaluation status lines
    for name in ("metrics.jsonl", "config.json", "summary.json", "accuracy.png", "consensus.png"):
        assert (tmp_path / name).is_file(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 <= summary["centralized"]["accuracy"] <= 1


def test_toml_config_with_flags_winning(tmp_path: Path) -> None:
    toml = tmp_path / "sim.toml"
    toml.write_text(
        '[sim]\npeers = 6\nperiods = 4\neval_every = 2\nmodel = "logreg"\ntopology = "complete"\nseed = 7\n'
    )
    result = runner.invoke(
        app,
        [
            "run",
            "--config",
            str(toml),
            "--periods",
            "2",
            "--no-baseline",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert (config["peers"], config["periods"], config["seed"], config["topology"]) == (
        6,
        2,
        7,
        "complete",
    )


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    cases = [
        ["run", "--topology", "butterfly"],
        ["run", "--partition", "dirichlet:-1"],
        ["run", "--dataset", "imagenet"],
        ["run", "--churn", "markov:2:5"],
        ["run", "--peers", "1"],
        ["run", "--topology", "erdos-renyi:0.001", "--peers", "50"],
        ["run", "--config", str(tmp_path / "missing.toml")],
        ["compare", "--peers", "4"],
    ]
    for args in cases:
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.output)


def test_compare_topologies_writes_one_table_and_plot(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "compare",
            *TINY,
            "--topologies",
            "complete,ring",
            "--no-baseline",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    with (tmp_path / "compare.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["topology"] for r in rows] == ["complete", "ring"]
    assert (tmp_path / "compare.png").is_file() and (tmp_path / "ring" / "metrics.jsonl").is_file()


def test_centralized_command() -> None:
    result = runner.invoke(app, ["centralized", "--model", "logreg", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert "final accuracy" in result.output


def test_centralized_writes_the_files_a_run_writes(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["centralized", "--model", "logreg", "--epochs", "3", "--lr-schedule", "cosine",
              "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("metrics.jsonl", "config.json", "summary.json", "accuracy.png"):
        assert (tmp_path / name).is_file(), name
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["acc_mean"] > records[0]["acc_mean"]
    # the bare cosine spans the three epochs: the rate falls to its 1% floor by the end
    lr = SimConfig().lr
    assert records[0]["lr"] == pytest.approx(lr) and records[-1]["lr"] == pytest.approx(lr / 100)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["accuracy"] == pytest.approx(records[-1]["acc_mean"])


def test_fedavg_runs_from_the_command_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["run", *TINY, "--algorithm", "fedavg", "--clients-per-round", "4",
              "--local-steps", "2", "--no-baseline", "--out", str(tmp_path)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "FedAvg, 8 clients (4 per round, 2 local steps)" in result.output
    final = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["algorithm"] == "fedavg" and final["messages_sent"] == 6 * 4 * 2


def test_a_diverging_run_is_one_line(tmp_path: Path) -> None:
    args = ["run", "--peers", "8", "--periods", "6", "--eval-every", "3", "--topology", "ring",
            "--mode", "push", "--local-steps", "1"]  # fmt: skip
    result = runner.invoke(app, [*args, "--lr", "1e30", "--no-baseline", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: training diverged")
    assert (tmp_path / "metrics.jsonl").is_file()


def test_listing_commands() -> None:
    topo = runner.invoke(app, ["topologies"])
    assert topo.exit_code == 0 and "watts-strogatz" in topo.output and "dumbbell" in topo.output
    assert "fashion-mnist" in runner.invoke(app, ["datasets"]).output
    assert "charlstm" in runner.invoke(app, ["models"]).output


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from sim.cli import app; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
