"""Evaluator: counts and exact intervals, the robustml threat-model rule (a violation is an attack
failure), targeted mode, atomic JSON that round-trips, eval mode, and named errors."""

import json

import pytest
import torch
from attack_models import LinearClassifier, away_from_walls
from torch import nn

from obfgrad.attacks import PGD, AttackResult
from obfgrad.eval import (
    EvalResult,
    clopper_pearson,
    confidence,
    eval_mode,
    evaluate,
    random_targets,
    robustness,
    wilson,
)

SHAPE = (1, 4, 4)


# -- confidence intervals ------------------------------------------------------------------------
@pytest.mark.parametrize("k, n, expected", [
    (0, 10, (0.0, 0.3085)),      # the classic "rule of three"-like bound: 1 - 0.025^(1/10)
    (10, 10, (0.6915, 1.0)),
    (5, 10, (0.1871, 0.8129)),
    (1, 100, (0.0003, 0.0545)),
])
def test_clopper_pearson_known_values(k, n, expected):
    for use_scipy in (True, False):
        lo, hi = clopper_pearson(k, n, use_scipy=use_scipy)
        assert lo == pytest.approx(expected[0], abs=5e-5)
        assert hi == pytest.approx(expected[1], abs=5e-5)


def test_clopper_pearson_zero_successes_closed_form():
    # k = 0: upper bound solves (1 - p)^n = alpha / 2
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12)


def test_bisection_fallback_matches_scipy_on_a_grid():
    for n in (1, 7, 50, 1000):
        for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            a = clopper_pearson(k, n, use_scipy=True)
            b = clopper_pearson(k, n, use_scipy=False)
            assert a == pytest.approx(b, abs=1e-9), (k, n)


def test_binomial_cdf_matches_scipy():
    from scipy.stats import binom

    for n, k, p in [(10, 3, 0.2), (1000, 480, 0.5), (10000, 10, 0.002), (5, 5, 0.3)]:
        assert confidence.binomial_cdf(k, n, p) == pytest.approx(float(binom.cdf(k, n, p)), rel=1e-10, abs=1e-300)


def test_wilson_known_values():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-5)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson(0, 0) == (0.0, 1.0)


def test_interval_arguments_are_named():
    with pytest.raises(ValueError, match="k"):
        clopper_pearson(11, 10)
    with pytest.raises(ValueError, match="n"):
        wilson(0, -1)
    with pytest.raises(ValueError, match="level"):
        clopper_pearson(1, 10, level=1.0)


# -- results from hand-built records -------------------------------------------------------------
def _record(index, label, clean_pred, adv_pred, success, within=True):
    return {"index": index, "label": label, "target": None, "clean_pred": clean_pred, "adv_pred": adv_pred,
            "adv_correct": adv_pred == label, "distance": 0.01, "steps": 3, "success": success,
            "attack_success": success, "within_threat_model": within}


def test_counts_and_intervals_from_records():
    records = [_record(i, 0, 0, 0, False) for i in range(3)]          # robust
    records += [_record(3 + i, 0, 0, 1, True) for i in range(6)]      # broken
    records += [_record(9, 0, 1, 1, True)]                            # wrong from the start
    result = EvalResult(records)
    assert result.n == 10
    assert result.clean_accuracy == pytest.approx(0.9)
    assert result.robust_accuracy == pytest.approx(0.3)
    assert result.attack_success_rate == pytest.approx(0.7)
    assert result.robust_ci95 == pytest.approx(clopper_pearson(3, 10))
    assert result.clean_ci95 == pytest.approx(clopper_pearson(9, 10))
    assert EvalResult([_record(i, 0, 0, 1, True) for i in range(10)]).robust_ci95 == pytest.approx((0.0, 0.3085),
                                                                                                   abs=5e-5)


# -- the evaluator -------------------------------------------------------------------------------
def _linear_model():
    torch.manual_seed(0)
    return LinearClassifier(0.1 * torch.randn(4, 16) + 5 * torch.eye(4, 16), torch.zeros(4))


class OutOfBudgetAttack:
    """A 'successful' attack that ignores the budget: returns 1 - x (misclassified, far away)."""

    def __call__(self, model, x, y, target=None):
        x_adv = 1 - x
        success = model(x_adv).argmax(1) != y
        return AttackResult(x_adv, success, (x_adv - x).abs().flatten(1).amax(1), torch.zeros_like(y))


