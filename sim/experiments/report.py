"""The topology convergence report: ``report.md`` and its PNGs, from a sweep's rows.

Per grid cell (a topology, a sampler, ...): the spectral gap of the gossip matrix, the
receive-rate distribution that the sampler induces on the graph (mean, coefficient of
variation, share of peers expecting fewer than half a model a period), periods to target,
the consensus decay rate and the final accuracy, each a mean with its 95% interval over
seeds, ranked by periods to target. Then which graph quantity predicts speed: Spearman's rank
correlation, over all runs, of periods-to-target (and of the decay rate) with the spectral
gap and with the receive-rate spread. Plots: decay rate against spectral gap with the
synchronous-averaging line ``-2 ln(1 - gap)``; periods to target against the gap and against
the receive-rate coefficient of variation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from sim.experiments.analysis import rank_correlation, theoretical_rate
from sim.experiments.grid import Plan

PREDICTORS = (
    ("spectral_gap", "spectral gap"),
    ("push_gap", "push gap"),
    ("receive_rate_cv", "receive-rate CV"),
    ("receive_rate_below_half", "share receiving < 0.5 a period"),
)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-2 and x != 0 else f"{x:.{digits}f}"
    return str(x)


def _pm(agg: dict[str, Any], key: str, digits: int = 3) -> str:
    mean, half = agg.get(key), agg.get(f"{key}_ci95")
    if mean is None:
        return "–"
    if half is not None and half <= 1e-9 * max(1.0, abs(mean)):
        half = 0.0  # identical over seeds, up to float noise
    return _fmt(mean, digits) + ("" if half is None else f" ± {_fmt(half, digits)}")


def _label(agg: dict[str, Any], axes: Sequence[str]) -> str:
    return ", ".join(str(agg.get(a)) for a in axes) or "base"


def _rank_key(agg: dict[str, Any]) -> tuple[float, float, float]:
    """Fastest first: fewest periods to target, then fastest consensus decay, then accuracy."""
    p = agg.get("periods_to_target")
    rate = agg.get("consensus_decay_rate")
    acc = agg.get("acc_last5") or 0.0
    return (p if p is not None else math.inf, -rate if rate is not None else math.inf, -acc)


def _scatter(
    rows: Sequence[dict[str, Any]], axes: Sequence[str], x: str, y: str,
    path: Path, xlabel: str, ylabel: str, title: str, line: bool = False, logx: bool = False,
) -> Path | None:  # fmt: skip
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r.get(x) is None or r.get(y) is None:
            continue
        groups.setdefault(_label(r, axes), []).append((float(r[x]), float(r[y])))
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    colours = plt.get_cmap("tab20" if len(groups) > 10 else "tab10")
    for k, (label, pts) in enumerate(groups.items()):
        xs, ys = zip(*pts, strict=True)
        ax.scatter(xs, ys, label=label, s=24, alpha=0.85, color=colours(k % colours.N),
                   marker="os^Dv<>p*h"[k // colours.N % 10])  # fmt: skip
    if line:
        xs_all = [p[0] for pts in groups.values() for p in pts]
        grid = np.linspace(max(min(xs_all), 1e-4), min(max(xs_all), 0.999), 100)
        ax.plot(grid, [theoretical_rate(g) for g in grid], "k--", lw=1,
                label="synchronous averaging: -2 ln(1 - gap)")  # fmt: skip
        ax.set_yscale("log")
    if line or logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    out: Path, plan: Plan, rows: Sequence[dict[str, Any]], aggregates: Sequence[dict[str, Any]]
) -> Path:
    """Write ``report.md`` (and its PNGs) into ``out``; returns its path."""
    axes = list(plan.grid)
    base = plan.base
    ok = [r for r in rows if r.get("status") == "ok"]
    target = plan.target
    lines = [
        "# Topology convergence report",
        "",
        f"{len(rows)} runs ({len(aggregates)} cells x {len(plan.seeds)} seeds"
        f" {plan.seeds[0]}..{plan.seeds[-1]}), {len(rows) - len(ok)} failed."
        f" Fixed: {base.peers} peers, {base.dataset}/{base.partition}, {base.model},"
        f" sampler {base.sampler}, mode {base.mode}, merge {base.merge}, lr {base.lr:g},"
        f" {base.periods} periods, evaluation every {base.eval_every}."
        + (f" Grid: {', '.join(f'{a} = {plan.grid[a]}' for a in axes)}." if axes else ""),
        "",
        "Means over seeds with 95% confidence intervals (Student's t). Receive rate: models a"
        " peer expects per period when every peer pushes once a period through the sampler"
        " (CV: coefficient of variation over peers). Push gap: the rate at which the sampler's"
        " pushes average disagreement away (second smallest real eigenvalue of"
        " (diag(r) - P^T) / 2, P the push probabilities). Periods to target: first evaluation at"
        f" which the mean peer accuracy reaches {target if target is not None else '(no --target)'}"
        " (n: runs that reached it). Decay rate: fitted rate of exp(-r t) of the consensus"
        " distance, t in periods, from its peak on.",
        "",
    ]
    header = ["rank", *(axes or ["run"]), "spectral gap", "push gap", "receive rate CV",
              "share < 0.5", "periods to target (n)", "decay rate", "accuracy (last 5)"]  # fmt: skip
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for rank, agg in enumerate(sorted(aggregates, key=_rank_key), start=1):
        reached = f" ({agg.get('periods_to_target_n', 0)}/{agg['runs']})" if target else ""
        cells = [str(rank), *(str(agg.get(a)) for a in axes)] if axes else [str(rank), "base"]
        cells += [
            _pm(agg, "spectral_gap", 3), _pm(agg, "push_gap", 3), _pm(agg, "receive_rate_cv", 2),
            _pm(agg, "receive_rate_below_half", 2), _pm(agg, "periods_to_target", 3) + reached,
            _pm(agg, "consensus_decay_rate", 3), _pm(agg, "acc_last5", 3),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## What predicts speed", ""]
    lines += [
        "Spearman's rank correlation over all runs (rho; p-value; runs). For periods to target"
        " a good predictor has |rho| near 1 (speed rises with the gap: rho < 0; it falls with"
        " the receive-rate spread: rho > 0).",
        "",
        "| outcome | " + " | ".join(label for _, label in PREDICTORS) + " |",
        "|---|" + "---|" * len(PREDICTORS),
    ]
    best: dict[str, tuple[str, float]] = {}
    for outcome, name in (("periods_to_target", "periods to target"),
                          ("consensus_decay_rate", "consensus decay rate")):  # fmt: skip
        cells = []
        for key, label in PREDICTORS:
            rho, p, n = rank_correlation(ok, key, outcome)
            cells.append("–" if rho is None else f"{rho:+.2f} (p {p:.2g}; {n})")
            if rho is not None and (outcome not in best or abs(rho) > abs(best[outcome][1])):
                best[outcome] = (label, rho)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for outcome, name in (("periods_to_target", "periods to target"),
                          ("consensus_decay_rate", "the consensus decay rate")):  # fmt: skip
        if outcome in best:
            label, rho = best[outcome]
            lines.append(
                f"- The best predictor of {name} here is the **{label}** (rho {rho:+.2f})."
            )
        else:
            lines.append(f"- {name.capitalize()}: too few runs with values to rank predictors.")
    lines.append("")
    plots = [
        _scatter(ok, axes, "spectral_gap", "consensus_decay_rate", out / "decay_vs_gap.png",
                 "spectral gap (Metropolis gossip matrix)", "consensus decay rate per period",
                 "decay rate against spectral gap", line=True),
        _scatter(ok, axes, "spectral_gap", "periods_to_target", out / "periods_vs_gap.png",
                 "spectral gap", "periods to target", "periods to target against spectral gap",
                 logx=True),
        _scatter(ok, axes, "push_gap", "periods_to_target", out / "periods_vs_push_gap.png",
                 "push gap (what the sampler's pushes average)", "periods to target",
                 "periods to target against push gap", logx=True),
        _scatter(ok, axes, "receive_rate_cv", "periods_to_target",
                 out / "periods_vs_receive_cv.png", "receive-rate coefficient of variation",
                 "periods to target", "periods to target against receive-rate spread"),
    ]  # fmt: skip
    for path in plots:
        if path is not None:
            lines += [f"![{path.stem}]({path.name})", ""]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        lines += ["## Failed runs", ""]
        for r in failed:
            lines.append(
                f"- {_label(r, axes)}, seed {r['seed']}: {r['status']}: {r.get('error', '')}"
            )
        lines.append("")
    lines += [
        "Files: `results.csv` (one row per run), `aggregate.csv` (per cell), `runs/*/seed-*/`"
        " (each run's config.json, metrics.jsonl, summary.json, plots).",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
