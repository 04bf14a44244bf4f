"""Cache directory resolution, recipe keys, and checkpoint save/load checks."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from obfgrad.cache import (
    CheckpointError,
    cache_dir,
    cached_path,
    load_checkpoint,
    recipe_key,
    save_checkpoint,
)


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "explicit"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("OBFGRAD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "obfgrad"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "obfgrad"


def test_recipe_key_is_sha256_of_canonical_json():
    recipe = {"lr": 0.1, "arch": "small_cnn", "nested": {"b": [1, 2], "a": None}}
    canonical = '{"arch":"small_cnn","lr":0.1,"nested":{"a":null,"b":[1,2]}}'
    assert recipe_key(recipe) == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert recipe_key({"nested": {"a": None, "b": (1, 2)}, "arch": "small_cnn", "lr": 0.1}) == recipe_key(recipe)
    assert recipe_key({**recipe, "lr": 0.01}) != recipe_key(recipe)


def test_recipe_must_be_plain_json():
    with pytest.raises(ValueError, match="plain JSON"):
        recipe_key({"x": object()})
    with pytest.raises(ValueError):
        recipe_key({"x": float("nan")})
    with pytest.raises(TypeError):
        recipe_key([1, 2])


def test_cached_path_layout(monkeypatch, tmp_path):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path))
    assert cached_path("models", {"a": 1}, ".pt") == tmp_path / "models" / f"{recipe_key({'a': 1})}.pt"
    for bad_kind in ("", "../x", "a/b"):
        with pytest.raises(ValueError, match="kind"):
            cached_path(bad_kind, {}, ".pt")


def test_checkpoint_round_trip_and_recipe_check(tmp_path):
    state = {"w": torch.randn(3, 2), "b": torch.zeros(2)}
    recipe = {"arch": "x", "sizes": (1, 2)}
    path = save_checkpoint(tmp_path / "c.pt", recipe, state, meta={"seconds": 1.5})
    payload = load_checkpoint(path, {"arch": "x", "sizes": [1, 2]})
    assert payload["meta"] == {"seconds": 1.5}
    for name in state:
        assert torch.equal(payload["state_dict"][name], state[name])
    with pytest.raises(CheckpointError, match="another recipe"):
        load_checkpoint(path, {"arch": "y", "sizes": [1, 2]})
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary files left


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"a": 1}, {"w": torch.ones(100)})
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path, {"a": 1})
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(path, {"a": 1})
    path.write_text(json.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, {"a": 1})
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt", {"a": 1})
