"""Streams are independent children of the seed, identical however many are spawned."""

from __future__ import annotations

import numpy as np

from gossip.seeding import PARTITION, generator, peer_stream, peer_torch_seed, stream


def test_stream_is_the_spawned_child() -> None:
    spawned = np.random.SeedSequence(9).spawn(12)
    assert stream(9, 3).generate_state(4).tolist() == spawned[3].generate_state(4).tolist()
    assert peer_stream(9, 2).generate_state(2).tolist() == spawned[7].generate_state(2).tolist()


def test_streams_differ_by_key_and_seed() -> None:
    draws = {tuple(generator(s, k).integers(1 << 40, size=3)) for s in (0, 1) for k in range(6)}
    assert len(draws) == 12
    assert peer_torch_seed(0, 0) != peer_torch_seed(0, 1)
    assert generator(4, PARTITION).random() == generator(4, PARTITION).random()
