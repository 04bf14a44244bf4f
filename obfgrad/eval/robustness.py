"""Robust accuracy of a model under an attack, with the robustml threat-model rule.

:func:`evaluate` runs a fixed protocol (AutoAttack-style: one call, one documented number):

1. clean prediction ``predict(x)``;
2. the attack, in batches: ``attack(model, x, y[, target=t])``;
3. the threat-model check of robustml (``Lp.check``, :meth:`Distance.within`): an ``x_adv`` with a
   pixel outside ``[-1e-4, 1 + 1e-4]`` or a distance above ``eps + 1e-4`` is a FAILURE of the
   attack, so that example is judged on its clean prediction;
4. ``adv_correct = predict(x_final) == y``; robust accuracy is their mean, with an exact
   Clopper-Pearson 95% interval.

In targeted mode (the paper's ImageNet rows) the attack succeeds when ``predict(x_final)`` equals
the target; accuracy is still measured against the true label.

Randomness (random starts, EOT draws, stochastic defenses that use torch's global generator) is
seeded per batch from ``(seed, batch index)``, so a batch's outcome does not depend on which
batches ran before it: with ``distributed=True`` the batches are split across the ranks of
``torch.distributed`` and the merged result equals a single-process run. The attack and the
judge (``predict``, on the clean and on the adversarial batch) draw from independent streams,
``seed`` and ``judge_seed`` (:mod:`obfgrad.eval.streams`): a randomized defense is never judged
on the draws the attack saw. The clean and the adversarial predictions of a batch share the
judge's draws (a paired comparison).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

import obfgrad
from obfgrad._checks import SEED_BOUND, check_float, check_images, check_int
from obfgrad.atomic import atomic_write_json
from obfgrad.attacks.inputs import NonFiniteOutputError, check_labels, check_logits
from obfgrad.attacks.result import AttackResult
from obfgrad.distances import Distance, get_distance
from obfgrad.eval.confidence import clopper_pearson
from obfgrad.eval.judging import robustml_rule
from obfgrad.eval.modes import eval_mode
from obfgrad.eval.streams import derive_seed, random_stream

__all__ = ["EvalResult", "evaluate", "RECORD_FIELDS"]

RECORD_FIELDS = ("index", "label", "target", "clean_pred", "adv_pred", "adv_correct", "distance", "steps",
                 "success", "attack_success", "within_threat_model")


def _fraction(count: int, n: int) -> float:
    return count / n if n else float("nan")


@dataclass
class EvalResult:
    """Per-example records of an evaluation and the numbers derived from them.

    Each record is a dict with :data:`RECORD_FIELDS`: ``success`` is the evaluator's verdict
    (inside the threat model AND misclassified / on target), ``attack_success`` the attack's own
    claim, ``adv_correct`` whether the final prediction equals the label.
    """

    records: List[Dict[str, Any]]
    targeted: bool = False
    config: Dict[str, Any] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    #: the attack's ``x_adv`` for every example (N, C, H, W), when ``evaluate(keep_x_adv=True)``;
    #: not part of :meth:`to_dict` (records files hold numbers, not images).
    x_adv: Optional[torch.Tensor] = field(default=None, repr=False, compare=False)

    @property
    def n(self) -> int:
        return len(self.records)

    def _count(self, key: str) -> int:
        return sum(1 for r in self.records if r[key])

    @property
    def clean_correct(self) -> int:
        return sum(1 for r in self.records if r["clean_pred"] == r["label"])

    @property
    def robust_correct(self) -> int:
        return self._count("adv_correct")

    @property
    def clean_accuracy(self) -> float:
        return _fraction(self.clean_correct, self.n)

    @property
    def robust_accuracy(self) -> float:
        return _fraction(self.robust_correct, self.n)

    @property
    def attack_success_rate(self) -> float:
        return _fraction(self._count("success"), self.n)

    @property
    def threat_model_violations(self) -> int:
        return self.n - self._count("within_threat_model")

    @property
    def clean_ci95(self) -> Tuple[float, float]:
        return clopper_pearson(self.clean_correct, self.n)

    @property
    def robust_ci95(self) -> Tuple[float, float]:
        return clopper_pearson(self.robust_correct, self.n)

    def summary(self) -> Dict[str, Any]:
        return {
            "n": self.n,
            "targeted": self.targeted,
            "clean_accuracy": self.clean_accuracy,
            "clean_ci95": list(self.clean_ci95),
            "robust_accuracy": self.robust_accuracy,
            "robust_ci95": list(self.robust_ci95),
            "attack_success_rate": self.attack_success_rate,
            "threat_model_violations": self.threat_model_violations,
        }

    def to_dict(self) -> Dict[str, Any]:
        return {**self.summary(), "config": self.config, "meta": self.meta, "records": self.records}

    def save_json(self, path: Union[str, os.PathLike]) -> None:
        """Write :meth:`to_dict` atomically (a reader never sees a partial file)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> EvalResult:
        return cls(records=list(data["records"]), targeted=bool(data.get("targeted", False)),
                   config=dict(data.get("config", {})), meta=dict(data.get("meta", {})))

    @classmethod
    def load_json(cls, path: Union[str, os.PathLike]) -> EvalResult:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def __repr__(self) -> str:
        lo, hi = self.robust_ci95
        return (f"EvalResult(n={self.n}, clean_accuracy={self.clean_accuracy:.4f}, "
                f"robust_accuracy={self.robust_accuracy:.4f} [{lo:.4f}, {hi:.4f}], "
                f"attack_success_rate={self.attack_success_rate:.4f})")


