"""Dataset files read back from disk are verified, never trusted blindly (issue 15, cases 10, 12,
13 and the fault-injection table): a damaged copy obfgrad downloaded itself is fetched again
with a warning, any other is refused with an error naming the file; the nox session installs
Fashion-MNIST with apt only where it may, and says so first."""

import dataclasses
import gzip
import hashlib
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from obfgrad.data import (
    ChecksumError,
    CifarFormatError,
    DatasetNotFoundError,
    IdxFormatError,
    load_dataset,
    locate,
)
from obfgrad.data.cifar import UnsafePickleError, read_batch
from obfgrad.data.idx import encode_idx, parse_idx, write_idx
from reproduce import dataset_setup

IDX_FILES = {"images": "t10k-images-idx3-ubyte", "labels": "t10k-labels-idx1-ubyte"}
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real system datasets, no user cache, no network: downloads come from ``mirror``."""
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OBFGRAD_DATA", raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", (tmp_path / "system",))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def stand_in_mnist(folder: Path, monkeypatch, count=4):
    """A 4-image MNIST test split in ``folder`` whose digests stand in for the published ones."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"images": rng.integers(0, 256, (count, 28, 28), dtype=np.uint8),
              "labels": np.arange(count, dtype=np.uint8) % 10}
    content = {}
    for key, name in IDX_FILES.items():
        for split_name in (name, name.replace("t10k", "train")):  # a download fetches both splits
            write_idx(folder / f"{split_name}.gz", arrays[key], compress=True)
            content[split_name] = md5(encode_idx(arrays[key]))
    source = locate.DATASETS["mnist"]
    archives = tuple(dataclasses.replace(a, md5=md5((folder / a.filename).read_bytes())
                                         if (folder / a.filename).exists()
                                         else a.md5, urls=(f"file://{folder / a.filename}",)) for a in source.archives)
    monkeypatch.setitem(locate.DATASETS, "mnist", dataclasses.replace(source, content_md5=content, archives=archives))
    return arrays


@pytest.fixture
def downloads(monkeypatch):
    """download_file copies from the file:// URL (what a mirror would serve); calls are recorded."""
    calls = []

    def fake_download(urls, destination, *, md5=None, **_):
        calls.append(Path(destination).name)
        source = Path(urls[0].removeprefix("file://"))
        if not source.is_file():
            raise locate.DownloadError(f"could not download {Path(destination).name}: offline")
        data = source.read_bytes()
        if md5 is not None and hashlib.md5(data).hexdigest() != md5:
            raise locate.DownloadError(f"could not download {Path(destination).name}: md5 mismatch")
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        Path(destination).write_bytes(data)
        return Path(destination)

    monkeypatch.setattr(locate, "download_file", fake_download)
    return calls


# ------------------------------------------------------------------------ fault injection: IDX


def _gz_truncated(path):
    path.write_bytes(path.read_bytes()[:-30])


def _gz_bit_flipped(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def _edited_value(path):
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[-1] = (data[-1] + 1) % 256
    path.write_bytes(gzip.compress(bytes(data)))


def _wrong_type(path):
    array = parse_idx(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(encode_idx(array.astype(np.int16))))


def _wrong_shape(path):
    array = parse_idx(gzip.decompress(path.read_bytes()))
    path.write_bytes(gzip.compress(encode_idx(array.reshape(array.shape[0], -1)[:, :27 * 28].reshape(-1, 27, 28)
                                              if array.ndim == 3 else array[:-1])))


def _not_idx(path):
    path.write_bytes(gzip.compress(b"<html>404 not found</html>"))


DAMAGE = [_gz_truncated, _gz_bit_flipped, _edited_value, _wrong_type, _wrong_shape, _not_idx]


@pytest.mark.parametrize("which", ["images", "labels"])
@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_idx_file_outside_the_cache_is_refused_naming_it(tmp_path, monkeypatch, damage, which):
    stand_in_mnist(tmp_path / "data", monkeypatch)
    path = tmp_path / "data" / f"{IDX_FILES[which]}.gz"
    damage(path)
    with pytest.raises((ChecksumError, IdxFormatError)) as info:
        load_dataset("mnist", "test", data_dir=tmp_path / "data", download=False)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_idx_file_in_the_cache_is_fetched_again_with_a_warning(tmp_path, monkeypatch, downloads, damage):
    arrays = stand_in_mnist(tmp_path / "mirror", monkeypatch)
    cache = tmp_path / "cache" / "data" / "mnist"
    images, labels = load_dataset("mnist", "test")  # downloads into the cache
    assert (cache / "t10k-images-idx3-ubyte.gz").is_file() and len(downloads) == 4
    damage(cache / "t10k-images-idx3-ubyte.gz")
    with pytest.warns(RuntimeWarning, match="t10k-images-idx3-ubyte.gz.*fetching it again"):
        images, labels = load_dataset("mnist", "test")
    assert np.array_equal((images[:, 0] * 255).round().byte().numpy(), arrays["images"])
    assert labels.tolist() == arrays["labels"].tolist()
    assert downloads.count("t10k-images-idx3-ubyte.gz") == 2


def test_idx_labels_are_range_checked_and_sizes_cannot_overflow(tmp_path, monkeypatch):
    stand_in_mnist(tmp_path / "data", monkeypatch)
    write_idx(tmp_path / "data" / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 12, 3], np.uint8), compress=True)
    with pytest.raises(IdxFormatError, match=r"t10k-labels-idx1-ubyte.gz: label 12 out of range for 10 classes"):
        load_dataset("mnist", "test", data_dir=tmp_path / "data", download=False, verify=False)
    # Dimensions whose product overflows int64 (2**32-1 ** 4): refused as a size mismatch.
    forged = bytes([0, 0, 8, 4]) + struct.pack(">4I", *([2**32 - 1] * 4)) + bytes(16)
    with pytest.raises(IdxFormatError, match="header says shape"):
        parse_idx(forged, "forged")


