"""``leaf:DIR``: LEAF's JSON format (numeric, FEMNIST-shaped, Shakespeare), groups, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gossip.datasets import DATASETS, dataset_names, load_dataset
from gossip.datasets import leaf as leaf_module
from gossip.datasets.leaf import ALL_LETTERS, UNKNOWN_INDEX, VOCAB_SIZE, encode, load_leaf_dir
from gossip.errors import ConfigError, DatasetNotFoundError, GossipError
from gossip.models import build_model_for
from gossip.partition import partition, partition_generator
from sim.config import SimConfig
from sim.runner import World, run_simulation

Users = dict[str, tuple[list[Any], list[Any]]]


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def _write_file(path: Path, users: Users, *, hierarchies: bool = False) -> None:
    """One LEAF JSON file, laid out as LEAF's preprocessing scripts write it."""
    data: dict[str, Any] = {
        "users": list(users),
        "num_samples": [len(y) for _, y in users.values()],
        "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
    }
    if hierarchies:
        data["hierarchies"] = [f"h{i}" for i in range(len(users))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _write_leaf(root: Path, train: list[Users], test: list[Users]) -> Path:
    """``root/train/*.json`` and ``root/test/*.json``, named like LEAF's split_data.py output."""
    for split, files in (("train", train), ("test", test)):
        for i, users in enumerate(files):
            name = f"all_data_{i}_niid_05_keep_0_{split}_{i}.json"
            _write_file(root / split / name, users, hierarchies=i == 0)
    return root


def _numeric_user(seed: int, n: int, features: int, classes: int) -> tuple[list[Any], list[Any]]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, features)).round(4).tolist()
    y = [int(v) for v in rng.integers(0, classes, n)]
    return x, y


def _synthetic(root: Path, features: int = 6) -> tuple[Path, Users, Users]:
    """Five users over three train files and two test files (grouped differently)."""
    train_users = {f"f_{u:05d}": _numeric_user(u, 3 + u, features, 4) for u in range(5)}
    test_users = {f"f_{u:05d}": _numeric_user(100 + u, 2, features, 4) for u in range(5)}
    test_users["f_00003"][1][0] = 6  # the largest label is only in the test split
    names = list(train_users)
    train = [
        {u: train_users[u] for u in names[0:2]},
        {u: train_users[u] for u in names[2:3]},
        {u: train_users[u] for u in names[3:5]},
    ]
    test = [
        {u: test_users[u] for u in names[0:3]},
        {u: test_users[u] for u in names[3:5]},
    ]
    return _write_leaf(root, train, test), train_users, test_users


# --- loading ---------------------------------------------------------------------------------


def test_numeric_leaf_loads_shapes_dtypes_labels_and_user_groups(tmp_path: Path) -> None:
    root, train_users, test_users = _synthetic(tmp_path / "synthetic")
    data = load_leaf_dir(root)
    names = list(train_users)
    assert data.group_names == tuple(names)
    sizes = [len(y) for _, y in train_users.values()]
    assert data.num_train == sum(sizes) == 3 + 4 + 5 + 6 + 7
    assert data.num_test == 10
    assert data.input_shape == (6,) and data.x_train.shape == (25, 6)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.vocab_size is None
    expected_x = np.concatenate([np.array(x) for x, _ in train_users.values()])
    assert np.allclose(data.x_train.numpy(), expected_x)
    expected_y = list(chain.from_iterable(y for _, y in train_users.values()))
    assert data.y_train.tolist() == expected_y
    assert data.y_test.tolist() == list(chain.from_iterable(y for _, y in test_users.values()))
    assert data.num_classes == 7  # max label (6, in test only) + 1
    assert data.groups_train is not None and data.groups_test is not None
    assert data.groups_train.dtype == np.int64
    assert data.groups_train.tolist() == [g for g, n in enumerate(sizes) for _ in range(n)]
    assert data.groups_test.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # test samples of a user are that user's, whichever file holds them
    rows = np.flatnonzero(data.groups_test == 3)
    assert np.allclose(data.x_test[rows].numpy(), np.array(test_users["f_00003"][0]))


def test_users_seen_only_in_test_files_get_their_own_groups(tmp_path: Path) -> None:
    train = [{"a": _numeric_user(0, 3, 4, 2), "b": _numeric_user(1, 2, 4, 2)}]
    test = [{"c": _numeric_user(2, 2, 4, 2), "a": _numeric_user(3, 1, 4, 2)}]  # LEAF -t user
    data = load_leaf_dir(_write_leaf(tmp_path, train, test))
    assert data.group_names == ("a", "b", "c")
    assert data.groups_test is not None and data.groups_test.tolist() == [2, 2, 0]


