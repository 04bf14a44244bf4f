"""The judging rules of obfgrad.eval.judging on hand-built models whose draws are known: the
robustml rule, any-of-n draws (Xie), mean softmax / majority vote (SAP), detector-OR-correct (LID),
and that randomized judges draw from the judge's own stream."""

import pytest
import torch

from obfgrad.eval import (
    accuracy_summary,
    clopper_pearson,
    correct_in_any_draw,
    correct_or_detected,
    judged_inputs,
    robustml_rule,
    vote_correct,
)
from obfgrad.eval.confidence import paired_sign_test, stronger_attack_comparison, stuck_attack_reading


class Scripted(torch.nn.Module):
    """Call ``i`` returns ``logits[i % len(logits)]`` for every example (a 'randomized' model whose
    draws are a known script)."""

    def __init__(self, logits):
        super().__init__()
        self.logits, self.calls = [torch.tensor(row, dtype=torch.float32) for row in logits], 0

    def forward(self, x):
        row = self.logits[self.calls % len(self.logits)]
        self.calls += 1
        return row.expand(x.shape[0], -1)


def one_hot_logits(classes, k=4):
    return [[5.0 if j == c else 0.0 for j in range(k)] for c in classes]


class Noise(torch.nn.Module):
    """Logits drawn from torch's global generator: the judge's stream decides them."""

    def forward(self, x):
        return torch.randn(x.shape[0], 5)


def test_robustml_rule_judges_an_example_outside_the_ball_or_box_at_its_clean_image():
    x = torch.full((3, 1, 2, 2), 0.5)
    x_adv = x.clone()
    x_adv[0] += 0.05  # inside l-inf 0.1
    x_adv[1] += 0.3  # over the budget
    x_adv[2, 0, 0, 0] = 1.2  # outside the [0, 1] box
    final, within = robustml_rule(x, x_adv, "linf", 0.1)
    assert within.tolist() == [True, False, False]
    assert torch.equal(final[0], x_adv[0]) and torch.equal(final[1], x[1]) and torch.equal(final[2], x[2])
    assert torch.equal(judged_inputs(x, x_adv, "linf", 0.1), final)
    with pytest.raises(ValueError, match="x_adv"):
        robustml_rule(x, x_adv[:2], "linf", 0.1)


def test_any_of_n_draws_survives_when_some_draw_is_correct():
    x, y = torch.zeros(4, 1, 1, 1), torch.tensor([0, 1, 2, 3])
    # draws predict class 0, then 1, then 2: labels 0..2 survive three draws, label 3 never does
    assert correct_in_any_draw(Scripted(one_hot_logits([0, 1, 2])), x, y, 3, judge_seed=7).tolist() == \
        [True, True, True, False]
    assert correct_in_any_draw(Scripted(one_hot_logits([0, 1, 2])), x, y, 1, judge_seed=7).tolist() == \
        [True, False, False, False]


def test_any_of_n_draws_judges_x_adv_under_the_robustml_rule():
    bright = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2))
    with torch.no_grad():  # class 1 when the pixel is above 0.5, class 0 below
        bright[1].weight.copy_(torch.tensor([[-1.0], [1.0]]))
        bright[1].bias.copy_(torch.tensor([0.5, -0.5]))
    x, x_adv, y = torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1), torch.tensor([0])
    assert correct_in_any_draw(bright, x, y, 2, judge_seed=1, x_adv=x_adv, distance="linf", eps=0.1).tolist() == [True]
    assert correct_in_any_draw(bright, x, y, 2, judge_seed=1, x_adv=x_adv, distance="linf", eps=1.0).tolist() == [False]
    with pytest.raises(ValueError, match="distance"):
        correct_in_any_draw(bright, x, y, 2, judge_seed=1, x_adv=x_adv)
    with pytest.raises(ValueError, match="draws"):
        correct_in_any_draw(bright, x, y, 0, judge_seed=1)


def test_randomized_judges_draw_from_the_judge_stream_not_the_callers():
    x, y = torch.zeros(64, 1, 1, 1), torch.zeros(64, dtype=torch.long)
    torch.manual_seed(1)  # the attacker's (caller's) generator state must not matter ...
    first = correct_in_any_draw(Noise(), x, y, 2, judge_seed=11)
    state = torch.get_rng_state()
    torch.manual_seed(2)
    again = correct_in_any_draw(Noise(), x, y, 2, judge_seed=11)
    other = correct_in_any_draw(Noise(), x, y, 2, judge_seed=12)
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(1)
    correct_in_any_draw(Noise(), x, y, 2, judge_seed=11)
    assert torch.equal(torch.get_rng_state(), state)  # ... and is left as it was
    votes = vote_correct(Noise(), x, y, 3, judge_seed=11)
    torch.manual_seed(5)
    assert all(torch.equal(votes[k], v) for k, v in vote_correct(Noise(), x, y, 3, judge_seed=11).items())


