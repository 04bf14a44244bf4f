"""IDX files (MNIST, Fashion-MNIST), plain or gzipped.

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"): two zero
bytes, a type code, the number of dimensions, then one big-endian uint32 per dimension, then
the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from obfgrad.data.download import ChecksumError

PathLike = Union[str, Path]

# Type codes of the IDX format -> big-endian numpy dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """The bytes are not a well-formed IDX file."""


def read_content(path: PathLike) -> bytes:
    """The bytes of ``path``, gunzipped when it starts with the gzip magic."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(2)
    opener = gzip.open if head == _GZIP_MAGIC else open
    try:
        with opener(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise IdxFormatError(f"{path}: cannot decompress ({error})") from error


def verify_content(data: bytes, md5: Optional[str], name: str) -> None:
    """Raise :class:`~obfgrad.data.download.ChecksumError` unless ``data`` has MD5 ``md5``
    (``None``: nothing to check)."""
    if md5 is None:
        return
    actual = hashlib.md5(data).hexdigest()
    if actual != md5:
        raise ChecksumError(f"{name}: content md5 is {actual}, expected {md5} (the published file): the file is "
                            "damaged or is not this dataset")


def parse_idx(data: bytes, name: str = "data") -> np.ndarray:
    """Decode IDX bytes into an array of the stored shape (native byte order)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxFormatError(f"{name}: not an IDX file (bad magic {data[:4]!r})")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise IdxFormatError(f"{name}: unknown IDX type code 0x{type_code:02x}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxFormatError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no int64 overflow on a forged header
    if len(data) - header_size != expected:
        raise IdxFormatError(
            f"{name}: IDX header says shape {shape} ({expected} bytes) but {len(data) - header_size} bytes follow"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: PathLike, md5: Optional[str] = None) -> np.ndarray:
    """Read an IDX file (gzipped or not, detected from its first bytes); with ``md5``, its
    decompressed content must have that MD5.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
        >>> _ = write_idx(path, np.arange(3, dtype=np.uint8))
        >>> read_idx(path).tolist()
        [0, 1, 2]
    """
    path = Path(path)
    data = read_content(path)
    verify_content(data, md5, str(path))
    return parse_idx(data, name=str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes for ``array`` (dtype among uint8, int8, int16, int32, float32, float64)."""
    array = np.asarray(array)
    for code, dtype in _IDX_DTYPES.items():
        if array.dtype.newbyteorder("=") == dtype.newbyteorder("="):
            header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            return header + np.ascontiguousarray(array, dtype=dtype).tobytes()
    raise TypeError(f"array: IDX cannot store dtype {array.dtype}")


def write_idx(path: PathLike, array: np.ndarray, *, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``compress``); used by tests and tools."""
    path = Path(path)
    data = encode_idx(array)
    if compress:
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def load_idx_pair(images_path: PathLike, labels_path: PathLike, *, images_md5: Optional[str] = None,
                  labels_md5: Optional[str] = None, num_classes: Optional[int] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 N×H×W) and labels (uint8 N) -> float32 N×1×H×W in [0, 1] and int64 N.

    ``images_md5``/``labels_md5`` verify the files' decompressed content; with ``num_classes``
    every label must be below it."""
    images = read_idx(images_path, images_md5)
    labels = read_idx(labels_path, labels_md5)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise IdxFormatError(f"{images_path}: expected uint8 images of shape N×H×W, got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IdxFormatError(f"{labels_path}: expected uint8 labels of shape N, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise IdxFormatError(f"{images_path}, {labels_path}: {len(images)} images but {len(labels)} labels")
    if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        raise IdxFormatError(f"{labels_path}: label {int(labels.max())} out of range for {num_classes} classes")
    pixels = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)
    return pixels, torch.from_numpy(labels.astype(np.int64))