class OutOfBoxAttack:
    """Tiny perturbation, but pushes one pixel above 1 + 1e-4."""

    def __call__(self, model, x, y, target=None):
        x_adv = x.clone()
        x_adv[:, 0, 0, 0] = 1.001
        return AttackResult(x_adv, torch.ones_like(y, dtype=torch.bool), torch.zeros(len(y)), torch.zeros_like(y))


def test_threat_model_violation_counts_as_attack_failure():
    model = _linear_model()
    x = away_from_walls(8, SHAPE)
    y = model(x).argmax(1)
    with torch.no_grad():
        assert bool((model(1 - x).argmax(1) != y).any())  # the cheat would have "worked"
    result = evaluate(model, OutOfBudgetAttack(), x, y, distance="linf", eps=0.03, progress=False)
    assert result.robust_accuracy == result.clean_accuracy == 1.0
    assert result.attack_success_rate == 0.0
    assert all(not r["within_threat_model"] and not r["success"] for r in result.records)
    assert all(r["adv_pred"] == r["clean_pred"] for r in result.records)
    assert any(r["attack_success"] for r in result.records)  # the attack's own claim is kept
    assert result.summary()["threat_model_violations"] == 8

    boxed = evaluate(model, OutOfBoxAttack(), x, y, distance="linf", eps=0.5, progress=False)
    assert boxed.attack_success_rate == 0.0 and boxed.robust_accuracy == 1.0


def test_untargeted_evaluation_matches_the_attack():
    model = _linear_model()
    x = away_from_walls(20, SHAPE)
    y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 4  # one example misclassified from the start
    attack = PGD("linf", 0.1, steps=10, step_size=0.02)
    result = evaluate(model, attack, x, y, distance="linf", eps=0.1, batch_size=6, progress=False)
    direct = attack(model, x, y)
    with torch.no_grad():
        adv_pred = model(direct.x_adv).argmax(1)
    assert result.n == 20 and [r["index"] for r in result.records] == list(range(20))
    assert result.clean_accuracy == pytest.approx(19 / 20)
    assert result.robust_accuracy == pytest.approx(float((adv_pred == y).float().mean()))
    assert 0 < result.robust_accuracy < result.clean_accuracy
    assert result.attack_success_rate == pytest.approx(1 - result.robust_accuracy)
    assert all(r["within_threat_model"] for r in result.records)


def test_targeted_mode():
    model = _linear_model()
    x = away_from_walls(12, SHAPE)
    y = model(x).argmax(1)
    targets = random_targets(y, num_classes=4, seed=0)
    attack = PGD("linf", 0.3, steps=40, step_size=0.02, targeted=True)
    result = evaluate(model, attack, x, y, distance="linf", eps=0.3, targets=targets, progress=False)
    assert result.targeted and result.config["targeted"]
    assert [r["target"] for r in result.records] == targets.tolist()
    assert all(r["success"] == (r["adv_pred"] == r["target"]) for r in result.records)
    assert result.attack_success_rate == 1.0 and result.robust_accuracy == 0.0
    with pytest.raises(ValueError, match="target"):  # an untargeted attack given targets
        evaluate(model, PGD("linf", 0.1), x, y, distance="linf", eps=0.1, targets=targets, progress=False)


