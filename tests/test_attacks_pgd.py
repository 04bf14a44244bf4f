"""PGD: reaches the analytic worst case of a linear model, respects the threat model, stops early,
keeps the best restart, never touches its inputs, and rejects bad input by name."""

import pytest
import torch
from attack_models import LinearClassifier, away_from_walls, margin_of, small_cnn, two_class_linear
from hypothesis import given, settings
from hypothesis import strategies as st

from obfgrad.attacks import PGD, AttackResult
from obfgrad.distances import L2

SHAPE = (1, 4, 4)


def _linear_setup(n=6, bias=50.0):
    # A large bias keeps every example correctly classified even at the worst case, so the attack
    # runs all its steps and the margin change is the whole budget's effect.
    model = two_class_linear(SHAPE, seed=0, bias=bias)
    x = away_from_walls(n, SHAPE)
    y = torch.zeros(n, dtype=torch.long)
    w = (model.weight[0] - model.weight[1]).double()
    return model, x, y, w


@pytest.mark.parametrize("update", ["sign", "adam_sign"])
@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_linf_pgd_reaches_linear_worst_case(update, loss):
    model, x, y, w = _linear_setup()
    eps = 0.05
    attack = PGD("linf", eps, steps=10, step_size=0.02, loss=loss, update=update, kappa=None)
    result = attack(model, x, y)
    change = (margin_of(model, x, y) - margin_of(model, result.x_adv, y)).double()
    expected = eps * w.abs().sum()
    assert torch.allclose(change, expected.expand_as(change), rtol=1e-4)


@pytest.mark.parametrize("normalization", ["none", "rms_pixels"])
def test_l2_pgd_reaches_linear_worst_case(normalization):
    model, x, y, w = _linear_setup()
    distance = L2(normalization)
    eps = 0.1 if normalization == "none" else 0.1 / 4  # same raw budget 0.1 on 4x4 images
    result = PGD(distance, eps, steps=8, step_size=eps / 3, loss="ce", update="normalized")(model, x, y)
    change = (margin_of(model, x, y) - margin_of(model, result.x_adv, y)).double()
    expected = 0.1 * w.norm()
    assert torch.allclose(change, expected.expand_as(change), rtol=1e-4)
    assert torch.allclose(result.distance, torch.full((6,), eps), rtol=1e-5)


def test_linf_raw_gradient_steps_are_scaled_gradients():
    model, x, y, _ = _linear_setup(n=2)
    result = PGD("linf", 0.5, steps=1, step_size=1e-3, update="raw", early_stop=False)(model, x, y)
    # CE gradient of a linear two-class model at x is -(1 - p_y) * w (pointing at class 1)
    logits = model(x)
    p_other = torch.softmax(logits, 1)[:, 1]
    w = model.weight[0] - model.weight[1]
    expected = x - 1e-3 * p_other.view(-1, 1, 1, 1) * w.view(1, *SHAPE)
    assert torch.allclose(result.x_adv, expected, atol=1e-7)


@pytest.mark.parametrize("distance, eps", [("linf", 0.03), ("l2", 0.3), ("l2_per_value", 0.005)])
def test_pgd_output_stays_in_ball_and_box(distance, eps):
    torch.manual_seed(0)
    model = LinearClassifier(torch.randn(3, 16) * 5, torch.zeros(3))
    x = torch.rand(16, *SHAPE)  # touches the box walls
    y = model(x).argmax(1)
    attack = PGD(distance, eps=eps, steps=5, step_size=eps / 2, random_start=True, seed=0,
                 early_stop=False)
    result = attack(model, x, y)
    d = attack.distance
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert bool(d.within(x, result.x_adv, eps, tol=1e-6).all())
    assert torch.allclose(result.distance, d(x, result.x_adv))


