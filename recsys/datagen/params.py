"""The simulation's knobs (:class:`SimParams`), its code tables and a block's output."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recsys.datagen.catalog import (
    CATEGORIES,
    HABIT_CHANNELS,
    OFFER_TYPES,
)

N_CAT = len(CATEGORIES)
N_CH = len(HABIT_CHANNELS)
TYPE = {name: i for i, name in enumerate(OFFER_TYPES)}
DEVICES = ("desktop", "mobile", "tablet")  # code 3 = no device in the context
TRANSACTION_CHANNELS = ("web", "app", "store", "call_center")
PRODUCTS_PER_CATEGORY = 40

# Interaction event types (codes into this tuple).
EVENT_TYPES = (
    "page_view",
    "product_view",
    "app_open",
    "chat",
    "call",
    "store_visit",
    "email_open",
    "complaint",
    "support_ticket",
    "nps_answer",
    "review",
)
EV = {name: i for i, name in enumerate(EVENT_TYPES)}
OUTCOME_NAMES = ("click", "accept", "convert", "dismiss")
NEVER = -(10**12)  # "no complaint yet", epoch seconds


def _stage_type_default() -> tuple[tuple[float, ...], ...]:
    # rows: STAGES; columns: OFFER_TYPES (discount, cross_sell, upsell, loyalty, service, content)
    return (
        (0.3, -0.3, -0.2, 0.0, -0.6, 0.4),  # awareness
        (0.2, 0.1, 0.3, 0.0, -0.5, 0.3),  # consideration
        (0.4, 0.4, 0.2, 0.1, -0.3, -0.3),  # decision
        (-0.1, 0.5, 0.0, 0.4, 0.2, 0.1),  # post_purchase
        (-0.4, -0.4, -0.4, 0.1, 0.9, 0.0),  # service
    )


@dataclass(frozen=True)
class SimParams:
    """Every knob of the simulation; written to ``ground_truth/params.json``."""

    epsilon: float = 0.3
    position_bias: tuple[float, ...] = (1.0, 0.75, 0.55)
    max_decisions_per_day: int = 4
    # behaviour rates (per customer-day, times the customer's activity)
    transaction_rate: float = 0.09
    browse_rate: float = 0.15
    visit_rate: float = 0.11
    newsletter_every_days: int = 7
    newsletter_share: float = 0.3
    sms_every_days: int = 14
    sms_share: float = 0.4
    post_purchase_email_prob: float = 0.6
    nps_survey_prob: float = 0.25
    nps_answer_prob: float = 0.4
    complaint_rate: float = 0.0015
    ticket_rate: float = 0.003
    review_prob: float = 0.05
    complaint_purchase_drop: float = 0.6
    complaint_service_visit_boost: float = 4.0
    complaint_decay_days: float = 10.0
    fatigue_half_life_days: float = 7.0
    # acceptance model
    affinity_coef: tuple[float, ...] = (0.7, 0.8, 0.7, 0.5, 0.2, 0.6)  # per OFFER_TYPES
    price_coef: tuple[float, ...] = (1.2, 0.2, -1.2, 0.3, 0.0, -0.3)  # per OFFER_TYPES
    satisfaction_coef: float = 0.25
    tier_coef: float = 0.3
    channel_coef: float = 0.35
    context_coef: float = 0.6
    fatigue_offer_coef: float = 0.5
    fatigue_type_coef: float = 0.15
    complaint_coef: float = -1.2
    complaint_service_coef: float = 1.5
    stage_type: tuple[tuple[float, ...], ...] = field(default_factory=_stage_type_default)
    p_clip: tuple[float, float] = (1e-4, 0.95)
    # outcomes
    click_before_accept_prob: float = 0.85
    stray_click_prob: float = 0.04
    dismiss_prob_realtime: float = 0.12
    dismiss_prob_batch: float = 0.03
    late_accept_prob_realtime: float = 0.1
    convert_prob: tuple[float, ...] = (0.6, 0.5, 0.5, 0.4, 0.0, 0.0)  # per OFFER_TYPES
    revenue_factor: tuple[float, ...] = (0.9, 0.6, 1.8, 0.7, 0.0, 0.0)  # per OFFER_TYPES


@dataclass
class BlockOutput:
    """Column arrays of one block, ready for the writers (codes index the name tuples)."""

    transactions: dict[str, np.ndarray]
    interactions: dict[str, np.ndarray]
    decisions: dict[str, np.ndarray]
    outcomes: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    n_decisions: int
