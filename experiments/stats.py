"""The statistics of an experiment readout, on sufficient statistics per arm (scipy, statsmodels).

Every metric is a ratio ``sum(y) / sum(n)`` over the units of an arm (the randomisation unit:
a customer or a caller-supplied unit id): acceptance per decision has ``y`` = accepted
decisions and ``n`` = decisions of the unit; a per-unit metric (revenue per customer) has
``n = 1``. An arm is summarised by :class:`Moments` (sums of ``y, n, x`` and their products
over units, ``x`` the unit's pre-period value of the same quantity), so the warehouse
aggregates in SQL and nothing here loops over units.

- Ratio metrics: delta method on the linearised unit values ``(y - R n) / mean(n)``
  (Deng, Knoblich & Lu 2018, "Applying the delta method in metric analytics").
- CUPED: the linearised value minus ``theta (x - mean x)``, ``theta`` pooled over the arms
  (Deng, Xu, Kohavi & Walker 2013, WSDM).
- Fixed-horizon interval of a difference: Welch's t with Welch-Satterthwaite degrees of
  freedom (for a per-unit mean it is statsmodels' ``CompareMeans.tconfint_diff(usevar=
  "unequal")``); relative lift ``B / A - 1`` by the delta method with a normal quantile.
- Always-valid confidence sequence: the asymptotic confidence sequence of Waudby-Smith,
  Arbour, Sinha, Kennedy & Ramdas (2024, Annals of Statistics; arXiv:2103.06476, "Time-uniform
  central limit theory and asymptotic confidence sequences"), with the two-sided normal-mixture
  boundary of Howard, Ramdas, McAuliffe & Sekhon (2021, Annals of Statistics, "Time-uniform,
  nonparametric, nonasymptotic confidence sequences", eq. (14)) tuned to be tightest at a
  planned number of units. Its coverage holds at every peek at once.
- Sample-ratio mismatch: Pearson's chi-square of the units per arm against the planned shares
  (``scipy.stats.chisquare``).
- Secondary metrics: Holm (or Benjamini-Hochberg) adjustment
  (``statsmodels.stats.multitest.multipletests``).
- Power: ``statsmodels.stats.power.NormalIndPower`` on the standardised effect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower

#: p-value under which the split of units is declared broken (as GrowthBook, Eppo, Statsig).
SRM_ALARM_P = 0.001


@dataclass(frozen=True)
class Moments:
    """Sums over the units of one arm: ``units``, and of ``y, n, x`` and their products.

    ``x`` is the unit's pre-period covariate (0 when it has none).
    """

    units: float
    n: float
    nn: float
    y: float
    yy: float
    yn: float
    x: float = 0.0
    xx: float = 0.0
    xy: float = 0.0
    xn: float = 0.0

    @classmethod
    def of_units(
        cls,
        y: np.ndarray,
        n: np.ndarray | None = None,
        x: np.ndarray | None = None,
    ) -> Moments:
        """The moments of per-unit arrays ``y``, ``n`` (default 1 each: a per-unit metric), ``x``.

        Raises
        ------
        ValueError
            If the arrays differ in length.
        """
        y = np.asarray(y, dtype=float)
        n = np.ones_like(y) if n is None else np.asarray(n, dtype=float)
        x = np.zeros_like(y) if x is None else np.asarray(x, dtype=float)
        if not len(y) == len(n) == len(x):
            raise ValueError(
                f"`y`, `n` and `x` must have one value per unit, got lengths "
                f"{len(y)}, {len(n)}, {len(x)}"
            )
        return cls(
            units=float(len(y)),
            n=float(n.sum()),
            nn=float(n @ n),
            y=float(y.sum()),
            yy=float(y @ y),
            yn=float(y @ n),
            x=float(x.sum()),
            xx=float(x @ x),
            xy=float(x @ y),
            xn=float(x @ n),
        )

    def __add__(self, other: Moments) -> Moments:
        return Moments(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def ratio(self) -> float:
        return self.y / self.n if self.n else math.nan

    def _cov(self, ab: float, a: float, b: float) -> float:
        """Sample covariance (ddof 1) of two per-unit quantities from their sums."""
        u = self.units
        return (ab - a * b / u) / (u - 1) if u > 1 else math.nan

    def linearised(self) -> tuple[float, float, float]:
        """Var of the linearised unit value ``l = (y - R n) / mean(n)``, cov(l, x), var(x)."""
        r = self.ratio
        mean_n = self.n / self.units
        var_y = self._cov(self.yy, self.y, self.y)
        var_n = self._cov(self.nn, self.n, self.n)
        cov_yn = self._cov(self.yn, self.y, self.n)
        var_l = (var_y - 2 * r * cov_yn + r * r * var_n) / mean_n**2
        cov_lx = (self._cov(self.xy, self.x, self.y) - r * self._cov(self.xn, self.x, self.n)) / (
            mean_n
        )
        var_x = self._cov(self.xx, self.x, self.x)
        return max(var_l, 0.0), cov_lx, max(var_x, 0.0)


@dataclass(frozen=True)
class ArmEstimate:
    """One arm's metric: the (CUPED-adjusted) ratio, its variance, and the unadjusted ones."""

    units: int
    denominator: float
    value: float
    variance: float  # of ``value``
    raw_value: float
    raw_variance: float

    @property
    def variance_reduction(self) -> float:
        """``1 - adjusted variance / unadjusted variance`` (0 without CUPED)."""
        if not self.raw_variance:
            return 0.0
        return 1 - self.variance / self.raw_variance


