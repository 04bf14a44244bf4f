"""IDX reading: round trips through our writer, byte-level headers written by hand, gzip
detection, and malformed files refused."""

import gzip
import struct

import numpy as np
import pytest
import torch

from obfgrad.data.idx import (
    IdxFormatError,
    encode_idx,
    load_idx_pair,
    parse_idx,
    read_idx,
    write_idx,
)


def test_header_written_by_hand_is_decoded():
    # magic 0x00000803: uint8, 3 dims; dims 2×2×3 big-endian
    data = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 2, 3) + bytes(range(12))
    array = parse_idx(data)
    assert array.shape == (2, 2, 3)
    assert array.dtype == np.uint8
    assert array.ravel().tolist() == list(range(12))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_every_idx_dtype(tmp_path, dtype, compress):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / "a-idx3", array, compress=compress)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(back, array)


def test_multibyte_values_are_big_endian():
    data = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">2i", 1, -2)
    assert parse_idx(data).tolist() == [1, -2]


def test_gzip_is_detected_by_content_not_name(tmp_path):
    array = np.arange(6, dtype=np.uint8)
    plain_named_gz = tmp_path / "x.gz"
    plain_named_gz.write_bytes(encode_idx(array))
    zipped_named_plain = tmp_path / "y"
    zipped_named_plain.write_bytes(gzip.compress(encode_idx(array)))
    np.testing.assert_array_equal(read_idx(plain_named_gz), array)
    np.testing.assert_array_equal(read_idx(zipped_named_plain), array)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "type code"),
        (b"\x00\x00\x08\x02" + struct.pack(">I", 1), "truncated"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x00\x01", "3 bytes"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 1) + b"\x00\x01", "1 bytes"),
    ],
)
def test_malformed_idx_is_refused(data, message):
    with pytest.raises(IdxFormatError, match=message):
        parse_idx(data)


def test_corrupt_gzip_is_refused(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(encode_idx(np.zeros(100, np.uint8)))[:-12])
    with pytest.raises(IdxFormatError):
        read_idx(path)


def test_load_idx_pair_scales_to_unit_range_nchw(tmp_path):
    images = np.array([[[0, 255], [51, 102]], [[255, 0], [0, 0]]], dtype=np.uint8)
    labels = np.array([3, 9], dtype=np.uint8)
    x, y = load_idx_pair(write_idx(tmp_path / "i", images, compress=True), write_idx(tmp_path / "l", labels))
    assert x.shape == (2, 1, 2, 2) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [3, 9]
    torch.testing.assert_close(x[0, 0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))


def test_load_idx_pair_refuses_count_mismatch(tmp_path):
    images = write_idx(tmp_path / "i", np.zeros((3, 2, 2), np.uint8))
    labels = write_idx(tmp_path / "l", np.zeros(2, np.uint8))
    with pytest.raises(IdxFormatError, match="3 images but 2 labels"):
        load_idx_pair(images, labels)
