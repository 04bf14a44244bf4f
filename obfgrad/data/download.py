"""Download a file from a list of mirrors, verify its checksum, and place it atomically.

The bytes stream into a temporary file beside the destination while being hashed; only a file
whose SHA-256 or MD5 matches is renamed into place, so a cut connection or a corrupted mirror
never leaves a file that looks complete. MD5 is accepted because it is what the datasets'
publishers list; it guards against corruption here, not against an adversary.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence, Union

from tqdm.auto import tqdm

from obfgrad.atomic import atomic_write

PathLike = Union[str, Path]
_CHUNK = 1 << 20
_USER_AGENT = "obfgrad-dataset-fetch/1 (+python urllib)"


class ChecksumError(ValueError):
    """A file's digest differs from the expected one."""


class DownloadError(RuntimeError):
    """No mirror delivered a file with the expected checksum."""


def file_digest(path: PathLike, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _expected_digests(md5: Optional[str], sha256: Optional[str]) -> dict:
    expected = {name: value.lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    if not expected:
        raise ValueError("download: give sha256= or md5= (an unverified download is refused)")
    return expected


def verify_checksum(path: PathLike, *, md5: Optional[str] = None, sha256: Optional[str] = None) -> None:
    """Raise :class:`ChecksumError` unless every given digest matches."""
    for algorithm, expected in _expected_digests(md5, sha256).items():
        actual = file_digest(path, algorithm)
        if actual != expected:
            raise ChecksumError(f"{path}: {algorithm} is {actual}, expected {expected}")


def download(
    urls: Union[str, Sequence[str]],
    destination: PathLike,
    *,
    md5: Optional[str] = None,
    sha256: Optional[str] = None,
    progress: Optional[bool] = None,
    timeout: float = 30.0,
) -> Path:
    """Fetch the first mirror in ``urls`` that serves bytes with the expected checksum.

    Args:
        urls: one URL or a list of mirrors, tried in order.
        destination: the final file path; its directory is created.
        md5, sha256: expected hex digests (at least one is required).
        progress: show a tqdm bar; ``None`` shows it only on a terminal.
        timeout: seconds to wait on a stalled connection.

    Returns:
        ``destination`` once it holds verified bytes.

    Raises:
        DownloadError: every mirror failed (the message lists each failure).
    """
    expected = _expected_digests(md5, sha256)
    mirrors = [urls] if isinstance(urls, str) else list(urls)
    if not mirrors:
        raise ValueError("urls: expected at least one URL")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in mirrors:
        try:
            _fetch_verified(url, destination, expected, progress, timeout)
            return destination
        except (OSError, urllib.error.URLError, ChecksumError, ValueError) as error:
            failures.append(f"  {url}: {error}")
    raise DownloadError(f"could not download {destination.name}:\n" + "\n".join(failures))


def _fetch_verified(url: str, destination: Path, expected: dict, progress: Optional[bool], timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})

    def stream_and_verify(out) -> None:  # raising leaves no file behind (atomic_write)
        digests = {name: hashlib.new(name) for name in expected}
        with urllib.request.urlopen(request, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                       desc=destination.name, disable=None if progress is None else not progress, leave=False)
            with bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    for digest in digests.values():
                        digest.update(chunk)
                    bar.update(len(chunk))
        for name, digest in digests.items():
            if digest.hexdigest() != expected[name]:
                raise ChecksumError(f"{name} is {digest.hexdigest()}, expected {expected[name]}")

    atomic_write(destination, stream_and_verify, suffix=".part")  # .part: of downloads killed earlier