def test_files_are_read_in_natural_name_order(tmp_path: Path) -> None:
    for i in (10, 2):
        users = {f"u{i}": _numeric_user(i, 2, 3, 2)}
        _write_file(tmp_path / "train" / f"part_{i}.json", users)
        _write_file(tmp_path / "test" / f"part_{i}.json", users)
    assert load_leaf_dir(tmp_path).group_names == ("u2", "u10")


def test_registry_relative_dir_and_leaf_parent_folder(tmp_path: Path) -> None:
    assert "leaf" in dataset_names() and DATASETS["leaf"].takes_param
    root, _, _ = _synthetic(tmp_path / "femnist" / "data")
    via_registry = load_dataset("leaf:" + str(root))
    assert via_registry.num_train == 25 and via_registry.name == f"leaf:{root}"
    relative = load_dataset("leaf:femnist/data", root=tmp_path)
    assert torch.equal(relative.x_train, via_registry.x_train)
    parent = load_dataset(f"leaf:{tmp_path / 'femnist'}")  # LEAF's data/femnist folder
    assert torch.equal(parent.y_test, via_registry.y_test)
    with pytest.raises(ConfigError) as no_dir:
        load_dataset("leaf")
    assert "leaf:DIR" in _one_line(no_dir)


def test_femnist_like_784_features_become_28x28_images_for_the_cnn(tmp_path: Path) -> None:
    classes = 62
    train = [
        {f"w{u}": _numeric_user(u, 31, 784, classes) for u in range(0, 2)},
        {f"w{u}": _numeric_user(u, 31, 784, classes) for u in range(2, 4)},
    ]
    train[0]["w0"] = (train[0]["w0"][0], list(range(31)))
    train[1]["w3"] = (train[1]["w3"][0], list(range(31, 62)))  # every one of the 62 labels
    test = [{f"w{u}": _numeric_user(50 + u, 2, 784, classes) for u in range(4)}]
    data = load_leaf_dir(_write_leaf(tmp_path, train, test))
    assert data.input_shape == (1, 28, 28)
    assert data.x_train.shape == (124, 1, 28, 28) and data.x_test.shape == (8, 1, 28, 28)
    assert data.num_classes == 62
    pixels = np.array(train[0]["w0"][0][0], dtype=np.float32).reshape(28, 28)
    assert np.array_equal(data.x_train[0, 0].numpy(), pixels)  # row-major, as LEAF flattens
    model = build_model_for("cnn", data, seed=0)
    assert model(data.x_test).shape == (8, 62)


def test_shakespeare_strings_map_to_leaf_vocabulary_with_an_unknown_index(tmp_path: Path) -> None:
    assert len(ALL_LETTERS) == 80 and UNKNOWN_INDEX == 80 and VOCAB_SIZE == 81
    assert encode("Aa z}\n.").tolist() == [25, 53, 1, 78, 79, 0, 10]
    assert encode("#é|").tolist() == [80, 80, 80]
    line = ("To be, or not to be: that is the question# " * 2)[:80]
    other = ("Whether 'tis nobler in the mind to suffer " * 2)[:80]
    train = [{"HAMLET": ([line, other], ["é", "o"])}, {"OPHELIA": ([other], ["W"])}]
    test = [{"HAMLET": ([other], ["a"])}, {"OPHELIA": ([line], ["T"])}]
    data = load_leaf_dir(_write_leaf(tmp_path, train, test))
    assert data.x_train.dtype == torch.int64 and data.input_shape == (80,)
    assert data.vocab_size == 81 and data.num_classes == 81
    assert data.x_train[0, :3].tolist() == [44, 67, 1]  # "To "
    assert data.x_train[0, 41].item() == UNKNOWN_INDEX  # "#"
    assert data.x_train[0].tolist() == encode(line).tolist()
    assert data.y_train.tolist() == [UNKNOWN_INDEX, 67, 47]  # "é", "o", "W"
    assert data.y_test.tolist() == [53, 44]
    assert data.groups_train is not None and data.groups_train.tolist() == [0, 0, 1]
    model = build_model_for("charlstm", data, seed=0)
    assert model(data.x_test).shape == (2, 81)


# --- the natural partition and a run -------------------------------------------------------


def test_natural_partition_gives_each_peer_whole_users(tmp_path: Path) -> None:
    train = [
        {f"u{u}": _numeric_user(u, 2 + u % 3, 5, 3) for u in range(k, k + 3)} for k in (0, 3, 6)
    ]
    test = [{f"u{u}": _numeric_user(u, 1, 5, 3) for u in range(9)}]
    data = load_leaf_dir(_write_leaf(tmp_path, train, test))
    assert data.groups_train is not None
    parts = partition(
        data.y_train.numpy(), 4, "natural", partition_generator(0), groups=data.groups_train
    )
    assert sorted(np.concatenate(parts).tolist()) == list(range(data.num_train))
    owner_of_user: dict[int, int] = {}
    for peer, part in enumerate(parts):
        assert len(part) > 0
        for user in np.unique(data.groups_train[part]).tolist():
            assert user not in owner_of_user  # no user is split over two peers
            owner_of_user[user] = peer
            assert set(part.tolist()) >= set(np.flatnonzero(data.groups_train == user).tolist())
    assert sorted(owner_of_user) == list(range(9))


