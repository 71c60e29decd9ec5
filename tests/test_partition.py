"""Partitioners: every sample on exactly one peer, no empty peer, determinism, skew."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip.errors import ConfigError
from gossip.partition import PartitionSpec, label_distribution, parse_partition, partition

SPECS = [
    "iid",
    "dirichlet:0.01",
    "dirichlet:0.5",
    "dirichlet:100",
    "shards:1",
    "shards:2",
    "shards:7",
]


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, int, str, int, np.ndarray]:
    n = draw(st.integers(1, 300))
    num_classes = draw(st.integers(1, 12))
    num_peers = draw(st.integers(1, n + 3))  # a few cases with more peers than samples
    spec = draw(st.sampled_from([*SPECS, "natural"]))
    seed = draw(st.integers(0, 2**32 - 1))
    num_groups = draw(st.integers(1, n))
    data_rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = data_rng.integers(0, num_classes, size=n)
    if draw(st.booleans()):
        labels = np.sort(labels)  # sorted input must not matter
    groups = data_rng.integers(0, num_groups, size=n)
    return labels, num_peers, spec, seed, groups


@settings(max_examples=300, deadline=None, derandomize=True)
@given(problems())
def test_every_sample_on_exactly_one_peer(
    problem: tuple[np.ndarray, int, str, int, np.ndarray],
) -> None:
    labels, num_peers, spec, seed, groups = problem
    if spec == "natural" and np.unique(groups).size < num_peers:
        with pytest.raises(ConfigError):
            partition(labels, num_peers, spec, np.random.default_rng(seed), groups=groups)
        return
    parts = partition(labels, num_peers, spec, np.random.default_rng(seed), groups=groups)
    assert len(parts) == num_peers
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(labels.size))
    if num_peers <= labels.size:
        assert min(p.size for p in parts) >= 1, [p.size for p in parts]
    again = partition(labels, num_peers, spec, np.random.default_rng(seed), groups=groups)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_iid_sizes_differ_by_at_most_one_and_mix_classes() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 7, "iid", np.random.default_rng(1))
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    counts = label_distribution(labels, parts, 10)
    assert (counts > 0).sum(axis=1).min() >= 8  # ~143 random samples cover nearly all classes


def test_seed_changes_the_partition() -> None:
    labels = np.repeat(np.arange(10), 50)
    a = partition(labels, 5, "iid", np.random.default_rng(1))
    b = partition(labels, 5, "iid", np.random.default_rng(2))
    assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_dirichlet_alpha_controls_label_skew() -> None:
    labels = np.repeat(np.arange(10), 200)
    skewed = label_distribution(
        labels, partition(labels, 20, "dirichlet:0.05", np.random.default_rng(0)), 10
    )
    uniform = label_distribution(
        labels, partition(labels, 20, "dirichlet:1000", np.random.default_rng(0)), 10
    )
    classes_skewed = (skewed > 0).sum(axis=1).mean()
    classes_uniform = (uniform > 0).sum(axis=1).mean()
    assert classes_skewed < 4 < 9.5 < classes_uniform
    np.testing.assert_array_equal(skewed.sum(axis=0), np.full(10, 200))


def test_dirichlet_tiny_alpha_many_peers_leaves_no_peer_empty() -> None:
    labels = np.repeat(np.arange(3), 40)
    parts = partition(labels, 100, "dirichlet:0.001", np.random.default_rng(3))
    assert min(p.size for p in parts) == 1
    assert sum(p.size for p in parts) == 120


def test_shards_give_each_peer_at_most_k_classes() -> None:
    labels = np.repeat(np.arange(10), 100)
    rng = np.random.default_rng(0).permutation(1000)
    labels = labels[rng]  # order must not matter
    parts = partition(labels, 50, "shards:2", np.random.default_rng(5))
    counts = label_distribution(labels, parts, 10)
    assert all(p.size == 20 for p in parts)
    assert (counts > 0).sum(axis=1).max() <= 2
    assert (counts > 0).sum(axis=1).mean() > 1.5  # mostly two different classes


def test_natural_keeps_groups_whole_and_round_robins() -> None:
    groups = np.repeat(np.arange(9), 5)[::-1].copy()
    labels = np.zeros(45, dtype=np.int64)
    parts = partition(labels, 4, "natural", np.random.default_rng(0), groups=groups)
    groups_per_peer = [set(groups[p].tolist()) for p in parts]
    assert sorted(len(g) for g in groups_per_peer) == [2, 2, 2, 3]
    assert set().union(*groups_per_peer) == set(range(9))
    assert sum(len(g) for g in groups_per_peer) == 9  # no group split over two peers


def test_natural_errors_are_one_line() -> None:
    labels = np.zeros(10, dtype=np.int64)
    with pytest.raises(ConfigError, match="needs a dataset with groups") as no_groups:
        partition(labels, 2, "natural", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="3 groups but there are 4 peers") as too_few:
        partition(labels, 4, "natural", np.random.default_rng(0), groups=np.arange(10) % 3)
    assert "\n" not in str(no_groups.value) + str(too_few.value)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("iid", PartitionSpec("iid")),
        (" IID ", PartitionSpec("iid")),
        ("natural", PartitionSpec("natural")),
        ("dirichlet:0.3", PartitionSpec("dirichlet", alpha=0.3)),
        ("dirichlet:1e-2", PartitionSpec("dirichlet", alpha=0.01)),
        ("shards:2", PartitionSpec("shards", shards=2)),
    ],
)
def test_parse_partition_accepts(spec: str, expected: PartitionSpec) -> None:
    assert parse_partition(spec) == expected
    assert parse_partition(str(expected)) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "random",
        "iid:2",
        "natural:1",
        "dirichlet",
        "dirichlet:",
        "dirichlet:0",
        "dirichlet:-1",
        "dirichlet:nan",
        "dirichlet:inf",
        "dirichlet:abc",
        "shards",
        "shards:0",
        "shards:1.5",
        "shards:-2",
    ],
)
def test_parse_partition_rejects_with_one_line(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_partition(spec)
    message = str(info.value)
    assert "\n" not in message and "dirichlet:ALPHA" in message


def test_partition_rejects_bad_peer_count_and_labels() -> None:
    with pytest.raises(ConfigError, match="at least one peer"):
        partition(np.zeros(5, dtype=np.int64), 0, "iid", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="1-D"):
        partition(np.zeros((5, 2), dtype=np.int64), 2, "iid", np.random.default_rng(0))


def test_label_distribution_counts() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2])
    counts = label_distribution(labels, [np.array([0, 3]), np.array([1, 2, 4, 5])], 4)
    np.testing.assert_array_equal(counts, [[1, 0, 1, 0], [0, 2, 2, 0]])
    assert counts.dtype == np.int64


def test_partition_generator_is_the_first_child_of_the_seed() -> None:
    from gossip.partition import partition_generator

    expected = np.random.default_rng(np.random.SeedSequence(5).spawn(3)[0]).integers(
        1 << 30, size=4
    )
    assert partition_generator(5).integers(1 << 30, size=4).tolist() == expected.tolist()
