"""Dataset loaders: MNIST, Fashion-MNIST, CIFAR-10 and ImageNet validation images.

Every loader returns ``(images, labels)``: float32 NCHW tensors in [0, 1] and int64 labels.
Where files are looked for, and how they are fetched, is documented in
:mod:`obfgrad.data.locate`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import torch

from obfgrad._checks import check_choice
from obfgrad.data.cifar import CifarFormatError, load_cifar10_batches
from obfgrad.data.download import ChecksumError
from obfgrad.data.idx import IdxFormatError, load_idx_pair
from obfgrad.data.imagenet import load_imagenet_val
from obfgrad.data.locate import DATASETS, DatasetNotFoundError, content_name, in_cache, locate_split

DATASET_NAMES = tuple(DATASETS)


def load_dataset(
    name: str,
    split: str,
    data_dir: Optional[Union[str, Path]] = None,
    download: bool = True,
    verify: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Load a split of ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.

    Args:
        name: the dataset.
        split: ``"train"`` or ``"test"``.
        data_dir: a directory to search first (see :mod:`obfgrad.data.locate` for the order).
        download: fetch into the cache when no local copy exists (checksum-verified).
        verify: check every file's content against the published data's MD5, wherever it was
            found. A damaged copy in the download cache is deleted and fetched again (with a
            warning); one anywhere else is refused naming the file. ``False`` accepts a
            deliberately different copy (a subset, a stand-in), checked by structure only.

    Returns:
        images float32 N×C×H×W in [0, 1] (1×28×28 or 3×32×32), labels int64 N.

    Raises:
        DatasetNotFoundError: the data is nowhere; the message says how to get it.
        ChecksumError, IdxFormatError, CifarFormatError: a file is damaged or not this dataset.

    Example (a two-image stand-in for the real files, which hold 10,000 test images):
        >>> import tempfile, numpy as np
        >>> from obfgrad.data.idx import write_idx
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_idx(f"{folder}/t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8), compress=True)
        >>> _ = write_idx(f"{folder}/t10k-labels-idx1-ubyte.gz", np.array([9, 2], np.uint8), compress=True)
        >>> images, labels = load_dataset("fashion-mnist", "test", data_dir=folder, download=False, verify=False)
        >>> images.shape, labels.tolist()
        (torch.Size([2, 1, 28, 28]), [9, 2])
    """
    check_choice(name, "name", DATASET_NAMES)
    check_choice(split, "split", ("train", "test"))
    paths = locate_split(name, split, data_dir=data_dir, download=download)
    try:
        return _read_split(name, paths, verify)
    except (ChecksumError, IdxFormatError, CifarFormatError) as error:
        if not (download and in_cache(name, paths)):
            raise type(error)(f"{error}. Replace or delete that file ({_how_to_replace(name)}); "
                              "load_dataset(..., verify=False) accepts a deliberately different copy") from None
        # Files obfgrad downloaded itself: replace them rather than fail every later run.
        warnings.warn(f"{error}; deleting the cached copy and fetching it again", RuntimeWarning, stacklevel=2)
        for path in paths:
            Path(path).unlink(missing_ok=True)
        paths = locate_split(name, split, data_dir=data_dir, download=download)
        return _read_split(name, paths, verify)


def _how_to_replace(name: str) -> str:
    package = DATASETS[name].apt_package
    return f"apt-get install --reinstall {package} restores the Debian copy" if package else \
        "a fresh copy downloads into the cache when none is found elsewhere"


def _read_split(name: str, paths, verify: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    md5 = DATASETS[name].content_md5 if verify else {}
    if name == "cifar10":
        return load_cifar10_batches(paths, md5)
    images_path, labels_path = paths
    images, labels = load_idx_pair(images_path, labels_path, images_md5=md5.get(content_name(images_path)),
                                   labels_md5=md5.get(content_name(labels_path)), num_classes=10)
    if tuple(images.shape[1:]) != (1, 28, 28):  # the models and the smoke recipes assume 28x28
        raise IdxFormatError(f"{images_path}: expected 28x28 {name} images, got {tuple(images.shape[2:])}")
    return images, labels


__all__ = ["DATASET_NAMES", "DatasetNotFoundError", "ChecksumError", "IdxFormatError", "CifarFormatError",
           "load_dataset", "load_imagenet_val"]
