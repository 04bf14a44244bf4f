"""obfgrad diagnose: each check on constructed defenses whose obfuscation is known.

* hard ``round()`` in front of a linear classifier: shattered (all-zero gradients; BPDA fixes it);
* Gaussian noise in front: stochastic (inconsistent gradients; EOT averages them back);
* a deep saturating sigmoid chain in front: vanishing/exploding (non-zero gradients that do not
  predict the loss change);
* the plain linear classifier: passes every check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from obfgrad.cli import main as cli_main
from obfgrad.eval.diagnose import DiagnoseBudget, DiagnosisReport, diagnose

sys.path.insert(0, str(Path(__file__).parent))
from diagnose_models import GaussianNoise, HardRound, SaturatingChain, trained_digits_linear  # noqa: E402

EPS = 0.1
TINY = DiagnoseBudget(examples=32, steps=20, eps_multiples=(0.5,), random_samples=8, grad_repeats=4,
                      judge_samples=8, eot_samples=8, probe_directions=4, surrogate_steps=30)


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(2)
    return trained_digits_linear()


def _diagnose(model, x, y, **kwargs) -> DiagnosisReport:
    return diagnose(model, x, y, eps=EPS, budget=TINY, progress=False, **kwargs)


@pytest.fixture(scope="module")
def linear_report(digits):
    classifier, x, y = digits
    return _diagnose(classifier, x, y)  # no surrogate: diagnose trains its own substitute


@pytest.fixture(scope="module")
def round_report(digits):
    classifier, x, y = digits
    return _diagnose(classifier, x, y, preprocess=HardRound(4), surrogate=classifier)


@pytest.fixture(scope="module")
def noise_report(digits):
    classifier, x, y = digits
    return _diagnose(nn.Sequential(GaussianNoise(0.5), classifier), x, y, surrogate=classifier)


@pytest.fixture(scope="module")
def chain_report(digits):
    classifier, x, y = digits
    return _diagnose(classifier, x, y, preprocess=SaturatingChain(depth=20), surrogate=classifier)


# -- the plain linear model --------------------------------------------------------------------

def test_linear_model_passes_every_check(linear_report):
    verdicts = {check.name: check.verdict for check in linear_report.checks}
    assert set(verdicts.values()) <= {"pass", "skipped"}, verdicts
    assert linear_report.verdict == "pass"
    assert linear_report.obfuscation == []


def test_linear_model_unbounded_attack_reaches_every_example(linear_report):
    assert linear_report.check("unbounded").numbers["success"] == 1.0
    curve = linear_report.curves["iterative (white-box)"]
    assert curve == sorted(curve)  # success never falls as eps grows


def test_linear_gradient_step_beats_random_steps(linear_report):
    # For a linear model the signed gradient step is the exact maximiser of the margin change.
    assert linear_report.check("gradient_vs_random").numbers["gradient_beats_random"] == 1.0
    assert linear_report.check("gradient_stochasticity").numbers == {"randomized": False}


# -- shattered: hard rounding ------------------------------------------------------------------

def test_hard_round_is_shattered_with_zero_gradients(round_report):
    values = round_report.check("gradient_values")
    assert values.verdict == "fail"
    assert values.numbers["all_zero_examples"] == 1.0
    assert round_report.obfuscation_types == ["shattered"]
    assert "BPDA" in round_report.obfuscation[0].remedy


def test_hard_round_defeats_the_gradient_but_not_bpda(round_report):
    assert round_report.check("unbounded").verdict == "fail"  # zero gradient: PGD never moves
    assert round_report.curves["iterative (white-box)"][-1] == 0.0
    assert round_report.curves["adaptive (bpda)"][-1] == 1.0  # BPDA (identity) fixes it
    remedies = round_report.check("remedies")
    assert remedies.verdict == "fail"
    assert remedies.numbers["success"]["bpda"] > remedies.numbers["white_box_success"]
    assert round_report.check("transfer_vs_white_box").verdict == "fail"


# -- stochastic: Gaussian noise ----------------------------------------------------------------

def test_noise_is_stochastic_and_eot_makes_gradients_consistent(noise_report):
    assert noise_report.config["randomized"] is True  # detected: two calls differ
    stochasticity = noise_report.check("gradient_stochasticity")
    assert stochasticity.verdict in ("suspicious", "fail")
    cosine, eot_cosine = stochasticity.numbers["repeat_cosine"], stochasticity.numbers["eot_repeat_cosine"]
    assert cosine < 0.9 < eot_cosine
    assert "stochastic" in noise_report.obfuscation_types
    assert "shattered" not in noise_report.obfuscation_types
    assert "EOT" in noise_report.obfuscation[noise_report.obfuscation_types.index("stochastic")].remedy


def test_noise_model_gradients_are_finite_and_non_zero(noise_report):
    assert noise_report.check("gradient_values").verdict == "pass"
    assert "eot" in noise_report.check("remedies").numbers["success"]


# -- vanishing: a deep saturating chain --------------------------------------------------------

def test_saturating_chain_is_vanishing_not_shattered(chain_report):
    values = chain_report.check("gradient_values")
    assert values.numbers["all_zero_examples"] == 0.0  # gradients exist and are not exactly zero
    assert chain_report.check("gradient_vs_random").verdict == "fail"
    assert chain_report.obfuscation_types == ["vanishing/exploding"]
    assert "reparameterization" in chain_report.obfuscation[0].remedy


# -- no gradient path at all -------------------------------------------------------------------

class _Detached(nn.Module):
    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(x.detach())


def test_model_without_gradient_path_is_shattered(digits):
    classifier, x, y = digits
    budget = DiagnoseBudget(examples=16, steps=5, eps_multiples=(0.5,), random_samples=2, surrogate_steps=0)
    report = diagnose(_Detached(classifier), x, y, eps=EPS, surrogate=classifier, budget=budget, progress=False)
    assert report.check("gradient_values").verdict == "fail"
    assert "no gradient" in report.check("gradient_values").explanation
    assert report.obfuscation_types == ["shattered"]


# -- the report --------------------------------------------------------------------------------

def test_report_renders_as_strict_json_text_and_png(round_report, tmp_path):
    data = round_report.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["verdict"] == "obfuscated" and data["obfuscation_types"] == ["shattered"]
    assert [c["name"] for c in data["checks"]] == [c.name for c in round_report.checks]
    round_report.save_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == data
    text = round_report.to_text()
    assert all(check.title in text for check in round_report.checks) and "SHATTERED" in text
    round_report.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- bad input ---------------------------------------------------------------------------------

def test_bad_input_is_rejected_with_the_argument_named(digits):
    classifier, x, y = digits
    with pytest.raises(ValueError, match="^y: labels are required"):
        diagnose(classifier, x, None, eps=EPS)
    with pytest.raises(ValueError, match="^eps:"):
        diagnose(classifier, x, y, eps=0.0)
    with pytest.raises(ValueError, match="^eps:"):
        diagnose(classifier, x, y, eps=-0.1)
    with pytest.raises(ValueError, match="^x: expected a non-empty batch"):
        diagnose(classifier, x[:0], y[:0], eps=EPS)
    with pytest.raises(ValueError, match="^y: expected shape"):
        diagnose(classifier, x, y[:3], eps=EPS)
    with pytest.raises(ValueError, match="none of the examples"):
        diagnose(classifier, x[:4], (classifier(x[:4]).argmax(1) + 1) % 10, eps=EPS, progress=False)
    with pytest.raises(ValueError, match="^budget.steps"):
        diagnose(classifier, x, y, eps=EPS, budget=DiagnoseBudget(steps=0))


# -- the command -------------------------------------------------------------------------------

def test_cli_diagnoses_a_users_module(tmp_path, capsys):
    factory = tmp_path / "mine.py"
    factory.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from diagnose_models import HardRound, trained_digits_linear\n"
        "def build():\n"
        "    model, x, y = trained_digits_linear()\n"
        "    return {'model': model, 'preprocess': HardRound(4), 'surrogate': model, 'x': x, 'y': y}\n")
    code = cli_main(["diagnose", "--model", f"{factory}:build", "--eps", "0.1", "--examples", "16", "--steps", "5",
                     "--random-samples", "2", "--json", str(tmp_path / "out.json"), "--quiet", "--strict"])
    assert code == 2  # --strict: a non-pass verdict
    assert "LIKELY SHATTERED GRADIENTS" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["obfuscation_types"] == ["shattered"]


def test_cli_rejects_unknown_defense_and_missing_eps(tmp_path):
    with pytest.raises(SystemExit, match="unknown 'nope'"):
        cli_main(["diagnose", "--defense", "nope"])
    factory = tmp_path / "m.py"
    factory.write_text("import torch\ndef build():\n    return torch.nn.Flatten()\n")
    torch.save({"x": torch.rand(2, 1, 2, 2), "y": torch.zeros(2, dtype=torch.long)}, tmp_path / "d.pt")
    with pytest.raises(SystemExit, match="--eps"):
        cli_main(["diagnose", "--model", f"{factory}:build", "--data", str(tmp_path / "d.pt")])


def test_cli_builds_a_table1_row_through_reproduce(tmp_path, capsys):
    # --dry-run: the row's untrained models on synthetic data (proves the code path in seconds).
    code = cli_main(["diagnose", "--defense", "madry", "--dry-run", "--examples", "20", "--steps", "3",
                     "--random-samples", "2", "--quiet", "--out-dir", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "madry.json").read_text())
    assert report["config"]["defense"] == "madry" and report["config"]["n"] == 20
    assert (tmp_path / "madry.png").is_file()
    assert "paper: none" in capsys.readouterr().out


def test_cli_names_each_of_guos_transformations(capsys):
    from obfgrad.cli import _expand

    assert _expand("guo") == ["guo:quilting", "guo:bit_depth", "guo:jpeg", "guo:crop_rescale", "guo:tv"]
    assert _expand("guo:jpeg") == ["guo:jpeg"] and _expand("madry") == ["madry"]
    with pytest.raises(SystemExit, match="no variant 'nope'; choose from quilting, bit_depth"):
        cli_main(["diagnose", "--defense", "guo:nope", "--dry-run", "--quiet"])
    with pytest.raises(SystemExit, match="unknown 'nope:jpeg'"):
        cli_main(["diagnose", "--defense", "nope:jpeg"])


def test_the_diagnosis_guards_an_eot_model_per_draw_so_attacks_still_average_gradients():
    from obfgrad.attacks import EOT
    from obfgrad.attacks.inputs import check_eot_outermost
    from obfgrad.eval.diagnose import _guard, _Guarded

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    guarded = _guard(EOT(EOT(net, samples=2), samples=3, reduction="probs"))
    assert isinstance(guarded, EOT) and guarded.samples == 3 and guarded.reduction == "probs"
    assert isinstance(guarded.model, EOT) and isinstance(guarded.model.model, _Guarded)
    check_eot_outermost(guarded)  # accepted: EOT stays outermost
    with pytest.raises(ValueError, match="nested"):
        check_eot_outermost(_Guarded(EOT(net, samples=2)))  # what the diagnosis built before
