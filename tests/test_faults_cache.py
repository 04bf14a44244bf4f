"""Finished work is never thrown away and the cache stays inside its folder (issue 15, cases 8,
11, 13): a cache that cannot be written keeps the trained model in memory, temporaries of
killed writers are cleaned by the next write, and cache names cannot escape the cache."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from obfgrad import atomic
from obfgrad.atomic import (
    atomic_write_bytes,
    check_writable_dir,
    check_writable_file,
    remove_stale_temporaries,
)
from obfgrad.cache import cache_dir, cached_path, load_or_train

ROOT = Path(__file__).resolve().parent.parent


def _training(calls):
    def build():
        torch.manual_seed(0)
        return nn.Linear(2, 2)

    def train(model):
        calls.append(1)
        with torch.no_grad():
            model.weight.fill_(0.5)
        return {"note": "trained"}

    return build, train


@pytest.mark.parametrize("how", ["models_is_a_file", "cache_is_a_file", "read_only_filesystem"])
def test_an_unwritable_cache_keeps_the_trained_model_with_a_warning(tmp_path, monkeypatch, how):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    if how == "models_is_a_file":
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "models").write_text("not a folder")
    elif how == "cache_is_a_file":
        (tmp_path / "cache").write_text("not a folder")
    else:  # as on a read-only mount (root ignores chmod, so the failure is injected where it happens)
        def read_only(*args, **kwargs):
            raise OSError(30, "Read-only file system")
        monkeypatch.setattr("obfgrad.cache.atomic_write_bytes", read_only)
    calls = []
    build, train = _training(calls)
    with pytest.warns(RuntimeWarning, match="could not cache the trained model .* using it from memory"):
        model = load_or_train({"arch": "linear"}, build, train)
    assert calls == [1] and torch.equal(model.weight, torch.full((2, 2), 0.5)) and not model.training


def test_a_writable_cache_still_saves_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    calls = []
    build, train = _training(calls)
    load_or_train({"arch": "linear"}, build, train)
    model = load_or_train({"arch": "linear"}, build, train)
    assert calls == [1] and torch.equal(model.weight, torch.full((2, 2), 0.5))


@pytest.mark.parametrize("kind,suffix", [
    ("models", "/../../x"), ("models", "./../../x"), ("models", ".pt/../../../x"), ("models", ".."),
    ("models", ".a\\b"), ("models", ".pt\x00"), ("", ".pt"), ("a/b", ".pt"), ("..", ".pt"), (".", ".pt"),
    (" ", ".pt"), ("models\x00", ".pt"), (None, ".pt"), ("models", None),
])
def test_cached_path_cannot_escape_the_cache_folder(kind, suffix):
    bad_kind = kind in ("", "a/b", "..", ".", " ", "models\x00", None)
    with pytest.raises(ValueError, match="kind" if bad_kind else "suffix"):
        cached_path(kind, {"a": 1}, suffix)


def test_cached_path_keeps_plain_names_inside_the_cache():
    for kind, suffix in (("models", ".pt"), ("data", ".tar.gz"), ("my-kind.v2", "")):
        path = cached_path(kind, {"a": 1}, suffix)
        assert path.parent == cache_dir() / kind and path.name.endswith(suffix)


# ------------------------------------------------------------------------ case 11: orphaned temporaries


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_write_killed_by_sigkill_leaves_a_temporary_the_next_write_removes(tmp_path):
    target = tmp_path / "out" / "result.json"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from obfgrad.atomic import atomic_write
        def write(handle):
            handle.write(b"partial")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # killed mid-write
        atomic_write({str(target)!r}, write)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    orphans = [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and not target.exists()
    atomic_write_bytes(target.parent / "other.json", b"{}")  # the next write to that folder
    assert [p.name for p in target.parent.iterdir()] == ["other.json"]


def test_temporaries_of_running_writers_are_kept(tmp_path):
    live_own = tmp_path / f".a.json.{atomic._host()}-{os.getpid()}.abc123.tmp"
    live_other = tmp_path / f".b.json.{atomic._host()}-1.abc123.tmp"  # pid 1 always runs
    other_host_recent = tmp_path / ".c.json.otherhost-424242.abc123.tmp"
    fresh_old_layout = tmp_path / ".d.json.abc123.tmp"
    for path in (live_own, live_other, other_host_recent, fresh_old_layout):
        path.write_bytes(b"in progress")
    _age(live_own, 7200)
    _age(live_other, 7200)
    assert remove_stale_temporaries(tmp_path) == []


def test_old_temporaries_without_a_checkable_writer_are_removed(tmp_path, monkeypatch):
    other_host = tmp_path / ".c.json.otherhost-424242.abc123.tmp"
    old_layout = tmp_path / ".d.json.abc123.tmp"
    dead = tmp_path / f".e.json.{atomic._host()}-{_dead_pid()}.abc123.tmp"
    not_ours = tmp_path / "notes.tmp"  # not a hidden temporary: never touched
    for path in (other_host, old_layout, dead, not_ours):
        path.write_bytes(b"orphan")
        _age(path, 7200)
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(p.name for p in (other_host, old_layout, dead))
    assert not_ours.exists()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_interrupted_downloads_are_cleaned_too(tmp_path):
    from obfgrad.data.download import DownloadError, download

    orphan = tmp_path / f".f.gz.{atomic._host()}-{_dead_pid()}.abc.part"
    orphan.write_bytes(b"half a download")
    with pytest.raises(DownloadError):
        download("http://127.0.0.1:9/f.gz", tmp_path / "f.gz", md5="0" * 32, progress=False, timeout=1)
    assert not orphan.exists()


# ------------------------------------------------------------------------ output locations


def test_output_locations_are_checked(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out: .*file exists and is not a directory"):
        check_writable_dir(tmp_path / "file", "--out")
    with pytest.raises(ValueError, match="--out: cannot write in"):
        check_writable_dir(tmp_path / "file" / "below", "--out")
    with pytest.raises(ValueError, match="--json: .* is a directory"):
        check_writable_file(tmp_path, "--json")
    assert check_writable_file(tmp_path / "new" / "report.json", "--json").parent.is_dir()
