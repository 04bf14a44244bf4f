"""Does a defense's robustness come from obfuscated gradients? An automatic check before any claim.

:func:`diagnose` runs, on a small labelled batch and a threat model (distance, eps), the five
characteristic behaviours of Athalye, Carlini & Wagner (ICML 2018, Sec. 3, "Identifying
obfuscated & masked gradients") and probes of the input gradient itself:

1. one-step vs iterative attack: the iterative attack must not lose;
2. transfer from an undefended surrogate vs white-box: white-box must not lose;
3. unbounded attack: must reach ~100% success;
4. random sampling on the eps-ball: must not find what the gradient attack misses;
5. success vs eps: must rise with eps and reach ~100%;
6. gradient probes: zero / NaN / Inf input gradients; variation across repeated calls
   (stochastic gradients); loss change along the gradient vs along random directions of the
   same size (shattered gradients: no better than random; vanishing: the first-order prediction
   is a vanishing fraction of the real change; exploding: a huge overestimate); and whether
   BPDA (identity through ``preprocess``) or EOT changes the attack's success.

Each check gets a verdict (pass / suspicious / fail, or skipped when it does not apply), the
numbers behind it and a one-line explanation; the evidence names the likely type of obfuscation
(shattered, stochastic, vanishing/exploding) and the remedy the paper prescribes (BPDA, EOT,
reparameterization).

Conventions: every success rate is over the examples the defended model classifies correctly
(an example it already gets wrong says nothing about the attack); success means inside the
threat model and misclassified by the *judge*, the model's prediction averaged over
``budget.judge_samples`` draws when the model is randomized. All attacks are PGD on the
Carlini-Wagner margin (no saturation of the softmax), step ``2.5 * eps / steps`` (Madry et al.).
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from tqdm.auto import tqdm

import obfgrad
from obfgrad._checks import check_float, check_images, check_int, check_tensor
from obfgrad.attacks.eot import EOT
from obfgrad.attacks.inputs import check_labels, check_logits
from obfgrad.attacks.losses import NoGradientError, loss_and_grad, margin
from obfgrad.attacks.pgd import PGD
from obfgrad.distances import L2, Distance, get_distance
from obfgrad.eval.diagnose_report import REMEDIES, CheckResult, DiagnosisReport, Obfuscation
from obfgrad.eval.eps_curve import margin_pgd
from obfgrad.eval.modes import eval_mode
from obfgrad.eval.streams import ROLES, derive_seed, random_stream
from obfgrad.ops.bpda import BPDA

__all__ = ["DiagnoseBudget", "diagnose", "DiagnosisReport", "CheckResult", "Obfuscation"]

Model = Callable[[torch.Tensor], torch.Tensor]

# Thresholds of the gradient probes (documented in the explanations they produce).
_CONSISTENT_COSINE = 0.9  # repeated gradients of a randomized model below this: stochastic
_VANISHING_RATIO = 1e-2  # first-order prediction < 1% of the real loss change: vanishing
_EXPLODING_RATIO = 1e2  # first-order prediction > 100x the real loss change: exploding
_FLAT = 1e-6  # loss changes below this (relative) in every direction: nothing to learn


@dataclass(frozen=True)
class DiagnoseBudget:
    """How much work :func:`diagnose` does.

    Args:
        examples: the first N examples of the batch are used.
        steps: iterations of every iterative attack.
        eps_multiples: the budgets of the success-vs-eps curve, as multiples of eps (1.0 is
            always added); the unbounded attack is appended as the curve's last point.
        random_samples: random points per example and budget (check 4).
        grad_repeats: gradient calls at the same input (stochasticity probe), >= 2.
        judge_samples: draws averaged to judge a randomized model's prediction.
        eot_samples: draws per EOT gradient (remedy probe on randomized models).
        probe_directions: random directions in the loss-change probe.
        surrogate_steps: training steps of the surrogate built when none is given.
        tolerance: success-rate difference that fails a comparison (half of it is suspicious).
        batch_size: examples per forward pass when judging.
    """

    examples: int = 100
    steps: int = 100
    eps_multiples: Tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    random_samples: int = 64
    grad_repeats: int = 8
    judge_samples: int = 8
    eot_samples: int = 10
    probe_directions: int = 8
    surrogate_steps: int = 300
    tolerance: float = 0.05
    batch_size: int = 256

    def validated(self) -> DiagnoseBudget:
        for name in ("examples", "steps", "random_samples", "judge_samples", "eot_samples",
                     "probe_directions", "batch_size"):
            check_int(getattr(self, name), f"budget.{name}", low=1)
        # One call compares nothing: check 6b once said "no non-zero gradient to compare".
        check_int(self.grad_repeats, "budget.grad_repeats", low=2)
        check_int(self.surrogate_steps, "budget.surrogate_steps", low=0)
        check_float(self.tolerance, "budget.tolerance", low=0.0, high=1.0, low_inclusive=False)
        multiples = tuple(float(m) for m in self.eps_multiples)
        if any(not math.isfinite(m) or m <= 0 for m in multiples):
            raise ValueError(f"budget.eps_multiples: expected positive numbers, got {self.eps_multiples}")
        return replace(self, eps_multiples=tuple(sorted(set(multiples) | {1.0})))


# -- model plumbing ------------------------------------------------------------------------------

class _Composed(nn.Module):
    """``classifier(preprocess(x))``: the defended model when the defense is a preprocessing step."""

    def __init__(self, preprocess: Model, classifier: Model):
        super().__init__()
        self.preprocess, self.classifier = preprocess, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.preprocess(x))


class _FiniteGrad(torch.autograd.Function):
    """Identity forward; backward replaces NaN/Inf by 0 so a broken gradient cannot poison an
    attack's iterate (the probes measure the raw gradient separately)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