def cuped_theta(arms: Sequence[Moments]) -> float:
    """The CUPED coefficient ``cov(l, x) / var(x)`` pooled over ``arms`` (0 when x is constant)."""
    cov = 0.0
    var = 0.0
    for m in arms:
        if m.units < 2:
            continue
        _, cov_lx, var_x = m.linearised()
        cov += (m.units - 1) * cov_lx
        var += (m.units - 1) * var_x
    return cov / var if var > 1e-12 else 0.0


def estimate_arms(arms: Sequence[Moments], cuped: bool = True) -> list[ArmEstimate]:
    """Each arm's ratio with its delta-method variance, CUPED-adjusted when ``cuped``.

    The adjustment subtracts ``theta (mean x of the arm - mean x of all arms)``, so arms with
    the same pre-period behaviour are not moved and the estimate stays unbiased.

    Raises
    ------
    ValueError
        If an arm has fewer than 2 units or no denominator.
    """
    for i, m in enumerate(arms):
        if m.units < 2 or m.n <= 0:
            raise ValueError(
                f"`arms[{i}]` must have at least 2 units and a positive denominator, "
                f"got {m.units:.0f} units and denominator {m.n}"
            )
    theta = cuped_theta(arms) if cuped else 0.0
    pooled_x = sum(m.x for m in arms) / sum(m.units for m in arms)
    out = []
    for m in arms:
        var_l, cov_lx, var_x = m.linearised()
        raw_var = var_l / m.units
        adj_var = max(var_l - 2 * theta * cov_lx + theta**2 * var_x, 0.0) / m.units
        value = m.ratio - theta * (m.x / m.units - pooled_x)
        out.append(ArmEstimate(int(m.units), m.n, value, adj_var, m.ratio, raw_var))
    return out


@dataclass(frozen=True)
class Interval:
    lower: float
    upper: float

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper

    def excludes_zero(self) -> bool:
        return self.lower > 0 or self.upper < 0


@dataclass(frozen=True)
class Lift:
    """Treatment against control: absolute and relative differences with both intervals."""

    absolute: float
    absolute_se: float
    relative: float
    relative_se: float
    fixed: Interval  # Welch interval of the absolute difference
    fixed_relative: Interval
    p_value: float  # Welch's two-sided test of no difference
    sequence: Interval  # always-valid confidence sequence of the absolute difference
    sequence_relative: Interval


def welch(
    treatment: ArmEstimate, control: ArmEstimate, alpha: float = 0.05
) -> tuple[Interval, float]:
    """Welch's interval of ``treatment - control`` and its two-sided p-value."""
    diff = treatment.value - control.value
    var_t, var_c = treatment.variance, control.variance
    se = math.sqrt(var_t + var_c)
    if se == 0:
        return Interval(diff, diff), (1.0 if diff == 0 else 0.0)
    df = (var_t + var_c) ** 2 / (var_t**2 / (treatment.units - 1) + var_c**2 / (control.units - 1))
    q = float(sps.t.ppf(1 - alpha / 2, df))
    p = float(2 * sps.t.sf(abs(diff) / se, df))
    return Interval(diff - q * se, diff + q * se), p


