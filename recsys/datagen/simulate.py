"""Day-by-day simulation of one block of customers, vectorised over the block.

Each day: purchases, service events (complaints, tickets), browsing, realtime visits and
batch campaigns. Decisions of a day are processed in rounds (a customer's first decision
of the day, then the second, ...) so fatigue and caps see every earlier impression.
The acceptance model (logit scale) is::

    logit = base[offer] + responsiveness + c_sat * satisfaction
          + c_aff[type] * log(n_categories * taste[category] + 0.1)
          + c_price[type] * (2 * price_sensitivity - 1) + c_tier * tier [loyalty offers]
          + c_chan * log(n_channels * habit[channel of touchpoint] + 0.2)
          + stage_type[stage of touchpoint, type] + c_ctx * [category == page_category]
          - c_fat_offer * fatigue[offer] - c_fat_type * fatigue[type]
          + complaint_effect * (c_service if type == service else c_complaint)

``p_true = sigmoid(logit)``; a shown offer is accepted with ``p_true x position_bias``.
"""

from __future__ import annotations

import numpy as np

from recsys.datagen.catalog import (
    CATEGORY_BASE_PRICE,
    HABIT_CHANNELS,
    OFFER_TYPES,
    SERVICE_TOUCHPOINTS,
    Catalog,
)
from recsys.datagen.mechanics import (
    AcceptanceModel,
    Accumulator,
    DayEvents,
    Requests,
    RuleEligibility,
    VisitModel,
    draw_categories,
    draw_outcomes,
    pick_rows,
    seconds_in_day,
)
from recsys.datagen.params import (
    EV,
    NEVER,
    PRODUCTS_PER_CATEGORY,
    TRANSACTION_CHANNELS,
    BlockOutput,
    SimParams,
)
from recsys.datagen.policy import epsilon_greedy_slates
from recsys.datagen.population import DAY, Population


