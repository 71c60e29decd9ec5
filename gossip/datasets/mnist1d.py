"""``mnist1d``: the MNIST-1D benchmark (Greydanus), generated offline by the ``mnist1d`` package.

Only ``mnist1d.data.make_dataset`` with the package's default arguments is used (5000 signals
of length 40, 10 classes, its own 4000/1000 split, its fixed seed 42), so nothing is ever
downloaded and the data are the canonical ones. The generator seeds numpy's and Python's global
random state; this loader restores both afterwards. Signals are float32 ``(N, 40)``,
standardised by the generator. Needs the optional extra: ``pip install 'gossip-learning[mnist1d]'``.
"""

from __future__ import annotations

import contextlib
import io
import random
from pathlib import Path

import numpy as np
import torch

from gossip.datasets.dataset import Dataset, labels_tensor
from gossip.errors import DatasetNotFoundError


def load_mnist1d(param: str | None, root: Path | None, download: bool, seed: int) -> Dataset:
    """Generate MNIST-1D; ``root``, ``download`` and ``seed`` are not used."""
    del param, root, download, seed
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise DatasetNotFoundError(
            "mnist1d: the mnist1d package is not installed; pip install 'gossip-learning[mnist1d]'"
        ) from exc
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    x_train = torch.from_numpy(np.ascontiguousarray(data["x"], dtype=np.float32))
    x_test = torch.from_numpy(np.ascontiguousarray(data["x_test"], dtype=np.float32))
    return Dataset(
        name="mnist1d",
        x_train=x_train,
        y_train=labels_tensor(np.asarray(data["y"])),
        x_test=x_test,
        y_test=labels_tensor(np.asarray(data["y_test"])),
        num_classes=10,
        input_shape=tuple(x_train.shape[1:]),
    )
