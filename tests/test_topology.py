"""Named topologies: shapes, determinism, edge-list files, refusals and spectral properties."""

from __future__ import annotations

import json
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from gossip.errors import ConfigError
from sim.graph_properties import _shift_invert
from sim.topology import (
    TOPOLOGIES,
    TopologyInfo,
    build_topology,
    graph_properties,
    metropolis_matrix,
    parse_topology,
    spectral_gap,
    topology_names,
    topology_peer_count,
)

GENERATED = [
    ("complete", 30),
    ("ring", 30),
    ("regular:4", 30),
    ("erdos-renyi:0.3", 30),
    ("watts-strogatz:4:0.1", 30),
    ("barabasi-albert:2", 30),
    ("torus", 30),
    ("star", 30),
    ("dumbbell", 31),
]
RANDOM_SPECS = ["regular:4", "erdos-renyi:0.3", "watts-strogatz:4:0.3", "barabasi-albert:2"]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _degrees(g: nx.Graph) -> list[int]:
    return [int(d) for _, d in g.degree()]


def _one_line_error(spec: str, n: int = 20) -> str:
    with pytest.raises(ConfigError) as info:
        build_topology(spec, n, _rng())
    message = str(info.value)
    assert message
    assert "\n" not in message
    return message


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "edges.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_registry_lists_every_generated_topology_and_files() -> None:
    assert topology_names() == list(TOPOLOGIES)
    assert {spec.split(":")[0] for spec, _ in GENERATED} | {"file"} == set(TOPOLOGIES)
    for name, info in TOPOLOGIES.items():
        assert isinstance(info, TopologyInfo)
        assert info.name == name
        assert info.description


@pytest.mark.parametrize(("spec", "n"), GENERATED)
def test_builds_a_simple_undirected_connected_graph_on_0_to_n(spec: str, n: int) -> None:
    g = build_topology(spec, n, _rng())
    assert type(g) is nx.Graph
    assert sorted(g.nodes) == list(range(n))
    assert nx.number_of_selfloops(g) == 0
    assert nx.is_connected(g)


@pytest.mark.parametrize(
    ("spec", "n", "degree"),
    [("ring", 17, 2), ("regular:3", 20, 3), ("regular:6", 21, 6), ("complete", 12, 11)],
)
def test_regular_shapes_have_the_stated_degree(spec: str, n: int, degree: int) -> None:
    g = build_topology(spec, n, _rng())
    assert set(_degrees(g)) == {degree}
    assert g.number_of_edges() == n * degree // 2


def test_star_has_one_hub_of_degree_n_minus_1_at_node_0() -> None:
    g = build_topology("star", 25, _rng())
    assert g.degree(0) == 24
    assert sorted(_degrees(g)) == [1] * 24 + [24]


@pytest.mark.parametrize(("n", "cols"), [(9, 3), (12, 4), (18, 6), (64, 8), (100, 10)])
def test_torus_is_the_most_square_wraparound_grid(n: int, cols: int) -> None:
    g = build_topology("torus", n, _rng())
    assert set(_degrees(g)) == {4}
    # node i*c + j is row i, column j: node 0's neighbours pin down the column count c
    assert set(g.neighbors(0)) == {1, cols - 1, cols, n - cols}


@pytest.mark.parametrize("n", [8, 13, 14, 97])
def test_torus_refuses_peer_counts_without_an_r_by_c_factorisation(n: int) -> None:
    assert "torus" in _one_line_error("torus", n)


@pytest.mark.parametrize("n", [10, 11])
def test_dumbbell_is_two_cliques_joined_by_one_bridge(n: int) -> None:
    g = build_topology("dumbbell", n, _rng())
    h = n // 2
    assert list(nx.bridges(g)) in ([(h - 1, h)], [(h, h - 1)])
    left, right = g.subgraph(range(h)), g.subgraph(range(h, n))
    assert left.number_of_edges() == h * (h - 1) // 2
    assert right.number_of_edges() == (n - h) * (n - h - 1) // 2
    assert g.number_of_edges() == left.number_of_edges() + right.number_of_edges() + 1


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_random_models_are_deterministic_given_the_rng(spec: str) -> None:
    first = build_topology(spec, 40, _rng(7))
    again = build_topology(spec, 40, _rng(7))
    other = build_topology(spec, 40, _rng(8))
    assert sorted(first.edges) == sorted(again.edges)
    assert sorted(first.edges) != sorted(other.edges)


def test_deterministic_shapes_leave_the_rng_untouched() -> None:
    rng = _rng(3)
    build_topology("ring", 10, rng)
    assert rng.integers(2**31) == _rng(3).integers(2**31)