class _Guarded(nn.Module):
    """A model attacks can always differentiate: a model with no gradient path to its input (e.g.
    a numpy or PIL step inside, or a step cut from the graph before trainable layers) gets an
    all-zero gradient, stated explicitly, instead of an autograd error."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tracked = x.requires_grad and torch.is_grad_enabled()
        logits = self.model(_FiniteGrad.apply(x) if tracked else x)
        if tracked:  # x stays in the graph even where the model cut it out (attacks then see zeros)
            logits = logits + 0.0 * x.flatten(1).sum(dim=1, keepdim=True)
        return logits


def _guard(model: Model) -> Model:
    """``_Guarded(model)``, applied inside an EOT (to each draw) so that attacks keep averaging
    per-draw gradients: an EOT inside another module would only average logits."""
    if isinstance(model, EOT):
        return EOT(_guard(model.model), samples=model.samples, reduction=model.reduction,
                   draws_per_pass=model.draws_per_pass)
    return _Guarded(model)


class _Judge:
    """The defended model's prediction: one call, or the mean softmax over draws if randomized.

    A randomized model is judged with common random numbers: torch's generator is re-seeded with
    the judge's own seed (inside ``fork_rng``, so the caller's stream is untouched) before every
    judgement, so two inputs are compared under the same draws and the comparisons between
    attacks are not drowned in the defense's own noise (randomness from other generators is
    simply averaged). The judge's seed is derived apart from the attacks' and the probes'
    (:mod:`obfgrad.eval.streams`): neither ever sees the draws it judges with."""

    def __init__(self, model: Model, randomized: bool, samples: int, batch_size: int, seed: int):
        self.model, self.randomized = model, randomized
        self.draws = samples if randomized else 1
        self.batch_size, self.seed = batch_size, seed

    @contextlib.contextmanager
    def _draws(self, device: torch.device):
        if not self.randomized:
            yield
            return
        with random_stream(self.seed, device):
            yield

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        chunks = []
        with torch.no_grad(), self._draws(x.device):
            for start in range(0, x.shape[0], self.batch_size):
                xb = x[start:start + self.batch_size]
                probs = sum(torch.softmax(check_logits(self.model(xb), xb.shape[0]).float(), dim=1)
                            for _ in range(self.draws)) / self.draws
                chunks.append(probs.clamp_min(1e-30).log())
        return torch.cat(chunks)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_probs(x).argmax(dim=1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack objective ``-margin`` (per example), averaged over draws."""
        with torch.no_grad(), self._draws(x.device):
            draws = (-margin(check_logits(self.model(x), x.shape[0]).float(), y) for _ in range(self.draws))
            return sum(draws) / self.draws


def _is_randomized(model: Model, x: torch.Tensor) -> bool:
    # NaN logits would compare unequal to themselves and pass for randomness: refused first.
    with torch.no_grad():
        first, second = check_logits(model(x), x.shape[0]), check_logits(model(x), x.shape[0])
    return not torch.equal(first, second)


# -- attacks -------------------------------------------------------------------------------------

@dataclass
class _Setting:
    distance: Distance
    eps: float
    budget: DiagnoseBudget
    randomized: bool
    seed: int
    seeds: Dict[str, int]  # the streams of the roles (obfgrad.eval.streams.ROLES), derived from seed


def _pgd(setting: _Setting, eps: float, one_step: bool = False, high_confidence: bool = False) -> PGD:
    """PGD on the margin with no floor. ``high_confidence`` runs every step (no early stop), pushing
    the margin far past the boundary: what a transfer attack needs to carry over to another model."""
    if one_step:  # FGSM / fast gradient l2: one full-size step
        return PGD(distance=setting.distance, eps=eps, steps=1, step_size=eps, loss="margin", kappa=None,
                   early_stop=False)
    # A randomized model's own verdict at one draw is noise: run every step, judge afterwards.
    return margin_pgd(setting.distance, eps, setting.budget.steps,
                      early_stop=not (setting.randomized or high_confidence))


def _succeeds(judge: _Judge, setting: _Setting, x, x_adv, y, eps: float) -> torch.Tensor:
    within = setting.distance.within(x, x_adv, eps)
    return within & (judge.predict(x_adv) != y)


