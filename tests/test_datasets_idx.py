"""IDX parser and the mnist / fashion-mnist loaders, on tiny files written here."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gossip.datasets import load_dataset
from gossip.datasets.idx import FILES, read_idx
from gossip.errors import DatasetNotFoundError, GossipError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype("u1"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(
    directory: Path, *, n_train: int = 12, n_test: int = 5, gz: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        FILES[0]: rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        FILES[1]: rng.integers(0, 10, size=n_train, dtype=np.uint8),
        FILES[2]: rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        FILES[3]: rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


def _one_line(info: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(info.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("dtype", ["u1", ">i4", ">f4"])
def test_read_idx_roundtrip(tmp_path: Path, dtype: str) -> None:
    array = (
        (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
        if dtype != "u1"
        else np.arange(24, dtype="u1").reshape(2, 3, 4)
    )
    (tmp_path / "a.idx").write_bytes(idx_bytes(array))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(array)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx.gz"), array)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "bad magic"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x07", "unknown IDX data type"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "inside its header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "trailing bytes"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(data)
    with pytest.raises(GossipError, match=message) as info:
        read_idx(path)
    assert str(path) in _one_line(info)


def test_read_idx_rejects_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GossipError, match="cannot read IDX file") as info:
        read_idx(path)
    _one_line(info)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_plain_and_gzip_files(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path, gz=gz)
    data = load_dataset("mnist", root=tmp_path)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert (data.num_train, data.num_test) == (12, 5)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    torch.testing.assert_close(data.x_train[:, 0], torch.from_numpy(arrays[FILES[0]]).float() / 255)
    assert data.y_test.tolist() == arrays[FILES[3]].tolist()


def test_torchvision_layout_and_gossip_data_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mnist(tmp_path / "fashion-mnist" / "FashionMNIST" / "raw", n_train=3, n_test=2)
    monkeypatch.setenv("GOSSIP_DATA", str(tmp_path))
    data = load_dataset("fashion-mnist")
    assert (data.num_train, data.num_test) == (3, 2)
    write_mnist(tmp_path / "mine" / "raw", n_train=4, n_test=1, gz=True)
    assert load_dataset("mnist", root=tmp_path / "mine").num_train == 4


def test_missing_files_name_the_place_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", root=tmp_path)
    message = _one_line(info)
    assert (
        str(tmp_path) in message and "dataset-fashion-mnist" in message and "--download" in message
    )
    monkeypatch.setenv("GOSSIP_DATA", str(tmp_path))
    write_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / FILES[3]).unlink()  # an incomplete set is not a dataset
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist")
    assert str(tmp_path / "mnist") in _one_line(info)


def test_truncated_dataset_file_gives_one_line(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    path = tmp_path / FILES[0]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(GossipError, match="truncated") as info:
        load_dataset("mnist", root=tmp_path)
    _one_line(info)


def test_labels_must_match_images(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / FILES[1]).write_bytes(idx_bytes(np.zeros(11, dtype=np.uint8)))
    with pytest.raises(GossipError, match="expected 12 labels") as info:
        load_dataset("mnist", root=tmp_path)
    _one_line(info)
    (tmp_path / FILES[1]).write_bytes(idx_bytes(np.full(12, 10, dtype=np.uint8)))
    with pytest.raises(GossipError, match="out of range"):
        load_dataset("mnist", root=tmp_path)


def test_download_uses_torchvision_then_our_parser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    calls: list[tuple[str, bool]] = []

    class FakeMNIST:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, download))
            write_mnist(Path(root) / "MNIST" / "raw", n_train=6, n_test=2, gz=True)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    data = load_dataset("mnist", root=tmp_path / "dl", download=True)
    assert calls == [(str(tmp_path / "dl"), True)] and data.num_train == 6
    load_dataset("mnist", root=tmp_path / "dl", download=True)  # present: no second download
    assert len(calls) == 1


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    class OfflineMNIST:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirrors")

    monkeypatch.setattr(torchvision.datasets, "MNIST", OfflineMNIST)
    with pytest.raises(DatasetNotFoundError, match="download into") as info:
        load_dataset("mnist", root=tmp_path, download=True)
    _one_line(info)


@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_real_fashion_mnist_files() -> None:
    images = read_idx(FASHION_DIR / f"{FILES[2]}.gz")
    labels = read_idx(FASHION_DIR / f"{FILES[3]}.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


@pytest.mark.slow
@pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"
)
def test_real_fashion_mnist_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GOSSIP_DATA", str(tmp_path))  # empty: falls through to the system copy
    data = load_dataset("fashion-mnist")
    assert (data.num_train, data.num_test) == (60000, 10000)
    assert torch.bincount(data.y_train).tolist() == [6000] * 10
    assert 0.25 < float(data.x_train[:1000].mean()) < 0.35
