"""Where dataset files are found, and how they are fetched when they are not.

Search order for every dataset (the first place that holds all of a split's files wins):

1. the explicit ``data_dir`` argument (the CLI's ``--data-dir``);
2. the ``OBFGRAD_DATA`` environment variable (one directory, or several separated by ``os.pathsep``);
3. standard system locations, e.g. ``/usr/share/datasets/fashion-mnist`` where Debian's
   ``dataset-fashion-mnist`` package installs Fashion-MNIST;
4. the cache, ``cache_dir()/data/<name>``;
5. a download into that cache directory from the dataset's mirrors, checksum-verified, when
   ``download`` is true.

In each directory the files may sit directly or in a conventional subfolder (``MNIST/raw``
as torchvision lays them out, ``cifar-10-batches-py``, ...).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from obfgrad.cache import cache_dir
from obfgrad.data.download import ChecksumError, DownloadError, verify_checksum
from obfgrad.data.download import download as download_file

PathLike = Union[str, Path]
SYSTEM_DATA_ROOTS = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))
SPLITS = ("train", "test")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is in none of the searched places and could not be downloaded."""


@dataclass(frozen=True)
class Archive:
    """A file to download: its name, mirrors (full URLs, tried in order) and MD5."""

    filename: str
    urls: Tuple[str, ...]
    md5: str


@dataclass(frozen=True)
class DatasetSource:
    """How one dataset is laid out on disk and where it comes from.

    ``split_files[split]`` are the files a split needs; a name ending in ``.gz`` is also
    accepted uncompressed. ``archives`` are what a download fetches; for archive formats
    ``extract`` turns the downloaded files into the split files (see :mod:`obfgrad.data`).
    """

    name: str
    split_files: Dict[str, Tuple[str, ...]]
    subfolders: Tuple[str, ...]
    archives: Tuple[Archive, ...]
    apt_package: Optional[str] = None
    system_folders: Tuple[str, ...] = field(default_factory=tuple)
    homepage: str = ""
    #: MD5 of each split file's *content* (after gzip decompression), by name without ``.gz``:
    #: verifies any copy -- the publisher's .gz, Debian's recompressed .gz, an uncompressed file.
    content_md5: Dict[str, str] = field(default_factory=dict)


def _idx_split_files() -> Dict[str, Tuple[str, ...]]:
    return {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }


#: The four IDX files of MNIST-like datasets, in the order _idx_md5 takes their digests.
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_md5(train_images: str, train_labels: str, test_images: str, test_labels: str,
             suffix: str = "") -> Dict[str, str]:
    """{file name + suffix: MD5} of the four IDX files."""
    digests = (train_images, train_labels, test_images, test_labels)
    return {name + suffix: digest for name, digest in zip(_IDX_FILES, digests)}


def _idx_archives(mirrors: Sequence[str], md5: Dict[str, str]) -> Tuple[Archive, ...]:
    return tuple(Archive(name, tuple(base + name for base in mirrors), digest) for name, digest in md5.items())


def _idx_dataset(name: str, subfolders: Tuple[str, ...], *, mirrors: Sequence[str], gz_md5: Dict[str, str],
                 content_md5: Dict[str, str], homepage: str, apt_package: Optional[str] = None) -> DatasetSource:
    """An MNIST-like dataset: the four IDX files, downloaded as .gz from ``mirrors``."""
    return DatasetSource(name=name, split_files=_idx_split_files(), subfolders=subfolders,
                         archives=_idx_archives(mirrors, gz_md5), apt_package=apt_package, system_folders=(name,),
                         homepage=homepage, content_md5=content_md5)


