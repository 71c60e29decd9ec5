"""Topology samplers that correct what a uniform neighbour choice does to receive rates.

Pushing to a uniformly random neighbour, peer ``j`` expects ``r_j = sum_{i ~ j} 1 / d_i``
models per period: on a skewed graph (Barabási–Albert) hubs get several a period while a
third of the peers get fewer than half of one, and the slowest learners set the pace. Two
samplers here fix the *expected* receive rates without changing who may talk to whom:

``neighbours-balanced[:MIX]``
    Peer ``i`` chooses neighbour ``j`` with probability ``P_ij = (1 - MIX) B_ij + MIX / d_i``,
    where ``B`` is the adjacency matrix scaled by Sinkhorn–Knopp (``B = D_r A D_c``, diagonal
    scalings) until every column sums to one: each peer still pushes once a period and now
    also expects about one model a period. Like a Metropolis–Hastings correction of the
    walk's bias to hubs it reweights edges by the degrees around them, but it balances the
    rate of *arrivals* (Metropolis–Hastings makes the stationary distribution uniform by
    letting low-degree peers skip pushes, which leaves their receive rates just as uneven).
    A doubly stochastic pattern on the edges does not always exist (a star: every leaf can
    only send to the centre; Barabási–Albert with m = 2); then Sinkhorn balances by starving
    edges, down to cutting the push dynamics into pieces (:func:`push_gap` 0): the plain
    share ``MIX`` (default 0.5) keeps every edge in use. Measured on 100 digits/logreg peers
    (5 seeds, periods to 0.85): Barabási–Albert m = 2 takes 84 periods plain, never gets
    there with MIX 0 (final 0.82), 118 with MIX 0.1, 80 with 0.3 and 72 with 0.5.

``one-peer-exponential`` (with ``--topology one-peer-exponential``)
    The time-varying one-peer exponential graph of decentralized SGD (Ying et al., NeurIPS
    2021): at its k-th push peer ``i`` sends to ``(i + 2^(k mod tau)) mod n``, ``tau =
    ceil(log2 n)``. Every period is a permutation (each peer receives exactly one model), and
    with n a power of two tau rounds of pairwise averaging reach exact consensus.

Both are deterministic given their seeded generator, as every sampler here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import networkx as nx
import numpy as np
import scipy.sparse as sp

from gossip.errors import ConfigError
from sampling.base import PeerSampler


def sinkhorn_weights(
    graph: nx.Graph, *, tol: float = 1e-9, max_iterations: int = 2_000
) -> sp.csr_array:
    """The row-stochastic push matrix of ``neighbours-balanced`` (rows and columns in
    ``sorted(graph.nodes)`` order): the adjacency matrix with rows and columns normalised in
    turn (Sinkhorn–Knopp, ``P = D_r A D_c``) until the columns sum to one within ``tol`` or
    ``max_iterations`` pass, rows normalised last so that every peer pushes once a period.

    Where the graph admits a doubly stochastic pattern this converges to one (receive rates
    all 1); where it does not (a star, a tree's leaves sharing a hub) the alternation ends as
    close as it got, which is the best the graph allows in Sinkhorn's sense (it minimises the
    Kullback–Leibler divergence from ``A`` subject to the marginals reached)."""
    nodes = sorted(graph.nodes)
    a = nx.to_scipy_sparse_array(graph, nodelist=nodes, weight=None, dtype=np.float64)
    p = sp.csr_array(a - sp.diags_array(a.diagonal()))  # no pushes to oneself
    p.eliminate_zeros()

    def _scale_rows(m: sp.csr_array) -> sp.csr_array:
        rows = np.asarray(m.sum(axis=1)).ravel()
        return sp.csr_array(sp.diags_array(1.0 / np.where(rows > 0, rows, 1.0)) @ m)

    for _ in range(max_iterations):
        p = _scale_rows(p)
        cols = np.asarray(p.sum(axis=0)).ravel()
        if np.max(np.abs(cols[cols > 0] - 1.0), initial=0.0) < tol:
            break
        p = sp.csr_array(p @ sp.diags_array(1.0 / np.where(cols > 0, cols, 1.0)))
    return _scale_rows(p)


BALANCED = "neighbours-balanced"
DEFAULT_MIX = 0.5


def parse_balanced(spec: str) -> float | None:
    """The mix of ``neighbours-balanced[:MIX]`` (None: not this sampler); a bad MIX raises
    a one-line :class:`ConfigError`."""
    name, sep, arg = spec.strip().partition(":")
    if name != BALANCED:
        return None
    if not sep:
        return DEFAULT_MIX
    try:
        mix = float(arg)
    except ValueError:
        mix = math.nan
    if not 0.0 <= mix <= 1.0:
        raise ConfigError(
            f"bad sampler {spec!r}: MIX must be a number in [0, 1] (the share of plain"
            f" neighbour choice kept; default {DEFAULT_MIX})"
        )
    return mix


def balanced_push_matrix(graph: nx.Graph, mix: float = DEFAULT_MIX) -> sp.csr_array:
    """The push matrix of ``neighbours-balanced:MIX``: ``(1 - MIX)`` Sinkhorn-balanced plus
    ``MIX`` plain neighbour choice, so that every edge keeps at least ``MIX / d_i``."""
    balanced = sinkhorn_weights(graph)
    if mix == 0:
        return balanced
    return sp.csr_array((1.0 - mix) * balanced + mix * neighbour_push_matrix(graph))


def push_gap(push: sp.csr_array, dense_limit: int = 1_000) -> float | None:
    """How fast expected disagreement decays under push averaging along ``push``: the
    second smallest real part of the eigenvalues of ``L = (diag(r) - P^T) / 2`` (r: the
    receive rates), the rate per period of continuous-time push averaging (a receiver
    averages with the model it gets). Unlike the Metropolis matrix's gap it sees what the
    sampler does: edges it rarely uses, hubs it floods. None above ``dense_limit`` peers
    (a dense non-symmetric eigenvalue problem: 0.7 s at 1,000 peers, 4.7 s at 2,000, and it
    runs for every simulation's summary)."""
    n = push.shape[0]
    if n < 2 or n > dense_limit:
        return None
    p = push.toarray()
    lap = 0.5 * (np.diag(p.sum(axis=0)) - p.T)
    ev = np.sort(np.linalg.eigvals(lap).real)
    return float(max(ev[1], 0.0))


def receive_rates(push: sp.csr_array) -> np.ndarray:
    """Expected models each peer receives per period when every peer pushes once a period
    along the row-stochastic ``push`` matrix: its column sums."""
    return np.asarray(push.sum(axis=0)).ravel()


def neighbour_push_matrix(graph: nx.Graph) -> sp.csr_array:
    """The push matrix of the plain ``neighbours`` sampler: ``P_ij = 1 / d_i`` on edges."""
    nodes = sorted(graph.nodes)
    a = nx.to_scipy_sparse_array(graph, nodelist=nodes, weight=None, dtype=np.float64)
    a = sp.csr_array(a - sp.diags_array(a.diagonal()))
    a.eliminate_zeros()
    deg = np.asarray(a.sum(axis=1)).ravel()
    deg[deg == 0] = 1.0
    return sp.csr_array(sp.diags_array(1.0 / deg) @ a)


def rate_summary(rates: np.ndarray) -> dict[str, float]:
    """Mean, coefficient of variation, and share of peers below half a model a period."""
    mean = float(rates.mean()) if rates.size else 0.0
    std = float(rates.std()) if rates.size else 0.0
    return {  # rounded: a CV of 1e-16 is float noise around 0, not a measurement
        "mean": round(mean, 12),
        "cv": round(std / mean, 12) if mean > 0 else 0.0,
        "below_half": float((rates < 0.5).mean()) if rates.size else 0.0,
        "min": float(rates.min()) if rates.size else 0.0,
        "max": float(rates.max()) if rates.size else 0.0,
    }


class WeightedNeighbourSampler(PeerSampler):
    """A neighbour drawn with fixed probabilities (one row of a push matrix). A failed peer
    is skipped for ``failure_backoff`` selections, as :class:`UniformSampler` does."""

    name = "neighbours-balanced"

    def __init__(
        self,
        self_id: str,
        peers: Sequence[str],
        weights: Sequence[float],
        rng: np.random.Generator,
        failure_backoff: int = 0,
    ) -> None:
        if len(peers) != len(weights):
            raise ValueError("one weight per peer")
        self.self_id = self_id
        self._peers = tuple(peers)
        w = np.asarray(weights, dtype=np.float64)
        self._cdf = np.cumsum(w / w.sum()) if len(w) and w.sum() > 0 else np.zeros(0)
        self._rng = rng
        self._backoff = failure_backoff
        self._suspended: dict[str, int] = {}

    def known_peers(self) -> Sequence[str]:
        return self._peers

    def _draw(self) -> str:
        i = int(np.searchsorted(self._cdf, self._rng.random() * self._cdf[-1], side="right"))
        return self._peers[min(i, len(self._peers) - 1)]

    def select(self) -> str | None:
        if not self._peers:
            return None
        for p in list(self._suspended):
            self._suspended[p] -= 1
            if self._suspended[p] <= 0:
                del self._suspended[p]
        for _ in range(8):  # a suspended pick is drawn again, a few times at most
            choice = self._draw()
            if choice not in self._suspended:
                return choice
        return choice

    def report_failure(self, peer_id: str) -> None:
        if self._backoff > 0 and peer_id in self._peers:
            self._suspended[peer_id] = self._backoff

    def report_alive(self, peer_id: str) -> None:
        self._suspended.pop(peer_id, None)


def one_peer_exponential_tau(n: int) -> int:
    """Rounds of the one-peer exponential graph: ``ceil(log2 n)`` (at least 1)."""
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


class OnePeerExponentialSampler(PeerSampler):
    """Peer ``index`` of ``ids`` sends its k-th push to ``ids[(index + 2^(k mod tau)) % n]``."""

    name = "one-peer-exponential"

    def __init__(self, ids: Sequence[str], index: int) -> None:
        self._ids = tuple(ids)
        self._index = index
        n = len(self._ids)
        self._tau = one_peer_exponential_tau(n)
        self._k = 0
        hops = {(index + (1 << k)) % n for k in range(self._tau)} - {index}
        self._known = tuple(self._ids[j] for j in sorted(hops))

    def known_peers(self) -> Sequence[str]:
        return self._known

    def select(self) -> str | None:
        n = len(self._ids)
        if n < 2:
            return None
        hop = 1 << (self._k % self._tau)
        self._k += 1
        return self._ids[(self._index + hop) % n]


TIME_VARYING_TOPOLOGY = "one-peer-exponential"


def is_time_varying(topology: str) -> bool:
    """Whether a topology spec names the time-varying one-peer exponential graph (whose
    peers use :class:`OnePeerExponentialSampler` instead of a neighbour sampler)."""
    return topology.strip().split(":", 1)[0] == TIME_VARYING_TOPOLOGY