def test_verify_false_accepts_a_deliberate_stand_in_but_checks_its_structure(tmp_path, monkeypatch):
    stand_in_mnist(tmp_path / "data", monkeypatch)
    zeros = {n: "0" * 32 for n in IDX_FILES.values()}
    monkeypatch.setitem(locate.DATASETS, "mnist", dataclasses.replace(locate.DATASETS["mnist"], content_md5=zeros))
    with pytest.raises(ChecksumError, match=r"verify=False\) accepts"):
        load_dataset("mnist", "test", data_dir=tmp_path / "data", download=False)
    images, _ = load_dataset("mnist", "test", data_dir=tmp_path / "data", download=False, verify=False)
    assert images.shape == (4, 1, 28, 28)
    _wrong_shape(tmp_path / "data" / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(IdxFormatError, match="expected 28x28 mnist images"):
        load_dataset("mnist", "test", data_dir=tmp_path / "data", download=False, verify=False)


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_the_installed_fashion_mnist_passes_its_checksums_and_an_edited_copy_does_not(tmp_path):
    if not (DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed (/usr/share/datasets/fashion-mnist)")
    images, labels = load_dataset("fashion-mnist", "test", data_dir=DEBIAN_FASHION, download=False)
    assert images.shape == (10000, 1, 28, 28)
    copy = tmp_path / "copy"
    shutil.copytree(DEBIAN_FASHION, copy)
    _edited_value(copy / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(ChecksumError, match=r"t10k-images-idx3-ubyte.gz: content md5 .*apt-get install --reinstall"):
        load_dataset("fashion-mnist", "test", data_dir=copy, download=False)


# ------------------------------------------------------------------------ CIFAR-10


def cifar_mirror(tmp_path, monkeypatch):
    """A 2-images-per-batch CIFAR-10 archive on a 'mirror', with matching digests registered."""
    batches = tmp_path / "build" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in CIFAR_BATCHES:
        batch = {"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [4, 2]}
        (batches / name).write_bytes(pickle.dumps(batch, protocol=2))
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches, arcname="cifar-10-batches-py")
    source = locate.DATASETS["cifar10"]
    replacement = locate.Archive(archive.name, (f"file://{archive}",), md5(archive.read_bytes()))
    content = {name: md5((batches / name).read_bytes()) for name in CIFAR_BATCHES}
    monkeypatch.setitem(locate.DATASETS, "cifar10", dataclasses.replace(source, archives=(replacement,),
                                                                        content_md5=content))
    return archive, batches


@pytest.mark.parametrize("damage", ["truncated", "bit_flipped", "not_gzip", "empty"])
def test_a_corrupt_cached_cifar_archive_is_reverified_and_downloaded_again(tmp_path, monkeypatch, downloads, damage):
    archive, _ = cifar_mirror(tmp_path, monkeypatch)
    cached = tmp_path / "cache" / "data" / "cifar10" / archive.name
    cached.parent.mkdir(parents=True)
    raw = archive.read_bytes()
    cached.write_bytes({"truncated": raw[: len(raw) // 2], "bit_flipped": raw[:100] + bytes([raw[100] ^ 1]) + raw[101:],
                        "not_gzip": b"<html>proxy error</html>", "empty": b""}[damage])
    with pytest.warns(RuntimeWarning, match="cifar-10-python.tar.gz: cached download is damaged"):
        images, labels = load_dataset("cifar10", "test")
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == [4, 2]
    assert downloads == [archive.name] and cached.read_bytes() == raw


def test_a_corrupt_cached_archive_that_cannot_be_downloaded_again_names_the_problem(tmp_path, monkeypatch, downloads):
    archive, _ = cifar_mirror(tmp_path, monkeypatch)
    cached = tmp_path / "cache" / "data" / "cifar10" / archive.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(archive.read_bytes()[:1000])
    archive.unlink()  # the mirror is gone
    with pytest.warns(RuntimeWarning, match="damaged"), pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", "test")
    assert "cifar-10-python.tar.gz" in str(info.value) and "Downloading failed" in str(info.value)
    assert not cached.exists()  # never left to fail every later run


@pytest.mark.parametrize("damage,error,match", [
    (lambda p: p.write_bytes(p.read_bytes()[:-500]), CifarFormatError, "not a readable CIFAR-10 batch"),
    (lambda p: p.write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00data"), CifarFormatError,
     "not a readable CIFAR-10 batch"),
    (lambda p: p.write_bytes(gzip.compress(b"garbage")[:-4]), IdxFormatError, "cannot decompress"),
    (lambda p: p.write_bytes(pickle.dumps([1, 2, 3], protocol=2)), CifarFormatError, "expected a pickled dict"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [1, 2]})),
     CifarFormatError, "'data' must be a uint8 array"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 12]})),
     CifarFormatError, r"labels outside 0..9"),
    (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [[1], [1, 2]]})),
     CifarFormatError, "'labels'"),
])
def test_a_corrupt_cifar_batch_is_refused_naming_its_file(tmp_path, damage, error, match):
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"")
    damage(path)
    with pytest.raises(error, match=match) as info:
        read_batch(path)
    assert str(path) in str(info.value)