def test_mean_softmax_and_majority_vote_can_disagree():
    # one confident draw for class 0, two mild draws for class 1 (softmax [0.21, 0.58, 0.21]):
    # the mean softmax is (0.47, 0.39, 0.14) -> class 0, the vote 2:1 -> class 1
    draws = [[10.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]
    x = torch.zeros(2, 1, 1, 1)
    verdict = vote_correct(Scripted(draws), x, torch.tensor([0, 1]), 3, judge_seed=3)
    assert verdict["mean_softmax"].tolist() == [True, False]
    assert verdict["majority_vote"].tolist() == [False, True]


def test_majority_vote_tie_goes_to_the_lowest_class_and_batches_draw_afresh():
    x = torch.zeros(1, 1, 1, 1)
    tie = vote_correct(Scripted(one_hot_logits([2, 1], k=3)), x, torch.tensor([1]), 2, judge_seed=3)
    assert tie["majority_vote"].tolist() == [True]
    # batch of 1: example 0 sees draws (0, 0), example 1 the next two draws (1, 1)
    script = Scripted(one_hot_logits([0, 0, 1, 1], k=2))
    per_batch = vote_correct(script, torch.zeros(2, 1, 1, 1), torch.tensor([0, 1]), 2, judge_seed=3, batch_size=1)
    assert per_batch["majority_vote"].tolist() == [True, True] and script.calls == 4


def test_detector_or_correct_counts_only_undetected_misclassifications_as_attack_successes():
    correct = torch.tensor([True, True, False, False])
    flagged = torch.tensor([True, False, True, False])
    assert correct_or_detected(correct, flagged).tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="correct, flagged"):
        correct_or_detected(correct, flagged[:3])


def test_accuracy_summary_counts_verdicts_with_the_exact_interval():
    summary = accuracy_summary(torch.tensor([True, True, True, False]))
    assert summary == {"accuracy": 0.75, "ci95": list(clopper_pearson(3, 4))}
    with pytest.raises(ValueError, match="correct"):
        accuracy_summary(torch.tensor([], dtype=torch.bool))


def test_stronger_attack_comparison_counts_discordant_pairs_and_tests_them():
    # 1 = still correct. The stronger attack breaks examples 0-9 the main one leaves; the reverse for 10.
    main = torch.tensor([True] * 10 + [False] + [True] * 5)
    stronger = torch.tensor([False] * 10 + [True] + [True] * 5)
    comparison = stronger_attack_comparison(main, stronger)
    assert (comparison["broken_only_by_control"], comparison["broken_only_by_main"]) == (10, 1)
    assert comparison["paired_sign_test_p"] == paired_sign_test(10, 1) < 0.05
    assert comparison["reading"] == stuck_attack_reading(10, 1, comparison["paired_sign_test_p"])
    assert comparison["reading"].startswith("stuck attack")
    assert stronger_attack_comparison(main, main)["reading"].startswith("not a stuck attack")
    with pytest.raises(ValueError, match="main_correct, stronger_correct"):
        stronger_attack_comparison(main, stronger[:3])


def test_accuracy_vs_eps_takes_a_rows_attack_evaluator_and_judge():
    from obfgrad.eval import accuracy_vs_eps, evaluate, margin_pgd

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.rand(6, 1, 2, 2)
    y = net(x).argmax(1)
    budgets = []

    def evaluator(*args, **kwargs):
        budgets.append(kwargs["eps"])
        return evaluate(*args, progress=False, **kwargs)

    survives = lambda xs, x_adv, ys, eps: torch.ones(xs.shape[0], dtype=torch.bool)  # noqa: E731
    curve = accuracy_vs_eps(net, x, y, distance="linf", eps_grid=[0.0, 1.0], attack=lambda eps: margin_pgd(
        "linf", eps, 5), evaluator=evaluator, judge=survives)
    assert budgets == [1.0]  # eps 0 is the clean accuracy: no attack
    assert curve.single_draw_accuracy == [1.0, 0.0]  # the whole box breaks a linear model ...
    assert curve.accuracy == [1.0, 1.0]  # ... but this judge lets every example survive
    assert [v.tolist() for v in curve.verdicts] == [[True] * 6] * 2 and "verdicts" not in curve.to_dict()
    assert accuracy_vs_eps(net, x, y, distance="linf", eps_grid=[1.0], steps=5).to_dict().keys() == \
        {"eps", "accuracy", "n", "steps", "attack", "seconds"}
    with pytest.raises((TypeError, ValueError), match="steps"):
        accuracy_vs_eps(net, x, y, distance="linf", eps_grid=[1.0])
