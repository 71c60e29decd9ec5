"""Named overlay topologies for the simulator, built with networkx.

A topology is given as a spec string ``NAME[:PARAM[:PARAM]]`` (see :data:`TOPOLOGIES` or
``gossip-sim topologies``). :func:`build_topology` turns a spec into an undirected
:class:`networkx.Graph` on nodes ``0..n-1`` without self-loops;
:func:`sim.graph_properties.graph_properties` summarises a graph, including the spectral gap
that predicts how fast gossip averaging reaches consensus on it (re-exported here).

Conventions:

- Randomized models (``regular``, ``erdos-renyi``, ``watts-strogatz``, ``barabasi-albert``,
  ``random-geometric``, ``sbm``) draw one seed from the given ``rng``, so a graph is a deterministic function of the rng
  state. Deterministic shapes do not touch the rng.
- A disconnected result is refused (one-line :class:`ConfigError`) unless
  ``allow_disconnected=True``. It is never silently redrawn: retrying until connected would
  change the distribution the random model samples from.
- ``torus``: an r×c grid with wraparound, ``n = r*c`` with ``3 <= r <= c`` and r as close to
  sqrt(n) as possible. Node ``i*c + j`` is row i, column j. Every node has degree 4.
- ``star``: node 0 is the hub.
- ``dumbbell``: two complete graphs on nodes ``0..h-1`` and ``h..n-1`` (``h = n // 2``)
  joined by the single bridge edge ``(h-1, h)``.
- ``random-geometric:R``: n points uniform in the unit square, two linked when their
  Euclidean distance is <= R. Node ``i`` keeps its point as the attribute ``pos`` ([x, y]).
- ``sbm:B:P_IN:P_OUT``: stochastic block model. Block ``b`` is a run of consecutive nodes; the
  first ``n % B`` blocks have ``n // B + 1`` nodes, the rest ``n // B`` (see
  :func:`sbm_block_sizes`). Each pair inside a block is linked with probability P_IN, each
  pair across blocks with P_OUT, all independently. Sampled in O(n + B + edges) time (per-block
  and one cross-block G(n, p) skip sampler) rather than with ``nx.stochastic_block_model``,
  which draws one number per intra-block pair and takes ~1 minute at n = 100,000. No node or
  graph attributes are attached.
- ``hypercube``: n = 2^d peers; node i is linked to ``i XOR 2^k`` for k = 0..d-1 (degree d).
- ``exponential``: the static exponential graph (Ying et al. 2021): node i is linked to
  ``(i + 2^k) mod n`` for k = 0..ceil(log2 n)-1, made undirected (a circulant graph); the
  degree is the number of distinct offsets ``±2^k mod n`` (2·ceil(log2 n), less where
  offsets coincide, e.g. 7 for n = 16).
- ``file:PATH``: a whitespace-separated edge list, one ``u v`` pair per line; a line with a
  single label declares an (possibly isolated) node; ``#`` starts a comment; blank lines are
  ignored; duplicate edges are merged; self-loops are an error. If every label is an integer,
  labels are mapped to ``0..n-1`` in numeric order (a file already using ``0..n-1`` keeps
  its numbering); otherwise in order of first appearance. The file fixes n.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

from gossip.errors import ConfigError
from sim.graph_properties import graph_properties, metropolis_matrix, spectral_gap

Param = int | float | str


@dataclass(frozen=True)
class TopologyInfo:
    """One named topology, as listed by ``gossip-sim topologies``."""

    name: str
    params: str
    description: str


TOPOLOGIES: dict[str, TopologyInfo] = {
    info.name: info
    for info in (
        TopologyInfo("complete", "", "every peer linked to every other peer"),
        TopologyInfo("ring", "", "cycle: peer i linked to i-1 and i+1 (n >= 3)"),
        TopologyInfo("regular", "K", "random K-regular graph (1 <= K < n, n*K even)"),
        TopologyInfo("erdos-renyi", "P", "G(n, P): each pair linked with probability P"),
        TopologyInfo(
            "watts-strogatz", "K:P", "ring lattice of even degree K, each edge rewired w.p. P"
        ),
        TopologyInfo(
            "barabasi-albert", "M", "preferential attachment, M edges per new peer (M < n)"
        ),
        TopologyInfo(
            "torus", "", "2-D r×c grid with wraparound, r*c = n, r,c >= 3, most square; degree 4"
        ),
        TopologyInfo("star", "", "peer 0 is the hub linked to all others"),
        TopologyInfo("dumbbell", "", "two complete halves joined by one bridge edge (n >= 4)"),
        TopologyInfo(
            "random-geometric", "R", "random points in the unit square, linked within distance R"
        ),
        TopologyInfo(
            "sbm",
            "B:P_IN:P_OUT",
            "stochastic block model: B near-equal blocks, P_IN inside, P_OUT across (B <= n)",
        ),
        TopologyInfo(
            "hypercube", "", "peer i linked to i XOR 2^k; n a power of two, degree log2(n)"
        ),
        TopologyInfo("exponential", "", "static exponential graph: peer i linked to i + 2^k mod n"),
        TopologyInfo(
            "one-peer-exponential",
            "",
            "time-varying: at its k-th push peer i sends to i + 2^(k mod ceil(log2 n)) mod n"
            " (the graph in summary.json is the union: the exponential graph)",
        ),
        TopologyInfo(
            "file", "PATH", "edge list file: 'u v' per line, '#' comments; the file fixes n"
        ),
    )
}

_DISCONNECTED_HINTS: dict[str, str] = {
    "regular": "raise K",
    "erdos-renyi": "raise P",
    "watts-strogatz": "lower P or raise K",
    "random-geometric": "raise R",
    "sbm": "raise P_IN or P_OUT",
    "file": "fix the edge list",
}


def topology_names() -> list[str]:
    """Names of the known topologies, in listing order."""
    return list(TOPOLOGIES)


def _usage(name: str) -> str:
    info = TOPOLOGIES[name]
    return f"{name}:{info.params}" if info.params else name


def _bad(spec: str, why: str) -> ConfigError:
    name = spec.split(":", 1)[0].strip().lower()
    usage = f" (expected {_usage(name)})" if name in TOPOLOGIES else ""
    return ConfigError(f"bad topology {spec!r}: {why}{usage}")


def _parse_int(spec: str, label: str, text: str, minimum: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise _bad(spec, f"{label} must be an integer, got {text!r}") from None
    if value < minimum:
        raise _bad(spec, f"{label} must be >= {minimum}, got {value}")
    return value


def _parse_prob(spec: str, label: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise _bad(spec, f"{label} must be a number in [0, 1], got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise _bad(spec, f"{label} must be in [0, 1], got {text.strip()!r}")
    return value


def _parse_radius(spec: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise _bad(spec, f"R must be a number in (0, 1], got {text!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise _bad(spec, f"R must be in (0, 1], got {text.strip()!r}")
    return value


def parse_topology(spec: str) -> tuple[str, tuple[Param, ...]]:
    """Split and validate a spec: ``"watts-strogatz:4:0.1"`` -> ``("watts-strogatz", (4, 0.1))``.

    Checks the name and the parameters on their own; checks that depend on n (K < n, ...)
    happen in :func:`build_topology`. Raises a one-line :class:`ConfigError`.
    """
    text = spec.strip()
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    if name not in TOPOLOGIES:
        raise ConfigError(
            f"unknown topology {spec!r}; choose one of: {', '.join(TOPOLOGIES)}"
            " (see `gossip-sim topologies`)"
        )
    if name == "file":
        path = rest.strip()
        if not path:
            raise _bad(spec, "missing PATH")
        return name, (path,)
    args = rest.split(":") if rest else []
    expected = TOPOLOGIES[name].params.split(":") if TOPOLOGIES[name].params else []
    if len(args) != len(expected):
        raise _bad(spec, f"takes {len(expected)} parameter(s), got {len(args)}")
    if name == "regular":
        return name, (_parse_int(spec, "K", args[0], 1),)
    if name == "erdos-renyi":
        return name, (_parse_prob(spec, "P", args[0]),)
    if name == "watts-strogatz":
        k = _parse_int(spec, "K", args[0], 2)
        if k % 2:
            raise _bad(spec, f"K must be even, got {k}")
        return name, (k, _parse_prob(spec, "P", args[1]))
    if name == "barabasi-albert":
        return name, (_parse_int(spec, "M", args[0], 1),)
    if name == "random-geometric":
        return name, (_parse_radius(spec, args[0]),)
    if name == "sbm":
        b = _parse_int(spec, "B", args[0], 1)
        return name, (b, _parse_prob(spec, "P_IN", args[1]), _parse_prob(spec, "P_OUT", args[2]))
    return name, ()


def read_edge_list(path: str | Path) -> nx.Graph:
    """Read an edge-list file (format in the module docstring) into a graph on ``0..n-1``."""
    p = Path(path).expanduser()
    where = f"edge list file {str(p)!r}"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where} not found; check the file:PATH") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {where} ({type(exc).__name__})") from None
    labels: dict[str, None] = {}  # insertion-ordered set: order of first appearance
    pairs: list[tuple[str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        if len(tokens) > 2:
            why = f"expected 'u v' or a single node, got {len(tokens)} fields"
            raise ConfigError(f"{where} line {lineno}: {why}")
        if len(tokens) == 2 and tokens[0] == tokens[1]:
            raise ConfigError(f"{where} line {lineno}: self-loop on {tokens[0]!r}; remove it")
        for tok in tokens:
            labels.setdefault(tok)
        if len(tokens) == 2:
            pairs.append((tokens[0], tokens[1]))
    if not labels:
        raise ConfigError(f"{where} has no nodes; add 'u v' lines")
    order = list(labels)
    try:
        numeric = [int(label) for label in order]
    except ValueError:
        pass
    else:
        if len(set(numeric)) == len(order):  # "1" and "01" would collide: keep file order
            order = [label for _, label in sorted(zip(numeric, order, strict=True))]
    index = {label: i for i, label in enumerate(order)}
    g = nx.Graph()
    g.add_nodes_from(range(len(order)))
    g.add_edges_from((index[u], index[v]) for u, v in pairs)
    return g


def topology_peer_count(spec: str) -> int | None:
    """The number of peers a spec fixes (``file:`` specs), or None when any n works."""
    name, params = parse_topology(spec)
    if name != "file":
        return None
    return int(read_edge_list(str(params[0])).number_of_nodes())


def _torus_shape(spec: str, n: int) -> tuple[int, int]:
    for r in range(math.isqrt(n), 2, -1):
        if n % r == 0 and n // r >= 3:
            return r, n // r
    raise _bad(
        spec, f"{n} peers cannot form an r×c torus with r, c >= 3; use e.g. 9, 12, 16 or 100"
    )


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


def sbm_block_sizes(n: int, b: int) -> list[int]:
    """Block sizes of ``sbm:B:...`` on n peers: near-equal, the larger blocks first.

    Block ``k`` holds the nodes ``sum(sizes[:k]) .. sum(sizes[:k+1]) - 1``.
    """
    q, r = divmod(n, b)
    return [q + 1] * r + [q] * (b - r)


def _sbm(n: int, b: int, p_in: float, p_out: float, seed: int) -> nx.Graph:
    py_rng = random.Random(seed)
    sizes = sbm_block_sizes(n, b)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    start = 0
    for size in sizes:
        if size > 1 and p_in > 0:
            inside = nx.fast_gnp_random_graph(size, p_in, seed=py_rng)
            g.add_edges_from((u + start, v + start) for u, v in inside.edges)
        start += size
    if b > 1 and p_out > 0:
        # G(n, P_OUT) restricted to cross-block pairs: each such pair independently w.p. P_OUT.
        block = np.repeat(np.arange(b), sizes).tolist()
        across = nx.fast_gnp_random_graph(n, p_out, seed=py_rng)
        g.add_edges_from((u, v) for u, v in across.edges if block[u] != block[v])
    return g


def _hypercube(spec: str, n: int) -> nx.Graph:
    if n & (n - 1):
        lo = 1 << (n.bit_length() - 1)
        raise _bad(
            spec, f"a hypercube needs a power-of-two number of peers ({lo}, {2 * lo}, ...), got {n}"
        )
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for k in range(n.bit_length() - 1):
        bit = 1 << k
        g.add_edges_from((i, i | bit) for i in range(n) if not i & bit)
    return g


def _build(spec: str, name: str, params: tuple[Param, ...], n: int,
           rng: np.random.Generator) -> nx.Graph:  # fmt: skip
    if name == "complete":
        return nx.complete_graph(n)
    if name == "ring":
        if n < 3:
            raise _bad(spec, f"a ring needs n >= 3 peers, got {n}")
        return nx.cycle_graph(n)
    if name == "star":
        return nx.star_graph(n - 1)
    if name == "torus":
        r, c = _torus_shape(spec, n)
        grid = nx.grid_2d_graph(r, c, periodic=True)
        return nx.relabel_nodes(grid, {(i, j): i * c + j for i, j in grid.nodes})
    if name == "dumbbell":
        if n < 4:
            raise _bad(spec, f"a dumbbell needs n >= 4 peers, got {n}")
        h = n // 2
        g = nx.complete_graph(h)
        g.add_edges_from(nx.complete_graph(range(h, n)).edges)
        g.add_edge(h - 1, h)
        return g
    if name in ("regular", "watts-strogatz", "barabasi-albert"):
        k = int(params[0])
        if k >= n:
            label = TOPOLOGIES[name].params.split(":")[0]
            raise _bad(spec, f"{label} must be < n = {n} peers, got {k}")
        if name == "regular":
            if (n * k) % 2:
                raise _bad(spec, f"n*K must be even, but {n} peers × {k} is odd; change K or n")
            return nx.random_regular_graph(k, n, seed=_seed(rng))
        if name == "watts-strogatz":
            return nx.watts_strogatz_graph(n, k, float(params[1]), seed=_seed(rng))
        return nx.barabasi_albert_graph(n, k, seed=_seed(rng))
    if name == "erdos-renyi":
        return nx.fast_gnp_random_graph(n, float(params[0]), seed=_seed(rng))
    if name == "random-geometric":
        # nodes are already 0..n-1; with scipy installed the edges come from a KD-tree
        return nx.random_geometric_graph(n, float(params[0]), seed=_seed(rng))
    if name == "sbm":
        b = int(params[0])
        if b > n:
            raise _bad(spec, f"B must be <= n = {n} peers, got {b}")
        return _sbm(n, b, float(params[1]), float(params[2]), _seed(rng))
    if name == "hypercube":
        return _hypercube(spec, n)
    if name in ("exponential", "one-peer-exponential"):
        # a circulant graph (nx.circulant_graph builds the same edges, 2x slower); offsets 2^k
        # are < n, so no self-loops; coinciding offsets (+2^k == -2^j mod n) merge
        g = nx.Graph()
        g.add_nodes_from(range(n))
        for k in range((n - 1).bit_length()):
            step = 1 << k
            g.add_edges_from(zip(range(n), [*range(step, n), *range(step)], strict=True))
        return g
    raise AssertionError(f"unhandled topology {name}")  # pragma: no cover


def build_topology(
    spec: str, n: int, rng: np.random.Generator, *, allow_disconnected: bool = False
) -> nx.Graph:
    """Build the graph a spec names on ``n`` peers: undirected, nodes ``0..n-1``, no self-loops.

    Raises a one-line :class:`ConfigError` on a bad spec, parameters that do not fit ``n``,
    an edge-list file whose peer count differs from ``n``, or a disconnected result (unless
    ``allow_disconnected``).
    """
    name, params = parse_topology(spec)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ConfigError(f"topology {spec!r} needs at least 2 peers, got {n!r}")
    if name == "file":
        g = read_edge_list(str(params[0]))
        if g.number_of_nodes() != n:
            raise ConfigError(
                f"edge list {str(params[0])!r} defines {g.number_of_nodes()} peers but {n} were "
                f"requested; set the peer count to {g.number_of_nodes()}"
            )
    else:
        g = _build(spec, name, params, n, rng)
    if type(g) is not nx.Graph or name == "file":
        g = nx.Graph(g)  # plain undirected graph, fresh attribute dicts
    # (A generator's own nx.Graph is already fresh: copying a 1,000,000-peer ring took 3 s.)
    if not allow_disconnected and not nx.is_connected(g):
        parts = nx.number_connected_components(g)
        hint = _DISCONNECTED_HINTS.get(name, "choose another topology")
        raise ConfigError(
            f"topology {spec.strip()} on {n} peers is disconnected ({parts} components); "
            f"{hint} or pass --allow-disconnected"
        )
    return g


__all__ = [
    "TOPOLOGIES",
    "TopologyInfo",
    "build_topology",
    "graph_properties",
    "metropolis_matrix",
    "parse_topology",
    "read_edge_list",
    "sbm_block_sizes",
    "spectral_gap",
    "topology_names",
    "topology_peer_count",
]