# MD5s of the publishers' files, as listed by torchvision (pytorch/vision,
# torchvision/datasets/mnist.py `MNIST.resources`, `FashionMNIST.resources`;
# torchvision/datasets/cifar.py `CIFAR10.tgz_md5`) and by many projects that download them.
# Debian's dataset-fashion-mnist ships recompressed .gz files whose own digests differ
# (sha256 of its t10k-images-idx3-ubyte.gz: cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa);
# Downloads are verified by these MD5s; every file, wherever it was found, by the MD5 of its
# decompressed content (``content_md5``), which Debian's files share with the publishers'
# (checked against the installed dataset-fashion-mnist 0.0~git20200523.55506a9-1). The content
# MD5s are those listed for the uncompressed files by torchvision (CIFAR-10 batches,
# torchvision/datasets/cifar.py `train_list`, `test_list`) and by projects that verify the
# extracted MNIST and Fashion-MNIST files.
DATASETS: Dict[str, DatasetSource] = {
    "mnist": _idx_dataset(
        "mnist", ("mnist", "MNIST/raw", "MNIST"),
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        gz_md5=_idx_md5("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
                        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c", suffix=".gz"),
        content_md5=_idx_md5("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
                             "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": _idx_dataset(
        "fashion-mnist", ("fashion-mnist", "FashionMNIST/raw", "FashionMNIST", "fashion_mnist", "fashion"),
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
        gz_md5=_idx_md5("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310", suffix=".gz"),
        content_md5=_idx_md5("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
                             "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
        homepage="https://github.com/zalandoresearch/fashion-mnist", apt_package="dataset-fashion-mnist",
    ),
    "cifar10": DatasetSource(
        name="cifar10",
        split_files={
            "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
            "test": ("test_batch",),
        },
        subfolders=("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10", "CIFAR10"),
        archives=(
            Archive(
                "cifar-10-python.tar.gz",
                ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                "c58f30108f718f92721af3b95e74349a",
            ),
        ),
        system_folders=("cifar10", "cifar-10"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        content_md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
        },
    ),
}


def dataset_source(name: str) -> DatasetSource:
    if name not in DATASETS:
        raise ValueError(f"name: expected one of {', '.join(map(repr, DATASETS))}, got {name!r}")
    return DATASETS[name]


def dataset_cache_dir(name: str) -> Path:
    """Where downloads of dataset ``name`` go: ``cache_dir()/data/<name>``."""
    return cache_dir() / "data" / dataset_source(name).name


def candidate_roots(name: str, data_dir: Optional[PathLike] = None) -> List[Tuple[str, Path]]:
    """The searched roots in order, each labelled with where it came from."""
    source = dataset_source(name)
    roots: List[Tuple[str, Path]] = []
    if data_dir is not None:
        roots.append(("data_dir argument (--data-dir)", Path(data_dir).expanduser()))
    for entry in filter(None, os.environ.get("OBFGRAD_DATA", "").split(os.pathsep)):
        roots.append(("OBFGRAD_DATA", Path(entry).expanduser()))
    for system_root in SYSTEM_DATA_ROOTS:
        for folder in source.system_folders:
            roots.append(("system location", system_root / folder))
    roots.append(("cache", dataset_cache_dir(name)))
    return roots


def _resolve_file(folder: Path, filename: str) -> Optional[Path]:
    # A name ending in .gz is also accepted decompressed (and vice versa for robustness).
    names = [filename, filename[:-3]] if filename.endswith(".gz") else [filename, filename + ".gz"]
    for candidate in names:
        path = folder / candidate
        if path.is_file():
            return path
    return None


def find_split_in(root: Path, name: str, split: str) -> Optional[List[Path]]:
    """The split's files inside ``root`` (or one of its conventional subfolders), or None."""
    source = dataset_source(name)
    for folder in (root, *(root / sub for sub in source.subfolders)):
        resolved = [_resolve_file(folder, filename) for filename in source.split_files[split]]
        if all(path is not None for path in resolved):
            return resolved  # type: ignore[return-value]
    return None


def locate_split(name: str, split: str, data_dir: Optional[PathLike] = None, download: bool = True) -> List[Path]:
    """Paths of the files of ``split`` of dataset ``name``, searched in the documented order.

    Raises:
        DatasetNotFoundError: nowhere to be found, and the download was off or failed; the
            message lists every place searched and every way to get the data.
    """
    source = dataset_source(name)
    if split not in SPLITS:
        raise ValueError(f"split: expected one of 'train', 'test', got {split!r}")
    roots = candidate_roots(name, data_dir)
    for _, root in roots:
        found = find_split_in(root, name, split)
        if found is not None:
            return found
    download_problem = None
    if download:
        try:
            fetch_into_cache(name)
        except (DownloadError, OSError, ValueError) as error:
            download_problem = str(error)
        else:
            found = find_split_in(dataset_cache_dir(name), name, split)
            if found is not None:
                return found
            download_problem = "the download completed but the expected files are missing"
    raise DatasetNotFoundError(missing_dataset_message(source, split, roots, download, download_problem))


def fetch_into_cache(name: str) -> Path:
    """Download (and for CIFAR-10 extract) dataset ``name`` into its cache directory. An archive
    already in the cache is used only if it still has its published checksum; a damaged one is
    deleted (with a warning) and downloaded again."""
    source = dataset_source(name)
    target = dataset_cache_dir(name)
    for archive in source.archives:
        destination = target / archive.filename
        if destination.is_file():
            try:
                verify_checksum(destination, md5=archive.md5)
            except ChecksumError as error:
                warnings.warn(f"{destination}: cached download is damaged ({error}); deleting it and downloading "
                              "again", RuntimeWarning, stacklevel=2)
                destination.unlink()
        if not destination.is_file():
            download_file(archive.urls, destination, md5=archive.md5)
    if name == "cifar10":
        from obfgrad.data.cifar import extract_batches

        extract_batches(target / source.archives[0].filename, target)
    return target


def content_name(path: PathLike) -> str:
    """The key of ``content_md5`` for a split file: its name without ``.gz``."""
    name = Path(path).name
    return name[:-3] if name.endswith(".gz") else name


def in_cache(name: str, paths: Sequence[PathLike]) -> bool:
    """Whether every path lies in the dataset's download cache (files obfgrad may replace)."""
    cache = dataset_cache_dir(name).resolve()
    return all(cache in Path(path).resolve().parents for path in paths)


def missing_dataset_message(source: DatasetSource, split: str, roots, download: bool, problem: Optional[str]) -> str:
    files = ", ".join(source.split_files[split])
    searched = "\n".join(f"    {path}  ({label})" for label, path in roots)
    ways = []
    if source.apt_package:
        system = (SYSTEM_DATA_ROOTS[0] if SYSTEM_DATA_ROOTS else Path("/usr/share/datasets")) / source.system_folders[0]
        ways.append(f"  - install the Debian/Ubuntu package: apt-get install {source.apt_package}  (installs {system})")
    ways.append(f"  - put {files} in a directory DIR and pass --data-dir DIR (data_dir=DIR in Python)")
    ways.append("  - or set the environment variable OBFGRAD_DATA=DIR")
    urls = "\n".join(f"      {url}" for archive in source.archives for url in archive.urls[:1])
    ways.append(f"  - or download (automatic when online with download=True, into "
                f"{dataset_cache_dir(source.name)}):\n{urls}")
    lines = [
        f"dataset {source.name!r} ({split} split) not found: no directory holds {files}.",
        f"Searched:\n{searched}",
        "Get it one of these ways:",
        *ways,
    ]
    if source.homepage:
        lines.append(f"  (dataset homepage: {source.homepage})")
    if not download:
        lines.append("Downloading was not attempted (download=False).")
    elif problem:
        lines.append(f"Downloading failed: {problem}")
    return "\n".join(lines)
