"""CIFAR-10 "python version" batches (https://www.cs.toronto.edu/~kriz/cifar.html).

Each batch is a pickle of a dict ``{"data": uint8 array N×3072, "labels": [int]*N, ...}``
whose rows hold the red, green, then blue 32×32 planes. ``pickle.load`` on a downloaded file
would run whatever the file asks for, so batches are read with :class:`RestrictedUnpickler`:
it resolves only the few globals a numpy array needs and refuses every other one.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from obfgrad.atomic import atomic_write_bytes
from obfgrad.data.idx import read_content, verify_content

PathLike = Union[str, Path]

BATCH_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
_PIXELS_PER_IMAGE = 3 * 32 * 32
_NUM_CLASSES = 10


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for a global that is not on the allow-list."""


class CifarFormatError(ValueError):
    """A CIFAR-10 batch file or archive is unreadable or malformed."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes ``bytes`` at pickle protocol 2 as ``_codecs.encode(text, "latin1")``;
    # only that codec is accepted (other codecs are arbitrary transformations).
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise UnsafePickleError(f"_codecs.encode is allowed only as (str, 'latin1'), got encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    # The reconstruct function is taken from numpy itself (it lives in numpy.core in numpy 1.x
    # and numpy._core in 2.x); the module names below are the ones pickles spell.
    # Protocol 5 pickles contiguous arrays through numpy's ``_frombuffer`` instead.
    reconstruct = np.ndarray.__reduce__(np.empty(0))[0]
    frombuffer = np.empty(1).__reduce_ex__(5)[0]
    allowed: Dict[Tuple[str, str], Any] = {("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, str, bytes, numbers and numpy arrays, nothing else.

    Example:
        >>> import os
        >>> class Evil:
        ...     def __reduce__(self):
        ...         return (os.system, ("echo owned",))
        >>> restricted_loads(pickle.dumps(Evil()))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        obfgrad.data.cifar.UnsafePickleError: refusing to unpickle global '...system' ...
    """

    _ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global '{module}.{name}' (only numpy arrays and plain containers are allowed)"
            ) from None


def restricted_loads(data: bytes) -> Any:
    """``pickle.loads`` through :class:`RestrictedUnpickler` (Python 2 strings read as latin-1)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def read_batch(path: PathLike, md5: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 N×3×32×32 images, int64 N labels), validated; with ``md5``,
    the file's (decompressed) content must have that MD5."""
    path = Path(path)
    raw = read_content(path)
    verify_content(raw, md5, str(path))
    try:
        batch = restricted_loads(raw)
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{path}: {error}") from None
    except Exception as error:  # truncated or corrupt: EOFError, UnpicklingError, ValueError, ...
        raise CifarFormatError(f"{path}: not a readable CIFAR-10 batch ({type(error).__name__}: {error})") from None
    if not isinstance(batch, dict):
        raise CifarFormatError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    well_formed = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
    if not well_formed or data.shape[1] != _PIXELS_PER_IMAGE:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarFormatError(f"{path}: 'data' must be a uint8 array N×{_PIXELS_PER_IMAGE}, got {got}")
    try:
        labels = np.asarray(labels)
    except ValueError as error:  # ragged lists
        raise CifarFormatError(f"{path}: 'labels' is not a list of integers ({error})") from None
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise CifarFormatError(f"{path}: 'labels' must be {len(data)} integers, "
                               f"got shape {labels.shape} {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise CifarFormatError(f"{path}: labels outside 0..{_NUM_CLASSES - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10_folder(folder: PathLike, split: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Read ``split`` ("train": data_batch_1..5, "test": test_batch) from a batches folder."""
    names = {"train": TRAIN_BATCHES, "test": TEST_BATCHES}[split]
    return load_cifar10_batches([Path(folder) / name for name in names])


def load_cifar10_batches(paths: Sequence[PathLike], md5: Optional[Dict[str, str]] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Concatenate batch files -> float32 N×3×32×32 in [0, 1], int64 N; ``md5`` maps a batch's
    file name (without ``.gz``) to its content MD5."""
    md5 = md5 or {}
    parts = [read_batch(path, md5.get(Path(path).name.removesuffix(".gz"))) for path in paths]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    return torch.from_numpy(images).to(torch.float32).div_(255.0), torch.from_numpy(labels)


def extract_batches(archive: PathLike, destination: PathLike) -> Path:
    """Extract only the expected regular files of ``cifar-10-python.tar.gz`` into
    ``destination/cifar-10-batches-py`` (no links, no absolute or ``..`` paths)."""
    destination = Path(destination)
    wanted = {f"{BATCH_FOLDER}/{name}" for name in TRAIN_BATCHES + TEST_BATCHES + ("batches.meta",)}
    folder = destination / BATCH_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                if member.name not in wanted or not member.isfile():
                    continue
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file always has contents
                atomic_write_bytes(folder / Path(member.name).name, handle.read())
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise CifarFormatError(f"{archive}: cannot extract ({type(error).__name__}: {error}); delete this file "
                               "to download it again") from None
    missing = [name for name in TRAIN_BATCHES + TEST_BATCHES if not (folder / name).is_file()]
    if missing:
        raise CifarFormatError(f"{archive}: archive lacks {', '.join(missing)}; delete this file to download it again")
    return folder

