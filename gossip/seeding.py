"""The random streams of a run, all derived from one seed.

Every consumer of randomness gets its own independent ``SeedSequence`` child, identified by a
fixed key, so that changing one part of an experiment (say, the loss rate) does not change
what another part draws (which data each peer holds), and so that a real node with
``--seed S --node-index i`` draws exactly what simulated peer ``i`` draws with ``--seed S``
(its shard, its batch order and its gossip choices).
"""

from __future__ import annotations

import numpy as np

PARTITION, TOPOLOGY, NETWORK, CHURN, EVALUATION = range(5)
_FIRST_PEER = 5
# Keys above every peer index (ids derive node indices below 2**33): who attacks.
ATTACK = 1 << 40
# Peer i's view-exchange choices (Cyclon, Newscast): key SAMPLING_FIRST + i, apart from its
# gossip stream so that turning a dynamic sampler on changes nothing else a peer draws.
SAMPLING_FIRST = 1 << 41


def stream(seed: int, key: int) -> np.random.SeedSequence:
    """The child stream ``key`` of ``seed`` (the same as ``SeedSequence(seed).spawn(n)[key]``)."""
    return np.random.SeedSequence(seed, spawn_key=(key,))


def generator(seed: int, key: int) -> np.random.Generator:
    return np.random.default_rng(stream(seed, key))


def peer_key(index: int) -> int:
    """The key of peer ``index``'s stream."""
    return _FIRST_PEER + index


def peer_stream(seed: int, index: int) -> np.random.SeedSequence:
    """Peer ``index``'s own stream: its gossip choices and (via :func:`peer_torch_seed`) its
    batch order."""
    return stream(seed, peer_key(index))


def peer_torch_seed(seed: int, index: int) -> int:
    return int(peer_stream(seed, index).generate_state(1)[0])