def test_parse_topology_returns_typed_parameters() -> None:
    assert parse_topology("complete") == ("complete", ())
    assert parse_topology(" Regular:4 ") == ("regular", (4,))
    assert parse_topology("erdos-renyi:1e-1") == ("erdos-renyi", (0.1,))
    assert parse_topology("watts-strogatz:6:0") == ("watts-strogatz", (6, 0.0))
    assert parse_topology("barabasi-albert:3") == ("barabasi-albert", (3,))
    assert parse_topology("file:/tmp/a:b.txt") == ("file", ("/tmp/a:b.txt",))


@pytest.mark.parametrize(
    "spec",
    [
        "nope",
        "",
        "complete:3",
        "regular",
        "regular:x",
        "regular:0",
        "regular:4.0",
        "erdos-renyi:1.5",
        "erdos-renyi:-0.1",
        "erdos-renyi:nan",
        "erdos-renyi:p",
        "watts-strogatz:4",
        "watts-strogatz:3:0.1",
        "watts-strogatz:4:2",
        "barabasi-albert:0",
        "barabasi-albert:2:3",
        "file:",
    ],
)
def test_bad_specs_are_one_line_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_topology(spec)
    assert "\n" not in str(info.value)
    _one_line_error(spec)


def test_unknown_name_lists_the_choices() -> None:
    message = _one_line_error("hypercube")
    assert "unknown topology" in message
    assert "watts-strogatz" in message


@pytest.mark.parametrize(
    ("spec", "n", "needle"),
    [
        ("regular:3", 11, "even"),
        ("regular:20", 20, "< n"),
        ("watts-strogatz:20:0.1", 20, "< n"),
        ("barabasi-albert:20", 20, "< n"),
        ("ring", 2, "n >= 3"),
        ("dumbbell", 3, "n >= 4"),
        ("complete", 1, "at least 2"),
    ],
)
def test_parameters_that_do_not_fit_n_are_refused(spec: str, n: int, needle: str) -> None:
    assert needle in _one_line_error(spec, n)


def test_disconnected_graphs_are_refused_with_a_hint() -> None:
    message = _one_line_error("erdos-renyi:0.01", 100)
    assert message.startswith("topology erdos-renyi:0.01 on 100 peers is disconnected (")
    assert "components); raise P or pass --allow-disconnected" in message


def test_allow_disconnected_returns_the_graph_and_properties_say_so() -> None:
    g = build_topology("erdos-renyi:0.01", 100, _rng(), allow_disconnected=True)
    assert g.number_of_nodes() == 100
    props = graph_properties(g)
    assert props["connected"] is False
    assert props["components"] == nx.number_connected_components(g) > 1
    assert props["spectral_gap"] == 0.0
    assert "diameter" not in props
    assert "mixing_time_estimate" not in props


def test_edge_list_file_with_comments_blank_lines_and_numeric_labels(tmp_path: Path) -> None:
    path = _write(tmp_path, "# a path 10-20-30 plus 5\n\n20 10  # trailing comment\n30\t20\n5 10\n")
    g = build_topology(f"file:{path}", 4, _rng())
    # integer labels are numbered in numeric order: 5->0, 10->1, 20->2, 30->3
    assert sorted(tuple(sorted(e)) for e in g.edges) == [(0, 1), (1, 2), (2, 3)]
    assert topology_peer_count(f"file:{path}") == 4
    assert topology_peer_count("ring") is None


def test_edge_list_file_with_names_uses_order_of_first_appearance(tmp_path: Path) -> None:
    path = _write(tmp_path, "carol alice\nalice bob\nbob alice\ndave\ndave carol\n")
    g = build_topology(f"file:{path}", 4, _rng())
    # carol->0, alice->1, bob->2, dave->3; the repeated edge is merged
    assert sorted(tuple(sorted(e)) for e in g.edges) == [(0, 1), (0, 3), (1, 2)]


def test_edge_list_file_errors_are_one_line(tmp_path: Path) -> None:
    good = _write(tmp_path, "0 1\n1 2\n")
    assert "defines 3 peers but 5 were requested" in _one_line_error(f"file:{good}", 5)
    assert "not found" in _one_line_error(f"file:{tmp_path / 'missing.txt'}", 3)
    loop = _write(tmp_path, "0 1\n1 1\n")
    assert "line 2: self-loop" in _one_line_error(f"file:{loop}", 2)
    weighted = _write(tmp_path, "0 1\n1 2 0.5\n")
    assert "line 2: expected" in _one_line_error(f"file:{weighted}", 3)
    empty = _write(tmp_path, "# empty\n")
    assert "no nodes" in _one_line_error(f"file:{empty}", 2)
    isolated = _write(tmp_path, "0 1\n2\n")
    assert "fix the edge list" in _one_line_error(f"file:{isolated}", 3)
    g = build_topology(f"file:{isolated}", 3, _rng(), allow_disconnected=True)
    assert g.degree(2) == 0


