"""``leaf:DIR``: a LEAF benchmark in LEAF's own JSON format (Caldas et al., "LEAF: A Benchmark
for Federated Settings", 2018), as its ``preprocess.sh`` scripts write it.

``DIR`` holds ``train/*.json`` and ``test/*.json`` (LEAF's ``data/<set>/data`` folder; its
parent ``data/<set>``, holding ``data/train`` and ``data/test``, is accepted too). A relative
``DIR`` is taken under ``--data-dir`` when given. Each file is
``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``
(``num_samples`` and an optional ``hierarchies`` are not needed and are ignored); the test
files hold held-out samples of the same users (or, after LEAF's ``-t user`` split, of other
users). Files are read in natural name order (``..._2.json`` before ``..._10.json``), each with
the standard :mod:`json` module, at most :data:`MAX_FILE_BYTES` bytes each.

Two kinds of ``x`` are supported:

* numbers: every sample a list of numbers of one length, ``y`` non-negative integer labels
  (FEMNIST: 784 pixels in [0, 1], 62 classes; "synthetic": 60 features, 10 classes). Features
  become float32; 784 features are taken as a 28x28 image ``(1, 28, 28)`` (FEMNIST, for
  ``cnn``), any other length stays a flat vector ``(L,)``. ``num_classes`` is the largest label
  over train and test plus one.
* strings: LEAF Shakespeare, every sample an 80-character string and ``y`` the next character.
  Characters map to their index in LEAF's vocabulary :data:`ALL_LETTERS` (from LEAF's
  ``models/utils/language_utils.py``, 80 symbols); any character outside it maps to the extra
  index :data:`UNKNOWN_INDEX` (80), so ``vocab_size`` is 81. Features are int64 token ids
  ``(L,)``, the label is the id of ``y``, and ``num_classes`` equals ``vocab_size`` (as
  ``charlstm`` requires).

Other LEAF sets (sent140's lists of tweet fields, celeba's image file names) are refused.
Every user is one group, numbered in the order users first appear (train files, then users
found only in test files): ``groups_train`` and ``groups_test`` hold a user index per sample
and ``group_names`` the user ids, so the ``natural`` partition gives each peer whole users and
each peer is also evaluated on its own users' test samples. Malformed files raise a one-line
:class:`~gossip.errors.GossipError` naming the file, the user and the problem.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gossip.datasets.dataset import Dataset, labels_tensor, one_line
from gossip.datasets.shakespeare import char_ids, char_lookup
from gossip.errors import ConfigError, DatasetNotFoundError, GossipError

# LEAF's ALL_LETTERS (models/utils/language_utils.py): the Shakespeare vocabulary, 80 symbols.
ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
UNKNOWN_INDEX = len(ALL_LETTERS)  # 80: every character outside ALL_LETTERS
VOCAB_SIZE = UNKNOWN_INDEX + 1  # 81
FEMNIST_FEATURES = 784
FEMNIST_SHAPE = (1, 28, 28)
MAX_FILE_BYTES = 1 << 30  # per JSON file; read at call time

HOW_TO_GET = (
    "get LEAF data with LEAF's preprocess.sh, e.g. ./preprocess.sh -s niid --sf 0.05 -k 0 "
    "-t sample in leaf/data/femnist, then pass leaf:.../data/femnist/data"
)
SUPPORTED = (
    "supported x formats are lists of numbers (femnist, synthetic) and strings with "
    "one-character y (shakespeare); sent140 and celeba are not supported"
)

_LOOKUP = char_lookup(ALL_LETTERS, UNKNOWN_INDEX)


def encode(text: str) -> np.ndarray:
    """Ids (int64) of the characters of ``text`` in :data:`ALL_LETTERS`; others -> 80."""
    return char_ids(text, _LOOKUP, UNKNOWN_INDEX)


class _NonFinite(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def read_json(path: Path) -> Any:
    """One LEAF file, parsed with :mod:`json`: at most :data:`MAX_FILE_BYTES`, finite numbers."""
    limit = MAX_FILE_BYTES
    try:
        with path.open("rb") as file:
            raw = file.read(limit + 1)
    except OSError as exc:
        raise GossipError(f"{path}: cannot read ({one_line(exc)})") from exc
    if len(raw) > limit:
        raise GossipError(f"{path}: larger than the {limit}-byte limit per LEAF file")
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except _NonFinite as exc:
        raise GossipError(
            f"{path}: holds the non-finite number {exc}; features must be finite numbers"
        ) from exc
    except RecursionError as exc:
        raise GossipError(f"{path}: not valid JSON (nested too deeply)") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, overlong integers
        raise GossipError(f"{path}: not valid JSON ({one_line(exc)})") from exc


def split_dirs(directory: Path) -> tuple[Path, Path]:
    """``(train, test)`` folders of a LEAF data directory (``DIR`` or ``DIR/data``)."""
    if not directory.is_dir():
        raise DatasetNotFoundError(f"leaf: no directory {directory}; {HOW_TO_GET}")
    for base in (directory, directory / "data"):
        if (base / "train").is_dir() and (base / "test").is_dir():
            return base / "train", base / "test"
    missing = [f"{name}/" for name in ("train", "test") if not (directory / name).is_dir()]
    raise DatasetNotFoundError(
        f"leaf: {directory} has no {' and no '.join(missing)} folder of LEAF *.json files; "
        f"{HOW_TO_GET}"
    )


@dataclass
class _Format:
    """What the first samples said the data are; later samples must agree."""

    kind: str | None = None  # "numbers" or "text"
    length: int | None = None  # features per sample (characters for text)
    where: str = ""


@dataclass
class _Split:
    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    groups: list[np.ndarray] = field(default_factory=list)


def _describe(sample: object, label: object) -> str:
    if isinstance(sample, list):
        return "lists of fields that are not all numbers (like sent140)"
    if isinstance(sample, str):
        return f"strings with label {label!r} (like celeba's image file names)"
    return f"of type {type(sample).__name__}"


def _kind_of(sample: object, label: object, where: str) -> str:
    if isinstance(sample, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in sample
    ):
        return "numbers"
    if isinstance(sample, str) and isinstance(label, str):
        return "text"
    raise GossipError(f"{where}: x samples are {_describe(sample, label)}; {SUPPORTED}")


def _check_length(n: int, fmt: _Format, where: str, i: int, what: str) -> None:
    if n == 0:
        raise GossipError(f"{where}: sample {i} of x is empty")
    if fmt.length is None:
        fmt.length, fmt.where = n, where
    elif n != fmt.length:
        raise GossipError(
            f"{where}: sample {i} of x has {n} {what}, {fmt.where} has {fmt.length} "
            f"(ragged feature vectors)"
        )


def _numbers(xs: list[Any], ys: list[Any], fmt: _Format, where: str) -> tuple[np.ndarray, ...]:
    for i, sample in enumerate(xs):
        if not isinstance(sample, list):
            raise GossipError(
                f"{where}: sample {i} of x is {_describe(sample, ys[i])}, not a list of numbers"
            )
        _check_length(len(sample), fmt, where, i, "features")
    try:
        array = np.array(xs)
    except (ValueError, TypeError):  # nested lists of uneven depth
        array = np.empty(0, dtype=object)
    if array.ndim != 2 or array.dtype.kind not in "fi":
        raise GossipError(f"{where}: x holds values that are not numbers; {SUPPORTED}")
    with np.errstate(over="ignore"):
        x = array.astype(np.float32)
    if not np.isfinite(x).all():
        raise GossipError(f"{where}: x holds non-finite numbers (NaN, infinite or beyond float32)")
    for i, label in enumerate(ys):
        if type(label) is not int or not 0 <= label < 2**63:
            raise GossipError(
                f"{where}: label {label!r} of sample {i} is not a non-negative integer"
            )
    return x, np.array(ys, dtype=np.int64)


def _text(xs: list[Any], ys: list[Any], fmt: _Format, where: str) -> tuple[np.ndarray, ...]:
    for i, (sample, label) in enumerate(zip(xs, ys, strict=True)):
        if not isinstance(sample, str):
            raise GossipError(
                f"{where}: sample {i} of x is {_describe(sample, label)}, not a string"
            )
        _check_length(len(sample), fmt, where, i, "characters")
        if not isinstance(label, str) or len(label) != 1:
            raise GossipError(f"{where}: label {label!r} of sample {i} is not a single character")
    assert fmt.length is not None
    x = encode("".join(xs)).reshape(len(xs), fmt.length)
    return x, encode("".join(ys))


def _read_split(
    files: list[Path], fmt: _Format, users: dict[str, int], split: _Split, name: str
) -> None:
    seen: dict[str, Path] = {}
    for path in files:
        data = read_json(path)
        if not isinstance(data, dict):
            raise GossipError(
                f"{path}: expected a JSON object with 'users' and 'user_data', "
                f"got {type(data).__name__}"
            )
        missing = [key for key in ("users", "user_data") if key not in data]
        if missing:
            raise GossipError(
                f"{path}: lacks {' and '.join(repr(k) for k in missing)}; a LEAF file holds "
                f"'users', 'num_samples' and 'user_data'"
            )
        listed, user_data = data["users"], data["user_data"]
        if not isinstance(listed, list) or not all(isinstance(u, str) for u in listed):
            raise GossipError(f"{path}: 'users' must be a list of user-id strings")
        if not isinstance(user_data, dict):
            raise GossipError(f"{path}: 'user_data' must be an object keyed by user id")
        for user in listed:
            where = f"{path}: user {user!r}"
            if user in seen:
                raise GossipError(
                    f"{where} is also in {seen[user]}; each user belongs to one {name} file"
                )
            seen[user] = path
            if user not in user_data:
                raise GossipError(f"{where} is in 'users' but not in 'user_data'")
            record = user_data[user]
            if not isinstance(record, dict) or not all(
                isinstance(record.get(k), list) for k in ("x", "y")
            ):
                raise GossipError(f"{where}: needs lists 'x' and 'y'")
            xs, ys = record["x"], record["y"]
            if len(xs) != len(ys):
                raise GossipError(f"{where}: 'x' has {len(xs)} samples but 'y' has {len(ys)}")
            group = users.setdefault(user, len(users))
            if not xs:
                continue
            kind = _kind_of(xs[0], ys[0], where)
            if fmt.kind is None:
                fmt.kind = kind
            elif kind != fmt.kind:
                raise GossipError(
                    f"{where}: x samples are {kind}, earlier samples were {fmt.kind}; {SUPPORTED}"
                )
            x, y = (_numbers if kind == "numbers" else _text)(xs, ys, fmt, where)
            split.x.append(x)
            split.y.append(y)
            split.groups.append(np.full(len(ys), group, dtype=np.int64))


def _json_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.glob("*.json") if p.is_file()), key=_natural_key)
    if not files:
        raise DatasetNotFoundError(f"leaf: no *.json files in {folder}; {HOW_TO_GET}")
    return files


def load_leaf_dir(directory: Path) -> Dataset:
    """Load a LEAF data directory (``train/`` and ``test/`` of LEAF JSON files)."""
    train_dir, test_dir = split_dirs(directory)
    train_files, test_files = _json_files(train_dir), _json_files(test_dir)
    fmt = _Format()
    users: dict[str, int] = {}
    train, test = _Split(), _Split()
    _read_split(train_files, fmt, users, train, "train")
    _read_split(test_files, fmt, users, test, "test")
    for split, folder in ((train, train_dir), (test, test_dir)):
        if not split.y:
            raise GossipError(f"leaf: the users of {folder} have no samples")
    x_train, x_test = np.concatenate(train.x), np.concatenate(test.x)
    y_train, y_test = np.concatenate(train.y), np.concatenate(test.y)
    if fmt.kind == "text":
        num_classes: int = VOCAB_SIZE
        vocab_size: int | None = VOCAB_SIZE
    else:
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        vocab_size = None
        if fmt.length == FEMNIST_FEATURES:
            x_train = x_train.reshape(-1, *FEMNIST_SHAPE)
            x_test = x_test.reshape(-1, *FEMNIST_SHAPE)
    return Dataset(
        name=f"leaf:{directory}",
        x_train=torch.from_numpy(x_train),
        y_train=labels_tensor(y_train),
        x_test=torch.from_numpy(x_test),
        y_test=labels_tensor(y_test),
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
        groups_train=np.concatenate(train.groups),
        groups_test=np.concatenate(test.groups),
        group_names=tuple(users),
        vocab_size=vocab_size,
    )


def load_leaf(param: str | None, root: Path | None, download: bool, seed: int) -> Dataset:
    """Load ``leaf:DIR`` (a relative DIR is taken under ``--data-dir`` when given)."""
    del download, seed
    if not param:
        raise ConfigError("leaf needs a directory: use --dataset leaf:DIR (LEAF's data/ folder)")
    directory = Path(param).expanduser()
    if root is not None and not directory.is_absolute():
        directory = root / directory
    return load_leaf_dir(directory)
