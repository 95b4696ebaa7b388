"""``already_accepted``: the customer already accepted or converted on the offer (unless the
offer is ``repeatable``)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from recsys.eligibility.base import Check, EligibilityInput, NamedOffersCheck


class AlreadyAccepted(NamedOffersCheck):
    """Removes the offers a customer accepted or converted on, except ``repeatable`` ones."""

    name = Check.ALREADY_ACCEPTED
    detail = "customer already accepted it"

    def named(self, inp: EligibilityInput) -> Sequence[Collection[str]]:
        repeatable = inp.offers.offer_ids[inp.offers.repeatable]
        if not repeatable.size:
            return [history.accepted for history in inp.histories]
        again = frozenset(repeatable.tolist())
        return [history.accepted - again for history in inp.histories]