def test_an_unsafe_pickle_names_its_file(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps(shutil.rmtree))
    with pytest.raises(UnsafePickleError, match=f"{path}: refusing to unpickle"):
        read_batch(path)


@pytest.mark.parametrize("damage", ["bit_flipped", "truncated"])
def test_a_damaged_extracted_cifar_batch_in_the_cache_is_extracted_again(tmp_path, monkeypatch, downloads, damage):
    cifar_mirror(tmp_path, monkeypatch)
    load_dataset("cifar10", "test")
    batch = tmp_path / "cache" / "data" / "cifar10" / "cifar-10-batches-py" / "test_batch"
    good = batch.read_bytes()
    batch.write_bytes(good[:-9] + bytes([good[-9] ^ 1]) + good[-8:] if damage == "bit_flipped" else good[:-100])
    with pytest.warns(RuntimeWarning, match="test_batch"):
        images, labels = load_dataset("cifar10", "test")
    assert batch.read_bytes() == good and labels.tolist() == [4, 2]
    assert len(downloads) == 1  # re-extracted from the verified archive, not downloaded again


# ------------------------------------------------------------------------ case 12: nox -s reproduce


class Recorder:
    def __init__(self, returncodes=()):
        self.commands, self.returncodes = [], list(returncodes)

    def __call__(self, command, env=None):
        self.commands.append(command)
        assert env["DEBIAN_FRONTEND"] == "noninteractive"
        code = self.returncodes.pop(0) if self.returncodes else 0
        return type("Done", (), {"returncode": code})()


DEBIAN_ROOT = dataset_setup.Platform(debian_family=True, root=True, apt_get=True)


def missing_then(after):
    """A verify() that finds nothing the first time, then does what ``after`` says."""
    state = {"calls": 0}

    def verify(name, data_dir):
        state["calls"] += 1
        if state["calls"] == 1:
            raise DatasetNotFoundError("dataset 'fashion-mnist' (train split) not found: ... apt-get install ...")
        after()
    return verify, state


def test_present_data_is_verified_and_apt_never_runs():
    run, verified = Recorder(), []
    dataset_setup.ensure_dataset("fashion-mnist", platform=DEBIAN_ROOT, run=run,
                                 verify=lambda name, data_dir: verified.append(name))
    assert run.commands == [] and verified == ["fashion-mnist"]


def test_missing_data_on_debian_as_root_is_installed_with_apt_announced_first_then_verified():
    log, run = [], Recorder()
    verify, state = missing_then(lambda: None)
    dataset_setup.ensure_dataset("fashion-mnist", platform=DEBIAN_ROOT, run=run, log=log.append, verify=verify)
    assert run.commands == [["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"]]
    assert "installing the Debian package dataset-fashion-mnist" in log[0]
    assert state["calls"] == 2 and "checksums verified" in log[-1]