def test_a_small_simulation_runs_on_leaf_data_with_the_natural_partition(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def user(n: int) -> tuple[list[Any], list[Any]]:
        x = rng.normal(size=(n, 4))
        return x.round(3).tolist(), [int(v) for v in x[:, 0] > 0]

    train = [{f"u{u}": user(12) for u in range(k, k + 4)} for k in (0, 4)]
    test = [{f"u{u}": user(3) for u in range(8)}]
    root = _write_leaf(tmp_path / "leaf", train, test)
    config = SimConfig(
        dataset=f"leaf:{root}", partition="natural", peers=4, topology="ring", model="logreg",
        periods=6, eval_every=3, lr=0.5, mode="push", local_steps=1,
    )  # fmt: skip
    result = run_simulation(config, tmp_path / "out")
    assert [r["period"] for r in result.records] == [0, 3, 6]
    assert result.final["acc_local_mean"] is not None
    assert isinstance(result.world, World)
    local = result.world.observer.local_tests
    assert sorted(local) == [0, 1, 2, 3]
    assert sum(len(y) for _, y in local.values()) == 24  # every user's test samples, once
    assert (tmp_path / "out" / "metrics.jsonl").is_file()


# --- errors ----------------------------------------------------------------------------------


def _valid(root: Path) -> Path:
    train = [{"a": _numeric_user(0, 3, 4, 3)}, {"b": _numeric_user(1, 2, 4, 3)}]
    test = [{"a": _numeric_user(2, 1, 4, 3), "b": _numeric_user(3, 1, 4, 3)}]
    return _write_leaf(root, train, test)


def _first_train(root: Path) -> Path:
    return root / "train" / "all_data_0_niid_05_keep_0_train_0.json"


def _edit(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = _first_train(root)
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))

    return apply


