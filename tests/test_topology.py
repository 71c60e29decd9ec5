"""Named topologies: shapes, determinism, edge-list files, refusals and spectral properties."""

from __future__ import annotations

import itertools
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
    sbm_block_sizes,
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
    ("random-geometric:0.4", 30),
    ("sbm:3:0.5:0.05", 30),
    ("hypercube", 32),
    ("exponential", 30),
    ("one-peer-exponential", 30),
]
RANDOM_SPECS = [
    "regular:4",
    "erdos-renyi:0.3",
    "watts-strogatz:4:0.3",
    "barabasi-albert:2",
    "random-geometric:0.4",
    "sbm:3:0.5:0.05",
]


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


@pytest.mark.parametrize("d", [1, 2, 5, 10])
def test_hypercube_links_each_peer_to_its_one_bit_flips(d: int) -> None:
    n = 2**d
    g = build_topology("hypercube", n, _rng())
    assert set(_degrees(g)) == {d}
    assert g.number_of_edges() == n * d // 2
    assert all(bin(u ^ v).count("1") == 1 for u, v in g.edges)
    assert nx.diameter(g) == d


@pytest.mark.parametrize(("n", "offsets"), [(16, {1, 2, 4, 8}), (10, {1, 2, 4, 8}), (2, {1})])
def test_exponential_graph_links_i_to_i_plus_powers_of_two(n: int, offsets: set[int]) -> None:
    g = build_topology("exponential", n, _rng())
    # undirected: i's neighbours are i +- 2^k mod n, coinciding offsets merged
    for i in range(n):
        assert set(g.neighbors(i)) == {(i + s * k) % n for k in offsets for s in (1, -1)}
    # n = 16: +-1, +-2, +-4, 8 -> degree 7; n = 10: 1, 9, 2, 8, 4, 6 -> degree 6
    degree = {16: 7, 10: 6, 2: 1}[n]
    assert set(_degrees(g)) == {degree}
    assert g.number_of_edges() == n * degree // 2


@pytest.mark.parametrize("n", [2, 3, 5, 31, 64, 100])
def test_exponential_graph_has_no_self_loops_for_any_n(n: int) -> None:
    g = build_topology("exponential", n, _rng())
    assert nx.number_of_selfloops(g) == 0
    assert max(_degrees(g)) <= min(n - 1, 2 * math.ceil(math.log2(n)))


def test_random_geometric_links_exactly_the_pairs_within_r() -> None:
    r, n = 0.2, 150
    g = build_topology(f"random-geometric:{r}", n, _rng(3))
    pos = nx.get_node_attributes(g, "pos")
    assert sorted(pos) == list(range(n))
    assert all(0.0 <= c <= 1.0 for point in pos.values() for c in point)
    for u in range(n):
        for v in range(u + 1, n):
            close = math.dist(pos[u], pos[v]) <= r
            assert g.has_edge(u, v) == close, (u, v, math.dist(pos[u], pos[v]))


