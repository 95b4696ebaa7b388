"""Rates of a binary outcome and the comparison of two of them, with intervals (statsmodels).

- one rate: Wilson score interval;
- the difference of two independent rates: Agresti-Caffo interval and its test (p-value),
  which stay defined with no positive on either side;
- the relative lift ``rate / baseline - 1``: the log-adjusted interval of the ratio, minus 1.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    test_proportions_2indep,
)


def _alpha(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}")
    return 1 - confidence


@dataclass(frozen=True)
class Rate:
    """``positives`` out of ``rounds``, with its Wilson interval."""

    positives: int
    rounds: int
    lower: float
    upper: float

    @property
    def value(self) -> float:
        return self.positives / self.rounds

    @classmethod
    def of(cls, positives: int, rounds: int, confidence: float = 0.95) -> Rate:
        """The rate ``positives / rounds`` and its Wilson score interval.

        Raises
        ------
        ValueError
            If ``rounds`` < 1 or ``positives`` is not in [0, rounds].
        """
        if rounds < 1:
            raise ValueError(f"`rounds` must be >= 1, got {rounds}")
        if not 0 <= positives <= rounds:
            raise ValueError(f"`positives` must be in [0, {rounds}], got {positives}")
        lower, upper = proportion_confint(
            positives, rounds, alpha=_alpha(confidence), method="wilson"
        )
        return cls(int(positives), int(rounds), float(lower), float(upper))


@dataclass(frozen=True)
class Comparison:
    """``rate`` against ``baseline``: difference, its p-value, and relative lift."""

    difference: float
    difference_lower: float
    difference_upper: float
    p_value: float
    lift: float  # NaN when the baseline has no positive
    lift_lower: float
    lift_upper: float

    @classmethod
    def of(cls, rate: Rate, baseline: Rate, confidence: float = 0.95) -> Comparison:
        """Compare two independent rates (e.g. two policies' click-through rates)."""
        alpha = _alpha(confidence)
        counts = (rate.positives, rate.rounds, baseline.positives, baseline.rounds)
        with warnings.catch_warnings():
            # statsmodels divides by a zero baseline rate for its (unused) point ratio.
            warnings.simplefilter("ignore", RuntimeWarning)
            diff_low, diff_high = confint_proportions_2indep(
                *counts, method="agresti-caffo", compare="diff", alpha=alpha
            )
            test = test_proportions_2indep(*counts, method="agresti-caffo", compare="diff")
            ratio_low, ratio_high = confint_proportions_2indep(
                *counts, method="log-adjusted", compare="ratio", alpha=alpha
            )
        lift = rate.value / baseline.value - 1 if baseline.positives else math.nan
        return cls(
            rate.value - baseline.value,
            float(diff_low),
            float(diff_high),
            float(test.pvalue),
            lift,
            float(ratio_low) - 1,
            float(ratio_high) - 1,
        )
