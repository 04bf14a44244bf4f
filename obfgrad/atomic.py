"""Atomic file writes: write to a temporary file in the target's directory, fsync, then
rename over the target, so a reader (or a resumed run) never sees a partial file. A writer
killed mid-write leaves its temporary behind; the next write to that folder removes it."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, List, Union

PathLike = Union[str, os.PathLike]


#: When this process loaded obfgrad: no write of this process is older.
_PROCESS_STARTED = time.time()
#: A temporary without a writer this machine can check (an older layout, or another host on a
#: shared cache) is removed only when older than this process and than this many seconds.
_FOREIGN_STALE_SECONDS = 3600.0


def _host() -> str:
    return socket.gethostname().replace(".", "_").replace("-", "_") or "host"


def temporary_name_prefix(path: Path) -> str:
    """``.<name>.<host>-<pid>.``: the prefix of ``path``'s temporaries (mkstemp adds a random
    part and the suffix), so a later writer can tell whether their writer still runs."""
    return f".{path.name}.{_host()}-{os.getpid()}."


def remove_stale_temporaries(folder: PathLike, suffix: str = ".tmp") -> List[Path]:
    """Delete the orphans of interrupted writes in ``folder``: ``.*<suffix>`` temporaries whose
    writer, a process on this machine, no longer runs; others (another host's, or without a
    pid) once older than this process and than an hour.

    A write killed by SIGKILL (or a power cut) cannot clean up after itself; the next write to
    the same folder does. Returns the files removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(suffix)):
            continue
        try:
            if _is_orphan(entry.name, entry.stat().st_mtime, now):
                entry.unlink()
                removed.append(entry)
        except OSError:  # vanished meanwhile, or not ours to delete
            continue
    return removed


def _is_orphan(name: str, mtime: float, now: float) -> bool:
    parts = name.split(".")
    host, _, pid = parts[-3].rpartition("-") if len(parts) >= 5 else ("", "", "")
    if host == _host() and pid.isdigit():
        return not _running(int(pid))
    return mtime < _PROCESS_STARTED and now - mtime > _FOREIGN_STALE_SECONDS


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def atomic_write(path: PathLike, write: Callable[[Any], None], *, binary: bool = True, suffix: str = ".tmp") -> Path:
    """Call ``write(file_object)`` on a temporary file (``.<name>.<host>-<pid>.<random><suffix>``),
    then move it to ``path``; if ``write`` raises (e.g. a download whose checksum is wrong), the
    temporary is removed and ``path`` is untouched. Orphaned temporaries of earlier, killed writers
    in the same folder are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, suffix)
    fd, tmp = tempfile.mkstemp(prefix=temporary_name_prefix(path), suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text), binary=False)


def atomic_write_json(path: PathLike, obj: Any, *, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    # numpy / torch scalars and arrays end up in results; store them as plain numbers/lists.
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def check_writable_dir(path: PathLike, name: str) -> Path:
    """``path`` is, or can be made, a directory this process can write files in: checked before a
    long computation, so a bad output location fails at once instead of after the work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}: {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".obfgrad-write-check."):
            pass
    except OSError as error:
        raise ValueError(f"{name}: cannot write in {path} ({error.strerror or error})") from None
    return path


def check_writable_file(path: PathLike, name: str) -> Path:
    """``path`` can be written (atomically) later: not a directory, in a writable folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name}: {path} is a directory, expected a file name")
    check_writable_dir(path.parent, name)
    return path
