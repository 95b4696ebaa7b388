"""The metrics an experiment readout knows: name -> :class:`Metric` (one registry line each).

A metric is ``sum(quantity) / sum(denominator)`` over the units of an arm. Quantities are
counted per decision from the event log (:data:`QUANTITIES`): a decision counts as accepted
when any of its offers got an ``accept`` or ``convert`` event within the attribution window,
revenue is the sum of the events' revenue, offers are the offers it served (contacts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Per-decision quantities: name -> event types that make a decision count (None: see below).
#: ``revenue`` sums the revenue of all events of the decision; ``offers`` counts offers served.
QUANTITIES: dict[str, tuple[str, ...] | None] = {
    "accept": ("accept", "convert"),
    "click": ("click",),
    "convert": ("convert",),
    "dismiss": ("dismiss",),
    "complaint": ("complaint",),
    "revenue": None,
    "offers": None,
}


@dataclass(frozen=True)
class Metric:
    """``quantity`` per decision (``per="decision"``) or per unit (``per="unit"``)."""

    name: str
    quantity: str
    per: Literal["decision", "unit"]
    label: str
    higher_is_better: bool = True


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("acceptance_rate", "accept", "decision", "acceptance rate per decision"),
        Metric("click_rate", "click", "decision", "click rate per decision"),
        Metric("conversion_rate", "convert", "decision", "conversion rate per decision"),
        Metric("revenue_per_decision", "revenue", "decision", "revenue per decision"),
        Metric("revenue_per_customer", "revenue", "unit", "revenue per customer"),
        Metric("dismiss_rate", "dismiss", "decision", "dismiss rate per decision", False),
        Metric("complaint_rate", "complaint", "decision", "complaint rate per decision", False),
        Metric("contacts_per_customer", "offers", "unit", "offers shown per customer", False),
    )
}


def metric(name: str) -> Metric:
    """The registered metric ``name``.

    Raises
    ------
    ValueError
        If no metric has that name.
    """
    if name not in METRICS:
        raise ValueError(f"`metric` must be one of {', '.join(METRICS)}, got {name!r}")
    return METRICS[name]