def test_metropolis_matrix_is_symmetric_and_doubly_stochastic() -> None:
    g = build_topology("barabasi-albert:2", 40, _rng())
    w = metropolis_matrix(g).toarray()
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w.sum(axis=1), np.ones(40))
    assert (w >= 0).all()
    u, v = next(iter(g.edges))
    assert w[u, v] == pytest.approx(1.0 / (1 + max(g.degree(u), g.degree(v))))


def test_spectral_gap_of_the_complete_graph_is_one() -> None:
    # Metropolis on K_n gives W = J/n: eigenvalues 1 and 0 (n-1 times).
    assert spectral_gap(build_topology("complete", 50, _rng())) == pytest.approx(1.0, abs=1e-9)


def test_spectral_gap_orders_complete_regular_ring() -> None:
    gaps = [spectral_gap(build_topology(s, 50, _rng())) for s in ("complete", "regular:4", "ring")]
    assert gaps[0] > gaps[1] > gaps[2] > 0


def test_spectral_gap_matches_closed_forms_for_ring_and_torus() -> None:
    # ring: W = (I + A)/3, lambda_2 = (1 + 2 cos(2 pi / n)) / 3
    n = 60
    ring = spectral_gap(build_topology("ring", n, _rng()))
    assert ring == pytest.approx(2 * (1 - math.cos(2 * math.pi / n)) / 3, rel=1e-9)
    # 6x8 torus: W = (I + A)/5, lambda_2 = (1 + 2 + 2 cos(2 pi / 8)) / 5
    torus = spectral_gap(build_topology("torus", 48, _rng()))
    assert torus == pytest.approx(1 - (3 + 2 * math.cos(2 * math.pi / 8)) / 5, rel=1e-9)


@pytest.mark.parametrize(
    ("spec", "n"),
    [("ring", 300), ("torus", 300), ("erdos-renyi:0.05", 300), ("star", 300), ("dumbbell", 60)],
)
def test_sparse_eigensolver_agrees_with_the_dense_one(spec: str, n: int) -> None:
    g = build_topology(spec, n, _rng())
    dense = spectral_gap(g)
    assert spectral_gap(g, dense_limit=0) == pytest.approx(dense, rel=1e-6)


def test_sparse_shift_invert_path_on_a_large_ring() -> None:
    # The gap (~1e-5) is too small for plain Lanczos; the shift-invert fallback finds it.
    n = 1000
    gap = spectral_gap(build_topology("ring", n, _rng()), dense_limit=0)
    assert gap == pytest.approx(2 * (1 - math.cos(2 * math.pi / n)) / 3, rel=1e-6)


def test_shift_invert_finds_both_ends_of_the_spectrum() -> None:
    w = metropolis_matrix(build_topology("barabasi-albert:2", 80, _rng()))
    eigenvalues = np.linalg.eigvalsh(w.toarray())
    assert _shift_invert(w, -1.0 - 1e-9, deflate=False) == pytest.approx(eigenvalues[0])
    assert _shift_invert(w, 1.0 + 1e-9, deflate=True) == pytest.approx(eigenvalues[-2])


def test_graph_properties_are_json_able_and_correct() -> None:
    g = build_topology("watts-strogatz:4:0.2", 50, _rng(1))
    props = graph_properties(g)
    assert json.loads(json.dumps(props)) == props
    for value in props.values():
        assert type(value) in (int, float, bool)
    assert props["nodes"] == 50
    assert props["edges"] == g.number_of_edges()
    assert props["degree_mean"] == pytest.approx(2 * g.number_of_edges() / 50)
    assert props["degree_min"] == min(_degrees(g))
    assert props["degree_max"] == max(_degrees(g))
    assert props["connected"] is True
    assert props["components"] == 1
    assert props["diameter"] == nx.diameter(g)
    assert props["diameter_exact"] is True
    assert props["average_clustering"] == pytest.approx(nx.average_clustering(g))
    assert props["mixing_time_estimate"] == pytest.approx(1 / props["spectral_gap"])


def test_graph_properties_of_a_ring() -> None:
    props = graph_properties(build_topology("ring", 50, _rng()))
    assert props["diameter"] == 25
    assert props["average_clustering"] == 0.0
    assert props["degree_min"] == props["degree_max"] == 2


def test_graph_properties_of_the_empty_graph() -> None:
    props = graph_properties(nx.Graph())
    assert props["nodes"] == 0
    assert props["connected"] is False
