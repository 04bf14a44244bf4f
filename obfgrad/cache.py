"""The cache directory, recipe keys, and checkpoints that remember what made them.

A *recipe* is a plain JSON-able dict (architecture, data, optimiser, seed, ...). Its key is the
SHA-256 of its canonical JSON, so the same recipe always maps to the same file and any change
to it (a different seed, another epsilon for adversarial training) maps to a different one.

A checkpoint is reused only when everything that made it still matches (:func:`load_checkpoint`):

* the **recipe** stored in it equals the one asked for (a hash collision, a hand-copied file);
* the **code** that trains models: :func:`training_code` fingerprints the source of every
  ``obfgrad`` module reachable through imports from :data:`TRAINING_ROOTS` (the architectures,
  the training loops of every model family, the data loaders that decode the training images,
  the PGD adversary of adversarial training and the thermometer encoding that sits inside the
  encoded classifier during training, this module's checkpoint format), the compiled ``_C``
  binary and the CUDA kernel sources (the thermometer kernel runs in training), plus any file a
  caller names (``code_files``: the runner's own training glue, e.g. its adversary factory).
  The import closure over-approximates "the code that can run during training" on purpose: a
  module that cannot change the weights costs, when edited, one retraining; a module missed would
  silently reuse weights of other code. Attack, evaluation and CLI code is not reachable from the
  roots and can change without invalidating models;
* the **tensors**: the SHA-256 of every tensor's name, dtype, shape and bytes, stored at save time,
  is recomputed on load (a flipped bit or an edited value is caught), and every floating-point
  weight must be finite.

A checkpoint that fails any of these is refused (:class:`CheckpointError`); :func:`load_or_train`
then warns and trains afresh. Checkpoints are written atomically.
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
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

import torch

from obfgrad import fingerprint
from obfgrad.atomic import atomic_write_bytes

CHECKPOINT_FORMAT = 2

#: The modules whose import closure is the training code of every cached model (see the module
#: docstring): architectures (``obfgrad.models``), the training loops (classifiers, WGAN-GP,
#: PixelCNN++, cascade), the data loaders, the adversary of PGD adversarial training, the
#: thermometer encoding (trained through), and the checkpoint format itself.
TRAINING_ROOTS = ("obfgrad.models", "obfgrad.models.training", "obfgrad.models.wgan", "obfgrad.models.pixelcnn",
                  "obfgrad.defenses.cascade", "obfgrad.data", "obfgrad.ops.thermometer_op",
                  "obfgrad.defenses.thermometer", "obfgrad.attacks.pgd",
                  "obfgrad.cache")
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


def training_code(code_files: Iterable[Path] = ()) -> Dict[str, str]:
    """The fingerprint of the code that trains models: SHA-256 of the import closure of
    :data:`TRAINING_ROOTS`, of the native code, and of the caller's ``code_files``."""
    return {"modules": fingerprint.sources_digest(fingerprint.module_closure(TRAINING_ROOTS)),
            "native": fingerprint.native_digest(),
            "files": fingerprint.files_digest(code_files)}


def tensors_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and raw bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _non_finite(state_dict: Mapping[str, torch.Tensor]) -> list:
    return [name for name, tensor in state_dict.items()
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def save_checkpoint(path, recipe: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                    meta: Optional[Mapping[str, Any]] = None, code: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``{"recipe", "code", "state_dict", "sha256", "meta"}`` to ``path`` atomically (never a
    partial file); ``code`` is the training-code fingerprint (default :func:`training_code`)."""
    tensors = {name: tensor.detach().cpu().clone() for name, tensor in state_dict.items()}
    bad = _non_finite(tensors)
    if bad:
        raise ValueError(f"state_dict: non-finite values in {bad[:5]}; refusing to cache a broken model")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "recipe": normalize_recipe(recipe),
        "code": dict(training_code() if code is None else code),
        "state_dict": tensors,
        "sha256": tensors_sha256(tensors),
        "meta": normalize_recipe(meta or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _read_payload(path: Path) -> Dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, foreign pickle, disallowed global, ...
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an obfgrad checkpoint of format {CHECKPOINT_FORMAT}")
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: checkpoint has no tensor state_dict")
    return payload


def load_checkpoint(path, recipe: Mapping[str, Any], code: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and check that it belongs to
    ``recipe`` and to the training code ``code`` (default :func:`training_code`), that its
    tensors still have the stored SHA-256, and that every floating-point weight is finite.

    Only tensors and plain containers are unpickled (``torch.load(weights_only=True)``).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable, malformed, damaged, non-finite, or made by another recipe or
            other training code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    payload = _read_payload(path)
    wanted = normalize_recipe(recipe)
    if payload.get("recipe") != wanted:
        raise CheckpointError(
            f"{path}: checkpoint was made by another recipe\n  stored:    {canonical_json(payload.get('recipe') or {})}"
            f"\n  requested: {canonical_json(wanted)}"
        )
    expected_code = dict(training_code() if code is None else code)
    if payload.get("code") != expected_code:
        changed = sorted(k for k in expected_code if (payload.get("code") or {}).get(k) != expected_code[k])
        raise CheckpointError(f"{path}: checkpoint was made by other training code (changed: {', '.join(changed)})")
    if payload.get("sha256") != tensors_sha256(payload["state_dict"]):
        raise CheckpointError(f"{path}: the tensors do not match the checkpoint's SHA-256 (damaged or edited)")
    bad = _non_finite(payload["state_dict"])
    if bad:
        raise CheckpointError(f"{path}: non-finite weights in {bad[:5]}")
    return payload


def load_or_train(recipe: Mapping[str, Any], build: Callable[[], torch.nn.Module],
                  train: Callable[[torch.nn.Module], Optional[Mapping[str, Any]]],
                  code_files: Sequence[Path] = ()) -> torch.nn.Module:
    """The model of ``recipe``: ``build()`` with the weights of its cached checkpoint
    (``cache_dir()/models/<key>.pt``) when one is present and passes :func:`load_checkpoint`'s
    checks for this recipe and training code (``code_files``: files of the caller's that shape
    training, added to the fingerprint); else a fresh ``build()`` trained by ``train(model)``
    (which may return extra metadata), saved atomically with its training time (a cache that
    cannot be written gets a warning; the model is still returned). Returned in eval mode. A
    checkpoint that is refused, or does not fit the model, is reported with a warning and
    replaced by a fresh run."""
    path = cached_path("models", recipe, ".pt")
    code = training_code(code_files)
    model = build()
    if path.exists():
        try:
            model.load_state_dict(load_checkpoint(path, recipe, code)["state_dict"])
            return model.eval()
        except (CheckpointError, RuntimeError) as error:  # load_state_dict raises RuntimeError on misfit
            warnings.warn(f"retraining: cached checkpoint refused: {error}", RuntimeWarning, stacklevel=3)
            model = build()
    started = time.perf_counter()
    extra = train(model) or {}
    try:
        save_checkpoint(path, recipe, model.state_dict(), code=code,
                        meta={"train_seconds": round(time.perf_counter() - started, 3), **extra})
    except OSError as error:  # a read-only or full cache must not throw the trained model away
        warnings.warn(f"could not cache the trained model at {path} ({error.strerror or error}); using it "
                      "from memory (it will be trained again next time): set OBFGRAD_CACHE to a writable "
                      "folder to keep it", RuntimeWarning, stacklevel=2)
    return model.eval()
