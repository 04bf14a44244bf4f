"""Binomial confidence intervals for accuracies measured on n examples.

* :func:`clopper_pearson` -- the exact interval (Clopper & Pearson, Biometrika 1934): the
  smallest/largest p whose binomial tail probability at the observed k is alpha/2. Uses scipy's
  beta quantiles when scipy is importable, else bisection on the binomial CDF (pure Python).
* :func:`wilson` -- the score interval (Wilson, JASA 1927); needs only the normal quantile,
  taken from the standard library.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Dict, Tuple

import torch

from obfgrad._checks import check_float, check_int

__all__ = ["clopper_pearson", "wilson", "binomial_cdf", "paired_sign_test", "stronger_attack_comparison",
           "stuck_attack_reading"]

try:  # optional: faster and exact to machine precision
    from scipy.stats import beta as _scipy_beta
except ImportError:  # pragma: no cover - exercised by forcing the fallback in tests
    _scipy_beta = None


def _check_counts(k: int, n: int, level: float) -> None:
    check_int(n, "n", low=0)
    check_int(k, "k", low=0, high=n)
    check_float(level, "level", low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``, summed in log space (stable for n in the 1e5s)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
                 for i in range(k + 1)]
    peak = max(log_terms)
    return min(1.0, math.exp(peak) * sum(math.exp(t - peak) for t in log_terms))


def _bisect_decreasing(fn, target: float, iterations: int = 200) -> float:
    """The p in [0, 1] with ``fn(p) = target`` for ``fn`` decreasing in p."""
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if fn(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def _clopper_pearson_bisection(k: int, n: int, alpha: float) -> Tuple[float, float]:
    # lower: P(X >= k | p) = alpha/2, i.e. cdf(k-1; p) = 1 - alpha/2 (cdf decreases in p)
    lower = 0.0 if k == 0 else _bisect_decreasing(lambda p: binomial_cdf(k - 1, n, p), 1 - alpha / 2)
    # upper: P(X <= k | p) = alpha/2
    upper = 1.0 if k == n else _bisect_decreasing(lambda p: binomial_cdf(k, n, p), alpha / 2)
    return lower, upper


def clopper_pearson(k: int, n: int, level: float = 0.95, *, use_scipy: bool = True) -> Tuple[float, float]:
    """Exact two-sided interval for a binomial proportion with ``k`` successes in ``n`` trials.

    ``(0, 1)`` when ``n == 0``.

    Example:
        >>> lo, hi = clopper_pearson(0, 10)
        >>> lo, round(hi, 4)
        (0.0, 0.3085)
    """
    _check_counts(k, n, level)
    if n == 0:
        return 0.0, 1.0
    alpha = 1.0 - level
    if use_scipy and _scipy_beta is not None:
        lower = 0.0 if k == 0 else float(_scipy_beta.ppf(alpha / 2, k, n - k + 1))
        upper = 1.0 if k == n else float(_scipy_beta.ppf(1 - alpha / 2, k + 1, n - k))
        return lower, upper
    return _clopper_pearson_bisection(k, n, alpha)


def wilson(k: int, n: int, level: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval; ``(0, 1)`` when ``n == 0``.

    Example:
        >>> [round(v, 4) for v in wilson(5, 10)]
        [0.2366, 0.7634]
    """
    _check_counts(k, n, level)
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_sign_test(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar test: the p-value of ``only_first`` against ``only_second`` discordant
    pairs under equal chances (1.0 when there are none).

    Example:
        >>> paired_sign_test(0, 0), round(paired_sign_test(9, 1), 4)
        (1.0, 0.0215)
    """
    for name, value in (("only_first", only_first), ("only_second", only_second)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected a count >= 0, got {value!r}")
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    return min(1.0, 2.0 * binomial_cdf(min(only_first, only_second), discordant, 0.5))


def stronger_attack_comparison(main_correct, stronger_correct, alpha: float = 0.05) -> Dict[str, Any]:
    """Is an attack stuck? Per-example verdicts (True: still classified correctly) of the same
    examples under a main attack and a stronger one, judged on the same draws: the discordant
    pairs (``broken_only_by_control``: the stronger attack breaks, the main one does not;
    ``broken_only_by_main``: the reverse), their :func:`paired_sign_test` p-value and the
    :func:`stuck_attack_reading`."""
    main, stronger = torch.as_tensor(main_correct).bool(), torch.as_tensor(stronger_correct).bool()
    if main.shape != stronger.shape or main.dim() != 1:
        raise ValueError(f"main_correct, stronger_correct: expected two vectors of one shape, got "
                         f"{tuple(main.shape)} and {tuple(stronger.shape)}")
    more, fewer = int((main & ~stronger).sum()), int((stronger & ~main).sum())
    p_value = paired_sign_test(more, fewer)
    return {"broken_only_by_control": more, "broken_only_by_main": fewer, "paired_sign_test_p": p_value,
            "reading": stuck_attack_reading(more, fewer, p_value, alpha)}


def stuck_attack_reading(more: int, fewer: int, p: float, alpha: float = 0.05) -> str:
    """What the paired comparison says: the stronger attack breaks significantly more of the same
    examples (the main attack is stuck), or it does not (the residual is not the attack's budget)."""
    if p < alpha and more > fewer:
        return (f"stuck attack: the stronger attack breaks {more} examples the main attack leaves, and leaves "
                f"{fewer} it breaks (p = {p:.2g} < {alpha:g})")
    return (f"not a stuck attack: more draws, steps and a fresh start break {more} examples the main attack "
            f"leaves, and leave {fewer} it breaks (p = {p:.2g}); the residual reads as robustness of the "
            "defended model at this eps")
