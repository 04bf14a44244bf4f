"""Dataset loaders: MNIST, Fashion-MNIST, CIFAR-10 and ImageNet validation images.

Every loader returns ``(images, labels)``: float32 NCHW tensors in [0, 1] and int64 labels.
Where files are looked for, and how they are fetched, is documented in
:mod:`obfgrad.data.locate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from obfgrad._checks import check_choice
from obfgrad.data.cifar import load_cifar10_batches
from obfgrad.data.idx import load_idx_pair
from obfgrad.data.imagenet import load_imagenet_val
from obfgrad.data.locate import DATASETS, DatasetNotFoundError, locate_split

DATASET_NAMES = tuple(DATASETS)


def load_dataset(
    name: str,
    split: str,
    data_dir: Optional[Union[str, Path]] = None,
    download: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Load a split of ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.

    Args:
        name: the dataset.
        split: ``"train"`` or ``"test"``.
        data_dir: a directory to search first (see :mod:`obfgrad.data.locate` for the order).
        download: fetch into the cache when no local copy exists (checksum-verified).

    Returns:
        images float32 N×C×H×W in [0, 1] (1×28×28 or 3×32×32), labels int64 N.

    Raises:
        DatasetNotFoundError: the data is nowhere; the message says how to get it.

    Example (a two-image stand-in for the real files, which hold 10,000 test images):
        >>> import tempfile, numpy as np
        >>> from obfgrad.data.idx import write_idx
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_idx(f"{folder}/t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8), compress=True)
        >>> _ = write_idx(f"{folder}/t10k-labels-idx1-ubyte.gz", np.array([9, 2], np.uint8), compress=True)
        >>> images, labels = load_dataset("fashion-mnist", "test", data_dir=folder, download=False)
        >>> images.shape, labels.tolist()
        (torch.Size([2, 1, 28, 28]), [9, 2])
    """
    check_choice(name, "name", DATASET_NAMES)
    check_choice(split, "split", ("train", "test"))
    paths = locate_split(name, split, data_dir=data_dir, download=download)
    if name == "cifar10":
        return load_cifar10_batches(paths)
    images_path, labels_path = paths
    return load_idx_pair(images_path, labels_path)


__all__ = ["DATASET_NAMES", "DatasetNotFoundError", "load_dataset", "load_imagenet_val"]