def test_early_stop_records_the_step_of_success():
    # margin(x) = 2.5 * (step decrease): the third sign step flips the label, not the second.
    model = two_class_linear(SHAPE, seed=0)
    w = model.weight[0] - model.weight[1]
    step = 0.01
    per_step = step * float(w.abs().sum())
    x = torch.full((2,) + SHAPE, 0.5)
    base = float(margin_of(model, x[:1], torch.zeros(1, dtype=torch.long)))
    model.bias.data = torch.tensor([2.5 * per_step - base, 0.0])
    y = torch.tensor([0, 1])  # example 1 starts misclassified: 0 steps
    result = PGD("linf", 0.2, steps=10, step_size=step)(model, x, y)
    assert result.success.tolist() == [True, True]
    assert result.steps.tolist() == [3, 0]
    assert torch.equal(result.x_adv[1], x[1])
    assert result.distance[0].item() == pytest.approx(3 * step, abs=1e-6)


def test_without_early_stop_every_example_takes_every_step():
    model, x, y, _ = _linear_setup(n=3, bias=0.0)
    result = PGD("linf", 0.3, steps=7, step_size=0.01, early_stop=False)(model, x, y)
    assert result.steps.tolist() == [7, 7, 7]


def test_targeted_pgd_reaches_the_target():
    # Class k owns pixel k with a large weight, so every target is reachable within the budget.
    torch.manual_seed(0)
    model = LinearClassifier(0.1 * torch.randn(5, 16) + 5 * torch.eye(5, 16), torch.zeros(5))
    x = away_from_walls(20, SHAPE)
    y = model(x).argmax(1)
    target = (y + 1 + torch.randint(0, 4, (20,))) % 5
    result = PGD("linf", 0.3, steps=40, step_size=0.02, targeted=True)(model, x, y, target=target)
    assert bool(result.success.all())
    assert torch.equal(model(result.x_adv).argmax(1), target)


def test_success_matches_the_model_prediction():
    torch.manual_seed(1)
    model = LinearClassifier(torch.randn(3, 16), torch.zeros(3))
    x = away_from_walls(32, SHAPE)
    y = model(x).argmax(1)
    result = PGD("linf", 0.2, steps=5, step_size=0.08)(model, x, y)
    assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)
    assert 0 < int(result.success.sum()) < 32  # the budget is tight enough to leave survivors