def _attack_success(model: Model, judge: _Judge, setting: _Setting, x, y, eps: float,
                    one_step: bool = False) -> torch.Tensor:
    x_adv = _pgd(setting, eps, one_step)(model, x, y).x_adv
    return _succeeds(judge, setting, x, x_adv, y, eps)


def _unit_step(distance: Distance, direction: torch.Tensor, eps: float) -> torch.Tensor:
    """A step of size eps along ``direction``: its sign for l-inf, its normalised self for l2."""
    return eps * distance.unit_direction(direction)


def _random_success(judge: _Judge, setting: _Setting, x, y, eps: float, generator) -> torch.Tensor:
    """Any of ``random_samples`` random points on the eps-sphere misclassified (check 4).

    Points on the boundary (l-inf: vertices of the cube) are the strongest random candidates."""
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(setting.budget.random_samples):
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        x_random = (x + _unit_step(setting.distance, noise, eps)).clamp(0.0, 1.0)
        found |= judge.predict(x_random) != y
    return found


def _max_budget(distance: Distance, x: torch.Tensor) -> float:
    """A budget that contains the whole [0, 1] box around any image: the unbounded attack."""
    return float(distance.norm(torch.ones_like(x[:1])).item())


# -- surrogate -----------------------------------------------------------------------------------

def _surrogate_network(channels: int, classes: int) -> nn.Module:
    """Two strided convolutions and a linear read-out of a 4x4 pooled map: any image size."""
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, classes),
    )


def _train_surrogate(judge: _Judge, x: torch.Tensor, eps: float, classes: int, steps: int, seed: int,
                     copies: int = 4, batch_size: int = 128) -> nn.Module:
    """An undefended substitute (Papernot et al. 2017): a small CNN fitted to the defended
    model's labels on the batch and on ``copies`` random eps-perturbations of it (black-box:
    only predictions are used). Minibatch heavy-ball descent, no ``torch.optim`` start-up."""
    generator = torch.Generator().manual_seed(seed)
    noise = (2 * torch.rand((copies,) + tuple(x.shape), generator=generator) - 1).to(x.device, x.dtype)
    pool = torch.cat([x] + [(x + eps * n).clamp(0, 1) for n in noise])
    labels = judge.predict(pool)
    torch.manual_seed(seed)
    network = _surrogate_network(x.shape[1], classes).to(x.device)
    params = list(network.parameters())
    velocity = [torch.zeros_like(p) for p in params]
    for _ in range(steps):
        rows = torch.randperm(pool.shape[0], generator=generator)[:batch_size].to(x.device)
        loss = nn.functional.cross_entropy(network(pool[rows]), labels[rows])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, v, g in zip(params, velocity, grads):
                v.mul_(0.9).add_(g)
                p.sub_(0.05 * v)
    return network.eval()


# -- gradient probes -----------------------------------------------------------------------------

def _raw_gradient(model: Model, x, y) -> Tuple[Optional[torch.Tensor], str]:
    """d(-margin)/dx as the model gives it (NaN/Inf kept), or None with the reason."""
    try:
        _, grad, _ = loss_and_grad(model, x, lambda logits: -margin(logits, y))
    except NoGradientError as error:
        # x is cut from the graph: an output that still depends on trainable weights means a zero
        # input gradient (what an attack differentiating the model gets); no graph at all means
        # no gradient path.
        if error.output_in_graph:
            return torch.zeros_like(x), ""
        return None, str(error).splitlines()[0]
    except RuntimeError as error:  # no gradient path through the model
        return None, str(error).splitlines()[0]
    return grad, ""


def _gradient_probes(model: Model, judge: _Judge, setting: _Setting, x, y, generator) -> Dict[str, Any]:
    budget, distance = setting.budget, setting.distance
    grads, reason = [], ""
    for _ in range(budget.grad_repeats if setting.randomized else 1):
        grad, reason = _raw_gradient(model, x, y)
        if grad is None:
            break
        grads.append(grad)
    if not grads:
        return {"gradient_path": False, "reason": reason}
    first = grads[0].flatten(1)
    finite = [torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0) for g in grads]
    probes: Dict[str, Any] = {
        "gradient_path": True,
        "zero_fraction": float((first == 0).float().mean()),
        "all_zero_examples": float((first == 0).all(dim=1).float().mean()),
        "nan_fraction": float(torch.isnan(first).float().mean()),
        "inf_fraction": float(torch.isinf(first).float().mean()),
        "median_dual_norm": float(_dual_norm(distance, finite[0]).median()),
        "repeat_cosine": _repeat_cosine(finite),
    }
    if setting.randomized:  # does averaging over draws (EOT) make the gradient consistent?
        averaged = EOT(model, samples=budget.eot_samples, draws_per_pass=1)
        eot_grads = [_raw_gradient(averaged, x, y)[0] for _ in range(budget.grad_repeats)]
        probes["eot_repeat_cosine"] = _repeat_cosine([torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
                                                      for g in eot_grads if g is not None])
    probes.update(_loss_change_probe(judge, setting, x, y, torch.stack(finite).mean(dim=0), generator))
    return probes