@pytest.mark.parametrize("platform", [
    dataset_setup.Platform(debian_family=False, root=True, apt_get=True),
    dataset_setup.Platform(debian_family=True, root=False, apt_get=True),
    dataset_setup.Platform(debian_family=True, root=True, apt_get=False),
])
def test_missing_data_elsewhere_stops_with_the_clear_message_and_no_apt(platform):
    run = Recorder()
    verify, _ = missing_then(lambda: None)
    with pytest.raises(SystemExit, match=r"(?s)not found.*needs Debian or Ubuntu, apt-get and root"):
        dataset_setup.ensure_dataset("fashion-mnist", platform=platform, run=run, verify=verify)
    assert run.commands == []


def test_a_failing_apt_and_installed_files_that_fail_their_checksums_are_reported():
    verify, _ = missing_then(lambda: None)
    with pytest.raises(SystemExit, match="apt-get install -y -q dataset-fashion-mnist` failed with exit status 100"):
        dataset_setup.ensure_dataset("fashion-mnist", platform=DEBIAN_ROOT, run=Recorder([0, 100]), verify=verify)

    def damaged():
        raise ChecksumError("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz: content md5 is 0")
    verify, _ = missing_then(damaged)
    with pytest.raises(SystemExit, match="(?s)t10k-images.*fail their checksums"):
        dataset_setup.ensure_dataset("fashion-mnist", platform=DEBIAN_ROOT, run=Recorder(), verify=verify)


def test_datasets_without_a_package_are_never_installed():
    verify, _ = missing_then(lambda: None)
    with pytest.raises(SystemExit, match="not found"):
        dataset_setup.ensure_dataset("cifar10", platform=DEBIAN_ROOT, run=Recorder(), verify=verify)


def test_platform_detection_reads_os_release():
    assert dataset_setup.current_platform('ID=ubuntu\nID_LIKE=debian\n').debian_family
    assert dataset_setup.current_platform('ID="linuxmint"\nID_LIKE="ubuntu debian"\n').debian_family
    assert not dataset_setup.current_platform('ID=fedora\n').debian_family
    assert not dataset_setup.current_platform('').debian_family


def test_the_smoke_run_needs_fashion_mnist_and_a_dry_run_needs_nothing(tmp_path):
    assert dataset_setup.needed_datasets(["--results-dir", str(tmp_path / "r")]) == ["fashion-mnist"]
    assert dataset_setup.needed_datasets(["--dry-run", "--results-dir", str(tmp_path / "r")]) == []


def test_the_nox_session_sets_up_the_data_before_reproducing():
    noxfile = (Path(__file__).resolve().parent.parent / "noxfile.py").read_text()
    setup = noxfile.index('"reproduce.dataset_setup"')
    assert setup < noxfile.index('session.run("python", "-m", "reproduce", *session.posargs)')


# ------------------------------------------------------------------------ ImageNet validation


@pytest.fixture
def imagenet_val(tmp_path):
    from PIL import Image

    (tmp_path / "val").mkdir()
    for index in range(3):
        Image.new("RGB", (40, 30), (index * 80, 0, 0)).save(tmp_path / "val" / f"ILSVRC2012_val_{index:08d}.JPEG")
    (tmp_path / "val.txt").write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG {i}\n" for i in range(3)))
    return tmp_path


@pytest.mark.parametrize("lines,match", [
    (["ILSVRC2012_val_00000000.JPEG 1000"], "label 1000 outside 0..999"),
    (["ILSVRC2012_val_00000000.JPEG -1"], "label -1 outside 0..999"),
    (["ILSVRC2012_val_00000000.JPEG 3", "ILSVRC2012_val_00000000.JPEG 4"], "listed again with another label"),
])
def test_imagenet_labels_out_of_range_or_contradictory_are_refused(imagenet_val, lines, match):
    from obfgrad.data import load_imagenet_val

    (imagenet_val / "val.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        load_imagenet_val(imagenet_val)


@pytest.mark.parametrize("damage", ["truncated", "not_an_image", "empty"])
def test_a_damaged_imagenet_image_is_refused_naming_it(imagenet_val, damage):
    from obfgrad.data import load_imagenet_val

    path = imagenet_val / "val" / "ILSVRC2012_val_00000001.JPEG"
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 3], "not_an_image": b"<html>", "empty": b""}[damage])
    with pytest.raises(ValueError, match="ILSVRC2012_val_00000001.JPEG: cannot read the image"):
        load_imagenet_val(imagenet_val)


def test_an_empty_imagenet_folder_is_refused(tmp_path):
    from obfgrad.data import load_imagenet_val

    (tmp_path / "val").mkdir()
    (tmp_path / "val.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="root: no images"):
        load_imagenet_val(tmp_path)
