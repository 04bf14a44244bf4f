"""Running the Table 1 runner on several processes (``torchrun``): one per GPU, on one or many nodes.

What is split: the batches of every attack. ``obfgrad.eval.evaluate(..., distributed=True)``
gives rank ``r`` of ``W`` the batches ``r, r + W, r + 2W, ...`` (the same batches as a single
process), seeds each batch from the global batch index, and all-gathers the per-example records
(and ``x_adv``), so every rank holds the merged result, equal to a single-process run with the
same seed. Everything else in a row (data, the row's own extra judgements, tables) runs on every
rank identically; only rank 0 trains models (the others wait, then load them from the cache),
writes files, logs and draws progress bars.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing here does anything: ``world() == 1``,
``is_main()`` is true and the runner works exactly as a single process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

__all__ = ["init", "shutdown", "active", "rank", "world", "local_rank", "is_main", "barrier",
           "from_main", "main_first", "fill_caches"]

T = TypeVar("T")

# A collective waits this long for the slowest rank; rank 0 may train a model meanwhile (hours).
_TIMEOUT_HOURS_ENV = "OBFGRAD_DIST_TIMEOUT_HOURS"
_main_first_depth = 0  # > 0 inside main_first (nested uses must not wait again)


def _env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and return this rank's device.

    A CUDA ``device`` becomes ``cuda:LOCAL_RANK`` (one GPU per process) with the NCCL backend; a
    CPU device uses gloo. Without torchrun, or with one process, returns ``device`` unchanged.
    """
    if _env_world() <= 1 or active():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    hours = float(os.environ.get(_TIMEOUT_HOURS_ENV, "48"))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(hours=hours))
    return device


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def from_main(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, its (picklable) value handed to every rank: one decision for all
    (e.g. whether a cached row result exists, which only rank 0's results directory knows)."""
    if world() == 1:
        return compute()
    box = [compute() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the body first (e.g. trains and caches a model) while the others wait; then
    the others run it (and find the cache filled). Needs a cache directory all ranks can read
    (``OBFGRAD_CACHE`` on a shared file system when the ranks are on several nodes). Nested
    uses are plain bodies: only the outermost one waits (rank 0 runs alone inside it)."""
    global _main_first_depth
    if _main_first_depth or world() == 1:
        yield
        return
    _main_first_depth += 1
    try:
        if not is_main():
            barrier()
        try:
            yield
        finally:
            if is_main():
                barrier()
    finally:
        _main_first_depth -= 1


def fill_caches(spec: Any, ctx: Any) -> None:
    """Before a row runs on several ranks: rank 0 builds the row's defense (training and caching
    every model the row needs, through whichever ``*_train_or_load`` the row uses) while the
    others wait. Then every rank loads the same weights from the cache, so no two ranks train
    (and, on GPU, possibly round) differently."""
    if world() == 1 or spec.build_defense is None:
        return
    with main_first():
        if is_main():
            spec.build_defense(spec, ctx, 1)
