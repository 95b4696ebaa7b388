"""``already_accepted``: the customer already accepted or converted on the offer."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from recsys.eligibility.base import Check, EligibilityInput, NamedOffersCheck


class AlreadyAccepted(NamedOffersCheck):
    name = Check.ALREADY_ACCEPTED
    detail = "customer already accepted it"

    def named(self, inp: EligibilityInput) -> Sequence[Collection[str]]:
        return [history.accepted for history in inp.histories]
