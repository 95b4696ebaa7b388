"""The demo business: product categories, touchpoints and the offer catalogue.

The catalogue is fixed (the same for every seed) so that docs, tests and demos can name
offers; only the hidden base appeal of each offer is drawn from the seed. Date windows are
given in days relative to the simulation start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from recsys.contract import OFFER_TYPES, STAGES

CATEGORIES = (
    "shoes", "apparel", "electronics", "home", "beauty", "sports", "toys", "grocery", "books",
    "garden",
)  # fmt: skip
"""Product categories (transactions, page views and product offers)."""

CATEGORY_BASE_PRICE = np.array([70.0, 45.0, 180.0, 60.0, 25.0, 55.0, 30.0, 12.0, 18.0, 35.0])
"""Median basket amount per category, same order as :data:`CATEGORIES`."""

HABIT_CHANNELS = ("web", "app", "email", "sms", "chat", "call_center", "store")
"""Channels a customer has habits over (hidden channel preferences)."""

LOYALTY_TIERS = ("bronze", "silver", "gold", "platinum")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
REGIONS = ("north", "south", "east", "west", "central")

ELIGIBILITY_FEATURES = {
    "loyalty_tier": LOYALTY_TIERS,
    "age_band": AGE_BANDS,
    "region": REGIONS,
    "email_opt_in": "bool",
    "sms_opt_in": "bool",
    "push_opt_in": "bool",
    "tenure_days": "number",
    "order_count": "number",
    "total_spend": "number",
}
"""Features eligibility rules may use (documented in docs/demo-data.md)."""


@dataclass(frozen=True)
class TouchpointDef:
    touchpoint_id: str
    channel: str
    stage: str
    slots: int
    mode: str
    consent_column: str | None = None
    visit_weight: float = 0.0  # relative frequency of realtime visits; 0 for batch

    def to_record(self) -> dict[str, Any]:
        return {
            "touchpoint_id": self.touchpoint_id,
            "channel": self.channel,
            "stage": self.stage,
            "slots": self.slots,
            "mode": self.mode,
            "consent_column": self.consent_column,
        }


TOUCHPOINTS = (
    TouchpointDef("web_home", "web", "awareness", 3, "realtime", visit_weight=0.30),
    TouchpointDef("web_product", "web", "consideration", 2, "realtime", visit_weight=0.30),
    TouchpointDef("web_cart", "web", "decision", 2, "realtime", visit_weight=0.15),
    TouchpointDef("web_checkout", "web", "decision", 1, "realtime", visit_weight=0.08),
    TouchpointDef("web_help", "web", "service", 1, "realtime", visit_weight=0.05),
    TouchpointDef("app_home", "app", "consideration", 3, "realtime", "push_opt_in", 0.30),
    TouchpointDef("app_order_status", "app", "post_purchase", 1, "realtime", "push_opt_in", 0.08),
    TouchpointDef("chat_widget", "chat", "service", 1, "realtime", visit_weight=0.05),
    TouchpointDef("call_center", "call_center", "service", 1, "realtime", visit_weight=0.05),
    TouchpointDef("store_pos", "store", "decision", 1, "realtime", visit_weight=0.20),
    TouchpointDef("email_newsletter", "email", "awareness", 3, "batch", "email_opt_in"),
    TouchpointDef("email_post_purchase", "email", "post_purchase", 2, "batch", "email_opt_in"),
    TouchpointDef("email_nps_survey", "email", "post_purchase", 1, "batch", "email_opt_in"),
    TouchpointDef("sms_promo", "sms", "consideration", 1, "batch", "sms_opt_in"),
)

SERVICE_TOUCHPOINTS = ("web_help", "chat_widget", "call_center")
"""Realtime touchpoints a customer with a recent complaint visits more often."""


@dataclass(frozen=True)
class Rule:
    feature: str
    op: str
    value: Any

    def to_record(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"feature": self.feature, "op": self.op, "value": value}


@dataclass(frozen=True)
class OfferDef:
    offer_id: str
    name: str
    offer_type: str
    category: str | None
    value: float
    touchpoints: tuple[str, ...] = ()
    window_days: tuple[int, int] | None = None  # active from start+a to start+b (both inclusive)
    cap: tuple[int, int] | None = None  # (cap_per_customer, cap_window_days)
    eligibility: tuple[Rule, ...] = ()
    weight: float = 1.0
    fallback: bool = False

    def to_record(self, start: datetime) -> dict[str, Any]:
        def iso(day: int) -> str:
            return (start + timedelta(days=day)).strftime("%Y-%m-%dT%H:%M:%S")

        return {
            "offer_id": self.offer_id,
            "name": self.name,
            "offer_type": self.offer_type,
            "category": self.category,
            "value": self.value,
            "touchpoints": list(self.touchpoints),
            "start_at": iso(self.window_days[0]) if self.window_days else None,
            "end_at": iso(self.window_days[1]) if self.window_days else None,
            "cap_per_customer": self.cap[0] if self.cap else None,
            "cap_window_days": self.cap[1] if self.cap else None,
            "eligibility": [rule.to_record() for rule in self.eligibility],
            "weight": self.weight,
            "fallback": self.fallback,
            # The simulated customers may accept an offer again (fatigue, not acceptance,
            # holds it back), so every offer is offered again after an acceptance.
            "repeatable": True,
        }


_R = Rule
REGULAR_OFFERS = (
    # discounts
    OfferDef("OF001", "10% off shoes", "discount", "shoes", 8.0,
             ("web_home", "web_product", "email_newsletter", "app_home"), cap=(2, 7)),
    OfferDef("OF002", "15% off apparel", "discount", "apparel", 10.0,
             ("web_home", "web_product", "web_cart", "email_newsletter", "sms_promo"), cap=(2, 7)),
    OfferDef("OF003", "Electronics weekend deal", "discount", "electronics", 25.0,
             ("web_product", "web_cart", "app_home", "email_newsletter"),
             window_days=(14, 44), cap=(1, 14)),
    OfferDef("OF004", "Home spring sale", "discount", "home", 12.0,
             ("web_home", "web_product", "store_pos", "email_newsletter"), window_days=(30, 75)),
    OfferDef("OF005", "Beauty 2-for-1", "discount", "beauty", 9.0,
             ("web_product", "web_cart", "app_home", "sms_promo")),
    OfferDef("OF006", "Sports gear 20% off", "discount", "sports", 14.0, (), cap=(3, 30)),
    OfferDef("OF007", "Toys bundle discount", "discount", "toys", 7.0,
             ("web_home", "web_product", "email_newsletter", "store_pos"), window_days=(0, 30)),
    OfferDef("OF008", "Free shipping on groceries", "discount", "grocery", 4.0,
             ("web_cart", "web_checkout", "app_home")),
    OfferDef("OF009", "Welcome: 10% off your first order", "discount", None, 6.0,
             ("web_home", "app_home", "email_newsletter", "web_checkout"),
             eligibility=(_R("tenure_days", "<", 30), _R("order_count", "<=", 0))),
    # cross-sell
    OfferDef("OF010", "Socks with your shoes", "cross_sell", "shoes", 5.0,
             ("web_cart", "web_checkout", "store_pos", "email_post_purchase"),
             eligibility=(_R("order_count", ">=", 1),)),
    OfferDef("OF011", "Case and charger for your phone", "cross_sell", "electronics", 6.0,
             ("web_cart", "web_checkout", "email_post_purchase", "app_order_status")),
    OfferDef("OF012", "Matching accessories", "cross_sell", "apparel", 5.0,
             ("web_product", "web_cart", "store_pos")),
    OfferDef("OF013", "Book of the month", "cross_sell", "books", 4.0,
             ("web_home", "email_newsletter", "app_home", "email_post_purchase")),
    OfferDef("OF014", "Garden tools set", "cross_sell", "garden", 8.0,
             ("web_product", "store_pos", "email_newsletter"), window_days=(20, 80)),
    OfferDef("OF015", "Skincare starter kit", "cross_sell", "beauty", 6.0,
             ("web_product", "app_home", "email_post_purchase"),
             eligibility=(_R("age_band", "in", ("18-24", "25-34", "35-44")),)),
    OfferDef("OF016", "Pantry restock", "cross_sell", "grocery", 3.0,
             ("app_order_status", "email_post_purchase", "sms_promo"), cap=(2, 14)),
    OfferDef("OF017", "Sports nutrition add-on", "cross_sell", "sports", 4.0,
             ("web_cart", "app_home", "store_pos")),
    # upsell
    OfferDef("OF018", "Premium headphones upgrade", "upsell", "electronics", 20.0,
             ("web_product", "web_cart", "store_pos"),
             eligibility=(_R("total_spend", ">=", 200),)),
    OfferDef("OF019", "Designer collection preview", "upsell", "apparel", 18.0,
             ("web_home", "web_product", "app_home"),
             eligibility=(_R("loyalty_tier", "in", ("silver", "gold", "platinum")),)),
    OfferDef("OF020", "Smart home upgrade", "upsell", "home", 22.0,
             ("web_product", "email_newsletter", "call_center"), cap=(1, 30)),
    OfferDef("OF021", "Extended warranty", "upsell", "electronics", 10.0,
             ("web_checkout", "call_center", "store_pos", "email_post_purchase"),
             eligibility=(_R("order_count", ">=", 1),)),
    OfferDef("OF022", "Pro running shoes", "upsell", "shoes", 15.0,
             ("web_product", "app_home", "store_pos")),
    OfferDef("OF023", "Upgrade to gold membership", "upsell", None, 16.0,
             ("web_home", "app_home", "email_newsletter", "call_center"),
             eligibility=(_R("loyalty_tier", "not_in", ("gold", "platinum")),
                          _R("order_count", ">=", 2))),
    OfferDef("OF024", "Big-spender home collection", "upsell", "home", 24.0,
             ("web_home", "store_pos", "email_newsletter"),
             eligibility=(_R("total_spend", ">", 1000),)),
    # loyalty rewards
    OfferDef("OF025", "Double points week", "loyalty_reward", None, 6.0, (),
             window_days=(7, 21), eligibility=(_R("loyalty_tier", "in", ("gold", "platinum")),)),
    OfferDef("OF026", "Anniversary reward", "loyalty_reward", None, 5.0,
             ("email_newsletter", "app_home"), eligibility=(_R("tenure_days", ">=", 365),),
             cap=(1, 30)),
    OfferDef("OF027", "Platinum lounge access", "loyalty_reward", None, 7.0,
             ("store_pos", "call_center", "app_home"),
             eligibility=(_R("loyalty_tier", "==", "platinum"),)),
    OfferDef("OF028", "Bonus points on books", "loyalty_reward", "books", 4.0,
             ("web_home", "app_home", "email_newsletter"),
             eligibility=(_R("loyalty_tier", "!=", "bronze"),)),
    OfferDef("OF029", "Thank-you voucher", "loyalty_reward", None, 5.0,
             ("email_post_purchase", "app_order_status"),
             eligibility=(_R("order_count", ">=", 3),), cap=(1, 14)),
    OfferDef("OF030", "App-exclusive points", "loyalty_reward", None, 3.0,
             ("app_home", "app_order_status", "web_home"),
             eligibility=(_R("push_opt_in", "==", True),)),
    # service
    OfferDef("OF031", "Priority support callback", "service", None, 3.0,
             ("web_help", "chat_widget", "call_center"), cap=(1, 7)),
    OfferDef("OF032", "Free repair check", "service", "electronics", 4.0,
             ("store_pos", "call_center", "web_help")),
    OfferDef("OF033", "Delivery tracking alerts", "service", None, 2.0,
             ("app_order_status", "email_post_purchase", "sms_promo")),
    OfferDef("OF034", "Goodwill voucher", "service", None, 6.0,
             ("chat_widget", "call_center", "email_nps_survey"),
             eligibility=(_R("tenure_days", ">=", 90),), cap=(1, 30)),
    OfferDef("OF035", "Home appliance setup service", "service", "home", 5.0,
             ("web_checkout", "call_center", "store_pos")),
    OfferDef("OF036", "Returns made easy", "service", None, 2.5,
             ("web_help", "chat_widget", "email_nps_survey", "app_order_status"), cap=(2, 14)),
    # content
    OfferDef("OF037", "Shoe care guide", "content", "shoes", 1.5,
             ("web_product", "email_post_purchase", "web_help")),
    OfferDef("OF038", "Style lookbook", "content", "apparel", 2.0,
             ("web_home", "email_newsletter", "app_home")),
    OfferDef("OF039", "Gadget buying guide", "content", "electronics", 2.0,
             ("web_home", "web_product", "web_help")),
    OfferDef("OF040", "Recipes of the week", "content", "grocery", 1.5,
             ("email_newsletter", "app_home", "sms_promo")),
    OfferDef("OF041", "Garden planner", "content", "garden", 1.5,
             ("web_home", "email_newsletter"),
             eligibility=(_R("region", "in", ("south", "west")),)),
    OfferDef("OF042", "Fitness plan", "content", "sports", 2.0,
             ("app_home", "web_home", "email_nps_survey"),
             eligibility=(_R("age_band", "not_in", ("65+",)),)),
    OfferDef("OF043", "In-store workshop", "content", "home", 2.5,
             ("store_pos", "email_newsletter"), eligibility=(_R("region", "==", "north"),)),
    OfferDef("OF044", "SMS-only flash alert", "content", "toys", 2.0,
             ("sms_promo", "web_home"), eligibility=(_R("sms_opt_in", "==", True),)),
    OfferDef("OF045", "Reading club", "content", "books", 1.5,
             ("web_product", "email_nps_survey", "store_pos"), cap=(1, 7)),
)  # fmt: skip

FALLBACK_OFFERS = tuple(
    OfferDef(f"FB{i + 1:02d}", f"{name} ({tp.touchpoint_id})", "content", None, 0.5,
             (tp.touchpoint_id,), fallback=True)
    for i, (tp, name) in enumerate(
        zip(TOUCHPOINTS, ("Free delivery over 50", "New arrivals", "Secure checkout",
                          "Easy returns", "Help centre", "Discover the app", "Track your order",
                          "Help articles", "Customer promise", "Store services",
                          "This week's highlights", "How was your order?", "Thanks for your feedback",
                          "Store finder"), strict=True)
    )
)  # fmt: skip
"""One fallback offer per touchpoint, shown only when nothing else is eligible."""

OFFERS = (*REGULAR_OFFERS, *FALLBACK_OFFERS)


@dataclass(frozen=True)
class Catalog:
    """Array view of touchpoints and offers for the simulator.

    Arrays have shape (n_offers,) or (n_touchpoints,) unless stated; times are epoch seconds.
    """

    touchpoints: tuple[TouchpointDef, ...]
    offers: tuple[OfferDef, ...]
    start_s: int
    offer_type: np.ndarray  # int codes into OFFER_TYPES
    offer_category: np.ndarray  # int codes into CATEGORIES, -1 = none
    score: np.ndarray  # business score value x weight used by the logging policy
    is_fallback: np.ndarray
    active_from: np.ndarray
    active_until: np.ndarray
    cap: np.ndarray  # 0 = no cap
    cap_window: np.ndarray  # days; 0 = no cap
    tp_mask: np.ndarray  # (n_touchpoints, n_offers) bool: offer may be shown there
    tp_channel: np.ndarray  # int codes into HABIT_CHANNELS
    tp_stage: np.ndarray  # int codes into STAGES
    tp_slots: np.ndarray
    tp_consent: tuple[str | None, ...]
    base_logit: np.ndarray = field(repr=False)  # hidden base appeal per offer

    @property
    def n_offers(self) -> int:
        return len(self.offers)

    def tp_index(self, touchpoint_id: str) -> int:
        return [tp.touchpoint_id for tp in self.touchpoints].index(touchpoint_id)


def build_catalog(start: datetime, rng: np.random.Generator) -> Catalog:
    """Arrays of the fixed catalogue; ``rng`` draws each offer's hidden base appeal."""
    start_s = int(start.timestamp())
    tp_ids = [tp.touchpoint_id for tp in TOUCHPOINTS]
    n_off = len(OFFERS)
    never, forever = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    tp_mask = np.zeros((len(TOUCHPOINTS), n_off), dtype=bool)
    for j, offer in enumerate(OFFERS):
        if offer.touchpoints:
            for tp in offer.touchpoints:
                tp_mask[tp_ids.index(tp), j] = True
        else:
            tp_mask[:, j] = True
    is_fallback = np.array([o.fallback for o in OFFERS])
    base = rng.normal(-2.9, 0.35, size=n_off)
    base[is_fallback] = rng.normal(-3.8, 0.2, size=int(is_fallback.sum()))
    return Catalog(
        touchpoints=TOUCHPOINTS,
        offers=OFFERS,
        start_s=start_s,
        offer_type=np.array([OFFER_TYPES.index(o.offer_type) for o in OFFERS]),
        offer_category=np.array(
            [CATEGORIES.index(o.category) if o.category in CATEGORIES else -1 for o in OFFERS]
        ),
        score=np.array([o.value * o.weight for o in OFFERS]),
        is_fallback=is_fallback,
        active_from=np.array(
            [start_s + o.window_days[0] * 86400 if o.window_days else never for o in OFFERS]
        ),
        active_until=np.array(
            [start_s + o.window_days[1] * 86400 if o.window_days else forever for o in OFFERS]
        ),
        cap=np.array([o.cap[0] if o.cap else 0 for o in OFFERS]),
        cap_window=np.array([o.cap[1] if o.cap else 0 for o in OFFERS]),
        tp_mask=tp_mask,
        tp_channel=np.array([HABIT_CHANNELS.index(tp.channel) for tp in TOUCHPOINTS]),
        tp_stage=np.array([STAGES.index(tp.stage) for tp in TOUCHPOINTS]),
        tp_slots=np.array([tp.slots for tp in TOUCHPOINTS]),
        tp_consent=tuple(tp.consent_column for tp in TOUCHPOINTS),
        base_logit=base,
    )
