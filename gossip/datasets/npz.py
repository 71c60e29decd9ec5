"""``npz:PATH``: a user's own dataset in one ``.npz`` file (``numpy.savez``).

Arrays: ``x`` (or ``X``) with one sample per row, ``y`` integer labels ``(N,)``; optional
``x_test``/``y_test`` (else a stratified 80/20 split drawn from ``--seed``) and optional
``groups`` (one integer per sample of ``x``, for the ``natural`` partition; without a test set
it is split along with the samples, with one the test set may have its own ``groups_test``, so
that each peer is also evaluated on the test samples of its own groups). Integer ``x`` is kept as int64 token ids (``vocab_size``
is their largest value plus one), floating ``x`` becomes float32. ``num_classes`` is the largest
label plus one. The file is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from gossip.datasets.dataset import Dataset, labels_tensor, one_line, stratified_split
from gossip.errors import ConfigError, DatasetNotFoundError, GossipError

TEST_FRACTION = 0.2


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetNotFoundError(f"npz: no file {path}; give an existing file as npz:PATH")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise GossipError(f"{path}: {one_line(exc)}; save plain numeric arrays") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise GossipError(f"{path}: not a readable .npz file ({one_line(exc)})") from exc


def _features(array: np.ndarray, path: Path, key: str) -> torch.Tensor:
    if array.ndim < 2:
        raise GossipError(
            f"{path}: '{key}' must have one sample per row (ndim >= 2), got {array.shape}"
        )
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        if array.size and int(array.min()) < 0:
            raise GossipError(f"{path}: '{key}' holds negative token ids; save features as floats")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise GossipError(f"{path}: '{key}' contains NaN or infinite values")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    raise GossipError(f"{path}: '{key}' has dtype {array.dtype}; use integers or floats")


def _labels(array: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        raise GossipError(f"{path}: '{key}' must hold integer class labels, got {array.dtype}")
    if array.shape != (n,):
        raise GossipError(f"{path}: '{key}' must have shape ({n},) to match x, got {array.shape}")
    if array.size and int(array.min()) < 0:
        raise GossipError(f"{path}: '{key}' has negative label {int(array.min())}")
    return array.astype(np.int64)


def load_npz(param: str | None, root: Path | None, download: bool, seed: int) -> Dataset:
    """Load ``npz:PATH`` (a relative PATH is taken under ``--data-dir`` when given)."""
    del download
    if not param:
        raise ConfigError("npz needs a file: use --dataset npz:PATH")
    path = Path(param).expanduser()
    if root is not None and not path.is_absolute():
        path = root / path
    arrays = _read(path)
    x_key = "x" if "x" in arrays else "X" if "X" in arrays else None
    if x_key is None or "y" not in arrays:
        raise GossipError(f"{path}: needs arrays 'x' (or 'X') and 'y'; found {sorted(arrays)}")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise GossipError(f"{path}: give both 'x_test' and 'y_test' or neither")
    x_all = arrays[x_key]
    x = _features(x_all, path, x_key)
    y = _labels(arrays["y"], x.shape[0], path, "y")
    groups = arrays.get("groups")
    if groups is not None:
        if not np.issubdtype(groups.dtype, np.integer) or groups.shape != (x.shape[0],):
            raise GossipError(f"{path}: 'groups' must be integers of shape ({x.shape[0]},)")
        groups = groups.astype(np.int64)
    if "x_test" in arrays:
        x_test = _features(arrays["x_test"], path, "x_test")
        y_test = _labels(arrays["y_test"], x_test.shape[0], path, "y_test")
        if x_test.shape[1:] != x.shape[1:] or x_test.dtype != x.dtype:
            raise GossipError(
                f"{path}: 'x_test' samples are {x_test.dtype} {tuple(x_test.shape[1:])}, "
                f"'{x_key}' samples are {x.dtype} {tuple(x.shape[1:])}"
            )
        x_train, y_train = x, y
        groups_test = arrays.get("groups_test")
        if groups_test is not None:
            if (
                groups is None
                or not np.issubdtype(groups_test.dtype, np.integer)
                or (groups_test.shape != (x_test.shape[0],))
            ):
                raise GossipError(
                    f"{path}: 'groups_test' needs 'groups' and must be integers of shape "
                    f"({x_test.shape[0]},)"
                )
            groups_test = groups_test.astype(np.int64)
    else:
        if x.shape[0] < 2:
            raise GossipError(f"{path}: needs at least 2 samples to split off a test set")
        train, test = stratified_split(y, TEST_FRACTION, np.random.default_rng(seed))
        x_train, x_test = x[torch.from_numpy(train)], x[torch.from_numpy(test)]
        y_train, y_test = y[train], y[test]
        groups_test = None if groups is None else groups[test]
        groups = None if groups is None else groups[train]
    if x_train.shape[0] == 0:
        raise GossipError(f"{path}: the training set is empty")
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    vocab_size = None
    if x_train.dtype == torch.int64:
        vocab_size = int(torch.cat([x_train.flatten(), x_test.flatten()]).max()) + 1
    return Dataset(
        name=f"npz:{path}",
        x_train=x_train,
        y_train=labels_tensor(y_train),
        x_test=x_test,
        y_test=labels_tensor(y_test),
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
        groups_train=groups,
        groups_test=groups_test,
        vocab_size=vocab_size,
    )
