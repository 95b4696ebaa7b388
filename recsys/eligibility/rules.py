"""``rule``: the offer's eligibility rules on customer features (``feature op value``).

The operators are defined here, once. A customer without the feature (or with a missing
value) does not satisfy a rule, and a rule comparing a number with a text excludes (a
catalogue mistake, reported by ``recsys data validate``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from recsys.catalog import EligibilityRule
from recsys.eligibility.base import (
    Check,
    CheckOutcome,
    EligibilityCheck,
    EligibilityInput,
    Removal,
    everyone,
)

OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda actual, allowed: actual in allowed,
    "not_in": lambda actual, allowed: actual not in allowed,
}


def rule_holds(rule: EligibilityRule, actual: Any) -> bool:
    """Whether one customer value satisfies ``rule``."""
    if actual is None or (isinstance(actual, float) and math.isnan(actual)):
        return False
    try:
        return bool(OPERATORS[rule.op](actual, rule.value))
    except TypeError:
        return False


def rule_holds_many(rule: EligibilityRule, values: np.ndarray) -> np.ndarray:
    """:func:`rule_holds` of every value, shape (n,) -> (n,) bool, evaluated once per
    distinct value (values of one hash class, ``1``, ``1.0``, ``True``, compare alike)."""
    items = values.tolist()
    codes: dict[Any, int] = {}
    try:
        index = [codes.setdefault(v, len(codes)) for v in items]
    except TypeError:  # unhashable values: one by one
        return np.fromiter((rule_holds(rule, v) for v in items), dtype=bool, count=len(items))
    table = np.fromiter((rule_holds(rule, v) for v in codes), dtype=bool, count=len(codes))
    return table[np.asarray(index, dtype=np.intp)] if items else np.zeros(0, dtype=bool)


class Rules(EligibilityCheck):
    name = Check.RULE

    def run(self, inp: EligibilityInput) -> CheckOutcome:
        n, m = inp.shape
        offers = inp.offers
        if not offers.rules:
            return CheckOutcome(np.ones((n, m), dtype=bool), everyone(n))
        failed = np.column_stack(
            [~rule_holds_many(rule, inp.features.column(rule.feature)) for rule in offers.rules]
        ).reshape(n, len(offers.rules))
        blocked = (failed.astype(np.int32) @ offers.rule_offers.astype(np.int32)) > 0
        ids = offers.offer_ids

        def explain(i: int) -> tuple[Removal, ...]:
            return tuple(
                Removal(self.name, tuple(ids[offers.rule_offers[r]].tolist()), rule.describe())
                for r, rule in enumerate(offers.rules)
                if failed[i, r]
            )

        return CheckOutcome(~blocked, everyone(n), explain=explain)