def test_random_targets_differ_from_labels_are_seeded_and_cover_other_classes():
    y = torch.arange(10).repeat(100)
    t = random_targets(y, num_classes=10, seed=4)
    assert bool((t != y).all()) and t.dtype == torch.long
    assert torch.equal(t, random_targets(y, num_classes=10, seed=4))
    assert not torch.equal(t, random_targets(y, num_classes=10, seed=5))
    counts = torch.bincount(t[y == 0], minlength=10)
    assert counts[0] == 0 and bool((counts[1:] > 0).all())
    with pytest.raises(ValueError, match="y"):
        random_targets(torch.tensor([0, 10]), num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        random_targets(y, num_classes=1)


def test_json_is_written_atomically_and_round_trips(tmp_path, monkeypatch):
    model = _linear_model()
    x = away_from_walls(5, SHAPE)
    y = model(x).argmax(1)
    result = evaluate(model, PGD("linf", 0.1, steps=3, step_size=0.05), x, y, distance="linf", eps=0.1,
                      progress=False)
    writes = []
    real = robustness.atomic_write_json
    monkeypatch.setattr(robustness, "atomic_write_json", lambda path, obj: writes.append(path) or real(path, obj))
    path = tmp_path / "out" / "result.json"
    result.save_json(path)
    assert writes == [path]
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temporary file left behind
    data = json.loads(path.read_text())
    assert data["n"] == 5 and data["robust_ci95"] == list(result.robust_ci95)
    assert data["config"]["distance"] == "linf" and "wall_time_s" in data["meta"]
    loaded = EvalResult.load_json(path)
    assert loaded.records == result.records
    assert loaded.summary() == result.summary()


def test_model_is_evaluated_in_eval_mode_and_restored():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x

    model = nn.Sequential(Probe(), _linear_model())
    model.train()
    x = away_from_walls(4, SHAPE)
    y = model(x).argmax(1)
    seen.clear()
    evaluate(model, PGD("linf", 0.05, steps=2, step_size=0.02), x, y, distance="linf", eps=0.05, progress=False)
    assert seen and not any(seen)
    assert model.training and model[0].training


def test_custom_predict_is_used():
    model = _linear_model()
    x = away_from_walls(4, SHAPE)
    y = model(x).argmax(1)
    always_zero = lambda v: torch.zeros(v.shape[0], dtype=torch.long)  # noqa: E731
    result = evaluate(model, PGD("linf", 0.05, steps=1), x, y, distance="linf", eps=0.05, predict=always_zero,
                      progress=False)
    assert all(r["clean_pred"] == 0 and r["adv_pred"] == 0 for r in result.records)


def test_evaluate_bad_input_names_the_argument():
    model = _linear_model()
    x = away_from_walls(3, SHAPE)
    y = model(x).argmax(1)
    attack = PGD("linf", 0.1, steps=1)
    cases = [
        (dict(eps=0.0), "eps"),
        (dict(distance="l7"), "distance"),
        (dict(batch_size=0), "batch_size"),
        (dict(targets=y), "targets"),
        (dict(targets=y[:2]), "targets"),
    ]
    for overrides, argument in cases:
        kwargs = dict(distance="linf", eps=0.1, progress=False)
        kwargs.update(overrides)
        with pytest.raises((TypeError, ValueError), match=argument):
            evaluate(model, attack, x, y, **kwargs)
    with pytest.raises(ValueError, match="x"):
        evaluate(model, attack, x + 2, y, distance="linf", eps=0.1, progress=False)
    with pytest.raises(ValueError, match="y"):
        evaluate(model, attack, x, y[:1], distance="linf", eps=0.1, progress=False)
    with pytest.raises(TypeError, match="attack"):
        evaluate(model, "pgd", x, y, distance="linf", eps=0.1, progress=False)
    with pytest.raises(TypeError, match="attack"):
        evaluate(model, lambda m, a, b: a, x, y, distance="linf", eps=0.1, progress=False)


def test_evaluate_leaves_inputs_untouched():
    model = _linear_model()
    x = away_from_walls(6, SHAPE)
    y = model(x).argmax(1)
    x0, y0 = x.clone(), y.clone()
    evaluate(model, PGD("linf", 0.1, steps=3, step_size=0.05), x, y, distance="linf", eps=0.1, progress=False)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def test_evaluate_on_the_device_of_x(device):
    model = _linear_model().to(device)
    x = away_from_walls(6, SHAPE).to(device)
    y = model(x).argmax(1)
    result = evaluate(model, PGD("linf", 0.1, steps=3, step_size=0.05), x, y, distance="linf", eps=0.1,
                      progress=False)
    assert result.n == 6 and result.meta["device"].startswith(device.type)


def test_eval_mode_restores_each_submodules_flag_even_when_the_block_raises():
    inner, outer = nn.Linear(2, 2).eval(), nn.Linear(2, 2)
    model = nn.Sequential(outer, inner).train()
    inner.eval()
    function = lambda v: v  # noqa: E731 -- not a module: left alone
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(model, function, None):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert model.training and outer.training and not inner.training
