"""Observer metrics against their definitions."""

from __future__ import annotations

import torch

from sim.observer import consensus_distance


def test_consensus_distance_is_mean_squared_distance_to_the_average() -> None:
    g = torch.Generator().manual_seed(0)
    flats = [torch.randn(50, generator=g) for _ in range(7)]
    stacked = torch.stack(flats).double()
    expected = float(((stacked - stacked.mean(0)) ** 2).sum(1).mean())
    assert abs(consensus_distance(flats) - expected) < 1e-9 * expected
    assert consensus_distance([flats[0]] * 4) == 0.0
    assert consensus_distance([]) != consensus_distance([])  # nan