def normal_mixture_radius(
    se: float, samples: float, alpha: float = 0.05, planned: float = 10_000
) -> float:
    """Half-width of the asymptotic confidence sequence at ``samples`` units.

    Two-sided normal-mixture boundary of Howard et al. (2021), eq. (14), applied to the
    asymptotic confidence sequence of Waudby-Smith et al. (2024), Theorem 2.2: with ``sigma``
    the per-unit standard deviation of the estimator (``se * sqrt(samples)``) and
    ``rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / planned`` (tightest at ``planned``
    units), the radius is ``sigma * sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1)
    / alpha))`` at ``t`` units.

    Raises
    ------
    ValueError
        If ``alpha`` is not in (0, 1) or ``planned`` / ``samples`` is not positive.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha}")
    if planned <= 0 or samples <= 0:
        raise ValueError(f"`planned` and `samples` must be > 0, got {planned} and {samples}")
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / planned
    t = samples
    sigma = se * math.sqrt(t)
    return sigma * math.sqrt(
        2 * (t * rho2 + 1) / (t * t * rho2) * math.log(math.sqrt(t * rho2 + 1) / alpha)
    )


def lift(
    treatment: ArmEstimate,
    control: ArmEstimate,
    alpha: float = 0.05,
    planned_units: float = 10_000,
) -> Lift:
    """Compare ``treatment`` with ``control``: fixed-horizon and always-valid intervals.

    Relative lift ``treatment / control - 1`` by the delta method (independent arms):
    ``var = var_t / c^2 + t^2 var_c / c^4``. ``planned_units`` (both arms together) is where
    the confidence sequence is tightest; it stays valid at every other number of units.
    """
    diff = treatment.value - control.value
    se = math.sqrt(treatment.variance + control.variance)
    c = control.value
    if c:
        relative = treatment.value / c - 1
        rel_se = math.sqrt(treatment.variance / c**2 + treatment.value**2 * control.variance / c**4)
    else:
        relative, rel_se = math.nan, math.nan
    fixed, p = welch(treatment, control, alpha)
    z = float(sps.norm.ppf(1 - alpha / 2))
    units = treatment.units + control.units
    radius = normal_mixture_radius(se, units, alpha, planned_units) if se else 0.0
    rel_radius = normal_mixture_radius(rel_se, units, alpha, planned_units) if rel_se else 0.0
    return Lift(
        absolute=diff,
        absolute_se=se,
        relative=relative,
        relative_se=rel_se,
        fixed=fixed,
        fixed_relative=Interval(relative - z * rel_se, relative + z * rel_se),
        p_value=p,
        sequence=Interval(diff - radius, diff + radius),
        sequence_relative=Interval(relative - rel_radius, relative + rel_radius),
    )


@dataclass(frozen=True)
class SampleRatio:
    """Units per arm against the planned shares: Pearson's chi-square."""

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float
    p_value: float
    alarm: bool


def sample_ratio_mismatch(
    observed: Sequence[int], shares: Sequence[float], alarm_p: float = SRM_ALARM_P
) -> SampleRatio:
    """Chi-square test of the units per arm against the planned ``shares`` (normalised).

    Raises
    ------
    ValueError
        If the lengths differ, a share is not positive or no unit was observed.
    """
    if len(observed) != len(shares):
        raise ValueError(
            f"`shares` must have one value per arm ({len(observed)}), got {len(shares)}"
        )
    if any(s <= 0 for s in shares):
        raise ValueError(f"`shares` must all be > 0, got {list(shares)}")
    total = sum(observed)
    if total <= 0:
        raise ValueError("`observed` must count at least one unit, got none")
    weight = sum(shares)
    expected = [total * s / weight for s in shares]
    result = sps.chisquare(np.asarray(observed, dtype=float), np.asarray(expected))
    p = float(result.pvalue)
    return SampleRatio(
        tuple(int(o) for o in observed),
        tuple(expected),
        float(result.statistic),
        p,
        p < alarm_p,
    )


def adjust_p_values(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """Family-wise (``holm``) or false-discovery (``fdr_bh``) adjusted p-values.

    Raises
    ------
    ValueError
        If ``method`` is not ``holm`` or ``fdr_bh``.
    """
    if method not in ("holm", "fdr_bh"):
        raise ValueError(f"`method` must be 'holm' or 'fdr_bh', got {method!r}")
    if not p_values:
        return []
    _, adjusted, _, _ = multipletests(np.asarray(p_values, dtype=float), method=method)
    return [float(p) for p in adjusted]


def units_needed(
    control: ArmEstimate,
    relative_mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> float:
    """Units of the control arm needed to detect a relative lift of ``relative_mde``.

    Two-sided z-test power (``NormalIndPower``) on the standardised effect
    ``relative_mde * value / sd``, ``sd`` the per-unit standard deviation of the (adjusted)
    linearised metric; ``ratio`` = treatment units / control units.

    Raises
    ------
    ValueError
        If ``relative_mde`` is not > 0.
    """
    if relative_mde <= 0:
        raise ValueError(f"`relative_mde` must be > 0, got {relative_mde}")
    sd = math.sqrt(control.variance * control.units)
    if sd == 0 or control.value == 0:
        return math.nan
    effect = relative_mde * abs(control.value) / sd
    return float(
        NormalIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=ratio)
    )
