"""CIFAR-10 batches: a good batch in the real layout loads (protocols 2 and 4, Python-2 style
byte strings), and pickles that would run code are refused before anything executes."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from obfgrad.data.cifar import (
    UnsafePickleError,
    extract_batches,
    load_cifar10_folder,
    read_batch,
    restricted_loads,
)


def make_batch(count=5, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count).tolist()
    return {
        "batch_label": "testing batch 1 of 1",
        "labels": labels,
        "data": data,
        "filenames": [f"img_{i}.png" for i in range(count)],
    }


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_good_batch_loads_with_planes_in_rgb_order(tmp_path, protocol):
    batch = make_batch()
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    images, labels = read_batch(path)
    assert images.shape == (5, 3, 32, 32) and images.dtype == np.uint8
    # row layout: 1024 red values, then green, then blue, each row-major 32×32
    np.testing.assert_array_equal(images[2, 1, 3, 4], batch["data"][2, 1024 + 3 * 32 + 4])
    assert labels.tolist() == batch["labels"]


def test_python2_style_bytes_keys_are_accepted(tmp_path):
    batch = {key.encode(): value for key, value in make_batch().items()}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    images, labels = read_batch(path)
    assert images.shape == (5, 3, 32, 32) and len(labels) == 5


class _Python2StylePickler(pickle.Pickler):
    """Writes arrays the way a Python 2 file reads back under encoding='latin1': the raw
    pixel bytes and the type code arrive as str, as in the real CIFAR-10 batches."""

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            reconstruct, (cls, shape, _), (version, dims, dtype, fortran, raw) = obj.__reduce__()
            return reconstruct, (cls, shape, "b"), (version, dims, dtype, fortran, raw.decode("latin1"))
        return NotImplemented


def test_python2_style_array_state_loads(tmp_path):
    batch = make_batch()
    buffer = io.BytesIO()
    _Python2StylePickler(buffer, protocol=2).dump(batch)
    path = tmp_path / "data_batch_1"
    path.write_bytes(buffer.getvalue())
    images, _ = read_batch(path)
    np.testing.assert_array_equal(images.reshape(5, 3072), batch["data"])


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("touch /tmp/obfgrad_pwned_marker",))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", [_RunsShell(), _Evals()])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload):
    marker = "/tmp/obfgrad_pwned_marker"
    if os.path.exists(marker):
        os.unlink(marker)
    batch = make_batch()
    batch["labels"] = payload  # hidden inside an otherwise valid batch
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UnsafePickleError, match="refusing"):
        read_batch(path)
    assert not os.path.exists(marker)


def test_codecs_encode_is_allowed_only_for_latin1():
    # What protocol 2 emits for bytes, but with a codec other than latin1.
    evil = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x06\x00\x00\x00rot_13q\x02\x86q\x03Rq\x04."
    with pytest.raises(UnsafePickleError, match="latin1"):
        restricted_loads(evil)
    assert restricted_loads(pickle.dumps(b"\xffabc", protocol=2)) == b"\xffabc"


def test_other_globals_are_refused():
    for module, name in [("builtins", "eval"), ("os", "system"), ("numpy", "load"), ("subprocess", "Popen")]:
        data = f"c{module}\n{name}\n.".encode()
        with pytest.raises(UnsafePickleError):
            restricted_loads(data)


def test_batch_with_wrong_layout_is_refused(tmp_path):
    batch = make_batch()
    batch["data"] = batch["data"][:, :100]
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match="N×3072"):
        read_batch(path)
    batch = make_batch()
    batch["labels"] = [0, 1, 2, 3, 10]
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match="labels outside"):
        read_batch(path)


def write_folder(folder, count=4):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for seed, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batches[name] = make_batch(count, seed)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    return batches


def test_folder_train_split_concatenates_five_batches_in_order(tmp_path):
    batches = write_folder(tmp_path / "cifar-10-batches-py")
    images, labels = load_cifar10_folder(tmp_path / "cifar-10-batches-py", "train")
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    expected = torch.from_numpy(batches["data_batch_2"]["data"][0].reshape(3, 32, 32)).float() / 255
    torch.testing.assert_close(images[4], expected)


def test_extract_batches_takes_only_expected_regular_files(tmp_path):
    source = tmp_path / "src" / "cifar-10-batches-py"
    write_folder(source)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-py")
        evil = tarfile.TarInfo("../escaped.txt")
        evil.size = 3
        tar.addfile(evil, io.BytesIO(b"bad"))
    folder = extract_batches(archive, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"])
    assert not (tmp_path / "escaped.txt").exists()
    images, _ = load_cifar10_folder(folder, "test")
    assert images.shape == (4, 3, 32, 32)