def _raw(text: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        _first_train(root).write_text(text)

    return apply


def _raw_bytes(content: bytes) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        _first_train(root).write_bytes(content)

    return apply


def _set_x(x: list[Any], y: list[Any] | None = None) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["user_data"]["a"]["x"] = x
        if y is not None:
            data["user_data"]["a"]["y"] = y

    return edit


def _set_y(y: list[Any]) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["user_data"]["a"].__setitem__("y", y)


def _add_user_b(data: dict[str, Any]) -> None:
    data["users"].append("b")
    data["user_data"]["b"] = data["user_data"]["a"]


def _replace_number(root: Path, literal: str) -> None:
    path = _first_train(root)
    data = json.loads(path.read_text())
    data["user_data"]["a"]["x"][1][2] = 12345.5
    path.write_text(json.dumps(data).replace("12345.5", literal))


ROW = [0.1, 0.2, 0.3, 0.4]
MALFORMED: dict[str, tuple[Callable[[Path], None], str]] = {
    "not json": (_raw('{"users": ["a"], "user_data": {'), "not valid JSON"),
    "not utf-8": (_raw_bytes(b'{"users": ["\xff"]}'), "not valid JSON"),
    "nested too deeply": (_raw("[" * 200_000 + "]" * 200_000), "nested too deeply"),
    "not an object": (_raw("[1, 2]"), "expected a JSON object"),
    "no users": (_edit(lambda d: d.pop("users")), "lacks 'users'"),
    "no user_data": (_edit(lambda d: d.pop("user_data")), "lacks 'user_data'"),
    "user missing from user_data": (
        _edit(lambda d: d["users"].append("ghost")),
        "'ghost' is in 'users' but not in 'user_data'",
    ),
    "user ids not strings": (_edit(lambda d: d.__setitem__("users", [1])), "user-id strings"),
    "no y": (_edit(lambda d: d["user_data"]["a"].pop("y")), "needs lists 'x' and 'y'"),
    "x and y lengths": (_edit(_set_y([0, 1])), "'x' has 3 samples but 'y' has 2"),
    "ragged": (_edit(_set_x([ROW, ROW[:3], ROW], [0, 1, 2])), "ragged feature vectors"),
    "ragged across users": (_edit(_set_x([[*ROW, 0.5]] * 3, [0, 1, 2])), "ragged"),
    "nested features": (_edit(_set_x([ROW, [[1, 2], 3, 4, 5], ROW], [0, 1, 2])), "not numbers"),
    "string feature": (_edit(_set_x([ROW, ["a", 2, 3, 4], ROW], [0, 1, 2])), "not numbers"),
    "empty features": (_edit(_set_x([[], [], []], [0, 1, 2])), "sample 0 of x is empty"),
    "NaN": (lambda r: _replace_number(r, "NaN"), "non-finite number NaN"),
    "Infinity": (lambda r: _replace_number(r, "-Infinity"), "non-finite number -Infinity"),
    "overflow": (lambda r: _replace_number(r, "1e999"), "non-finite numbers"),
    "beyond float32": (lambda r: _replace_number(r, "1e39"), "non-finite numbers"),
    "float label": (_edit(_set_y([0, 1.5, 2])), "label 1.5 of sample 1 is not a non-negative"),
    "negative label": (_edit(_set_y([0, -1, 2])), "label -1 of sample 1 is not a non-negative"),
    "string label": (_edit(_set_y([0, "1", 2])), "label '1' of sample 1 is not a non-negative"),
    "bool label": (_edit(_set_y([0, True, 2])), "label True of sample 1 is not a non-negative"),
    "sent140": (
        _edit(_set_x([["1467810369", "Mon Apr 06", "NO_QUERY", "user", "hi there"]] * 3)),
        "supported x formats are lists of numbers",
    ),
    "celeba": (
        _edit(_set_x(["000001.jpg", "000002.jpg", "000003.jpg"])),
        "like celeba's image file names); supported x formats",
    ),
    "mixed kinds": (_edit(_set_x(["abcd"] * 3, ["a", "b", "c"])), "earlier samples were"),
    "duplicate user": (_edit(_add_user_b), "user 'b' is also in"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_are_one_line_errors(tmp_path: Path, case: str) -> None:
    root = _valid(tmp_path)
    load_leaf_dir(root)  # valid before the edit
    corrupt, expected = MALFORMED[case]
    corrupt(root)
    with pytest.raises(GossipError) as exc:
        load_leaf_dir(root)
    message = _one_line(exc)
    assert expected in message
    assert not isinstance(exc.value, DatasetNotFoundError)


def test_shakespeare_labels_must_be_single_characters(tmp_path: Path) -> None:
    train = [{"R": (["abcd", "bcde"], ["e", "fg"])}]
    test = [{"R": (["cdef"], ["g"])}]
    with pytest.raises(GossipError) as exc:
        load_leaf_dir(_write_leaf(tmp_path, train, test))
    assert "label 'fg' of sample 1 is not a single character" in _one_line(exc)


def test_train_and_test_feature_lengths_must_agree(tmp_path: Path) -> None:
    train = [{"a": _numeric_user(0, 2, 4, 2)}]
    test = [{"a": _numeric_user(1, 2, 5, 2)}]
    with pytest.raises(GossipError) as exc:
        load_leaf_dir(_write_leaf(tmp_path, train, test))
    assert "has 5 features" in _one_line(exc) and "ragged" in _one_line(exc)


def test_files_over_the_size_limit_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _valid(tmp_path)
    size = _first_train(root).stat().st_size
    monkeypatch.setattr(leaf_module, "MAX_FILE_BYTES", size)
    load_leaf_dir(root)  # exactly at the limit is fine
    monkeypatch.setattr(leaf_module, "MAX_FILE_BYTES", size - 1)
    with pytest.raises(GossipError) as exc:
        load_leaf_dir(root)
    assert f"larger than the {size - 1}-byte limit" in _one_line(exc)


def test_a_split_without_samples_is_refused(tmp_path: Path) -> None:
    train = [{"a": _numeric_user(0, 2, 4, 2)}]
    test: list[Users] = [{"a": ([], [])}]
    with pytest.raises(GossipError) as exc:
        load_leaf_dir(_write_leaf(tmp_path, train, test))
    assert "have no samples" in _one_line(exc) and "test" in _one_line(exc)


def test_missing_data_says_how_to_get_leaf(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as empty:
        load_dataset(f"leaf:{tmp_path}")
    assert "preprocess.sh" in _one_line(empty) and "train/ and no test/" in _one_line(empty)
    with pytest.raises(DatasetNotFoundError) as absent:
        load_dataset(f"leaf:{tmp_path / 'nowhere'}")
    assert "no directory" in _one_line(absent) and "preprocess.sh" in _one_line(absent)
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetNotFoundError) as no_test:
        load_dataset(f"leaf:{tmp_path}")
    message = _one_line(no_test)
    assert "has no test/ folder" in message and "train/" not in message.split(";")[0]
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetNotFoundError) as no_files:
        load_dataset(f"leaf:{tmp_path}")
    assert f"no *.json files in {tmp_path / 'train'}" in _one_line(no_files)