class _RowCounter(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.inner(x)


def test_restarts_only_rerun_failures_and_keep_successes():
    torch.manual_seed(1)
    inner = LinearClassifier(torch.randn(3, 16), torch.zeros(3))
    x = away_from_walls(32, SHAPE)
    y = inner(x).argmax(1)
    single = PGD("linf", 0.2, steps=5, step_size=0.08, random_start=True, seed=3)
    many = PGD("linf", 0.2, steps=5, step_size=0.08, random_start=True, seed=3, restarts=4)
    one_run, counted = single(inner, x, y), _RowCounter(inner)
    best = many(counted, x, y)
    assert bool((best.success | ~one_run.success).all())  # never loses a first-run success
    assert int(best.success.sum()) >= int(one_run.success.sum())
    # restarts 2..4 only see examples still unbroken
    first_run_rows = _RowCounter(inner)
    single(first_run_rows, x, y)
    assert counted.rows - first_run_rows.rows <= 3 * 6 * int((~one_run.success).sum())


def test_random_start_is_seeded():
    model, x, y, _ = _linear_setup(n=4, bias=0.0)
    attack = PGD("l2", eps=0.5, steps=2, step_size=0.1, random_start=True, seed=11)
    assert torch.equal(attack(model, x, y).x_adv, attack(model, x, y).x_adv)


def test_zero_steps_evaluates_the_start():
    model, x, y, _ = _linear_setup(n=3, bias=0.0)
    result = PGD("linf", 0.1, steps=0)(model, x, y)
    assert torch.equal(result.x_adv, x)
    assert torch.equal(result.success, model(x).argmax(1) != y)
    assert result.steps.tolist() == [0, 0, 0]


@pytest.mark.parametrize("update", ["sign", "normalized", "raw", "adam_sign", "adam"])
@pytest.mark.parametrize("distance", ["linf", "l2"])
def test_inputs_untouched_and_outputs_detached(update, distance):
    model, x, y, _ = _linear_setup(n=4, bias=0.0)
    x0, y0 = x.clone(), y.clone()
    result = PGD(distance, eps=0.1, steps=3, step_size=0.05, update=update, random_start=True,
                 restarts=2)(model, x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert isinstance(result, AttackResult)
    for t in (result.x_adv, result.success, result.distance, result.steps):
        assert not t.requires_grad and t.grad_fn is None
    assert result.success.dtype == torch.bool and result.steps.dtype == torch.long
    assert result.distance.dtype.is_floating_point


def test_progress_bar_runs(capsys):
    model, x, y, _ = _linear_setup(n=2)
    PGD("linf", 0.1, steps=3, step_size=0.05, progress=True)(model, x, y)


def test_to_records():
    model, x, y, _ = _linear_setup(n=2)
    records = PGD("linf", 0.1, steps=1, step_size=0.05)(model, x, y).to_records()
    assert set(records[0]) == {"success", "distance", "steps"}


def test_pgd_runs_on_the_device_of_x(device):
    model, x, y, w = _linear_setup()
    model, x, y = model.to(device), x.to(device), y.to(device)
    result = PGD("linf", 0.05, steps=10, step_size=0.02, early_stop=False)(model, x, y)
    assert result.x_adv.device == x.device and result.success.device == x.device


@pytest.mark.parametrize("make, argument", [
    (lambda: PGD("linf", 0.0), "eps"),
    (lambda: PGD("linf", -1.0), "eps"),
    (lambda: PGD("linf", 0.1, steps=-1), "steps"),
    (lambda: PGD("linf", 0.1, steps=2.5), "steps"),
    (lambda: PGD("linf", 0.1, step_size=0), "step_size"),
    (lambda: PGD("linf", 0.1, loss="hinge"), "loss"),
    (lambda: PGD("linf", 0.1, update="momentum"), "update"),
    (lambda: PGD("linf", 0.1, restarts=0), "restarts"),
    (lambda: PGD(eps=0.1, distance="l1"), "distance"),
    (lambda: PGD("linf", 0.1, kappa=-1.0), "kappa"),
])
def test_bad_configuration_names_the_argument(make, argument):
    with pytest.raises((TypeError, ValueError), match=argument):
        make()


def test_bad_call_names_the_argument():
    model, x, y, _ = _linear_setup(n=2, bias=0.0)
    attack, targeted = PGD("linf", 0.1, steps=1), PGD("linf", 0.1, steps=1, targeted=True)
    cases = [
        (lambda: attack(model, x * 2, y), "x"),
        (lambda: attack(model, x[0], y), "x"),
        (lambda: attack(model, x.long(), y), "x"),
        (lambda: attack(model, x, y.float()), "y"),
        (lambda: attack(model, x, y[:1]), "y"),
        (lambda: attack(model, x, torch.tensor([0, 7])), "y"),
        (lambda: attack(model, x, y, target=torch.tensor([1, 1])), "target"),
        (lambda: targeted(model, x, y), "target"),
        (lambda: targeted(model, x, y, target=torch.tensor([1])), "target"),
    ]
    for call, argument in cases:
        with pytest.raises((TypeError, ValueError), match=argument):
            call()


def test_objectives_match_their_definitions():
    from obfgrad.attacks.losses import make_objective

    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, -1.0]])
    y = torch.tensor([0, 2])
    ce = -torch.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(make_objective("ce", y)(logits), ce)
    assert torch.allclose(make_objective("ce", y, targeted=True)(logits), -ce)
    # margins z_y - max_{j!=y} z_j: [2 - 1, -1 - 3] = [1, -4]
    assert make_objective("margin", y, kappa=None)(logits).tolist() == [-1.0, 4.0]
    assert make_objective("margin", y, kappa=0.0)(logits).tolist() == [-1.0, 0.0]
    assert make_objective("margin", y, kappa=2.0)(logits).tolist() == [-1.0, 2.0]
    # targeted: maximise min(z_t - max_{j!=t} z_j, kappa)
    assert make_objective("margin", y, targeted=True, kappa=None)(logits).tolist() == [1.0, -4.0]
    assert make_objective("margin", y, targeted=True, kappa=0.5)(logits).tolist() == [0.5, -4.0]
    with pytest.raises(ValueError, match="loss"):
        make_objective("hinge", y)


