"""Customers: observed attributes and the hidden preferences that drive their behaviour."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recsys.datagen.catalog import AGE_BANDS, CATEGORIES, HABIT_CHANNELS, REGIONS

DAY = 86_400
AGE_BAND_SHARES = np.array([0.12, 0.22, 0.22, 0.18, 0.15, 0.11])
# Channel habit Dirichlet concentration per age band (rows) and channel (HABIT_CHANNELS).
_HABIT_ALPHA = np.array([
    [1.6, 2.0, 0.5, 1.0, 0.8, 0.2, 0.6],
    [1.8, 1.6, 0.8, 0.7, 0.7, 0.3, 0.8],
    [1.6, 1.2, 1.0, 0.6, 0.6, 0.4, 1.0],
    [1.4, 0.8, 1.2, 0.5, 0.5, 0.6, 1.2],
    [1.1, 0.5, 1.4, 0.4, 0.4, 0.9, 1.5],
    [0.8, 0.3, 1.4, 0.3, 0.3, 1.2, 1.8],
])  # fmt: skip
TASTE_CONCENTRATION = 0.4


@dataclass(frozen=True)
class Population:
    """One block of customers. Arrays have shape (n,) unless stated.

    Observed: ``customer_number`` (global, 1-based), ``created_s`` (epoch seconds),
    ``region``/``age_band``/``loyalty_tier`` (codes), ``email``/``sms``/``push`` opt-ins.
    Hidden: ``taste`` (n, n_categories) Dirichlet category shares, ``price_sensitivity`` in
    (0, 1), ``channel_habit`` (n, n_channels) Dirichlet shares, ``activity`` (rate multiplier,
    mean 1), ``spend_level`` (amount multiplier), ``satisfaction`` (standard normal),
    ``issue_proneness`` (service-issue rate multiplier, mean 1), ``responsiveness`` (logit
    offset of offer acceptance).
    """

    customer_number: np.ndarray
    created_s: np.ndarray
    region: np.ndarray
    age_band: np.ndarray
    loyalty_tier: np.ndarray
    email: np.ndarray
    sms: np.ndarray
    push: np.ndarray
    taste: np.ndarray
    price_sensitivity: np.ndarray
    channel_habit: np.ndarray
    activity: np.ndarray
    spend_level: np.ndarray
    satisfaction: np.ndarray
    issue_proneness: np.ndarray
    responsiveness: np.ndarray

    def __len__(self) -> int:
        return len(self.customer_number)

    def customer_ids(self) -> list[str]:
        return [f"C{k:07d}" for k in self.customer_number]


def draw_population(
    first_number: int, n: int, start_s: int, days: int, rng: np.random.Generator
) -> Population:
    """Draw ``n`` customers numbered from ``first_number``; ~8% join during the window."""
    age = rng.choice(len(AGE_BANDS), size=n, p=AGE_BAND_SHARES)
    habit = _dirichlet_rows(_HABIT_ALPHA[age], rng)
    activity = rng.gamma(2.0, 0.5, size=n)
    spend_level = rng.lognormal(0.0, 0.35, size=n)
    value_score = np.log(activity + 0.05) + np.log(spend_level) + rng.normal(0, 0.4, size=n)
    tier = np.searchsorted(np.quantile(value_score, [0.5, 0.8, 0.95]), value_score)
    joins_late = rng.random(n) < 0.08
    created = np.where(
        joins_late,
        start_s + (rng.random(n) * days * DAY).astype(np.int64),
        start_s - (rng.uniform(30, 1800, size=n) * DAY).astype(np.int64),
    )
    tier = np.where(joins_late, 0, tier)  # new customers start at bronze
    channel = {c: i for i, c in enumerate(HABIT_CHANNELS)}
    return Population(
        customer_number=np.arange(first_number, first_number + n, dtype=np.int64),
        created_s=created.astype(np.int64),
        region=rng.choice(len(REGIONS), size=n, p=[0.22, 0.2, 0.2, 0.18, 0.2]),
        age_band=age,
        loyalty_tier=tier.astype(np.int64),
        email=rng.random(n) < 0.35 + 1.5 * habit[:, channel["email"]],
        sms=rng.random(n) < 0.15 + 1.5 * habit[:, channel["sms"]],
        push=rng.random(n) < 0.2 + 1.5 * habit[:, channel["app"]],
        taste=rng.dirichlet(np.full(len(CATEGORIES), TASTE_CONCENTRATION), size=n),
        price_sensitivity=rng.beta(2.0, 2.0, size=n),
        channel_habit=habit,
        activity=activity,
        spend_level=spend_level,
        satisfaction=rng.normal(0.0, 1.0, size=n),
        issue_proneness=rng.gamma(1.0, 1.0, size=n),
        responsiveness=rng.normal(0.0, 0.5, size=n),
    )


def _dirichlet_rows(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One Dirichlet draw per row of ``alpha`` (n, k) -> (n, k)."""
    g = rng.gamma(alpha)
    return g / g.sum(axis=1, keepdims=True)
