"""Dataset registry, the Dataset type, digits, npz and mnist1d."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gossip.datasets import DATASETS, Dataset, dataset_names, default_data_dir, load_dataset
from gossip.errors import ConfigError, DatasetNotFoundError, GossipError


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def test_registry_lists_every_dataset_with_help() -> None:
    assert dataset_names() == [
        "digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "mnist1d", "shakespeare", "npz",
        "leaf",
    ]  # fmt: skip
    for info in DATASETS.values():
        for text in (info.description, info.default_location, info.how_to_get):
            assert text and "\n" not in text


def test_unknown_name_and_unexpected_parameter_are_config_errors() -> None:
    with pytest.raises(ConfigError) as unknown:
        load_dataset("imagenet")
    assert "digits" in _one_line(unknown)
    with pytest.raises(ConfigError) as param:
        load_dataset("digits:5")
    _one_line(param)


def test_default_data_dir_follows_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOSSIP_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("GOSSIP_DATA")
    assert default_data_dir() == Path.home() / ".cache" / "gossip"


def test_digits_is_a_deterministic_stratified_split() -> None:
    data = load_dataset("digits", seed=123)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.num_train + data.num_test == 1797
    assert 0.19 < data.num_test / 1797 < 0.21
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    train_counts = torch.bincount(data.y_train, minlength=10).double()
    test_counts = torch.bincount(data.y_test, minlength=10).double()
    assert torch.all((test_counts / (train_counts + test_counts) - 0.2).abs() < 0.02)
    again = load_dataset("digits", seed=7)  # split is fixed, independent of the run's seed
    assert torch.equal(data.x_test, again.x_test) and torch.equal(data.y_train, again.y_train)
    # no sample is in both splits
    train_rows = {row.numpy().tobytes() for row in data.x_train.flatten(1)}
    overlap = sum(row.numpy().tobytes() in train_rows for row in data.x_test.flatten(1))
    assert overlap <= 2  # sklearn's digits has a couple of exact duplicate images
    summary = data.describe()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["num_train"] == data.num_train and summary["input_shape"] == [1, 8, 8]


def test_dataset_rejects_inconsistent_shapes() -> None:
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="labels"):
        Dataset("t", x, y[:3], x, y, 2, (3,))
    with pytest.raises(ValueError, match="expected"):
        Dataset("t", x, y, x, y, 2, (4,))
    with pytest.raises(ValueError, match="groups_train"):
        Dataset("t", x, y, x, y, 2, (3,), groups_train=np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="int64"):
        Dataset("t", x, y.float(), x, y, 2, (3,))


# --- npz -------------------------------------------------------------------------------------


def test_npz_with_explicit_test_set_and_groups(tmp_path: Path) -> None:
    path = tmp_path / "mine.npz"
    x = np.arange(24, dtype=np.float64).reshape(6, 2, 2)
    y = np.array([0, 1, 2, 0, 1, 4])
    np.savez(
        path, X=x, y=y, x_test=x[:2], y_test=np.array([1, 1]), groups=np.array([0, 0, 1, 1, 2, 2])
    )
    data = load_dataset(f"npz:{path}")
    assert data.x_train.dtype == torch.float32 and data.input_shape == (2, 2)
    assert data.num_classes == 5 and data.num_train == 6 and data.num_test == 2
    assert data.vocab_size is None
    np.testing.assert_array_equal(data.groups_train, [0, 0, 1, 1, 2, 2])
    torch.testing.assert_close(data.x_train, torch.from_numpy(x).float())


def test_npz_relative_path_under_data_dir_and_seeded_split(tmp_path: Path) -> None:
    tokens = np.random.default_rng(0).integers(0, 50, size=(100, 7), dtype=np.int32)
    labels = np.repeat(np.arange(4), 25)
    np.savez(tmp_path / "tok.npz", x=tokens, y=labels, groups=np.arange(100) % 10)
    a = load_dataset("npz:tok.npz", root=tmp_path, seed=1)
    b = load_dataset("npz:tok.npz", root=tmp_path, seed=1)
    c = load_dataset("npz:tok.npz", root=tmp_path, seed=2)
    assert a.x_train.dtype == torch.int64 and a.vocab_size == int(tokens.max()) + 1
    assert a.num_train == 80 and a.num_test == 20
    assert torch.bincount(a.y_test).tolist() == [5, 5, 5, 5]  # stratified
    assert torch.equal(a.x_test, b.x_test) and not torch.equal(a.x_test, c.x_test)
    assert a.groups_train is not None and a.groups_train.shape == (80,)
    # the split keeps rows, labels and groups together
    rows = {
        tuple(r): (int(lbl), i % 10)
        for i, (r, lbl) in enumerate(zip(tokens.tolist(), labels, strict=True))
    }
    for row, lbl, grp in zip(
        a.x_train.tolist(), a.y_train.tolist(), a.groups_train.tolist(), strict=True
    ):
        assert rows[tuple(row)] == (lbl, grp)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((3, 2))}, "needs arrays 'x'"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(4, dtype=int)}, "shape \\(3,\\)"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(3)}, "integer class labels"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 0])}, "negative label"),
        ({"x": np.zeros(3), "y": np.zeros(3, dtype=int)}, "one sample per row"),
        ({"x": np.array([[1.0], [np.nan]]), "y": np.zeros(2, dtype=int)}, "NaN"),
        ({"x": np.array([["a"], ["b"]]), "y": np.zeros(2, dtype=int)}, "dtype"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(3, dtype=int), "x_test": np.zeros((1, 2))}, "both"),
        (
            {
                "x": np.zeros((3, 2)),
                "y": np.zeros(3, dtype=int),
                "x_test": np.zeros((1, 3)),
                "y_test": np.zeros(1, dtype=int),
            },
            "x_test",
        ),
        (
            {"x": np.zeros((3, 2)), "y": np.zeros(3, dtype=int), "groups": np.zeros(2, dtype=int)},
            "groups",
        ),
        ({"x": np.zeros((1, 2)), "y": np.zeros(1, dtype=int)}, "at least 2 samples"),
        ({"x": -np.ones((3, 2), dtype=int), "y": np.zeros(3, dtype=int)}, "negative token"),
    ],
)
def test_npz_validation_errors_are_one_line(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, allow_pickle=False, **arrays)
    with pytest.raises(GossipError, match=message) as info:
        load_dataset(f"npz:{path}")
    _one_line(info)


def test_npz_refuses_pickled_objects_and_garbage(tmp_path: Path) -> None:
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, dtype=int))
    with pytest.raises(GossipError, match="pickle") as info:
        load_dataset(f"npz:{objects}")
    _one_line(info)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(GossipError) as info:
        load_dataset(f"npz:{garbage}")
    _one_line(info)


def test_npz_missing_file_and_missing_path() -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("npz:/nonexistent/dir/file.npz")
    assert "/nonexistent/dir/file.npz" in _one_line(info)
    with pytest.raises(ConfigError) as no_path:
        load_dataset("npz")
    _one_line(no_path)


# --- mnist1d ---------------------------------------------------------------------------------


@pytest.mark.slow  # generating the 5000 signals takes 1-2 s
def test_mnist1d_is_generated_offline_without_touching_global_rng(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("mnist1d")
    import requests

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("mnist1d tried to download")

    monkeypatch.setattr(requests, "get", no_network)
    np.random.seed(99)
    random.seed(99)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(99)
    random.seed(99)
    data = load_dataset("mnist1d")
    assert np.random.random() == expected_np and random.random() == expected_py
    assert data.input_shape == (40,) and data.x_train.dtype == torch.float32
    assert (data.num_train, data.num_test, data.num_classes) == (4000, 1000, 10)
    assert torch.bincount(data.y_train, minlength=10).min() > 350


def test_mnist1d_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mnist1d.data", None)  # makes the import fail
    with pytest.raises(DatasetNotFoundError, match=r"gossip-learning\[mnist1d\]") as info:
        load_dataset("mnist1d")
    _one_line(info)
