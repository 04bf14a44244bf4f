"""The random streams a row's result records (issue 14, item 2): every evaluation names its
attack's seed and its judge's; a judge must never replay an attack's stream."""

from typing import Any, Set, Tuple


def recorded_seeds(result: Any) -> Tuple[Set[int], Set[int]]:
    """(attack seeds, judge seeds) found anywhere in a row result: ``{"seeds": {"attack", "judge"}}``
    of every evaluation and every extra judge's ``judge_seed`` (Xie's 10-of-10, SAP's vote)."""
    attacks, judges = set(), set()
    if isinstance(result, dict):
        for key, value in result.items():
            if key == "seeds":
                attacks.add(value["attack"])
                judges.add(value["judge"])
            elif key == "judge_seed":
                judges.add(value)
            else:
                found = recorded_seeds(value)
                attacks |= found[0]
                judges |= found[1]
    elif isinstance(result, list):
        for value in result:
            found = recorded_seeds(value)
            attacks |= found[0]
            judges |= found[1]
    return attacks, judges