def _dual_norm(distance: Distance, grad: torch.Tensor) -> torch.Tensor:
    """The first-order loss increase per unit of budget: l1 norm for l-inf, l2 for l2 (scaled)."""
    flat = grad.flatten(1)
    if isinstance(distance, L2):
        return flat.norm(dim=1) / distance.scale(grad.shape)
    return flat.abs().sum(dim=1)


def _repeat_cosine(grads: List[torch.Tensor]) -> Optional[float]:
    """Mean cosine similarity between repeated gradients at the same input (None: one call, or
    all gradients zero)."""
    if len(grads) < 2:
        return None
    flat = torch.stack([g.flatten(1) for g in grads])  # (R, N, D)
    unit = flat / flat.norm(dim=2, keepdim=True).clamp_min(1e-30)
    alive = (flat.norm(dim=2) > 0).all(dim=0)
    if not bool(alive.any()):
        return None
    gram = torch.einsum("rnd,snd->nrs", unit, unit)[alive]
    pairs = len(grads) * (len(grads) - 1)
    return float(((gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)) / pairs).mean())


def _loss_change_probe(judge: _Judge, setting: _Setting, x, y, grad, generator) -> Dict[str, Any]:
    """Loss change of an eps-step along the gradient vs along random directions, and the
    first-order prediction of the gradient step (per example)."""
    distance, eps = setting.distance, setting.eps
    base = judge.loss(x, y)
    x_grad = (x + _unit_step(distance, grad, eps)).clamp(0, 1)
    along_grad = judge.loss(x_grad, y) - base
    predicted = (grad * (x_grad - x)).flatten(1).sum(dim=1)
    along_random = torch.full_like(base, float("-inf"))
    for _ in range(setting.budget.probe_directions):
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        x_random = (x + _unit_step(distance, noise, eps)).clamp(0, 1)
        along_random = torch.maximum(along_random, judge.loss(x_random, y) - base)
    observed = torch.maximum(along_grad.abs(), along_random.abs())
    moving = observed > _FLAT * (1 + base.abs())
    dead = (grad.flatten(1) == 0).all(dim=1)
    vanishing = moving & ~dead & (predicted.abs() < _VANISHING_RATIO * observed)
    exploding = moving & (predicted.abs() > _EXPLODING_RATIO * observed)
    beats = along_grad > along_random
    count = int(moving.sum())
    share = lambda mask: float((mask & moving).sum()) / count if count else None  # noqa: E731
    return {
        "probe_directions": setting.budget.probe_directions,
        "examples_with_loss_change": count,
        "gradient_beats_random": share(beats),
        "vanishing_fraction": share(vanishing),
        "exploding_fraction": share(exploding),
        "median_loss_change_gradient": float(along_grad.median()),
        "median_loss_change_random_best": float(along_random.median()),
        "median_first_order_prediction": float(predicted.median()),
    }


# -- checks --------------------------------------------------------------------------------------

def _compare(name, title, stronger_name, weaker_name, stronger, weaker, tol) -> CheckResult:
    """``stronger`` must not lose to ``weaker`` (success rates)."""
    gap = weaker - stronger
    numbers = {f"{stronger_name}_success": stronger, f"{weaker_name}_success": weaker, "gap": gap}
    if gap > tol:
        verdict = "fail"
    elif gap > tol / 2:
        verdict = "suspicious"
    else:
        verdict = "pass"
    relation = "beats" if gap > 0 else "does not beat"
    explanation = (f"{weaker_name} {weaker:.0%} {relation} {stronger_name} {stronger:.0%}"
                   + (" -- gradients mislead the stronger attack" if verdict == "fail" else ""))
    return CheckResult(name, title, verdict, explanation, numbers)


def _check_unbounded(success: float, eps_max: float, tol: float) -> CheckResult:
    verdict = "pass" if success >= 1 - tol / 2 else "suspicious" if success >= 1 - 2 * tol else "fail"
    explanation = (f"unbounded attack (eps {eps_max:.3g}) reaches {success:.0%}"
                   + ("" if verdict == "pass" else "; an unbounded attack on a differentiable model reaches 100%"))
    return CheckResult("unbounded", "3. unbounded attack reaches ~100%", verdict, explanation,
                       {"eps": eps_max, "success": success})


def _check_random(random_rate: float, random_only: float, gradient_rate: float, tol: float) -> CheckResult:
    verdict = "fail" if random_only > tol else "suspicious" if random_only > tol / 2 else "pass"
    explanation = (f"random sampling breaks {random_rate:.0%}, of which {random_only:.0%} of the examples the "
                   f"gradient attack ({gradient_rate:.0%}) missed")
    return CheckResult("random_sampling", "4. random sampling does not beat gradients", verdict, explanation,
                       {"random_success": random_rate, "random_only": random_only, "gradient_success": gradient_rate})


