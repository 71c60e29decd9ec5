"""``cifar10`` and ``cifar100``: the python-format batches, read by torchvision.

torchvision checks the files' md5 sums and unpickles them (this package never unpickles
anything itself). The data directory is the one that holds ``cifar-10-batches-py`` /
``cifar-100-python`` (the folder itself is accepted too); without ``--data-dir`` it is
``$GOSSIP_DATA/NAME`` (default ``~/.cache/gossip/NAME``). ``--download`` fetches the archive
there. Images become float32 ``(N, 3, 32, 32)`` in ``[0, 1]``, not normalised per channel (a
model may do that). CIFAR-100 uses the 100 fine labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gossip.datasets.dataset import Dataset, data_home, labels_tensor, one_line
from gossip.errors import DatasetNotFoundError


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 32, 32, 3) -> float32 (N, 3, 32, 32) in [0, 1]."""
    chw = np.ascontiguousarray(np.asarray(images, dtype=np.uint8).transpose(0, 3, 1, 2))
    return torch.from_numpy(chw).to(torch.float32).div_(255.0)


def load_cifar_dataset(name: str, root: Path | None, download: bool) -> Dataset:
    """Load ``cifar10`` or ``cifar100`` through torchvision."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    folder: str = cls.base_folder
    directory = data_home() / name if root is None else root
    if directory.name == folder:  # the batches folder itself was given
        directory = directory.parent
    try:
        train = cls(str(directory), train=True, download=download)
        test = cls(str(directory), train=False, download=False)
    except RuntimeError as exc:  # torchvision: files missing or md5 mismatch
        raise DatasetNotFoundError(
            f"{name}: {folder} missing or corrupt (md5 mismatch) in {directory}; "
            f"pass --data-dir DIR with DIR/{folder}, or --download"
        ) from exc
    except OSError as exc:  # download or disk failure
        raise DatasetNotFoundError(
            f"{name}: cannot get {folder} into {directory} ({one_line(exc)}); "
            f"pass --data-dir DIR with DIR/{folder}"
        ) from exc
    return Dataset(
        name=name,
        x_train=_to_tensor(train.data),
        y_train=labels_tensor(np.asarray(train.targets)),
        x_test=_to_tensor(test.data),
        y_test=labels_tensor(np.asarray(test.targets)),
        num_classes=10 if name == "cifar10" else 100,
        input_shape=(3, 32, 32),
    )


def load_cifar10(param: str | None, root: Path | None, download: bool, seed: int) -> Dataset:
    del param, seed
    return load_cifar_dataset("cifar10", root, download)


def load_cifar100(param: str | None, root: Path | None, download: bool, seed: int) -> Dataset:
    del param, seed
    return load_cifar_dataset("cifar100", root, download)
