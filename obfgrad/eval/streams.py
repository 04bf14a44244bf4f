"""Independent random streams for the attacker, the probes and the judge.

A randomized defense (SAP's pruning masks, Xie's resize-and-pad, Guo's crops, TV masks and
quilting picks, Defense-GAN's random starts) draws from torch's global generator. If the judge of
an attack draws the same values as the attack did (or as a probe did), the attack is judged on
randomness it has already seen: an example only just across the boundary for its own draws
counts as broken although a fresh draw classifies it correctly. So every role gets its own
stream: :func:`derive_seed` maps one run seed and a role name to a seed (the SHA-256 of both, so
streams of different roles or runs are unrelated), and :func:`random_stream` runs a block with
torch's global generators seeded by it and restores the caller's state afterwards.

Example:
    >>> derive_seed(0, "judge") != derive_seed(0, "attack")
    True
    >>> with random_stream(derive_seed(0, "judge")):
    ...     a = torch.rand(2)
    >>> with random_stream(derive_seed(0, "judge")):
    ...     b = torch.rand(2)
    >>> torch.equal(a, b)
    True
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator, Optional

import torch

from obfgrad._checks import SEED_BOUND, check_int

__all__ = ["ROLES", "derive_seed", "random_stream"]

#: The roles of an evaluation that must never share draws.
ROLES = ("attack", "probe", "judge")


def derive_seed(seed: int, role: str) -> int:
    """A seed for ``role`` (any name, e.g. ``"judge"`` or ``"xie/own_transfer/attack"``) of the
    run seeded ``seed``: the first 8 bytes of SHA-256(seed, role), reduced to [0, SEED_BOUND)."""
    check_int(seed, "seed")
    if not isinstance(role, str) or not role:
        raise ValueError(f"role: expected a non-empty name, got {role!r}")
    digest = hashlib.sha256(f"obfgrad-stream\0{seed}\0{role}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SEED_BOUND


@contextlib.contextmanager
def random_stream(seed: int, device: Optional[torch.device] = None) -> Iterator[None]:
    """torch's global generators (CPU, and ``device``'s when it is a CUDA device) seeded with
    ``seed`` inside the block; the caller's generator states are restored afterwards."""
    devices = []
    if device is not None and torch.device(device).type == "cuda":
        index = torch.device(device).index
        devices = [index if index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