def _check_curve(grid: List[float], curve: List[float], tol: float) -> CheckResult:
    drops = [a - b for a, b in zip(curve, curve[1:])]
    worst_drop, final = max(drops, default=0.0), curve[-1]
    if worst_drop > tol or final < 1 - 2 * tol:
        verdict = "fail"
    elif worst_drop > tol / 2 or final < 1 - tol / 2:
        verdict = "suspicious"
    else:
        verdict = "pass"
    explanation = (f"success rises {curve[0]:.0%} -> {final:.0%} over eps {grid[0]:.3g}..{grid[-1]:.3g}"
                   + (f", drops by up to {worst_drop:.0%}" if worst_drop > 0 else ""))
    return CheckResult("eps_curve", "5. success rises with eps to ~100%", verdict, explanation,
                       {"eps": grid, "success": curve, "largest_drop": worst_drop})


def _check_gradient_values(probes: Dict[str, Any], tol: float) -> CheckResult:
    title = "6a. gradients exist, non-zero, finite"
    if not probes["gradient_path"]:
        return CheckResult("gradient_values", title, "fail",
                           f"no gradient reaches the input ({probes['reason']})", probes)
    dead, nan, inf = probes["all_zero_examples"], probes["nan_fraction"], probes["inf_fraction"]
    numbers = {k: probes[k] for k in ("zero_fraction", "all_zero_examples", "nan_fraction", "inf_fraction",
                                      "median_dual_norm")}
    if dead >= 0.5 or nan > 0 or inf > 0:
        verdict = "fail"
    elif dead > tol:
        verdict = "suspicious"
    else:
        verdict = "pass"
    explanation = (f"{dead:.0%} of examples have an all-zero input gradient; {probes['zero_fraction']:.0%} of "
                   f"entries are 0, {nan:.1%} NaN, {inf:.1%} Inf")
    return CheckResult("gradient_values", title, verdict, explanation, numbers)


def _check_stochasticity(randomized: bool, probes: Dict[str, Any]) -> CheckResult:
    title = "6b. gradients consistent across calls"
    cosine = probes.get("repeat_cosine")
    if not randomized:
        return CheckResult("gradient_stochasticity", title, "pass", "deterministic model: identical repeated calls",
                           {"randomized": False})
    numbers = {"randomized": True, "repeat_cosine": cosine}
    if cosine is None:
        return CheckResult("gradient_stochasticity", title, "skipped",
                           "randomized model, but no non-zero gradient to compare", numbers)
    eot_cosine = probes.get("eot_repeat_cosine")
    numbers["eot_repeat_cosine"] = eot_cosine
    verdict = "pass" if cosine >= _CONSISTENT_COSINE else "suspicious" if cosine >= 0.5 else "fail"
    with_eot = "" if eot_cosine is None else f", {eot_cosine:.2f} with EOT"
    return CheckResult("gradient_stochasticity", title, verdict,
                       f"randomized model; repeated gradients have mean cosine {cosine:.2f}{with_eot} "
                       f"(stochastic below {_CONSISTENT_COSINE})", numbers)


def _check_loss_direction(probes: Dict[str, Any]) -> CheckResult:
    title = "6c. gradient step beats random steps"
    beats = probes.get("gradient_beats_random")
    keys = ("examples_with_loss_change", "gradient_beats_random", "vanishing_fraction", "exploding_fraction",
            "median_loss_change_gradient", "median_loss_change_random_best", "median_first_order_prediction")
    numbers = {k: probes.get(k) for k in keys}
    if beats is None:
        return CheckResult("gradient_vs_random", title, "skipped",
                           "the loss does not change within eps in any probed direction", numbers)
    vanishing, exploding = probes["vanishing_fraction"], probes["exploding_fraction"]
    if beats < 0.5 or vanishing >= 0.5 or exploding >= 0.5:
        verdict = "fail"
    elif beats < 0.9 or vanishing > 0.1 or exploding > 0.1:
        verdict = "suspicious"
    else:
        verdict = "pass"
    explanation = (f"an eps-step along the gradient beats the best of {probes['probe_directions']} random steps "
                   f"on {beats:.0%}; the "
                   f"first-order prediction vanishes on {vanishing:.0%}, explodes on {exploding:.0%}")
    return CheckResult("gradient_vs_random", title, verdict, explanation, numbers)


def _check_remedies(white_box: float, remedies: Dict[str, float], tol: float) -> CheckResult:
    title = "6d. BPDA / EOT do not change success"
    if not remedies:
        return CheckResult("remedies", title, "skipped",
                           "deterministic model without a preprocess step: no BPDA or EOT to try",
                           {"white_box_success": white_box})
    gains = _remedy_gains(remedies, white_box)
    best = max(gains, key=gains.get)
    verdict = "fail" if gains[best] > tol else "suspicious" if gains[best] > tol / 2 else "pass"
    parts = ", ".join(f"{name} {rate:.0%}" for name, rate in remedies.items())
    return CheckResult("remedies", title, verdict, f"white-box {white_box:.0%} vs {parts}",
                       {"white_box_success": white_box, "success": remedies, "gain": gains})


