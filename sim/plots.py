"""PNG plots of simulation metrics (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Record = Mapping[str, Any]


def _xy(
    records: Sequence[Record], key: str, positive: bool = False
) -> tuple[list[float], list[float]]:
    """Times and values of ``key`` (skipping missing values, and non-positive ones for log axes)."""
    kept = [r for r in records if r.get(key) is not None and (not positive or r[key] > 0)]
    return [float(r["time"]) for r in kept], [float(r[key]) for r in kept]


def plot_run(
    records: Sequence[Record], out: Path, title: str = "", baseline: float | None = None
) -> list[Path]:
    """accuracy.png (mean with min–max and p10–p90 bands) and consensus.png (log scale)."""
    paths = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    t, mean = _xy(records, "acc_mean")
    _, lo = _xy(records, "acc_min")
    _, hi = _xy(records, "acc_max")
    _, p10 = _xy(records, "acc_p10")
    _, p90 = _xy(records, "acc_p90")
    ax.fill_between(t, lo, hi, alpha=0.15, label="min–max")
    ax.fill_between(t, p10, p90, alpha=0.3, label="p10–p90")
    ax.plot(t, mean, lw=2, label="mean")
    t_avg, avg = _xy(records, "acc_avgmodel")
    if avg and avg != mean:  # (FedAvg and centralized: the same line)
        ax.plot(t_avg, avg, lw=1.5, ls=":", color="C2", label="average model")
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="k", lw=1, label="centralized")
    ax.set(xlabel="virtual time (s)", ylabel="test accuracy of peers", title=title, ylim=(0, 1))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    paths.append(_save(fig, out / "accuracy.png"))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(*_xy(records, "consensus", positive=True), lw=2)
    ax.set(
        xlabel="virtual time (s)",
        ylabel="consensus distance  mean ||w_i - w̄||²",
        title=title,
        yscale="log",
    )
    ax.grid(alpha=0.3, which="both")
    paths.append(_save(fig, out / "consensus.png"))
    return paths


def plot_comparison(
    runs: Mapping[str, Sequence[Record]], out: Path, title: str = "", baseline: float | None = None
) -> Path:
    """compare.png: mean accuracy and consensus distance of several runs side by side."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, records in runs.items():
        ax1.plot(*_xy(records, "acc_mean"), lw=2, label=label)
        ax2.plot(*_xy(records, "consensus", positive=True), lw=2, label=label)
    if baseline is not None:
        ax1.axhline(baseline, ls="--", color="k", lw=1, label="centralized")
    ax1.set(xlabel="virtual time (s)", ylabel="mean test accuracy", ylim=(0, 1), title=title)
    ax2.set(xlabel="virtual time (s)", ylabel="consensus distance", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, out / "compare.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
