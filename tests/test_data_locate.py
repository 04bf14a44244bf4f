"""Where datasets are found (explicit dir, OBFGRAD_DATA, system, cache, download), what the
error says when they are nowhere, and downloads from a loopback HTTP server this test runs:
good checksums land atomically, bad ones leave nothing behind, mirrors are tried in order."""

import dataclasses
import functools
import gzip
import hashlib
import http.server
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from obfgrad.data import DatasetNotFoundError, load_dataset, locate
from obfgrad.data.download import ChecksumError, DownloadError, download, verify_checksum
from obfgrad.data.idx import write_idx


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real system datasets, no user cache, no OBFGRAD_DATA from the environment."""
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OBFGRAD_DATA", raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", (tmp_path / "system",))


def write_idx_split(folder, split, label, count=3, compress=True):
    """A tiny IDX split whose labels are all ``label`` (so the test can tell copies apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if compress else ""
    images = np.full((count, 28, 28), label * 10, np.uint8)
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.full(count, label, np.uint8), compress=compress)


def loaded_label(**kwargs):
    # Stand-in files: their content is not MNIST's, so the content checksum is off here (the
    # checksums are tested in tests/test_faults_data.py).
    _, labels = load_dataset("mnist", "test", download=False, verify=False, **kwargs)
    return int(labels[0])


def test_search_order_data_dir_then_env_then_system_then_cache(tmp_path, monkeypatch):
    write_idx_split(tmp_path / "explicit", "test", 1)
    write_idx_split(tmp_path / "env", "test", 2)
    write_idx_split(tmp_path / "system" / "mnist", "test", 3)
    write_idx_split(tmp_path / "cache" / "data" / "mnist", "test", 4)
    monkeypatch.setenv("OBFGRAD_DATA", str(tmp_path / "env"))
    assert loaded_label(data_dir=tmp_path / "explicit") == 1
    assert loaded_label() == 2
    monkeypatch.delenv("OBFGRAD_DATA")
    assert loaded_label() == 3
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", ())
    assert loaded_label() == 4


def test_an_incomplete_directory_is_skipped(tmp_path):
    write_idx_split(tmp_path / "explicit", "test", 1)
    os.unlink(tmp_path / "explicit" / "t10k-labels-idx1-ubyte.gz")
    write_idx_split(tmp_path / "cache" / "data" / "mnist", "test", 4)
    assert loaded_label(data_dir=tmp_path / "explicit") == 4


def test_conventional_subfolders_and_uncompressed_files(tmp_path):
    write_idx_split(tmp_path / "root" / "MNIST" / "raw", "test", 5, compress=False)
    assert loaded_label(data_dir=tmp_path / "root") == 5


def test_debian_layout_is_found_for_fashion_mnist(tmp_path):
    write_idx_split(tmp_path / "system" / "fashion-mnist", "train", 7)
    images, labels = load_dataset("fashion-mnist", "train", download=False, verify=False)
    assert labels.tolist() == [7, 7, 7]
    assert images.shape == (3, 1, 28, 28)
    torch.testing.assert_close(images.max(), torch.tensor(70 / 255))


def test_missing_dataset_message_lists_every_way_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", "test", data_dir=tmp_path / "nowhere", download=False)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message and "OBFGRAD_DATA" in message
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "nowhere") in message
    assert "t10k-images-idx3-ubyte.gz" in message
    assert "download=False" in message


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="name"):
        load_dataset("svhn", "test", download=False)
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "val", download=False)


