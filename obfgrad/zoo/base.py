"""What building a zoo defense takes (:class:`BuildContext`) and gives (:class:`DefenseBundle`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Optional

import torch

PROFILES = ("smoke", "paper")


def _stderr_log(message: str) -> None:
    import sys

    print(message, file=sys.stderr)


@dataclass
class BuildContext:
    """How a defense is built: the profile (``smoke``: small models trained on the fly and cached;
    ``paper``: the paper's architectures, user weights), where tensors go, the seed of synthetic
    data, where datasets are, and whether this is a dry run (untrained models at paper resolution on
    synthetic data: proves the code path only).

    ``weights`` maps a defense (its Table 1 row name, e.g. ``"madry"``) to a user checkpoint.
    ``training_lock`` is entered around every training run: the reproduce runner passes its
    ``torchrun`` guard (rank 0 trains and caches, the others wait and load)."""

    profile: str = "smoke"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    data_dir: Optional[Path] = None
    dry_run: bool = False
    progress: Optional[bool] = None  # None: tqdm decides (quiet off a terminal)
    weights: Dict[str, Path] = field(default_factory=dict)  # row name -> user checkpoint
    log: Callable[[str], None] = print
    training_lock: Callable[[], ContextManager[Any]] = contextlib.nullcontext


@dataclass
class DefenseBundle:
    """A defense built by the zoo, ready to attack.

    ``model`` is the defended classifier as deployed (it may be randomized or non-differentiable);
    ``adaptive_model`` is what the paper's adaptive attack differentiates (BPDA and EOT wrappers;
    ``None`` when it is ``model`` itself); ``undefended`` is the same classifier with no defense (a
    surrogate for transfer attacks); ``distance`` and ``eps`` are the threat model
    (:mod:`obfgrad.distances`); ``x``/``y`` a labelled test batch. ``config`` holds every setting
    the defense was built from (JSON), ``name`` the zoo name (``"guo:jpeg"``).
    """

    model: Callable[[torch.Tensor], torch.Tensor]
    undefended: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    distance: str
    eps: float
    adaptive_model: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    randomized: bool = False
    obfuscation: str = "none"  # what the paper says: "shattered", "stochastic", "vanishing", or "none"
    name: str = ""
    config: Dict[str, Any] = field(default_factory=dict)

    @property
    def attack_model(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """What to differentiate: ``adaptive_model``, or ``model`` when that needs no wrapper."""
        return self.model if self.adaptive_model is None else self.adaptive_model

    @property
    def threat_model(self) -> tuple:
        """``(distance, eps)``."""
        return self.distance, self.eps