def argmax_predictor(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """``inputs -> model(inputs).argmax(1)`` without autograd (one call: one draw of a randomized model)."""
    def predict(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # argmax of NaN logits is an arbitrary class: refuse them
            return check_logits(model(inputs), inputs.shape[0]).argmax(dim=1)
    return predict


def _checked_predictions(predict, inputs: torch.Tensor) -> torch.Tensor:
    """``predict(inputs)``: one integer class per example, on the inputs' device."""
    labels = predict(inputs)
    if not isinstance(labels, torch.Tensor) or labels.shape != (inputs.shape[0],) \
            or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"predict: expected integer class labels of shape ({inputs.shape[0]},), got {got} "
                         "(predict returns labels, e.g. model(v).argmax(1), not logits)")
    return labels.to(inputs.device)


def _check_callables(model, attack, predict) -> None:
    if not callable(attack):
        raise TypeError(f"attack: expected a callable attack(model, x, y, target=None), got {type(attack).__name__}")
    if not callable(model):
        raise TypeError(f"model: expected a callable x -> logits (an nn.Module), got {type(model).__name__}")
    if predict is not None and not callable(predict):
        raise TypeError(f"predict: expected a callable inputs -> labels or None, got {type(predict).__name__}")


def _check_attack_result(result, xb: torch.Tensor) -> AttackResult:
    if not isinstance(result, AttackResult):
        raise TypeError(f"attack: expected it to return an AttackResult, got {type(result).__name__}")
    if result.x_adv.shape != xb.shape:
        raise ValueError(f"attack: returned x_adv of shape {tuple(result.x_adv.shape)}, expected {tuple(xb.shape)}")
    if not bool(torch.isfinite(result.x_adv.detach()).all()):
        raise ValueError("attack: returned an x_adv with NaN or Inf values")
    return result


def _batch_records(start, xb, yb, tb, result, clean_pred, distance: Distance, eps, predict, targeted):
    x_adv = result.x_adv.detach().to(xb.device)
    x_final, within = robustml_rule(xb, x_adv, distance, eps)
    # A violation is an attack failure: judge the example on its clean prediction.
    adv_pred = torch.where(within, _checked_predictions(predict, x_final), clean_pred)
    reached = adv_pred == tb if targeted else adv_pred != yb
    columns = {  # one device-to-host copy per column, not one per example
        "label": yb.tolist(),
        "target": tb.tolist() if targeted else [None] * xb.shape[0],
        "clean_pred": clean_pred.tolist(),
        "adv_pred": adv_pred.tolist(),
        "adv_correct": (adv_pred == yb).tolist(),
        "distance": distance(xb, x_adv).tolist(),
        "steps": result.steps.tolist(),
        "success": (reached & within).tolist(),
        "attack_success": result.success.tolist(),
        "within_threat_model": within.tolist(),
    }
    records = []
    for i in range(xb.shape[0]):
        record = {"index": start + i}
        record.update({name: values[i] for name, values in columns.items()})
        records.append(record)
    return records




def _seeded(seed: int, device: torch.device):
    """torch's global generators seeded with ``seed`` for the body, restored afterwards."""
    return random_stream(seed, device)


@contextlib.contextmanager
def _naming_the_batch(index: int, start: int, size: int):
    """Non-finite model outputs are reported with the evaluation batch they came from."""
    try:
        yield
    except NonFiniteOutputError as error:
        raise NonFiniteOutputError(f"{error} [evaluate: batch {index}, examples {start}..{start + size - 1} of x]") \
            from error


def _shard(distributed: bool) -> Tuple[int, int]:
    """(rank, world size) of this process's share of the batches."""
    if not distributed:
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed: torch.distributed has no process group (start with torchrun and "
                         "call torch.distributed.init_process_group first)")
    return dist.get_rank(), dist.get_world_size()


def _gather_batches(local: List[Tuple[int, List[Dict[str, Any]], Optional[torch.Tensor]]], world: int):
    """Every rank's (batch index, records, x_adv) triples, on every rank, in batch order."""
    if world > 1:
        shares: List[Any] = [None] * world
        dist.all_gather_object(shares, [(i, r, None if a is None else a.cpu()) for i, r, a in local])
        local = [batch for share in shares for batch in share]
    return sorted(local, key=lambda batch: batch[0])


def _checked_labels(x: torch.Tensor, y, targets) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    check_images(x, "x", allow_empty=False)
    y = check_labels(y, "y", x.shape[0], x.device)
    if targets is not None:
        targets = check_labels(targets, "targets", x.shape[0], x.device)
        if bool((targets == y).any()):
            raise ValueError("targets: every target must differ from its label y")
    return y, targets


def _stream_seeds(seed: Optional[int], judge_seed: Optional[int], n_batches: int) -> Tuple[int, int]:
    """The attack's and the judge's base seeds. Drawn on every rank alike (same global generator
    state), before any rank-specific work."""
    seed = int(torch.randint(0, SEED_BOUND, ())) if seed is None else check_int(seed, "seed", low=0,
                                                                                high=SEED_BOUND - 1)
    judge_seed = derive_seed(seed, "judge") if judge_seed is None else check_int(
        judge_seed, "judge_seed", low=0, high=SEED_BOUND - 1)
    if abs(judge_seed - seed) < n_batches:  # batch b uses base + b: nearby bases share batch seeds
        raise ValueError(f"judge_seed: must differ from seed by at least the number of batches ({n_batches}), "
                         f"got seed {seed} and judge_seed {judge_seed} (the judge never replays the attack's draws)")
    return seed, judge_seed


def _evaluate_batch(model, attack, predict, where, xb, yb, tb, threat, seeds):
    """One batch: the judge's clean prediction, the attack (its own stream), the judge's verdicts."""
    (index, start), (distance, eps), (seed, judge_seed) = where, threat, seeds
    with _seeded(judge_seed + index, xb.device), _naming_the_batch(index, start, xb.shape[0]):
        clean_pred = _checked_predictions(predict, xb)
    with _seeded(seed + index, xb.device), _naming_the_batch(index, start, xb.shape[0]):
        result = attack(model, xb, yb, target=tb) if tb is not None else attack(model, xb, yb)
        result = _check_attack_result(result, xb)
    with _seeded(judge_seed + index, xb.device), _naming_the_batch(index, start, xb.shape[0]):
        records = _batch_records(start, xb, yb, tb, result, clean_pred, distance, eps, predict, tb is not None)
    return records, result.x_adv.detach()


def _meta(seconds: float, device: torch.device, world: int) -> Dict[str, Any]:
    return {"wall_time_s": seconds, "obfgrad_version": obfgrad.__version__, "torch_version": torch.__version__,
            "device": str(device), "python": platform.python_version(), "machine": platform.machine(),
            "world_size": world}


def evaluate(model, attack, x: torch.Tensor, y: torch.Tensor, *, distance: Union[str, Distance], eps: float,
             targets: Optional[torch.Tensor] = None, batch_size: int = 128,
             predict: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
             progress: bool = True, seed: Optional[int] = None, keep_x_adv: bool = False,
             distributed: bool = False, judge_seed: Optional[int] = None) -> EvalResult:
    """Clean and robust accuracy of ``model`` under ``attack`` within ``distance(x, x_adv) <= eps``.

    Args:
        model: the model handed to the attack (``x -> logits``); put in eval mode for the run.
        attack: a callable ``attack(model, x, y, target=None) -> AttackResult`` (PGD, C&W, ...).
        x, y: images (N, C, H, W) in [0, 1] and labels (N,).
        distance, eps: the threat model checked on every x_adv (robustml rule).
        targets: target classes (N,) for a targeted evaluation (see :func:`random_targets`).
        batch_size: examples per attack call.
        predict: ``inputs -> predicted labels``; default argmax of ``model(inputs)``. Pass e.g.
            ``lambda v: EOT(model, 10)(v).argmax(1)`` for a randomised model.
        progress: a tqdm bar over the batches (quiet off a terminal; only on rank 0).
        seed: base seed of the attack: batch ``b`` is attacked with torch's global generators
            seeded ``seed + b`` (restored afterwards). None draws the base from torch's global
            generator (one draw).
        judge_seed: base seed of the judge: ``predict`` runs on batch ``b`` (clean and
            adversarial) with the generators seeded ``judge_seed + b``; None derives it from
            ``seed`` (``derive_seed(seed, "judge")``), independent of the attack's stream.
        keep_x_adv: also return the attack's ``x_adv`` of every example (``EvalResult.x_adv``).
        distributed: split the batches across the ranks of torch.distributed's default group
            (rank ``r`` of ``W`` attacks batches ``r, r + W, ...``) and all-gather the records; every
            rank must call ``evaluate`` with the same arguments and gets the merged result, equal
            to a single-process run.

    Returns:
        :class:`EvalResult` with per-example records.
    """
    distance = get_distance(distance)
    eps = check_float(eps, "eps", low=0.0, low_inclusive=False)
    y, targets = _checked_labels(x, y, targets)
    targeted = targets is not None
    batch_size = check_int(batch_size, "batch_size", low=1)
    _check_callables(model, attack, predict)
    predict = predict if predict is not None else argmax_predictor(model)
    rank, world = _shard(distributed)
    seed, judge_seed = _stream_seeds(seed, judge_seed, n_batches=-(-x.shape[0] // batch_size))

    started = time.perf_counter()
    batches = list(enumerate(range(0, x.shape[0], batch_size)))[rank::world]
    local = []
    with eval_mode(model):
        for index, start in tqdm(batches, desc="evaluate", disable=None if progress and rank == 0 else True):
            part = slice(start, start + batch_size)
            records, x_adv = _evaluate_batch(model, attack, predict, (index, start), x[part], y[part],
                                             targets[part] if targeted else None, (distance, eps), (seed, judge_seed))
            local.append((index, records, x_adv if keep_x_adv else None))
    merged = _gather_batches(local, world)

    config = {"distance": distance.name, "eps": eps, "targeted": targeted, "batch_size": batch_size,
              "attack": repr(attack), "model": type(model).__name__, "seed": seed, "judge_seed": judge_seed}
    meta = _meta(time.perf_counter() - started, x.device, world)
    x_adv = torch.cat([a for _, _, a in merged]).to(x.device) if keep_x_adv and merged else None
    return EvalResult(records=[r for _, batch, _ in merged for r in batch], targeted=targeted, config=config,
                      meta=meta, x_adv=x_adv)
