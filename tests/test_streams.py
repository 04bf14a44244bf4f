"""The attacker, the probes and the judge never share random draws (issue 14, item 2): a randomized
model that records every value it draws, and each role's calls tagged, in ``obfgrad diagnose``
and in ``evaluate``."""

import contextlib
import importlib

import pytest
import torch
from torch import nn

from obfgrad.attacks import PGD, AttackResult
from obfgrad.eval import DiagnoseBudget, derive_seed, diagnose, evaluate, random_stream
from obfgrad.eval.streams import ROLES

diagnose_module = importlib.import_module("obfgrad.eval.diagnose")  # the module, not the function


class DrawRecorder(nn.Module):
    """A linear classifier plus uniform noise of its own (like a randomized defense drawing from
    torch's global generator); every value drawn is filed under the role that is calling."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(16, 3)
        self.role = ["attack"]  # a stack: the innermost role is calling
        self.seen = {role: [] for role in ROLES}

    @contextlib.contextmanager
    def acting_as(self, role):
        self.role.append(role)
        try:
            yield
        finally:
            self.role.pop()

    def forward(self, x):
        noise = torch.rand(x.shape[0], 3)
        self.seen[self.role[-1]].extend(noise.flatten().tolist())
        return self.linear(x.flatten(1)) + 0.5 * noise


def _tag(monkeypatch, target, name, model, role):
    original = getattr(target, name)

    def tagged(*args, **kwargs):
        with model.acting_as(role):
            return original(*args, **kwargs)

    monkeypatch.setattr(target, name, tagged)


def _assert_disjoint(seen):
    for i, first in enumerate(ROLES):
        for second in ROLES[i + 1:]:
            shared = set(seen[first]) & set(seen[second])
            assert not shared, f"{first} and {second} saw {len(shared)} identical draws"


def test_diagnose_gives_attacks_probes_and_judge_disjoint_draws(monkeypatch):
    model = DrawRecorder()
    _tag(monkeypatch, diagnose_module, "_gradient_probes", model, "probe")
    _tag(monkeypatch, diagnose_module, "_is_randomized", model, "probe")
    for method in ("log_probs", "loss"):
        _tag(monkeypatch, diagnose_module._Judge, method, model, "judge")
    x = torch.rand(12, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model.linear(x.flatten(1)).argmax(1)
    budget = DiagnoseBudget(examples=12, steps=3, eps_multiples=(2.0,), random_samples=2, grad_repeats=2,
                            judge_samples=2, eot_samples=2, probe_directions=2, surrogate_steps=2)
    report = diagnose(model, x, y, eps=0.1, budget=budget, progress=False, seed=0)
    assert all(model.seen[role] for role in ROLES), "every role drew from the defense"
    _assert_disjoint(model.seen)
    seeds = report.config["seeds"]
    assert len(set(seeds.values())) == 3 and seeds == {role: derive_seed(0, role) for role in ROLES}


def test_diagnose_leaves_the_callers_generator_alone():
    model = DrawRecorder()
    x, y = torch.rand(6, 1, 4, 4), torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        y = model.linear(x.flatten(1)).argmax(1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    diagnose(model, x, y, eps=0.1, progress=False, budget=DiagnoseBudget(steps=2, random_samples=1, grad_repeats=2,
                                                                         judge_samples=2, eot_samples=2,
                                                                         probe_directions=1, surrogate_steps=1,
                                                                         eps_multiples=(2.0,)))
    assert torch.equal(torch.rand(3), expected)


class _DrawingAttack:
    """Calls the model ``calls`` times (each call draws), then returns the input unchanged."""

    def __init__(self, model, calls):
        self.model, self.calls = model, calls

    def __call__(self, model, x, y):
        with self.model.acting_as("attack"):
            for _ in range(self.calls):
                model(x)
        return AttackResult(x_adv=x.clone(), success=torch.zeros(x.shape[0], dtype=torch.bool),
                            distance=torch.zeros(x.shape[0]), steps=torch.zeros(x.shape[0], dtype=torch.long))


def _judged(model):
    def predict(inputs):
        with model.acting_as("judge"), torch.no_grad():
            return model(inputs).argmax(1)
    return predict


def test_evaluate_judges_on_draws_the_attack_never_saw_and_records_both_seeds():
    model = DrawRecorder()
    x = torch.rand(10, 1, 4, 4)
    y = torch.zeros(10, dtype=torch.long)
    result = evaluate(model, _DrawingAttack(model, 3), x, y, distance="linf", eps=0.1, batch_size=4,
                      predict=_judged(model), progress=False, seed=5)
    assert model.seen["attack"] and model.seen["judge"]
    _assert_disjoint(model.seen)
    assert result.config["seed"] == 5 and result.config["judge_seed"] == derive_seed(5, "judge")


def test_the_judges_draws_do_not_depend_on_how_many_draws_the_attack_made():
    judged = []
    for calls in (1, 4):
        model = DrawRecorder()
        x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(2))
        evaluate(model, _DrawingAttack(model, calls), x, torch.zeros(8, dtype=torch.long), distance="linf",
                 eps=0.1, predict=_judged(model), progress=False, seed=7)
        judged.append(model.seen["judge"])
    assert judged[0] == judged[1]


def test_evaluate_refuses_a_judge_seed_equal_to_the_attack_seed():
    model = DrawRecorder()
    with pytest.raises(ValueError, match="judge_seed"):
        evaluate(model, PGD("linf", 0.1, steps=1), torch.rand(2, 1, 4, 4), torch.zeros(2, dtype=torch.long),
                 distance="linf",
                 eps=0.1, progress=False, seed=3, judge_seed=3)


def test_evaluate_refuses_a_judge_stream_that_overlaps_the_attacks_batches():
    # Batch b is attacked under seed + b and judged under judge_seed + b: with 3 batches, bases 3
    # and 5 would judge batch 0 on the draws batch 2's attack made.
    x, y = torch.rand(6, 1, 4, 4), torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match="judge_seed.*number of batches"):
        evaluate(DrawRecorder(), PGD("linf", 0.1, steps=1), x, y, distance="linf", eps=0.1, batch_size=2,
                 progress=False,
                 seed=3, judge_seed=5)
    result = evaluate(DrawRecorder(), PGD("linf", 0.1, steps=1), x, y, distance="linf", eps=0.1, batch_size=2,
                      progress=False,
                      seed=3, judge_seed=6)
    assert result.n == 6


def test_derived_seeds_are_stable_distinct_and_in_range():
    seeds = {(seed, role): derive_seed(seed, role) for seed in range(4) for role in ROLES + ("xie/10_of_10/judge",)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= value < 2 ** 62 for value in seeds.values())
    assert derive_seed(3, "judge") == derive_seed(3, "judge")
    with pytest.raises(ValueError, match="role"):
        derive_seed(0, "")


def test_random_stream_restores_the_callers_state():
    torch.manual_seed(9)
    expected = torch.rand(2)
    torch.manual_seed(9)
    with random_stream(derive_seed(0, "judge")):
        torch.rand(5)
    assert torch.equal(torch.rand(2), expected)
