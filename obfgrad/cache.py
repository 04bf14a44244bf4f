"""The cache directory, recipe keys, and checkpoints that remember the recipe that made them.

A *recipe* is a plain JSON-able dict (architecture, data, optimiser, seed, ...). Its key is the
SHA-256 of its canonical JSON, so the same recipe always maps to the same file and any change
to it (a different seed, another epsilon for adversarial training) maps to a different one.
Checkpoints are written atomically and store their recipe; loading refuses a checkpoint whose
stored recipe differs from the one asked for (a hash collision, a hand-copied file, or a file
written by an older layout).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from obfgrad.atomic import atomic_write_bytes

CHECKPOINT_FORMAT = 1
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_SUFFIX = re.compile(r"(\.[A-Za-z0-9_-]+)*")
_KEY_HEX_CHARS = 16


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, malformed, or was made by another recipe."""


def cache_dir() -> Path:
    """Root of obfgrad's cache: ``$OBFGRAD_CACHE``, else ``$XDG_CACHE_HOME/obfgrad``, else
    ``~/.cache/obfgrad``. The directory is not created here."""
    explicit = os.environ.get("OBFGRAD_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "obfgrad"


def canonical_json(recipe: Mapping[str, Any]) -> str:
    """Sorted keys, no whitespace, no NaN: equal recipes give equal strings."""
    if not isinstance(recipe, Mapping):
        raise TypeError(f"recipe: expected a dict, got {type(recipe).__name__}")
    try:
        return json.dumps(recipe, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"recipe: must be plain JSON (dict/list/str/int/float/bool/None): {error}") from None


def normalize_recipe(recipe: Mapping[str, Any]) -> Dict[str, Any]:
    """The recipe as JSON would give it back (tuples become lists), for equality checks."""
    return json.loads(canonical_json(recipe))


def recipe_key(recipe: Mapping[str, Any]) -> str:
    """First 16 hex characters of the SHA-256 of the recipe's canonical JSON.

    Example:
        >>> recipe_key({"b": 1, "a": [1, 2]}) == recipe_key({"a": (1, 2), "b": 1})
        True
        >>> len(recipe_key({}))
        16
    """
    return hashlib.sha256(canonical_json(recipe).encode("ascii")).hexdigest()[:_KEY_HEX_CHARS]


def cached_path(kind: str, recipe: Mapping[str, Any], suffix: str) -> Path:
    """``cache_dir()/<kind>/<recipe_key(recipe)><suffix>``, e.g. ``models/3f2a...c1.pt``."""
    # Plain names only: a separator or '..' in either would place the file outside cache_dir()/kind.
    if not isinstance(kind, str) or not _PLAIN_NAME.fullmatch(kind) or set(kind) == {"."}:
        raise ValueError(f"kind: expected a plain directory name (letters, digits, '_', '-', '.'), got {kind!r}")
    if not isinstance(suffix, str) or not _SUFFIX.fullmatch(suffix):
        raise ValueError(f"suffix: expected '' or file extensions like '.pt' or '.tar.gz', got {suffix!r}")
    return cache_dir() / kind / f"{recipe_key(recipe)}{suffix}"


def save_checkpoint(path, recipe: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                    meta: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``{"recipe", "state_dict", "meta"}`` to ``path`` atomically (never a partial file)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "recipe": normalize_recipe(recipe),
        "state_dict": {name: tensor.detach().cpu().clone() for name, tensor in state_dict.items()},
        "meta": normalize_recipe(meta or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path, recipe: Mapping[str, Any]) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and check it belongs to ``recipe``.

    Only tensors and plain containers are unpickled (``torch.load(weights_only=True)``).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable, malformed, or made by a different recipe.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, foreign pickle, disallowed global, ...
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an obfgrad checkpoint of format {CHECKPOINT_FORMAT}")
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: checkpoint has no tensor state_dict")
    wanted = normalize_recipe(recipe)
    if payload.get("recipe") != wanted:
        raise CheckpointError(
            f"{path}: checkpoint was made by another recipe\n  stored:    {canonical_json(payload.get('recipe') or {})}"
            f"\n  requested: {canonical_json(wanted)}"
        )
    return payload


def load_or_train(recipe: Mapping[str, Any], build: Callable[[], torch.nn.Module],
                  train: Callable[[torch.nn.Module], Optional[Mapping[str, Any]]]) -> torch.nn.Module:
    """The model of ``recipe``: ``build()`` with the weights of its cached checkpoint
    (``cache_dir()/models/<key>.pt``) when one is present and fits; else a fresh ``build()``
    trained by ``train(model)`` (which may return extra metadata), saved atomically with its
    training time (a cache that cannot be written gets a warning; the model is still returned).
    Returned in eval mode. A checkpoint that cannot be read, was made by another recipe, or does
    not fit the model is reported with a warning and replaced by a fresh run."""
    path = cached_path("models", recipe, ".pt")
    model = build()
    if path.exists():
        try:
            model.load_state_dict(load_checkpoint(path, recipe)["state_dict"])
            return model.eval()
        except (CheckpointError, RuntimeError) as error:  # load_state_dict raises RuntimeError on misfit
            warnings.warn(f"retraining: cached checkpoint refused: {error}", RuntimeWarning, stacklevel=3)
            model = build()
    started = time.perf_counter()
    extra = train(model) or {}
    try:
        save_checkpoint(path, recipe, model.state_dict(),
                        meta={"train_seconds": round(time.perf_counter() - started, 3), **extra})
    except OSError as error:  # a read-only or full cache must not throw the trained model away
        warnings.warn(f"could not cache the trained model at {path} ({error.strerror or error}); using it "
                      "from memory (it will be trained again next time): set OBFGRAD_CACHE to a writable "
                      "folder to keep it", RuntimeWarning, stacklevel=2)
    return model.eval()