def _remedy_gains(remedies: Dict[str, float], white_box: float) -> Dict[str, float]:
    """What each remedy adds over the attack it extends: BPDA on a randomized model is compared
    with EOT alone (``bpda+eot`` vs ``eot``), so the noise of single draws is not read as a gain."""
    gains = {name: rate - white_box for name, rate in remedies.items()}
    if "bpda+eot" in remedies and "eot" in remedies:
        gains["bpda"] = remedies["bpda+eot"] - remedies["eot"]
    return gains


def _name_obfuscation(checks: Dict[str, CheckResult], probes: Dict[str, Any], randomized: bool,
                      remedies: Dict[str, float], white_box: float, tol: float) -> List[Obfuscation]:
    shattered, stochastic, vanishing = [], [], []
    if not probes["gradient_path"]:
        shattered.append("no gradient reaches the input")
    else:
        if probes["all_zero_examples"] >= 0.5:
            shattered.append(f"{probes['all_zero_examples']:.0%} of examples have an all-zero gradient")
        if probes["nan_fraction"] > 0:
            shattered.append(f"{probes['nan_fraction']:.1%} NaN gradient entries")
        beats = probes.get("gradient_beats_random")
        mostly_vanishing = (probes.get("vanishing_fraction") or 0) >= 0.5
        if beats is not None and beats < 0.5 and not mostly_vanishing and probes["all_zero_examples"] < 0.5:
            shattered.append(f"the gradient step beats random steps on only {beats:.0%}")
        if mostly_vanishing:
            vanishing.append(f"first-order prediction < {_VANISHING_RATIO:g} x the real loss change on "
                             f"{probes['vanishing_fraction']:.0%}")
        if (probes.get("exploding_fraction") or 0) >= 0.5:
            vanishing.append(f"first-order prediction > {_EXPLODING_RATIO:g} x the real loss change on "
                             f"{probes['exploding_fraction']:.0%}")
        if probes["inf_fraction"] > 0:
            vanishing.append(f"{probes['inf_fraction']:.1%} infinite gradient entries")
    gain = _remedy_gains(remedies, white_box)
    if gain.get("bpda", 0.0) > tol:
        shattered.append(f"BPDA (identity) raises success by {gain['bpda']:.0%}")
    if randomized:
        cosine = probes.get("repeat_cosine")
        if cosine is not None and cosine < _CONSISTENT_COSINE:
            eot_cosine = probes.get("eot_repeat_cosine")
            stochastic.append(f"repeated gradients have mean cosine {cosine:.2f}"
                              + ("" if eot_cosine is None else f" ({eot_cosine:.2f} averaged by EOT)"))
        if gain.get("eot", 0.0) > tol / 2:
            stochastic.append(f"EOT raises success by {gain['eot']:.0%}")
    found = []
    for kind, evidence in (("shattered", shattered), ("stochastic", stochastic),
                           ("vanishing/exploding", vanishing)):
        if evidence:
            found.append(Obfuscation(kind, evidence, REMEDIES[kind]))
    if not found and gain.get("adaptive_model", 0.0) > tol:
        found.append(Obfuscation("shattered", [f"the given adaptive model raises success by "
                                               f"{gain['adaptive_model']:.0%}"], REMEDIES["shattered"]))
    return found


# -- the entry point -----------------------------------------------------------------------------

def _check_inputs(model, x, y, eps, preprocess, surrogate, adaptive_model) -> None:
    for name, value in (("model", model), ("preprocess", preprocess), ("surrogate", surrogate),
                        ("adaptive_model", adaptive_model)):
        if value is not None and not callable(value):
            raise TypeError(f"{name}: expected a callable (an nn.Module), got {type(value).__name__}")
    if model is None:
        raise TypeError("model: expected a callable (an nn.Module), got None")
    check_images(x, "x", allow_empty=False)
    if y is None:
        raise ValueError("y: labels are required (a long tensor of shape (N,)); the checks measure "
                         "misclassification")
    check_tensor(y, "y")
    check_labels(y, "y", x.shape[0], x.device)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(float(eps)) or eps <= 0:
        raise ValueError(f"eps: expected a positive finite budget, got {eps!r}")