@settings(max_examples=25, deadline=None)
@given(
    distance=st.sampled_from(["linf", "l2", "l2_rms_pixels", "l2_per_value"]),
    update=st.sampled_from(["sign", "normalized", "raw", "adam_sign", "adam"]),
    eps=st.floats(1e-3, 1.0),
    random_start=st.booleans(),
    early_stop=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_any_pgd_configuration_respects_threat_model_and_inputs(distance, update, eps, random_start, early_stop, seed):
    g = torch.Generator().manual_seed(seed)
    model = LinearClassifier(torch.randn(3, 16, generator=g) * 3, torch.zeros(3))
    x = torch.rand(5, *SHAPE, generator=g)
    y = torch.randint(0, 3, (5,), generator=g)
    x0 = x.clone()
    attack = PGD(distance, eps=eps, steps=3, step_size=eps / 2, update=update, random_start=random_start,
                 early_stop=early_stop, seed=seed)
    result = attack(model, x, y)
    assert torch.equal(x, x0)
    assert bool(attack.distance.within(x, result.x_adv, eps, tol=1e-6).all())
    assert torch.equal(result.success, model(result.x_adv).argmax(1) != y)


def _reference_linf_pgd(model, x, y, eps, step_size, steps):
    """The loop a user writes: per-example CE summed, sign step, back into the ball and the box
    (as ``Distance.project``: x + clip(x_adv - x, -eps, eps), then [0, 1]). Returns every iterate."""
    x_adv, iterates = x.clone(), [x.clone()]
    for _ in range(steps):
        x_var = x_adv.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_var), y, reduction="none").sum()
        (grad,) = torch.autograd.grad(loss, x_var)
        delta = torch.maximum(torch.minimum(x_adv + step_size * grad.sign() - x, torch.tensor(eps)),
                              torch.tensor(-eps))
        x_adv = (x + delta).clamp(0.0, 1.0)
        iterates.append(x_adv)
    return iterates


def test_pgd_without_early_stop_is_the_plain_loop_bit_for_bit():
    # Guards the fast path of the active-set loop (no gather/scatter while every example runs):
    # it must give exactly the iterate of the hand-written loop, and the records at that iterate.
    model = small_cnn(seed=3).eval()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(5))
    result = PGD("linf", 0.1, steps=6, step_size=0.02, early_stop=False)(model, x, y)
    expected = _reference_linf_pgd(model, x, y, 0.1, 0.02, 6)[-1]
    assert torch.equal(result.x_adv, expected)
    with torch.no_grad():
        assert torch.equal(result.success, model(expected).argmax(1) != y)
    assert result.steps.tolist() == [6] * 8


def test_pgd_with_early_stop_freezes_each_example_at_its_first_success():
    model = small_cnn(seed=3).eval()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = model(x).argmax(1)
    result = PGD("linf", 0.1, steps=6, step_size=0.001)(model, x, y)
    iterates = _reference_linf_pgd(model, x, y, 0.1, 0.001, 6)
    assert 0 < int(result.success.sum()) < 8  # some broken, some ran out of steps
    assert len(set(result.steps.tolist())) > 2  # broken at different steps
    for i, k in enumerate(result.steps.tolist()):
        # the batch shrinks as examples stop, so compare up to float reassociation of the model
        assert torch.allclose(result.x_adv[i], iterates[k][i], atol=1e-6)
        with torch.no_grad():
            predicted = model(iterates[k][i:i + 1]).argmax(1)
        assert bool(result.success[i]) == bool(predicted != y[i])
        if result.success[i] and k > 0:  # it had not succeeded one step earlier
            with torch.no_grad():
                assert model(iterates[k - 1][i:i + 1]).argmax(1) == y[i]


def test_update_grad_is_refused_with_the_two_names_that_replace_it():
    with pytest.raises(ValueError, match='update: "grad" was renamed.*"raw".*"normalized"'):
        PGD("l2", 0.5, update="grad")


def test_normalized_update_is_the_sign_step_for_linf():
    model, x, y, _ = _linear_setup()
    sign = PGD("linf", 0.1, steps=3, step_size=0.03, update="sign", early_stop=False)(model, x, y)
    normalized = PGD("linf", 0.1, steps=3, step_size=0.03, update="normalized", early_stop=False)(model, x, y)
    assert torch.equal(sign.x_adv, normalized.x_adv)
