"""The in-memory dataset type shared by all loaders, and the few helpers loaders share.

A :class:`Dataset` holds the whole train and test split as tensors. Images are float32
``(N, C, H, W)`` scaled to ``[0, 1]``, 1-D signals float32 ``(N, L)``, text int64 token ids
``(N, L)``; labels are always int64 ``(N,)``. ``groups_train`` names the natural owner of each
training sample (a Shakespeare role, a writer), used by the ``natural`` partition.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Where downloaded or user-provided data lives unless --data-dir says otherwise.
DATA_ENV_VAR = "GOSSIP_DATA"


def data_home() -> Path:
    """The per-user data directory: ``$GOSSIP_DATA`` if set, else ``~/.cache/gossip``."""
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gossip"


@dataclass(frozen=True, eq=False)  # compared by identity: fields are large tensors
class Dataset:
    """A labelled train/test split held in memory."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    groups_train: np.ndarray | None = None
    # The owner of each test sample (LEAF-style per-user test data), for local accuracy.
    groups_test: np.ndarray | None = None
    group_names: tuple[str, ...] = ()
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"{self.name}: {split} has {x.shape[0]} inputs but {y.shape[0]} labels"
                )
            if tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(
                    f"{self.name}: {split} samples have shape {tuple(x.shape[1:])}, "
                    f"expected {self.input_shape}"
                )
            if y.dtype != torch.int64 or y.dim() != 1:
                raise ValueError(f"{self.name}: {split} labels must be a 1-D int64 tensor")
        if self.x_train.dtype != self.x_test.dtype:
            raise ValueError(f"{self.name}: train and test inputs have different dtypes")
        if self.groups_train is not None and self.groups_train.shape != (self.x_train.shape[0],):
            raise ValueError(f"{self.name}: groups_train must have one entry per training sample")
        if self.groups_test is not None and (
            self.groups_train is None or self.groups_test.shape != (self.x_test.shape[0],)
        ):
            raise ValueError(
                f"{self.name}: groups_test needs groups_train and one entry per test sample"
            )

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    def describe(self) -> dict[str, object]:
        """A small JSON-able summary (sizes, shapes, classes, groups)."""
        summary: dict[str, object] = {
            "name": self.name,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "dtype": str(self.x_train.dtype).removeprefix("torch."),
        }
        if self.vocab_size is not None:
            summary["vocab_size"] = self.vocab_size
        if self.groups_train is not None:
            summary["num_groups"] = int(np.unique(self.groups_train).size)
        return summary


# A loader gets the text after "name:" (or None), the --data-dir (or None), --download, --seed.
Loader = Callable[[str | None, Path | None, bool, int], Dataset]


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about a dataset name."""

    description: str
    default_location: str
    how_to_get: str
    loader: Loader
    takes_param: bool = False


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each sorted, with ``test_fraction`` of every class in test.

    Every class with at least two samples keeps at least one sample on each side.
    """
    train_parts: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    test_parts: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(members) * test_fraction)
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(test_parts))


def labels_tensor(labels: np.ndarray) -> torch.Tensor:
    """Labels as a contiguous int64 tensor."""
    return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))


def one_line(exc: BaseException) -> str:
    """An exception's message flattened to one line (for wrapping third-party errors)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
