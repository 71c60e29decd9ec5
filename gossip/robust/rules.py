"""Byzantine-robust aggregation as pure tensor functions, each with a batch dimension.

Like the classic merge rules (:mod:`gossip.merge`), these take leading batch dimensions so
that a batched engine can apply them to thousands of peers at once, and the Peer applies
them to one. None of them reads state or draws randomness.

``clip_toward(w_l, w_r, radius)``
    ``w_l + clip(w_r - w_l, radius)``: the received model's offset from the local one,
    scaled down to length ``radius`` when longer (ClippedGossip's CLIP, He, Karimireddy &
    Jaggi 2022). Whatever ``w_r`` is, the result is within ``radius`` of ``w_l``.
``coordinate_median(models)``
    The coordinate-wise (lower) median over the model axis (``dim=-2``).
``trimmed_mean(models, k)``
    Coordinate-wise: drop the ``k`` largest and ``k`` smallest values, average the rest
    (Yin et al. 2018). With ``n <= 2k`` models it is the median.
``lower_median(values)``
    The lower median of a list of numbers: robust to fewer than half of them being chosen by
    an adversary, and never the mean of an honest and a hostile value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def clip_toward(w_l: torch.Tensor, w_r: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """``w_l + (w_r - w_l) * min(1, radius / ||w_r - w_l||)`` per row (last dim = parameters)."""
    diff = w_r - w_l
    dist = torch.linalg.vector_norm(diff, dim=-1, keepdim=True)
    r = torch.as_tensor(radius, dtype=dist.dtype, device=dist.device)
    if r.dim() > 0:
        r = r.reshape(r.shape + (1,) * (dist.dim() - r.dim()))
    # An infinite or NaN distance (overflowed squares) clips to nothing at all.
    scale = torch.where(dist > r, r / torch.where(dist > 0, dist, 1.0), 1.0)
    scale = torch.where(torch.isfinite(dist), scale, 0.0)
    return w_l + diff * scale


def coordinate_median(models: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise lower median over ``dim=-2`` (models stacked as ``(..., n, P)``)."""
    # contiguous(): torch's median reads garbage from expanded (stride-0) inputs (torch 2.14).
    return models.contiguous().median(dim=-2).values


def trimmed_mean(models: torch.Tensor, k: int) -> torch.Tensor:
    """Coordinate-wise mean of the values left after dropping the ``k`` largest and ``k``
    smallest over ``dim=-2``; the median when fewer than ``2k + 1`` models are given."""
    n = models.shape[-2]
    if k < 0:
        raise ValueError(f"trim k must be >= 0, got {k}")
    if n <= 2 * k:
        return coordinate_median(models)
    if k == 0:
        return models.mean(dim=-2)
    ordered = models.contiguous().sort(dim=-2).values
    return ordered.narrow(-2, k, n - 2 * k).mean(dim=-2)


def lower_median(values: Sequence[float]) -> float:
    """The lower median (``sorted(values)[(n - 1) // 2]``); NaN for no values."""
    if not values:
        return float("nan")
    return sorted(values)[(len(values) - 1) // 2]
