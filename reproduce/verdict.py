"""The verdict column of Table 1: what the numbers of a row show, decided on confidence intervals.

Each row measures the defended model's accuracy twice on the same n test examples: under the
defense's own evaluation (the attack its authors ran) and under the adaptive attack (Athalye et
al.'s). Both are binomial proportions with exact 95% Clopper-Pearson intervals; the verdict
compares the intervals, never the point estimates alone:

1. **nothing to break**: the own evaluation already leaves the defense near 0 (the upper end of
   its interval is at most ``NEAR_ZERO`` = 10%): there is no robustness claim for the adaptive
   attack to refute, whatever it measures (0% -> 0% and 2% -> 0% on 100 examples land here).
2. **broken**: the adaptive interval lies entirely below the own-evaluation interval, and entirely
   below the defense's claimed accuracy when the row states one (``RowSpec.claimed_accuracy``;
   without it, the own evaluation is the claim). A significant drop that stays above the claim
   (the whole adaptive interval at or above it) *holds*.
3. **holds**: the intervals overlap and the adaptive point estimate lies inside the own
   interval: the adaptive attack does not measurably lower the defense's own number.
4. **inconclusive**: anything else: the intervals overlap but the adaptive estimate falls below
   the own interval (a drop the sample cannot confirm), or the adaptive interval lies above the
   own one (the adaptive attack is weaker than the defense's own).

Both numbers must be judged by the same rule (Xie et al.'s row: both under "10 of 10 draws"),
which the rows ensure; this module only compares.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from obfgrad.eval import clopper_pearson

NEAR_ZERO = 0.10
VERDICTS = ("nothing to break", "broken", "holds", "inconclusive")


def interval(accuracy: float, n: int, ci: Optional[Sequence[float]] = None) -> Tuple[float, float]:
    """``ci`` when given, else the Clopper-Pearson 95% interval of ``round(accuracy * n)`` of n."""
    if ci is not None:
        lo, hi = float(ci[0]), float(ci[1])
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"ci: expected 0 <= lo <= hi <= 1, got {list(ci)}")
        return lo, hi
    if n < 1:
        raise ValueError(f"n: expected at least one example, got {n}")
    return clopper_pearson(int(round(accuracy * n)), int(n))


def decide(own: float, own_ci: Tuple[float, float], adaptive: float, adaptive_ci: Tuple[float, float],
           claimed: Optional[float] = None) -> str:
    """The verdict (one of :data:`VERDICTS`) for two accuracies and their 95% intervals.

    Example:
        >>> decide(0.60, (0.57, 0.63), 0.41, (0.38, 0.44))
        'broken'
        >>> decide(0.0, (0.0, 0.036), 0.0, (0.0, 0.036))
        'nothing to break'
    """
    own_lo, own_hi = own_ci
    adaptive_lo, adaptive_hi = adaptive_ci
    if own_hi <= NEAR_ZERO:
        return "nothing to break"
    if adaptive_hi < own_lo:  # a significant drop; it breaks the defense unless its claim survives it
        if claimed is None or adaptive_hi < claimed:
            return "broken"
        return "holds" if adaptive_lo >= claimed else "inconclusive"
    overlap = adaptive_lo <= own_hi and own_lo <= adaptive_hi
    if overlap and own_lo <= adaptive <= own_hi:
        return "holds"
    return "inconclusive"


def row_verdict(result: Dict[str, Any], claimed: Optional[float] = None) -> str:
    """:func:`decide` on a row result (``own_attack_accuracy``/``own_attack_ci95``,
    ``adaptive_accuracy``/``adaptive_ci95``, ``n``); a result without ``own_attack_ci95`` gets
    the exact interval of its own accuracy over ``n``."""
    n = int(result["n"])
    own = float(result["own_attack_accuracy"])
    adaptive = float(result["adaptive_accuracy"])
    own_ci = interval(own, n, result.get("own_attack_ci95"))
    adaptive_ci = interval(adaptive, n, result.get("adaptive_ci95"))
    return decide(own, own_ci, adaptive, adaptive_ci, claimed)
