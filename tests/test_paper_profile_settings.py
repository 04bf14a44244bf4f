"""Behaviour behind the paper-profile settings traced to the authors' code (issue 14, item 5): the
robustml start point, Xie et al.'s pad offsets, the SAP row's one draw per step, and Guo et al.'s
unpenalised attack (the settings themselves are checked field by field in test_paper_fidelity.py)."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from obfgrad.attacks import PGD  # noqa: E402
from obfgrad.defenses import RandomResizePad  # noqa: E402
from obfgrad.zoo import guo as zoo_guo  # noqa: E402
from reproduce.rows import all_specs, sap  # noqa: E402


def _linear():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))


def test_robustml_start_is_zeros_clipped_into_the_ball():
    # sap/robustml_attack.py: xs = 0, delta = clip(clip(xs, 0, 255) - x, -eps, eps), xs = x + delta
    x = torch.tensor([0.0, 0.02, 0.5, 1.0]).view(1, 1, 2, 2)
    zeros = torch.zeros_like(x)
    robustml = x + (zeros.clamp(0, 1) - x).clamp(-0.1, 0.1)
    start = PGD("linf", 0.1, steps=0, start_from=0.0)(_linear(), x, torch.tensor([0])).x_adv
    assert torch.equal(start, robustml) and torch.allclose(start, (x - 0.1).clamp_min(0))
    mid_grey = PGD("linf", 0.1, steps=0, start_from=0.5)(_linear(), x, torch.tensor([0])).x_adv  # LID's zero
    assert torch.allclose(mid_grey, torch.tensor([0.1, 0.12, 0.5, 0.9]).view(1, 1, 2, 2))
    assert torch.equal(PGD("linf", 0.1, steps=0)(_linear(), x, torch.tensor([0])).x_adv, x)  # default: x itself
    with pytest.raises(ValueError, match="start_from"):
        PGD("linf", 0.1, random_start=True, start_from=0.0)


def test_paper_rows_start_where_the_robustml_attacks_do():
    specs = {spec.name: spec for spec in all_specs(["thermometer", "sap", "lid"], "paper")}
    assert {name: spec.config["adaptive_attack"]["start_from"] for name, spec in specs.items()} == \
        {"thermometer": 0.0, "sap": 0.0, "lid": 0.5}
    attack = sap.adaptive(specs["sap"], None)
    assert attack.start_from == 0.0 and attack.steps == 500


def test_sap_paper_attack_draws_sap_once_per_step_and_keeps_ten_draws_as_a_named_variant():
    (paper,) = all_specs(["sap"], "paper")
    (smoke,) = all_specs(["sap"], "smoke")
    assert paper.config["adaptive_attack"]["samples"] == 1
    assert paper.config["adaptive_attack"]["variant"] == "authors_code"
    assert smoke.config["adaptive_attack"]["variant"] == "eot_10_draws"
    assert smoke.config["adaptive_attack"]["samples"] == 10
    assert set(paper.config["adaptive_attack_variants"]) == {"authors_code", "eot_10_draws"}


def test_guo_paper_attack_is_unpenalised_gradient_descent():
    (paper,) = all_specs(["guo"], "paper")
    for name in ("bit_depth", "jpeg", "crop_rescale", "tv", "quilting"):
        attack = zoo_guo.adaptive_attack(name, paper.config, paper.distance)
        assert attack.penalty == 0.0 and attack.step_size == 0.1 and not attack.project and attack.update == "raw"


def _placements(side, padded, geometry, draws=4000):
    """(row, column) offsets of the resized image on the canvas, per example: a constant image of 1
    on a canvas of 0 shows where it went."""
    pad = RandomResizePad(min_size=side, max_size=side + 1, padded=padded, pad_value=0.0, resize_back=False,
                          geometry=geometry)
    canvas = pad(torch.ones(draws, 1, side, side), seed=3)
    rows = canvas[:, 0].amax(dim=2).argmax(dim=1)
    cols = canvas[:, 0].amax(dim=1).argmax(dim=1)
    return set(rows.tolist()) | set(cols.tolist())


@pytest.mark.parametrize("side, padded", [(28, 31), (29, 31), (30, 31)])
def test_xie_pad_offsets_lie_in_zero_to_padded_minus_r_exclusive(side, padded):
    # randomization/defense.py: pad_left = tf.random_uniform((), 0, 331 - rnd, dtype=tf.int32), maxval exclusive
    assert _placements(side, padded, "authors") == set(range(padded - side))
    # The project's centred geometry (smoke profile) keeps every placement, the upper end included.
    assert _placements(side, padded, "centred") == set(range(padded - side + 1))


def test_xie_paper_profile_pads_with_the_authors_geometry():
    (paper,) = all_specs(["xie"], "paper")
    assert paper.config["transform"]["geometry"] == "authors"
