"""The Table 1 defenses as buildable bundles: the defended model, the undefended one, the model the
paper's adaptive attack differentiates (BPDA/EOT), the threat model and test data, under the
``smoke`` profile (small models trained on the fly and cached) or the ``paper`` profile (the
paper's architectures with the user's weights).

    >>> from obfgrad import zoo
    >>> bundle = zoo.build("guo:jpeg", "smoke", examples=100)          # doctest: +SKIP
    >>> bundle.model(bundle.x).argmax(1)                               # doctest: +SKIP

A defense module ``obfgrad.zoo.<defense>`` holds ``DISTANCE``, ``dataset(profile)``,
``config(profile, dry_run)`` (every setting, JSON: the defense's and the paper's attacks on it),
``build(config, ctx, n, **variant)`` and, for a defense with several variants, ``VARIANTS`` (the
default first).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Callable, List, Optional, Union

import torch

from obfgrad.zoo.base import PROFILES, BuildContext, DefenseBundle, _stderr_log

__all__ = ["DEFENSES", "PROFILES", "UNDEFENDED", "BuildContext", "DefenseBundle", "build", "defense_module",
           "names", "variants"]

#: Table 1's defenses, in the table's order (Athalye, Carlini & Wagner 2018).
DEFENSES = ("thermometer", "lid", "guo", "sap", "xie", "pixeldefend", "defensegan", "madry", "na")
#: The naturally trained classifier of the profile (Madry et al.'s recipe without adversarial training).
UNDEFENDED = "undefended"


def defense_module(defense: str) -> ModuleType:
    """``obfgrad.zoo.<defense>`` for a name of :data:`DEFENSES`."""
    if defense not in DEFENSES:
        raise ValueError(f"name: unknown defense {defense!r}; expected one of {', '.join(DEFENSES)}")
    return importlib.import_module(f"obfgrad.zoo.{defense}")


def variants(defense: str) -> tuple:
    """The variants of a defense (Guo's five transformations, ...); ``()`` when it has none."""
    return tuple(getattr(defense_module(defense), "VARIANTS", ()))


def names() -> List[str]:
    """Every name :func:`build` takes: a defense with variants as ``defense:variant`` (each of them),
    then :data:`UNDEFENDED`."""
    return [each for d in DEFENSES for each in ([f"{d}:{v}" for v in variants(d)] or [d])] + [UNDEFENDED]


def _split(name: str):
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str such as 'guo:jpeg', got {type(name).__name__}")
    defense, _, variant = name.partition(":")
    if name == UNDEFENDED:
        return "madry", None
    defense_module(defense)
    if variant and variant not in variants(defense):
        raise ValueError(f"name: {defense} has no variant {variant!r}; choose from "
                         f"{', '.join(variants(defense)) or '(none)'}")
    return defense, variant or None


def build(name: str, profile: str = "smoke", *, examples: int = 100, weights: Union[str, Path, None] = None,
          data_dir: Union[str, Path, None] = None, device: Union[str, torch.device] = "cpu", seed: int = 0,
          dry_run: bool = False, progress: Optional[bool] = None,
          log: Optional[Callable[[str], None]] = None) -> DefenseBundle:
    """Build the defense ``name`` (a name of :func:`names`: ``"madry"``, ``"guo:jpeg"``, ...) with its
    first ``examples`` test examples.

    ``profile="smoke"`` trains its small models on Fashion-MNIST on first use and caches them
    (``OBFGRAD_CACHE``); ``"paper"`` uses the paper's architectures and datasets with the user's
    ``weights`` (a checkpoint file) and ``data_dir``. ``dry_run`` builds untrained models on synthetic
    images at the dataset's resolution (a code-path check: no data, no training)."""
    from obfgrad._checks import check_device

    if profile not in PROFILES:
        raise ValueError(f"profile: expected one of {', '.join(PROFILES)}, got {profile!r}")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
        raise ValueError(f"examples: expected a positive int, got {examples!r}")
    defense, variant = _split(name)
    check_device(device, "device")
    if weights is not None and not Path(weights).is_file():
        raise ValueError(f"weights: no such file {weights}")
    ctx = BuildContext(profile=profile, device=torch.device(device), seed=seed,
                       data_dir=None if data_dir is None else Path(data_dir), dry_run=dry_run, progress=progress,
                       weights={} if weights is None else {defense: Path(weights)},
                       log=_stderr_log if log is None else log)
    module = defense_module(defense)
    config = module.config(profile, dry_run)
    if name == UNDEFENDED:
        return module.build_undefended(config, ctx, examples)
    return module.build(config, ctx, examples, **({} if variant is None else {"variant": variant}))
