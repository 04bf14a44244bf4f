"""Row 1: Buckman et al. (2018), thermometer encoding, CIFAR-10, 0.031 l-inf, 0%*.

Defense: 16-level thermometer encoding in front of a classifier trained on encoded inputs,
*without* adversarial training (the Table 1 model; the * variant adds LS-PGA adversarial
training and is not run here).

Own evaluation (the defense's authors'): LS-PGA in logit space (Buckman et al.'s attack, with
the constants of the authors' code) and a plain gradient attack, which sees the encoding's true
gradient (zero almost everywhere) and cannot move. Adaptive (Athalye et al., Sec. 5.1): BPDA
through the soft thermometer, CW margin without floor, Adam on sign(grad) with lr 1/255 (the
repo's lr 1.0 on 0-255), 30 steps from the clean image (protocol.md row 1).

One adaptive-attack step with the native op against the pure-torch reference is timed in
``benchmarks/bench_thermometer.py``, not here.
"""

from __future__ import annotations

from typing import Any, Dict

from obfgrad.attacks import LSPGA
from obfgrad.zoo import thermometer as zoo_thermometer
from reproduce import choices, paper_entries, paper_plans
from reproduce.evaluation import Evaluation, pgd_of
from reproduce.spec import RowSpec, RunContext, table1, zoo_fields


def spec(profile: str, dry_run: bool = False) -> RowSpec:
    # The zoo config's "timing" entry is the benchmark's now (benchmarks/bench_thermometer.py).
    config = {key: value for key, value in zoo_thermometer.config(profile, dry_run).items() if key != "timing"}
    paper = profile == "paper"
    return RowSpec(
        name="thermometer",
        work_plan=paper_plans.thermometer, fidelity=paper_entries.THERMOMETER,
        defense="Buckman et al. (2018), thermometer encoding",
        **zoo_fields(zoo_thermometer, profile, config),
        **table1("CIFAR-10", "0.031 (ℓ∞)", 0.0, "*"),  # *: the defense alone (no adversarial training)
        n_examples=10000 if paper else 500,
        choices=choices.of("thermometer", profile),
        setup=setup,
        evaluations=(
            Evaluation("own_lspga", "own_lspga", "own",
                       attack=lambda row, ctx, setup: LSPGA(eps=row.eps, **row.config["own_lspga"], seed=ctx.seed)),
            Evaluation("own_plain_gradient", "own_plain_gradient", "own", model="true_gradient",
                       attack=pgd_of("own_plain_gradient")),
            Evaluation("adaptive_bpda_margin", "adaptive", "adaptive",
                       attack=pgd_of("adaptive_attack")),
        ),
    )


def setup(row: RowSpec, ctx: RunContext, x, y) -> Dict[str, Any]:
    defense = zoo_thermometer.encoded_classifier(ctx, row.config)
    return {"defended": defense, "guard": defense, "true_gradient": defense.with_gradient("true")}
