"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 samples, 10 classes).

Needs no download, so it is the default dataset. Pixels (0..16) are scaled to ``[0, 1]`` and
shaped ``(N, 1, 8, 8)``. The train/test split is a stratified 80/20 split with a fixed seed
(:data:`SPLIT_SEED`), the same for every ``--seed``, so test accuracy is comparable across runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gossip.datasets.dataset import Dataset, labels_tensor, stratified_split

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_digits(param: str | None, root: Path | None, download: bool, seed: int) -> Dataset:
    """Load sklearn's digits; ``root``, ``download`` and ``seed`` are not used."""
    del param, root, download, seed
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    train, test = stratified_split(labels, TEST_FRACTION, np.random.default_rng(SPLIT_SEED))
    return Dataset(
        name="digits",
        x_train=torch.from_numpy(np.ascontiguousarray(images[train])),
        y_train=labels_tensor(labels[train]),
        x_test=torch.from_numpy(np.ascontiguousarray(images[test])),
        y_test=labels_tensor(labels[test]),
        num_classes=10,
        input_shape=(1, 8, 8),
    )