def diagnose(model: Model, x: torch.Tensor, y: torch.Tensor, *, distance: Union[str, Distance] = "linf",
             eps: float, surrogate: Optional[Model] = None, preprocess: Optional[Model] = None,
             adaptive_model: Optional[Model] = None, randomized: Optional[bool] = None,
             budget: Optional[DiagnoseBudget] = None, seed: int = 0, progress: bool = True,
             relabel: bool = False) -> DiagnosisReport:
    """Run the obfuscated-gradient checks of Athalye et al. (2018, Sec. 3) on a defended model.

    Args:
        model: the classifier (``x -> logits``); the defended model is ``model(preprocess(x))``
            when ``preprocess`` is given, else ``model`` itself (randomized or not).
        x, y: a labelled batch, images (N, C, H, W) in [0, 1] and labels (N,).
        distance, eps: the threat model (``"linf"``, ``"l2"``, ``"l2_rms_pixels"``, ...).
        surrogate: an undefended classifier for the transfer check; None trains a small
            substitute on the defended model's labels (black-box).
        preprocess: the defense's input transform; enables the BPDA (identity) probe.
        adaptive_model: the model an adaptive attack should differentiate (e.g. with BPDA/EOT
            wrappers), tried as an extra remedy.
        randomized: whether the defense is random; None detects it (two calls differ).
        budget: examples, steps, samples (:class:`DiagnoseBudget`).
        seed: the run's seed; the attacks, the probes and the judge each draw from their own stream
            (:func:`~obfgrad.eval.streams.derive_seed`, in ``report.config["seeds"]``); the caller's
            generator state is restored.
        progress: a tqdm bar over the stages (quiet off a terminal).
        relabel: judge against the defended model's own predictions, not ``y`` (``--dry-run``).

    Returns:
        :class:`DiagnosisReport` (``.to_text()``, ``.to_dict()``, ``.save_json(path)``, ``.plot(path)``).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> x = torch.rand(8, 1, 2, 2)
        >>> y = net(x).argmax(1)
        >>> report = diagnose(net, x, y, eps=0.1, surrogate=net, progress=False,
        ...                   budget=DiagnoseBudget(steps=5, random_samples=2, eps_multiples=(0.5,)))
        >>> report.verdict in ("pass", "suspicious", "obfuscated")
        True
    """
    _check_inputs(model, x, y, eps, preprocess, surrogate, adaptive_model)
    budget, distance, eps = (budget or DiagnoseBudget()).validated(), get_distance(distance), float(eps)
    seed, y = check_int(seed, "seed"), check_labels(y, "y", x.shape[0], x.device)
    x, y = x[:budget.examples].detach(), y[:budget.examples]
    started = time.perf_counter()
    seeds = {role: derive_seed(seed, role) for role in ROLES}
    defended = model if preprocess is None else _Composed(preprocess, model)
    with eval_mode(model, preprocess, surrogate, adaptive_model), random_stream(seeds["attack"], x.device):
        if randomized is None:
            with random_stream(seeds["probe"], x.device):
                randomized = _is_randomized(defended, x[:8])
        setting = _Setting(distance, eps, budget, bool(randomized), seed, seeds)
        judge = _Judge(defended, setting.randomized, budget.judge_samples, budget.batch_size, seeds["judge"])
        n, (x, y) = x.shape[0], _correctly_classified(judge, x, judge.predict(x) if relabel else y)
        report = _run(defended, judge, setting, x, y, surrogate, preprocess, model, adaptive_model, progress)
    report.config.update({"model": type(model).__name__, "distance": distance.name, "eps": eps, "n": n,
                          "n_correct": x.shape[0], "clean_accuracy": x.shape[0] / n, "randomized": setting.randomized,
                          "preprocess": preprocess is not None, "surrogate_given": surrogate is not None,
                          "adaptive_model": adaptive_model is not None, "seed": seed, "seeds": seeds,
                          "budget": asdict(budget)})
    report.meta.update(_meta(time.perf_counter() - started, x.device))
    return report


def _meta(seconds: float, device: torch.device) -> Dict[str, Any]:
    return {"wall_time_s": round(seconds, 2), "obfgrad_version": obfgrad.__version__,
            "torch_version": torch.__version__, "device": str(device), "python": platform.python_version()}