@pytest.mark.parametrize(
    ("n", "b", "sizes"), [(10, 3, [4, 3, 3]), (12, 4, [3] * 4), (5, 5, [1] * 5)]
)
def test_sbm_blocks_are_consecutive_and_near_equal(n: int, b: int, sizes: list[int]) -> None:
    assert sbm_block_sizes(n, b) == sizes
    # P_IN = 1, P_OUT = 0: the components are exactly the blocks, each complete
    g = build_topology(f"sbm:{b}:1:0", n, _rng(), allow_disconnected=True)
    components = sorted((sorted(c) for c in nx.connected_components(g)), key=lambda c: c[0])
    starts = np.cumsum([0, *sizes]).tolist()
    assert components == [list(range(a, z)) for a, z in itertools.pairwise(starts)]
    assert g.number_of_edges() == sum(s * (s - 1) // 2 for s in sizes)


def test_sbm_puts_most_edges_inside_blocks_when_p_in_dominates() -> None:
    n, b, p_in, p_out = 400, 4, 0.3, 0.01
    g = build_topology(f"sbm:{b}:{p_in}:{p_out}", n, _rng(5))
    assert type(g) is nx.Graph and sorted(g.nodes) == list(range(n))
    assert all(not data for _, data in g.nodes(data=True)) and not g.graph
    inside = sum(1 for u, v in g.edges if u // 100 == v // 100)
    across = g.number_of_edges() - inside
    expected_in, expected_out = b * 100 * 99 / 2 * p_in, (n * (n - 1) / 2 - b * 4950) * p_out
    assert abs(inside - expected_in) < 5 * math.sqrt(expected_in)  # ~ 1485 +- 38
    assert abs(across - expected_out) < 5 * math.sqrt(expected_out)  # ~ 600 +- 24
    assert inside > 2 * across


def test_sbm_with_one_block_or_equal_probabilities_is_erdos_renyi_in_law() -> None:
    for spec in ("sbm:1:0.1:0.9", "sbm:7:0.1:0.1"):
        g = build_topology(spec, 300, _rng(2))
        expected = 300 * 299 / 2 * 0.1
        assert abs(g.number_of_edges() - expected) < 5 * math.sqrt(expected)


@pytest.mark.parametrize("spec", ["hypercube", "exponential"])
def test_new_deterministic_shapes_leave_the_rng_untouched(spec: str) -> None:
    rng = _rng(3)
    build_topology(spec, 16, rng)
    assert rng.integers(2**31) == _rng(3).integers(2**31)


@pytest.mark.slow  # ~5 s in all
@pytest.mark.parametrize(
    ("spec", "n", "degree_mean"),
    [
        ("hypercube", 2**17, 17),
        ("exponential", 100_000, 34),  # 100000 is no 2^k + 2^j: all 34 offsets distinct
        ("sbm:10:0.01:0.0005", 10_000, 0.01 * 999 + 0.0005 * 9000),
        ("random-geometric:0.03", 10_000, 9999 * math.pi * 0.03**2),  # less at the borders
    ],
)
def test_new_topologies_build_large_graphs(spec: str, n: int, degree_mean: float) -> None:
    g = build_topology(spec, n, _rng())
    assert g.number_of_nodes() == n
    assert 0.85 * degree_mean <= 2 * g.number_of_edges() / n <= 1.05 * degree_mean


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
        "random-geometric",
        "random-geometric:0",
        "random-geometric:-0.1",
        "random-geometric:1.5",
        "random-geometric:inf",
        "random-geometric:r",
        "sbm:2:0.5",
        "sbm:0:0.5:0.1",
        "sbm:1.5:0.5:0.1",
        "sbm:2:1.5:0.1",
        "sbm:2:0.5:-0.1",
        "sbm:2:nan:0.1",
        "hypercube:3",
        "exponential:2",
    ],
)
def test_bad_specs_are_one_line_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_topology(spec)
    assert "\n" not in str(info.value)
    _one_line_error(spec)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("random-geometric:0", "R must be in (0, 1], got '0' (expected random-geometric:R)"),
        ("random-geometric:-0.1", "R must be in (0, 1], got '-0.1'"),
        ("random-geometric:2", "R must be in (0, 1], got '2'"),
        ("random-geometric:x", "R must be a number in (0, 1]"),
        ("sbm:0:0.5:0.1", "B must be >= 1, got 0 (expected sbm:B:P_IN:P_OUT)"),
        ("sbm:two:0.5:0.1", "B must be an integer"),
        ("sbm:2:1.5:0.1", "P_IN must be in [0, 1], got '1.5'"),
        ("sbm:2:0.5:-1", "P_OUT must be in [0, 1], got '-1'"),
        ("sbm:2:0.5", "takes 3 parameter(s), got 2"),
    ],
)
def test_bad_new_specs_name_the_fix(spec: str, needle: str) -> None:
    assert needle in _one_line_error(spec)


def test_unknown_name_lists_the_choices() -> None:
    message = _one_line_error("butterfly")
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
        ("sbm:21:0.5:0.5", 20, "B must be <= n = 20 peers, got 21"),
        (
            "hypercube",
            100,
            "a hypercube needs a power-of-two number of peers (64, 128, ...), got 100",
        ),
        ("hypercube", 3, "power-of-two number of peers (2, 4, ...), got 3"),
        ("hypercube", 1000, "(512, 1024, ...)"),
    ],
)
def test_parameters_that_do_not_fit_n_are_refused(spec: str, n: int, needle: str) -> None:
    assert needle in _one_line_error(spec, n)


def test_disconnected_graphs_are_refused_with_a_hint() -> None:
    message = _one_line_error("erdos-renyi:0.01", 100)
    assert message.startswith("topology erdos-renyi:0.01 on 100 peers is disconnected (")
    assert "components); raise P or pass --allow-disconnected" in message