class _BlockSimulator:
    """Holds one block's static terms and state; ``run`` simulates day after day."""

    def __init__(
        self, catalog: Catalog, pop: Population, params: SimParams, rng: np.random.Generator
    ):
        p = self.p = params
        self.catalog, self.pop, self.rng = catalog, pop, rng
        n, n_off = len(pop), catalog.n_offers
        n_tp = len(catalog.touchpoints)
        self.tpi = {tp.touchpoint_id: i for i, tp in enumerate(catalog.touchpoints)}
        self.tp_realtime = np.array([tp.mode == "realtime" for tp in catalog.touchpoints])
        self.tp_email = np.array([tp.channel == "email" for tp in catalog.touchpoints])
        self.eligibility = RuleEligibility(catalog)
        self.position_bias = np.array(p.position_bias)
        if len(self.position_bias) < int(catalog.tp_slots.max()):
            raise ValueError(
                f"`position_bias` needs one entry per slot (max slots {catalog.tp_slots.max()}), "
                f"got {len(self.position_bias)}"
            )

        self.acceptance = AcceptanceModel(catalog, pop, p)
        self.consent = np.ones((n, n_tp), dtype=bool)
        opt_in = {"email_opt_in": pop.email, "sms_opt_in": pop.sms, "push_opt_in": pop.push}
        for t, column in enumerate(catalog.tp_consent):
            if column is not None:
                self.consent[:, t] = opt_in[column]
        self.cum_taste = np.cumsum(pop.taste, axis=1)

        self.visits = VisitModel(catalog, pop, p)
        visit_event = {
            "web": EV["page_view"],
            "app": EV["app_open"],
            "chat": EV["chat"],
            "call_center": EV["call"],
            "store": EV["store_visit"],
        }
        self.event_of_tp = np.array(
            [visit_event.get(HABIT_CHANNELS[c], -1) for c in catalog.tp_channel]
        )

        # state: fatigue (decayed impression counts), caps (daily ring buffer), history
        self.fat_offer = np.zeros((n, n_off), dtype=np.float32)
        self.fat_type = np.zeros((n, len(OFFER_TYPES)), dtype=np.float32)
        self.fatigue_decay = np.float32(0.5 ** (1.0 / p.fatigue_half_life_days))
        self.capped = np.flatnonzero(catalog.cap > 0)
        self.windows = sorted({int(w) for w in catalog.cap_window[self.capped]})
        self.max_w = max(self.windows, default=1)
        self.ring = np.zeros((self.max_w, n, len(self.capped)), dtype=np.uint8)
        # impressions in the previous (w - 1) days per cap window w, and today
        self.prev_sum = {w: np.zeros((n, len(self.capped)), dtype=np.int16) for w in self.windows}
        self.today_shown = np.zeros((n, len(self.capped)), dtype=np.uint8)
        self.cap_limit = catalog.cap[self.capped]
        self.cap_w = catalog.cap_window[self.capped]
        self.order_count = np.zeros(n, dtype=np.int64)
        self.total_spend = np.zeros(n, dtype=np.float64)
        self.last_complaint = np.full(n, NEVER, dtype=np.int64)
        self.prev_day_buyers = np.zeros(0, dtype=np.int64)
        self.decay_s = p.complaint_decay_days * DAY

        self.tx = Accumulator("cust", "ts", "amount", "category", "product", "quantity", "channel")
        self.it = Accumulator("cust", "ts", "tp", "event", "value", "category")
        self.dec = Accumulator(
            "decision", "ts", "tp", "offer", "cust", "position", "propensity", "device",
            "page_category",
        )  # fmt: skip
        self.out = Accumulator("decision", "offer", "ts", "outcome", "revenue")
        self.truth = Accumulator("decision", "offer", "p_accept")
        self.next_decision = 0

    def run(self, days: int) -> BlockOutput:
        for d in range(days):
            self._simulate_day(d)
        return BlockOutput(
            transactions=self.tx.arrays(),
            interactions=self.it.arrays(),
            decisions=self.dec.arrays(),
            outcomes=self.out.arrays(),
            truth=self.truth.arrays(),
            n_decisions=self.next_decision,
        )

    def _interactions(self, cust, ts, tp, event, value=None, category=None) -> None:
        m = len(cust)
        self.it.add(
            cust=cust,
            ts=ts,
            tp=np.broadcast_to(tp, m),
            event=np.full(m, event) if np.isscalar(event) else event,
            value=np.full(m, np.nan) if value is None else value,
            category=np.full(m, -1) if category is None else category,
        )

    def _simulate_day(self, d: int) -> None:
        day0 = self.catalog.start_s + d * DAY
        complaint_effect = np.exp(-(day0 - self.last_complaint) / self.decay_s)
        events = self._purchases_and_service(day0, complaint_effect)
        self._browsing(day0)
        requests = self._requests(d, day0, complaint_effect, events)
        for rnd in range(min(self.p.max_decisions_per_day, int(requests.rank.max(initial=-1)) + 1)):
            self._decide(requests, np.flatnonzero(requests.rank == rnd))
        self._end_of_day(d, events)

    def _purchases_and_service(self, day0: int, complaint_effect: np.ndarray) -> DayEvents:
        p, pop, rng, n = self.p, self.pop, self.rng, len(self.pop)
        rate = (
            p.transaction_rate * pop.activity * (1 - p.complaint_purchase_drop * complaint_effect)
        )
        t_cust = np.repeat(np.arange(n), rng.poisson(rate))
        t_sec = seconds_in_day(rng, len(t_cust))
        keep = day0 + t_sec >= pop.created_s[t_cust]
        t_cust, t_sec = t_cust[keep], t_sec[keep]
        order = np.lexsort((t_sec, t_cust))
        t_cust, t_sec = t_cust[order], t_sec[order]
        t_cat = draw_categories(self.cum_taste[t_cust], rng)
        t_amount = np.round(
            CATEGORY_BASE_PRICE[t_cat]
            * pop.spend_level[t_cust]
            * rng.lognormal(0.0, 0.5, size=len(t_cust))
            * (1.15 - 0.3 * pop.price_sensitivity[t_cust]),
            2,
        )
        habit_cols = [HABIT_CHANNELS.index(c) for c in TRANSACTION_CHANNELS]
        self.tx.add(
            cust=t_cust,
            ts=day0 + t_sec,
            amount=t_amount,
            category=t_cat,
            product=t_cat * PRODUCTS_PER_CATEGORY
            + np.minimum(rng.geometric(0.12, size=len(t_cust)) - 1, PRODUCTS_PER_CATEGORY - 1),
            quantity=1 + rng.poisson(0.3, size=len(t_cust)),
            channel=pick_rows(pop.channel_habit[t_cust][:, habit_cols] + 1e-9, rng),
        )
        # reviews a few days after some purchases
        rv = rng.random(len(t_cust)) < p.review_prob
        n_rv = int(rv.sum())
        self._interactions(
            t_cust[rv],
            day0 + t_sec[rv] + rng.integers(DAY, 4 * DAY, size=n_rv),
            self.tpi["web_product"],
            EV["review"],
            value=np.clip(
                np.round(3.8 + 0.8 * pop.satisfaction[t_cust[rv]] + rng.normal(0, 0.7, n_rv)), 1, 5
            ),
            category=t_cat[rv],
        )

        # complaints (at most one per customer and day) and support tickets
        c_mask = rng.random(n) < p.complaint_rate * pop.issue_proneness
        c_cust = np.flatnonzero(c_mask & (pop.created_s <= day0))
        c_sec = seconds_in_day(rng, len(c_cust))
        where = [self.tpi[t] for t in ("call_center", "chat_widget", "web_help", "store_pos")]
        c_tp = np.array(where)[rng.choice(4, size=len(c_cust), p=[0.35, 0.3, 0.2, 0.15])]
        self._interactions(c_cust, day0 + c_sec, c_tp, EV["complaint"])
        s_cust = np.flatnonzero(
            (rng.random(n) < p.ticket_rate * pop.issue_proneness) & (pop.created_s <= day0)
        )
        self._interactions(
            s_cust,
            day0 + seconds_in_day(rng, len(s_cust)),
            np.array([self.tpi[t] for t in SERVICE_TOUCHPOINTS])[
                rng.integers(0, 3, size=len(s_cust))
            ],
            EV["support_ticket"],
        )
        return DayEvents(
            purchase_cust=t_cust,
            purchase_amount=t_amount,
            purchase_keys=t_cust * DAY + t_sec,
            spend_cum=np.concatenate([[0.0], np.cumsum(t_amount)]),
            complaint_cust=c_cust,
            complaint_keys=c_cust * DAY + c_sec,  # c_cust ascending: keys sorted
        )

    def _browsing(self, day0: int) -> None:
        """Product views without offers; their category follows the customer's taste."""
        p, pop, rng = self.p, self.pop, self.rng
        b_cust = np.repeat(np.arange(len(pop)), rng.poisson(p.browse_rate * pop.activity))
        b_sec = seconds_in_day(rng, len(b_cust))
        keep = day0 + b_sec >= pop.created_s[b_cust]
        b_cust, b_sec = b_cust[keep], b_sec[keep]
        web = pop.channel_habit[b_cust, HABIT_CHANNELS.index("web")]
        app = pop.channel_habit[b_cust, HABIT_CHANNELS.index("app")]
        on_app = rng.random(len(b_cust)) < app / (web + app)
        self._interactions(
            b_cust,
            day0 + b_sec,
            np.where(on_app, self.tpi["app_home"], self.tpi["web_product"]),
            EV["product_view"],
            category=draw_categories(self.cum_taste[b_cust], rng, noise=0.2),
        )

    def _requests(
        self, d: int, day0: int, complaint_effect: np.ndarray, events: DayEvents
    ) -> Requests:
        """Realtime visits and batch campaign sends of day ``d``, with point-in-time features."""
        p, pop, rng, tpi, n = self.p, self.pop, self.rng, self.tpi, len(self.pop)
        visits = self.visits.draw(complaint_effect, rng)
        v_cust, v_tp, v_sec, v_device, v_page = (
            visits.cust,
            visits.tp,
            visits.sec,
            visits.device,
            visits.page,
        )
        self._interactions(v_cust, day0 + v_sec, v_tp, self.event_of_tp[v_tp], category=v_page)

        batch: list[tuple[np.ndarray, int, int]] = []  # (customers, touchpoint, hour of day)
        if d % p.newsletter_every_days == 3 % p.newsletter_every_days:
            to = np.flatnonzero(pop.email & (rng.random(n) < p.newsletter_share))
            batch.append((to, tpi["email_newsletter"], 9))
        if d % p.sms_every_days == 5 % p.sms_every_days:
            to = np.flatnonzero(pop.sms & (rng.random(n) < p.sms_share))
            batch.append((to, tpi["sms_promo"], 12))
        buyers = self.prev_day_buyers
        to = buyers[pop.email[buyers] & (rng.random(len(buyers)) < p.post_purchase_email_prob)]
        batch.append((to, tpi["email_post_purchase"], 10))
        nps = buyers[pop.email[buyers] & (rng.random(len(buyers)) < p.nps_survey_prob)]
        batch.append((nps, tpi["email_nps_survey"], 18))
        # NPS answers: lower after a complaint, higher for satisfied customers
        ans = nps[rng.random(len(nps)) < p.nps_answer_prob]
        score = 7.5 + 1.6 * pop.satisfaction[ans] - 5.0 * complaint_effect[ans]
        score = np.clip(np.round(score + rng.normal(0, 1.2, size=len(ans))), 0, 10)
        self._interactions(
            ans,
            day0 + 18 * 3600 + rng.integers(600, 6 * 3600, size=len(ans)),
            tpi["email_nps_survey"],
            EV["nps_answer"],
            value=score,
        )

        cust = np.concatenate([v_cust] + [b[0] for b in batch])
        tp = np.concatenate([v_tp] + [np.full(len(b[0]), b[1]) for b in batch])
        sec = np.concatenate(
            [v_sec] + [b[2] * 3600 + rng.integers(0, 3600, size=len(b[0])) for b in batch]
        )
        device = np.concatenate([v_device] + [np.full(len(b[0]), 3) for b in batch])
        page = np.concatenate([v_page] + [np.full(len(b[0]), -1) for b in batch])
        keep = day0 + sec >= pop.created_s[cust]
        order = np.lexsort((sec, cust))
        order = order[keep[order]]
        cust, tp, sec, device, page = (a[order] for a in (cust, tp, sec, device, page))
        first = np.r_[True, cust[1:] != cust[:-1]] if len(cust) else np.zeros(0, bool)
        run_start = np.maximum.accumulate(np.where(first, np.arange(len(cust)), 0))

        # point-in-time history: earlier days' totals plus today's events before the request
        keys = cust * DAY + sec
        hi = np.searchsorted(events.purchase_keys, keys, side="left")
        lo = np.searchsorted(events.purchase_keys, cust * DAY, side="left")
        c_keys = events.complaint_keys
        ci = np.searchsorted(c_keys, keys, side="left") - 1
        prior = c_keys[np.maximum(ci, 0)] if len(c_keys) else np.zeros(len(cust), np.int64)
        same_day = (ci >= 0) & (prior // DAY == cust)
        last_complaint = np.where(same_day, day0 + prior % DAY, self.last_complaint[cust])
        return Requests(
            cust=cust,
            tp=tp,
            ts=day0 + sec,
            device=device,
            page=page,
            rank=np.arange(len(cust)) - run_start,
            order_count=self.order_count[cust] + (hi - lo),
            total_spend=self.total_spend[cust] + events.spend_cum[hi] - events.spend_cum[lo],
            complaint_effect=np.exp(-(day0 + sec - last_complaint) / self.decay_s),
        )

    def _candidates(self, r: Requests, sel: np.ndarray) -> np.ndarray:
        """Eligible offers (len(sel), n_offers): touchpoint, consent, dates, rules, caps."""
        cat, pop = self.catalog, self.pop
        c, t, ts = r.cust[sel], r.tp[sel], r.ts[sel]
        cand = cat.tp_mask[t] & self.consent[c, t][:, None]
        cand &= (cat.active_from[None, :] <= ts[:, None]) & (
            ts[:, None] <= cat.active_until[None, :]
        )
        features = {
            "loyalty_tier": pop.loyalty_tier[c],
            "age_band": pop.age_band[c],
            "region": pop.region[c],
            "email_opt_in": pop.email[c],
            "sms_opt_in": pop.sms[c],
            "push_opt_in": pop.push[c],
            "tenure_days": (ts - pop.created_s[c]) // DAY,
            "order_count": r.order_count[sel],
            "total_spend": r.total_spend[sel],
        }
        self.eligibility.apply(cand, features)
        if len(self.capped):
            shown = self.today_shown[c].astype(np.int16)
            in_window = np.zeros_like(shown)
            for w_days in self.windows:
                cols = self.cap_w == w_days
                in_window[:, cols] = self.prev_sum[w_days][c][:, cols] + shown[:, cols]
            cand[:, self.capped] &= in_window < self.cap_limit[None, :]
        regular = cand & ~cat.is_fallback[None, :]
        return np.where(regular.any(axis=1)[:, None], regular, cand)

    def _decide(self, r: Requests, sel: np.ndarray) -> None:
        """One round: at most one request per customer, so state updates do not collide."""
        p, cat, rng = self.p, self.catalog, self.rng
        otype, ocat = cat.offer_type, cat.offer_category
        cand = self._candidates(r, sel)
        ok = cand.any(axis=1)
        sel, cand = sel[ok], cand[ok]
        m = len(sel)
        if m == 0:
            return
        c, t, ts = r.cust[sel], r.tp[sel], r.ts[sel]
        p_true = self.acceptance.p_accept(
            c, t, r.page[sel], self.fat_offer[c], self.fat_type[c], r.complaint_effect[sel]
        )
        ids = self.next_decision + np.arange(m)
        self.next_decision += m
        tr, to = np.nonzero(cand)
        self.truth.add(decision=ids[tr], offer=to, p_accept=p_true[tr, to])

        slate = epsilon_greedy_slates(cand, cat.score, cat.tp_slots[t], p.epsilon, rng)
        row, off = slate.row, slate.offer
        sc, st, sts = c[row], t[row], ts[row]
        self.dec.add(
            decision=ids[row],
            ts=sts,
            tp=st,
            offer=off,
            cust=sc,
            position=slate.position,
            propensity=slate.propensity,
            device=r.device[sel][row],
            page_category=r.page[sel][row],
        )
        p_show = p_true[row, off] * self.position_bias[slate.position - 1]
        accepted = rng.random(len(row)) < p_show
        draw_outcomes(
            self.out,
            p,
            rng,
            ids[row],
            off,
            sts,
            self.tp_realtime[st],
            accepted,
            otype[off],
            ocat[off],
            self.pop.spend_level[sc],
            self.fat_offer[sc, off],
        )
        email_rows = self.tp_email[st] & (slate.position == 1)
        opens = email_rows & (
            accepted | (rng.random(len(row)) < 0.25 + self.pop.channel_habit[sc, 2])
        )
        self._interactions(
            sc[opens],
            sts[opens] + 60 + rng.integers(0, 6 * 3600, int(opens.sum())),
            st[opens],
            EV["email_open"],
        )

        # state updates: each customer appears once per round; offers once per slate
        self.fat_offer[sc, off] += 1.0
        np.add.at(self.fat_type, (sc, otype[off]), 1.0)
        if len(self.capped):
            col = np.searchsorted(self.capped, off)
            hit = (col < len(self.capped)) & (
                self.capped[np.minimum(col, len(self.capped) - 1)] == off
            )
            self.today_shown[sc[hit], col[hit]] += 1

    def _end_of_day(self, d: int, events: DayEvents) -> None:
        if len(self.capped):
            for w_days in self.windows:
                self.prev_sum[w_days] += self.today_shown
                leaving = d - w_days + 1  # the day that drops out of tomorrow's window
                if leaving >= 0:
                    self.prev_sum[w_days] -= (
                        self.ring[leaving % self.max_w] if leaving != d else self.today_shown
                    )
            self.ring[d % self.max_w] = self.today_shown
            self.today_shown[:] = 0
        self.fat_offer *= self.fatigue_decay
        self.fat_type *= self.fatigue_decay
        np.add.at(self.order_count, events.purchase_cust, 1)
        np.add.at(self.total_spend, events.purchase_cust, events.purchase_amount)
        if len(events.complaint_cust):
            day0 = self.catalog.start_s + d * DAY
            self.last_complaint[events.complaint_cust] = day0 + events.complaint_keys % DAY
        self.prev_day_buyers = np.unique(events.purchase_cust)


def simulate_block(
    catalog: Catalog,
    pop: Population,
    params: SimParams,
    days: int,
    rng: np.random.Generator,
) -> BlockOutput:
    """Simulate ``days`` days for one block of customers (local decision ids from 0)."""
    return _BlockSimulator(catalog, pop, params, rng).run(days)
