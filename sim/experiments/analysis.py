"""From runs to numbers: one row per run, aggregates over seeds, rank correlations.

``periods_to_target``: the first evaluation (in gossip periods) at which the peers' mean
accuracy reaches the target; missing (empty in CSV) when it never does.

``consensus_decay_rate``: the rate ``r`` of ``consensus(t) ~ exp(-r t)`` (t in periods),
fitted by least squares on ``ln consensus`` from the largest value on (before it, peers that
start from one model drift apart by training), over the points above 1e-30 of it; missing
with fewer than three such points. With ``--init independent --lr 0`` it is the pure
averaging rate of the gossip protocol on the graph, to be compared with the spectral gap:
synchronous averaging with the Metropolis matrix shrinks the mean squared distance by at
least ``(1 - gap)^2`` a round, i.e. ``r >= -2 ln(1 - gap)`` (:func:`theoretical_rate`).
While peers train, disagreement is renewed each step, and the fitted rate measures how the
spread settles instead.

Aggregates: per grid cell, the mean over seeds and the half-width of its 95% confidence
interval, ``t_{0.975, n-1} * s / sqrt(n)`` (Student's t; no interval from one seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

# The per-run metrics the aggregates and the report use (result columns).
METRICS = (
    "periods_to_target",
    "consensus_decay_rate",
    "acc_mean",
    "acc_last5",
    "acc_avgmodel",
    "consensus",
    "messages_sent",
)
GRAPH_COLUMNS = (
    "spectral_gap",
    "degree_mean",
    "degree_max",
    "diameter",
    "average_clustering",
)
RATE_COLUMNS = ("receive_rate_mean", "receive_rate_cv", "receive_rate_below_half", "push_gap")


def periods_to_target(
    records: Sequence[dict[str, Any]], target: float, period: float
) -> float | None:
    """Periods until the mean peer accuracy first reaches ``target`` (None: never)."""
    for r in records:
        acc = r.get("acc_mean")
        if acc is not None and acc >= target:
            return round(float(r["time"]) / period, 6)
    return None


def consensus_decay_rate(records: Sequence[dict[str, Any]], period: float) -> float | None:
    """The fitted exponential decay rate of the consensus distance per period (see the
    module docstring), or None with too few points."""
    pts = [(float(r["time"]) / period, float(r["consensus"])) for r in records
           if r.get("consensus") is not None and math.isfinite(float(r["consensus"]))]  # fmt: skip
    if not pts:
        return None
    peak = max(range(len(pts)), key=lambda i: pts[i][1])
    top = pts[peak][1]
    tail = [(t, c) for t, c in pts[peak:] if c > top * 1e-30 and c > 0]
    if len(tail) < 3:
        return None
    t = np.array([p[0] for p in tail])
    y = np.log(np.array([p[1] for p in tail]))
    slope = float(np.polyfit(t, y, 1)[0])
    return -slope


def theoretical_rate(gap: float) -> float:
    """``-2 ln(1 - gap)``: the per-round decay of the mean squared distance to consensus
    under synchronous Metropolis averaging (infinite for gap 1)."""
    return math.inf if gap >= 1 else -2.0 * math.log1p(-gap)


def run_row(
    cell: dict[str, Any],
    seed: int,
    records: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    period: float,
    target: float | None,
    status: str = "ok",
) -> dict[str, Any]:
    """The results.csv row of one run."""
    row: dict[str, Any] = {**cell, "seed": seed, "status": status}
    graph = summary.get("graph", {})
    for key in GRAPH_COLUMNS:
        row[key] = graph.get(key)
    rates = summary.get("receive_rate") or {}
    row["receive_rate_mean"] = rates.get("mean")
    row["receive_rate_cv"] = rates.get("cv")
    row["receive_rate_below_half"] = rates.get("below_half")
    row["push_gap"] = rates.get("push_gap")
    final = records[-1] if records else {}
    row["acc_mean"] = final.get("acc_mean")
    last = [r["acc_mean"] for r in records[-5:] if r.get("acc_mean") is not None]
    row["acc_last5"] = sum(last) / len(last) if last else None
    row["acc_avgmodel"] = final.get("acc_avgmodel")
    row["consensus"] = final.get("consensus")
    row["messages_sent"] = final.get("messages_sent")
    row["periods_to_target"] = (
        periods_to_target(records, target, period) if target is not None else None
    )
    row["consensus_decay_rate"] = consensus_decay_rate(records, period)
    return row  # no wall time: results.csv is the same wherever and however fast it ran


def mean_ci(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, 95% half-width, count) of the values that are present."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    mean = float(np.mean(xs))
    if len(xs) < 2:
        return mean, None, 1
    half = float(stats.t.ppf(0.975, len(xs) - 1) * np.std(xs, ddof=1) / math.sqrt(len(xs)))
    return mean, half, len(xs)


def aggregate(rows: Sequence[dict[str, Any]], axes: Sequence[str]) -> list[dict[str, Any]]:
    """One row per grid cell: the axes' values, ``runs``, and for every metric its mean,
    ``_ci95`` half-width and ``_n`` (runs where it is present; for periods_to_target, the
    runs that reached the target). Graph and rate columns are averaged too (random graphs
    differ by seed)."""
    cells: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(tuple(repr(row.get(a)) for a in axes), []).append(row)
    out = []
    for group in cells.values():
        agg: dict[str, Any] = {a: group[0].get(a) for a in axes}
        agg["runs"] = len(group)
        agg["failed"] = sum(1 for r in group if r.get("status") != "ok")
        for key in (*GRAPH_COLUMNS, *RATE_COLUMNS, *METRICS):
            mean, half, n = mean_ci(r.get(key) for r in group)
            agg[key] = mean
            agg[f"{key}_ci95"] = half
            agg[f"{key}_n"] = n
        out.append(agg)
    return out


def rank_correlation(
    rows: Sequence[dict[str, Any]], x: str, y: str
) -> tuple[float | None, float | None, int]:
    """Spearman's rho of columns ``x`` and ``y`` over the rows where both are present (and
    its p-value); None when fewer than three such rows or a column is constant."""
    pairs = [(float(r[x]), float(r[y])) for r in rows
             if r.get(x) is not None and r.get(y) is not None]  # fmt: skip
    if len(pairs) < 3:
        return None, None, len(pairs)
    xs, ys = zip(*pairs, strict=True)
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None, None, len(pairs)
    result = stats.spearmanr(xs, ys)
    return float(result.statistic), float(result.pvalue), len(pairs)