# --- downloads from a server on 127.0.0.1 ----------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests_seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests_seen.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    _QuietHandler.requests_seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}/", _QuietHandler.requests_seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def md5_of(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_download_with_good_checksum_lands_in_place(server, tmp_path):
    root, base, _ = server
    (root / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    sha = hashlib.sha256((root / "blob.bin").read_bytes()).hexdigest()
    target = download(base + "blob.bin", tmp_path / "dl" / "blob.bin", sha256=sha, progress=False)
    assert target.read_bytes() == (root / "blob.bin").read_bytes()
    verify_checksum(target, sha256=sha, md5=md5_of(root / "blob.bin"))


def test_download_with_bad_checksum_leaves_nothing(server, tmp_path):
    root, base, _ = server
    (root / "blob.bin").write_bytes(b"corrupted mirror")
    with pytest.raises(DownloadError, match="md5"):
        download([base + "blob.bin"], tmp_path / "dl" / "blob.bin", md5="0" * 32, progress=False)
    assert list((tmp_path / "dl").iterdir()) == []


def test_mirrors_are_tried_in_order(server, tmp_path):
    root, base, seen = server
    (root / "good").mkdir()
    (root / "good" / "f.gz").write_bytes(b"payload")
    (root / "bad").mkdir()
    (root / "bad" / "f.gz").write_bytes(b"tampered")
    urls = [base + "missing/f.gz", base + "bad/f.gz", base + "good/f.gz"]
    target = download(urls, tmp_path / "f.gz", md5=hashlib.md5(b"payload").hexdigest(), progress=False)
    assert target.read_bytes() == b"payload"
    assert seen == ["/missing/f.gz", "/bad/f.gz", "/good/f.gz"]


def test_unverified_downloads_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sha256= or md5="):
        download("http://127.0.0.1:9/x", tmp_path / "x")
    with pytest.raises(ChecksumError):
        (tmp_path / "y").write_bytes(b"y")
        verify_checksum(tmp_path / "y", sha256="0" * 64)


def serve_mnist(root, monkeypatch, base, tamper=False):
    """Serve a fake MNIST from the loopback server and point the registry at it."""
    mirror = root / "mnist"
    write_idx_split(mirror, "train", 6, count=4)
    write_idx_split(mirror, "test", 8, count=2)
    digests = {name.name: md5_of(name) for name in mirror.iterdir()}
    content = {locate.content_name(name): hashlib.md5(gzip.decompress(name.read_bytes())).hexdigest()
               for name in mirror.iterdir()}
    if tamper:
        digests["t10k-images-idx3-ubyte.gz"] = "f" * 32
    source = locate.DATASETS["mnist"]
    archives = tuple(
        locate.Archive(a.filename, (base + "absent/" + a.filename, base + "mnist/" + a.filename), digests[a.filename])
        for a in source.archives
    )
    monkeypatch.setitem(locate.DATASETS, "mnist", dataclasses.replace(source, archives=archives, content_md5=content))


def test_load_dataset_downloads_into_cache_once(server, tmp_path, monkeypatch):
    root, base, seen = server
    serve_mnist(root, monkeypatch, base)
    images, labels = load_dataset("mnist", "test", download=True)
    assert labels.tolist() == [8, 8] and images.shape == (2, 1, 28, 28)
    assert (tmp_path / "cache" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    count = len(seen)
    _, labels = load_dataset("mnist", "train", download=True)
    assert labels.tolist() == [6] * 4
    assert len(seen) == count  # served from the cache, no new request


def test_failed_download_is_explained(server, tmp_path, monkeypatch):
    root, base, _ = server
    serve_mnist(root, monkeypatch, base, tamper=True)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "test", download=True)
    message = str(info.value)
    assert "Downloading failed" in message and "t10k-images-idx3-ubyte.gz" in message
    assert "404" in message and "expected ffff" in message
    assert not (tmp_path / "cache" / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").exists()


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_real_fashion_mnist_from_debian_package(monkeypatch):
    if not (DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed (/usr/share/datasets/fashion-mnist)")
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", (DEBIAN_FASHION.parent,))
    images, labels = load_dataset("fashion-mnist", "test", download=False)
    assert images.shape == (10000, 1, 28, 28)
    assert torch.bincount(labels).tolist() == [1000] * 10
    assert labels[:5].tolist() == [9, 2, 1, 1, 6]  # first test labels: ankle boot, pullover, trouser, trouser, shirt


def test_cifar10_archive_is_downloaded_extracted_and_loaded(server, tmp_path, monkeypatch):
    import pickle
    import tarfile

    root, base, _ = server
    batches = tmp_path / "build" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [4, 2]}
        (batches / name).write_bytes(pickle.dumps(batch, protocol=2))
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    source = locate.DATASETS["cifar10"]
    replacement = locate.Archive(archive.name, (base + archive.name,), md5_of(archive))
    content = {name.name: md5_of(name) for name in batches.iterdir()}
    monkeypatch.setitem(locate.DATASETS, "cifar10", dataclasses.replace(source, archives=(replacement,),
                                                                        content_md5=content))
    images, labels = load_dataset("cifar10", "train", download=True)
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == [4, 2] * 5
    assert (tmp_path / "cache" / "data" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()