def _correctly_classified(judge, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The examples the defended model classifies correctly (the only ones worth attacking)."""
    correct = judge.predict(x) == y
    if int(correct.sum()) == 0:
        raise ValueError("x, y: the defended model classifies none of the examples correctly; "
                         "nothing to attack (check the labels and the model's input scale)")
    return x[correct], y[correct]


def _remedy_models(defended, setting: _Setting, preprocess, classifier, adaptive_model) -> Dict[str, Model]:
    """The adaptive versions of the defended model the paper would attack."""
    remedies: Dict[str, Model] = {}
    eot = lambda m: EOT(m, samples=setting.budget.eot_samples, draws_per_pass=1)  # noqa: E731
    if preprocess is not None:
        remedies["bpda"] = _guard(_Composed(BPDA(preprocess), classifier))
    if setting.randomized:
        remedies["eot"] = eot(_guard(defended))
        if preprocess is not None:
            remedies["bpda+eot"] = eot(remedies["bpda"])
    if adaptive_model is not None:
        remedies["adaptive_model"] = _guard(adaptive_model)
    return remedies


def _run(defended, judge, setting: _Setting, x, y, surrogate, preprocess, classifier, adaptive_model,
         progress) -> DiagnosisReport:
    budget, eps = setting.budget, setting.eps
    grid = [m * eps for m in budget.eps_multiples] + [_max_budget(setting.distance, x)]
    at_eps = budget.eps_multiples.index(1.0)
    remedy_models = _remedy_models(defended, setting, preprocess, classifier, adaptive_model)
    strongest = next((name for name in ("adaptive_model", "bpda+eot", "bpda", "eot") if name in remedy_models), None)
    stages = 3 + len(grid) + len(remedy_models)
    bar = tqdm(total=stages, desc="diagnose", disable=None if progress else True)
    guarded = _guard(defended)
    try:
        probes, surrogate = _probes_and_surrogate(defended, judge, setting, x, y, surrogate, bar)
        guarded_surrogate = _guard(surrogate)
        bar.set_postfix_str("remedies")
        remedies: Dict[str, float] = {}
        remedy_success: Dict[str, torch.Tensor] = {}
        for name, remedy in remedy_models.items():
            remedy_success[name] = _attack_success(remedy, judge, setting, x, y, eps)
            remedies[name] = float(remedy_success[name].float().mean())
            bar.update(1)
        adaptive = None if strongest is None else (f"adaptive ({strongest})", remedy_models[strongest],
                                                   remedy_success[strongest])
        curves, at = _curves(grid, at_eps, (guarded, guarded_surrogate, adaptive), judge, setting, x, y, bar)
        bar.update(1)
    finally:
        bar.close()
    return _report(setting, grid, at_eps, curves, at, probes, remedies)


def _probes_and_surrogate(defended, judge, setting: _Setting, x, y, surrogate, bar):
    """Check 6-8's gradient probes (their own stream) and, when none is given, a trained surrogate."""
    bar.set_postfix_str("gradient probes")
    with random_stream(setting.seeds["probe"], x.device):  # the probes' own draws of the defense
        probes = _gradient_probes(defended, judge, setting, x, y, torch.Generator().manual_seed(setting.seeds["probe"]))
    bar.update(1)
    if surrogate is None:
        bar.set_postfix_str("training surrogate")
        classes = judge.log_probs(x[:1]).shape[1]
        with random_stream(derive_seed(setting.seed, "surrogate"), x.device):
            surrogate = _train_surrogate(judge, x, setting.eps, classes, setting.budget.surrogate_steps,
                                         derive_seed(setting.seed, "surrogate"))
    bar.update(1)
    return probes, surrogate


def _curves(grid, at_eps, models, judge, setting: _Setting, x, y, bar):
    """Success of each attack at each budget of ``grid``; the per-example successes at ``grid[at_eps]``."""
    guarded, guarded_surrogate, adaptive = models
    sampling = torch.Generator().manual_seed(setting.seeds["attack"])  # check 4's random points
    curves: Dict[str, List[Optional[float]]] = {"one-step": [], "iterative (white-box)": [],
                                                "transfer": [], "random sampling": []}
    if adaptive is not None:
        curves[adaptive[0]] = []
    at: Dict[str, torch.Tensor] = {}
    for index, budget_eps in enumerate(grid):
        bar.set_postfix_str(f"eps {budget_eps:.3g}")
        results = {
            "one-step": _attack_success(guarded, judge, setting, x, y, budget_eps, one_step=True),
            "iterative (white-box)": _attack_success(guarded, judge, setting, x, y, budget_eps),
            "transfer": _succeeds(judge, setting, x,
                                  _pgd(setting, budget_eps, high_confidence=True)(guarded_surrogate, x, y).x_adv,
                                  y, budget_eps),
            "random sampling": _random_success(judge, setting, x, y, budget_eps, sampling),
        }
        if adaptive is not None:
            name, model, success_at_eps = adaptive
            results[name] = (success_at_eps if index == at_eps else
                             _attack_success(model, judge, setting, x, y, budget_eps))
        for name, success in results.items():
            curves[name].append(float(success.float().mean()))
        if index == at_eps:
            at = results
        bar.update(1)
    return curves, at


def _report(setting: _Setting, grid, at_eps, curves, at, probes, remedies) -> DiagnosisReport:
    tol = setting.budget.tolerance
    rate = {name: float(success.float().mean()) for name, success in at.items()}
    white_box = rate["iterative (white-box)"]
    random_only = float((at["random sampling"] & ~at["iterative (white-box)"]).float().mean())
    check_list = [
        _compare("one_step_vs_iterative", "1. iterative beats one-step", "iterative", "one-step",
                 white_box, rate["one-step"], tol),
        _compare("transfer_vs_white_box", "2. white-box beats transfer", "white-box", "transfer",
                 white_box, rate["transfer"], tol),
        _check_unbounded(curves["iterative (white-box)"][-1], grid[-1], tol),
        _check_random(rate["random sampling"], random_only, white_box, tol),
        _check_curve(grid, curves["iterative (white-box)"], tol),
        _check_gradient_values(probes, tol),
        _check_stochasticity(setting.randomized, probes),
        _check_loss_direction(probes),
        _check_remedies(white_box, remedies, tol),
    ]
    checks = {check.name: check for check in check_list}
    obfuscation = _name_obfuscation(checks, probes, setting.randomized, remedies, white_box, tol)
    return DiagnosisReport(checks=check_list, obfuscation=obfuscation, eps_grid=grid, curves=curves,
                           config={"eps_index": at_eps, "probes": probes})
