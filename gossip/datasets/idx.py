"""``mnist`` and ``fashion-mnist``: IDX files read by a small, strict parser of our own.

The four files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (plain or ``.gz``) are looked for in
``ROOT``, ``ROOT/raw`` and torchvision's layout ``ROOT/MNIST/raw`` / ``ROOT/FashionMNIST/raw``.
Without ``--data-dir`` the roots are ``$GOSSIP_DATA/NAME`` (default ``~/.cache/gossip/NAME``)
and, for fashion-mnist, ``/usr/share/datasets/fashion-mnist`` (Debian's
``dataset-fashion-mnist`` package). ``--download`` fetches the files with torchvision into the
first root, then reads them with the parser here. Images become float32 ``(N, 1, 28, 28)`` in
``[0, 1]``.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gossip.datasets.dataset import Dataset, data_home, labels_tensor, one_line
from gossip.errors import DatasetNotFoundError, GossipError

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_MAX_IDX_DIMS = 8
_GZIP_MAGIC = b"\x1f\x8b"

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise GossipError(f"{path}: cannot read IDX file ({one_line(exc)})") from exc
    return raw


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (plain or gzip): checks the magic number, dims and exact size."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise GossipError(f"{path}: not an IDX file (bad magic number); replace the file")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise GossipError(f"{path}: unknown IDX data type 0x{code:02x}; replace the file")
    if not 1 <= ndim <= _MAX_IDX_DIMS:
        raise GossipError(f"{path}: IDX header claims {ndim} dimensions; replace the file")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise GossipError(f"{path}: IDX file truncated inside its header; replace the file")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise GossipError(
            f"{path}: IDX file {what} ({actual} data bytes, header {dims} needs {expected}); "
            "replace the file"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


@dataclass(frozen=True)
class _IdxSource:
    name: str  # our dataset name
    torchvision_class: str  # MNIST / FashionMNIST: also its folder name in torchvision's layout
    system_dirs: tuple[Path, ...]
    hint: str  # how to get it, for the not-found message


_SOURCES = {
    "mnist": _IdxSource("mnist", "MNIST", (), "pass --data-dir, or --download"),
    "fashion-mnist": _IdxSource(
        "fashion-mnist",
        "FashionMNIST",
        (Path("/usr/share/datasets/fashion-mnist"),),
        "install Debian's dataset-fashion-mnist package, pass --data-dir, or --download",
    ),
}


def _find_file(directory: Path, base: str) -> Path | None:
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_files(root: Path, source: _IdxSource) -> list[Path] | None:
    for directory in (root, root / "raw", root / source.torchvision_class / "raw"):
        found = [_find_file(directory, base) for base in FILES]
        if all(f is not None for f in found):
            return [f for f in found if f is not None]
    return None


def _roots(root: Path | None, source: _IdxSource) -> list[Path]:
    if root is not None:
        return [root]
    return [data_home() / source.name, *source.system_dirs]


def _download(target: Path, source: _IdxSource) -> None:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, source.torchvision_class)
    try:
        cls(str(target), train=True, download=True)
    except Exception as exc:  # network, disk, checksum: all end as one line for the user
        raise DatasetNotFoundError(
            f"{source.name}: download into {target} failed ({one_line(exc)}); "
            "copy the IDX files there and pass --data-dir"
        ) from exc


def _images(array: np.ndarray, path: Path) -> torch.Tensor:
    if array.dtype != np.uint8 or array.ndim != 3:
        raise GossipError(
            f"{path}: expected uint8 images (N, H, W), got {array.dtype} {array.shape}"
        )
    return torch.from_numpy(array.astype(np.float32) / 255.0).unsqueeze(1)


def _labels(array: np.ndarray, images: torch.Tensor, path: Path) -> torch.Tensor:
    if array.ndim != 1 or array.shape[0] != images.shape[0]:
        raise GossipError(
            f"{path}: expected {images.shape[0]} labels (one per image), got shape {array.shape}"
        )
    if array.size and int(array.max()) > 9:
        raise GossipError(f"{path}: label {int(array.max())} out of range 0..9; replace the file")
    return labels_tensor(array)


def load_idx_dataset(name: str, root: Path | None, download: bool) -> Dataset:
    """Load ``mnist`` or ``fashion-mnist`` from IDX files."""
    source = _SOURCES[name]
    roots = _roots(root, source)
    files = next((f for f in (_find_files(r, source) for r in roots) if f is not None), None)
    if files is None and download:
        _download(roots[0], source)
        files = _find_files(roots[0], source)
    if files is None:
        where = " or ".join(str(r) for r in roots)
        raise DatasetNotFoundError(f"{name}: no IDX files in {where}; {source.hint}")
    train_images_path, train_labels_path, test_images_path, test_labels_path = files
    x_train = _images(read_idx(train_images_path), train_images_path)
    x_test = _images(read_idx(test_images_path), test_images_path)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise GossipError(f"{name}: train and test images differ in size; replace the files")
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=_labels(read_idx(train_labels_path), x_train, train_labels_path),
        x_test=x_test,
        y_test=_labels(read_idx(test_labels_path), x_test, test_labels_path),
        num_classes=10,
        input_shape=tuple(x_train.shape[1:]),
    )


def load_mnist(param: str | None, root: Path | None, download: bool, seed: int) -> Dataset:
    del param, seed
    return load_idx_dataset("mnist", root, download)


def load_fashion_mnist(param: str | None, root: Path | None, download: bool, seed: int) -> Dataset:
    del param, seed
    return load_idx_dataset("fashion-mnist", root, download)
