"""Evaluation: robust accuracy under the robustml threat-model rule, confidence intervals, targets,
and the obfuscated-gradient diagnosis (Athalye et al. 2018, Section 3)."""

from obfgrad.eval.confidence import clopper_pearson, wilson
from obfgrad.eval.diagnose import DiagnoseBudget, DiagnosisReport, diagnose
from obfgrad.eval.eps_curve import EpsCurve, accuracy_vs_eps, margin_pgd
from obfgrad.eval.judging import (
    accuracy_summary,
    correct_in_any_draw,
    correct_or_detected,
    judged_inputs,
    robustml_rule,
    vote_correct,
)
from obfgrad.eval.modes import eval_mode
from obfgrad.eval.robustness import EvalResult, argmax_predictor, evaluate
from obfgrad.eval.streams import derive_seed, random_stream
from obfgrad.eval.targets import random_targets

__all__ = ["evaluate", "EvalResult", "clopper_pearson", "wilson", "random_targets", "diagnose",
           "DiagnoseBudget", "DiagnosisReport", "accuracy_vs_eps", "EpsCurve", "margin_pgd", "argmax_predictor",
           "derive_seed", "random_stream", "eval_mode", "robustml_rule", "judged_inputs", "correct_in_any_draw",
           "vote_correct", "correct_or_detected", "accuracy_summary"]
