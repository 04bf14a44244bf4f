"""The nine rows of Table 1, in the table's order. A row module exposes
``spec(profile, dry_run=False) -> RowSpec``; rows whose module is not written yet are listed
with their paper numbers and marked pending."""

from __future__ import annotations

import importlib
from typing import List

from reproduce.spec import ROW_NAMES, RowSpec

# Paper facts for rows not implemented yet (Table 1; protocol.md).
_PENDING = {
    "thermometer": ("Buckman et al. (2018), thermometer encoding", "CIFAR-10", "0.031 (ℓ∞)", 0.00, "*"),
    "lid": ("Ma et al. (2018), local intrinsic dimensionality", "CIFAR-10", "0.031 (ℓ∞)", 0.05, ""),
    "guo": ("Guo et al. (2018), input transformations", "ImageNet", "0.05 (ℓ2)", 0.00, "*"),
    "sap": ("Dhillon et al. (2018), stochastic activation pruning", "CIFAR-10", "0.031 (ℓ∞)", 0.00, ""),
    "xie": ("Xie et al. (2018), randomization", "ImageNet", "0.031 (ℓ∞)", 0.00, "*"),
    "pixeldefend": ("Song et al. (2018), PixelDefend", "CIFAR-10", "0.031 (ℓ∞)", 0.09, "*"),
    "defensegan": ("Samangouei et al. (2018), Defense-GAN", "MNIST", "0.005 (ℓ2)", 0.55, "**"),
}


def _pending_spec(name: str) -> RowSpec:
    defense, dataset, bound, accuracy, note = _PENDING[name]
    return RowSpec(name=name, defense=defense, dataset="-", distance="-", eps=0.0, paper_dataset=dataset,
                   paper_bound=bound, paper_accuracy=accuracy, paper_note=note, run=None)


def row_spec(name: str, profile: str, dry_run: bool = False) -> RowSpec:
    if name not in ROW_NAMES:
        raise ValueError(f"rows: unknown row {name!r}; expected some of {', '.join(ROW_NAMES)}")
    try:
        module = importlib.import_module(f"reproduce.rows.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"reproduce.rows.{name}":
            raise
        return _pending_spec(name)
    return module.spec(profile, dry_run)


def all_specs(names: List[str], profile: str, dry_run: bool = False) -> List[RowSpec]:
    return [row_spec(name, profile, dry_run) for name in names]
