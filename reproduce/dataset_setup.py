"""The first step of ``nox -s reproduce``: make sure the data the requested rows read is on this
machine, and is the published data, before anything is trained.

    python -m reproduce.dataset_setup [the arguments of python -m reproduce]

For each dataset the rows need (the smoke profile: Fashion-MNIST) it looks where
:func:`obfgrad.data.load_dataset` looks, downloads when online, and when the dataset is neither
installed nor downloadable -- a fresh machine that reaches only package registries -- installs
its Debian package the way ``.ci/run`` does (``apt-get install -y dataset-fashion-mnist``), on
Debian or Ubuntu as root, saying so before it runs. Elsewhere it stops with the message that
lists every way to get the data. Either way every file's content checksum is verified.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from obfgrad.data import (
    ChecksumError,
    CifarFormatError,
    DatasetNotFoundError,
    IdxFormatError,
    load_dataset,
)
from obfgrad.data.locate import DATASETS

Runner = Callable[..., "subprocess.CompletedProcess"]


@dataclass(frozen=True)
class Platform:
    """What decides whether apt may install a dataset: a Debian-family system, root, apt-get."""

    debian_family: bool
    root: bool
    apt_get: bool

    @property
    def can_apt_install(self) -> bool:
        return self.debian_family and self.root and self.apt_get


def _read_os_release(path: Path = Path("/etc/os-release")) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def current_platform(os_release: Optional[str] = None) -> Platform:
    text = _read_os_release() if os_release is None else os_release
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"').lower()
    family = {fields.get("ID", "")} | set(fields.get("ID_LIKE", "").split())
    return Platform(debian_family=bool(family & {"debian", "ubuntu"}),
                    root=hasattr(os, "geteuid") and os.geteuid() == 0,
                    apt_get=shutil.which("apt-get") is not None)


def verify_dataset(name: str, data_dir: Optional[Path] = None) -> None:
    """Both splits found (downloading when needed) and every file's content checksum verified."""
    for split in ("train", "test"):
        load_dataset(name, split, data_dir=data_dir, download=True, verify=True)


def ensure_dataset(name: str, data_dir: Optional[Path] = None, *, platform: Optional[Platform] = None,
                   run: Runner = subprocess.run, log: Callable[[str], None] = print,
                   verify: Callable[[str, Optional[Path]], None] = verify_dataset) -> None:
    """Make dataset ``name`` available and verified, installing its Debian package when it is
    missing, cannot be downloaded, and apt may install it (see the module docstring).

    Raises:
        SystemExit: the dataset is missing and cannot be installed here (the message says how
            to get it), or apt failed.
    """
    try:
        verify(name, data_dir)
        return
    except DatasetNotFoundError as missing:
        problem = str(missing)
    except (ChecksumError, IdxFormatError, CifarFormatError) as damaged:
        raise SystemExit(str(damaged)) from None
    package = DATASETS[name].apt_package
    platform = current_platform() if platform is None else platform
    if package is None or not platform.can_apt_install:
        why = ("" if package is None else
               f"\n(Not installing {package} automatically: that needs Debian or Ubuntu, apt-get and root.)")
        raise SystemExit(problem + why)
    log(f"{name} is neither installed nor downloadable: installing the Debian package {package} "
        f"(apt-get update, then apt-get install -y {package}) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", package]):
        done = run(command, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{problem}\n`{' '.join(command)}` failed with exit status {done.returncode}.")
    try:
        verify(name, data_dir)
    except (ChecksumError, IdxFormatError, CifarFormatError) as damaged:
        raise SystemExit(f"{damaged}\n(the files apt-get installed fail their checksums)") from None
    except DatasetNotFoundError as still_missing:
        raise SystemExit(f"{still_missing}\n(apt-get installed {package}, but its files were not found.)") from None
    log(f"{name}: installed with apt-get; checksums verified")


def needed_datasets(argv: Sequence[str]) -> List[str]:
    """The datasets with a Debian package that ``python -m reproduce argv`` will read."""
    from reproduce.rows import all_specs
    from reproduce.runner import parse_args

    args = parse_args(argv)
    if args.dry_run:
        return []  # synthetic data
    names = {spec.dataset for spec in all_specs(args.rows, args.profile, False)}
    return sorted(name for name in names if name in DATASETS and DATASETS[name].apt_package)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from reproduce.runner import parse_args

    data_dir = parse_args(argv).data_dir
    for name in needed_datasets(argv):
        ensure_dataset(name, data_dir)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