@pytest.mark.parametrize(
    ("spec", "hint"),
    [("random-geometric:0.02", "raise R"), ("sbm:5:0.05:0", "raise P_IN or P_OUT")],
)
def test_new_random_models_refuse_disconnected_graphs_with_a_hint(spec: str, hint: str) -> None:
    message = _one_line_error(spec, 100)
    assert message.startswith(f"topology {spec} on 100 peers is disconnected (")
    assert f"components); {hint} or pass --allow-disconnected" in message


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


@pytest.mark.parametrize("d", [1, 3, 4, 10])
def test_spectral_gap_of_the_hypercube_is_two_over_d_plus_one(d: int) -> None:
    # d-regular: W = I - L/(d+1) = (I + A)/(d+1); A has eigenvalues d - 2j, so |lambda_2| =
    # (d-1)/(d+1) (j = 1 and j = d) and the gap is 2/(d+1). d = 10 takes the sparse path.
    gap = spectral_gap(build_topology("hypercube", 2**d, _rng()))
    assert gap == pytest.approx(2 / (d + 1), rel=1e-9)


def test_graph_properties_of_the_new_shapes() -> None:
    cube = graph_properties(build_topology("hypercube", 256, _rng()))
    assert (cube["degree_min"], cube["degree_max"], cube["diameter"]) == (8, 8, 8)
    assert cube["average_clustering"] == 0.0  # bipartite: no triangles
    assert cube["spectral_gap"] == pytest.approx(2 / 9)
    expo = graph_properties(build_topology("exponential", 256, _rng()))
    assert (expo["degree_min"], expo["degree_max"]) == (15, 15)
    assert expo["spectral_gap"] > cube["spectral_gap"]
    geo = graph_properties(build_topology("random-geometric:0.2", 256, _rng()))
    assert json.loads(json.dumps(geo)) == geo and 0 < geo["spectral_gap"] < expo["spectral_gap"]


@pytest.mark.parametrize(
    ("spec", "n"),
    [
        ("ring", 300),
        ("torus", 300),
        ("erdos-renyi:0.05", 300),
        ("star", 300),
        ("dumbbell", 60),
        ("random-geometric:0.15", 300),
        ("sbm:3:0.2:0.01", 300),
        ("hypercube", 256),
        ("exponential", 300),
    ],
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


@pytest.mark.parametrize(
    ("spec", "n"), [("ring", 3000), ("torus", 2500), ("watts-strogatz:4:0.01", 3000)]
)
def test_the_diameter_hint_gives_the_same_gap(spec: str, n: int) -> None:
    """graph_properties hands the diameter to spectral_gap, which on a long graph skips
    Lanczos for shift-invert: the same gap as the unhinted path (and, for the ring, the
    closed form)."""
    g = build_topology(spec, n, _rng())
    props = graph_properties(g)
    assert props["diameter"] ** 2 >= n  # the hinted path ran
    assert props["spectral_gap"] == pytest.approx(spectral_gap(g), rel=1e-6)
    if spec == "ring":
        assert props["spectral_gap"] == pytest.approx(
            2 * (1 - math.cos(2 * math.pi / n)) / 3, rel=1e-6
        )


def test_graph_properties_count_as_networkx_does_with_self_loops_and_labels() -> None:
    """The sparse-matrix path keeps networkx's conventions: a self-loop counts twice in a
    degree and never as an edge of W; components of a disconnected graph; any node labels."""
    g = nx.relabel_nodes(nx.cycle_graph(12), {i: f"n{i}" for i in range(12)})
    g.add_edge("n3", "n3")
    g.add_nodes_from(["lonely", "also"])
    g.add_edge("lonely", "also")
    props = graph_properties(g)
    degrees = [d for _, d in g.degree]
    assert (props["degree_min"], props["degree_max"]) == (min(degrees), max(degrees))
    assert props["degree_mean"] == pytest.approx(sum(degrees) / len(degrees))
    assert (props["connected"], props["components"]) == (False, 2)
    assert props["spectral_gap"] == 0.0
    w = metropolis_matrix(g).toarray()
    nodes = list(g.nodes)
    a, b = nodes.index("n3"), nodes.index("n4")
    assert w[a, b] == pytest.approx(1.0 / (1 + max(g.degree("n3"), g.degree("n4"))))
    np.testing.assert_allclose(w.sum(axis=1), np.ones(len(nodes)))
