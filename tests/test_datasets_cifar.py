"""CIFAR-10/100 loaders on tiny python-format batches in torchvision's layout.

torchvision checks md5 sums of the real files; these tests point its class attributes at the
md5 sums of the tiny files written here (the production code is unchanged).
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from gossip.datasets import load_dataset
from gossip.errors import DatasetNotFoundError


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _dump(path: Path, obj: object) -> str:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)
    return _md5(path)


def write_cifar10(
    root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 3
) -> tuple[np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_list, all_data, all_labels = [], [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        name = f"data_batch_{i}"
        train_list.append([name, _dump(folder / name, {"data": data, "labels": labels})])
        all_data.append(data)
        all_labels += labels
    test = {"data": rng.integers(0, 256, size=(2, 3072), dtype=np.uint8), "labels": [9, 0]}
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _dump(folder / "test_batch", test)]])
    monkeypatch.setattr(
        CIFAR10, "meta", {**CIFAR10.meta, "md5": _dump(folder / "batches.meta", meta)}
    )
    return np.concatenate(all_data), all_labels


def test_cifar10_pixels_layout_and_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_rows, labels = write_cifar10(tmp_path, monkeypatch)
    data = load_dataset("cifar10", root=tmp_path)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert (data.num_train, data.num_test) == (15, 2)
    assert data.x_train.dtype == torch.float32 and data.x_train.is_contiguous()
    assert data.y_train.tolist() == labels and data.y_test.tolist() == [9, 0]
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    expected = torch.from_numpy(data_rows.reshape(-1, 3, 32, 32)).float() / 255
    torch.testing.assert_close(data.x_train, expected)
    assert float(data.x_train[4, 1, 2, 3]) == pytest.approx(data_rows[4, 1024 + 2 * 32 + 3] / 255)
    # the batches folder itself is accepted as --data-dir too
    assert load_dataset("cifar10", root=tmp_path / "cifar-10-batches-py").num_train == 15


def test_cifar100_uses_fine_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    train = {
        "data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8),
        "fine_labels": [99, 5, 42, 0],
        "coarse_labels": [19, 1, 2, 0],
    }
    test = {
        "data": rng.integers(0, 256, size=(1, 3072), dtype=np.uint8),
        "fine_labels": [7],
        "coarse_labels": [3],
    }
    meta = {
        "fine_label_names": [f"f{i}" for i in range(100)],
        "coarse_label_names": [f"c{i}" for i in range(20)],
    }
    monkeypatch.setattr(CIFAR100, "train_list", [["train", _dump(folder / "train", train)]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", _dump(folder / "test", test)]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": _dump(folder / "meta", meta)})
    data = load_dataset("cifar100", root=tmp_path)
    assert data.num_classes == 100 and data.y_train.tolist() == [99, 5, 42, 0]
    assert data.y_test.tolist() == [7] and data.x_test.shape == (1, 3, 32, 32)


def test_missing_cifar_is_one_line(tmp_path: Path) -> None:
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        with pytest.raises(DatasetNotFoundError) as info:
            load_dataset(name, root=tmp_path)
        message = str(info.value)
        assert "\n" not in message and folder in message and "--download" in message


def test_corrupted_cifar_batch_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(tmp_path, monkeypatch)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DatasetNotFoundError, match="corrupt") as info:
        load_dataset("cifar10", root=tmp_path)
    assert "\n" not in str(info.value)


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    def offline(self: CIFAR10) -> None:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(CIFAR10, "download", offline)
    with pytest.raises(DatasetNotFoundError, match="no route to host") as info:
        load_dataset("cifar10", root=tmp_path, download=True)
    assert "\n" not in str(info.value)
