"""obfgrad.data.patch_db: the quilting patch database is data; its cache lives where every other
cached file of obfgrad does (obfgrad.cache.cache_dir)."""

import numpy as np
import pytest

from obfgrad.data.patch_db import skimage_patch_database


@pytest.fixture
def only_xdg(tmp_path, monkeypatch):
    """No OBFGRAD_CACHE; XDG_CACHE_HOME and HOME point into tmp_path."""
    monkeypatch.delenv("OBFGRAD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_the_cached_database_honours_xdg_cache_home(only_xdg):
    pytest.importorskip("skimage")
    built = skimage_patch_database(40, long_side=32, seed=3)
    files = sorted(p.name for p in (only_xdg / "xdg" / "obfgrad" / "quilt").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".npy")
    assert not (only_xdg / "home").exists()
    again = skimage_patch_database(40, long_side=32, seed=3)  # read back from the cache
    assert np.array_equal(again.patches, built.patches)


def test_obfgrad_cache_overrides_xdg(only_xdg, monkeypatch):
    pytest.importorskip("skimage")
    monkeypatch.setenv("OBFGRAD_CACHE", str(only_xdg / "explicit"))
    skimage_patch_database(40, long_side=32, seed=3)
    assert len(list((only_xdg / "explicit" / "quilt").glob("*.npy"))) == 1
    assert not (only_xdg / "xdg").exists()
