"""Sticky, deterministic assignment of units (customers or anonymous visitors) to arms.

A unit is hashed with a salt into :data:`BUCKETS` buckets by BLAKE2b (hashlib): the same unit
lands in the same bucket in every process and on every machine, unlike Python's ``hash()``.

Two hashes place a request:

1. the **layer** bucket, ``bucket("layer:" + layer, unit)``: every running experiment of a
   layer owns a disjoint range of the layer's buckets (given when it starts, see
   :func:`allocate_range`), so experiments of one layer never share a unit;
2. the **arm** bucket, ``bucket(salt, unit)``: the served arms split 0..BUCKETS by their
   shares, in definition order.

An arm is a complete decision recipe, so one request is decided by at most one experiment:
experiments that share a touchpoint must share a layer (the store refuses to start one that
does not), which makes them mutually exclusive.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from experiments.definition import BUCKETS, ArmSpec, Experiment
from recsys.errors import ConfigError


def bucket(salt: str, unit: str) -> int:
    """The bucket (0..BUCKETS-1) of ``unit`` under ``salt``; the same in every process.

    Examples
    --------
    >>> bucket("exp-1", "c42") == bucket("exp-1", "c42")
    True
    >>> 0 <= bucket("exp-1", "c42") < BUCKETS
    True
    """
    digest = hashlib.blake2b(f"{salt}\x1f{unit}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def layer_salt(layer: str) -> str:
    return f"layer:{layer}"


def allocate_range(traffic: float, taken: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The first free range of ``round(traffic * BUCKETS)`` layer buckets, given the ranges
    (start, end) of the layer's running experiments.

    Raises
    ------
    ConfigError
        The layer has no free range that large.
    """
    size = max(1, round(traffic * BUCKETS))
    start = 0
    for lo, hi in sorted(taken):
        if lo - start >= size:
            break
        start = max(start, hi)
    if start + size > BUCKETS:
        free = BUCKETS - sum(hi - lo for lo, hi in taken)
        raise ConfigError(
            f"`traffic` must fit in the layer's free buckets ({free} of {BUCKETS} free, in "
            f"ranges), got {traffic:g} ({size} buckets); stop an experiment of the layer or "
            "lower `traffic`"
        )
    return start, start + size


@dataclass(frozen=True)
class Placement:
    """A running experiment and the layer buckets it owns."""

    experiment: Experiment
    buckets: tuple[int, int]


@dataclass(frozen=True)
class Assignment:
    """Where one request landed: the experiment (index in the assigner) and its arm."""

    experiment: int
    arm: ArmSpec


class Assigner:
    """Assigns (touchpoint, unit) to an arm of a running experiment, or to none.

    Built once per change of the running set; :meth:`assign` is the per-request path (a dict
    lookup for touchpoints without experiments, two hashes otherwise).

    Raises
    ------
    ConfigError
        Two placements share a touchpoint but not a layer, or overlap in a layer.
    """

    def __init__(self, placements: Sequence[Placement]):
        self.placements = tuple(placements)
        # touchpoint -> (layer salt, range starts, range ends, placement index)
        by_touchpoint: dict[str, tuple[str, list[tuple[int, int, int]]]] = {}
        for k, placement in enumerate(self.placements):
            exp = placement.experiment
            for tp in exp.touchpoints:
                salt, ranges = by_touchpoint.setdefault(tp, (layer_salt(exp.layer), []))
                if salt != layer_salt(exp.layer):
                    other = self.placements[ranges[0][2]].experiment
                    raise ConfigError(
                        f"`layer` of experiment {exp.name} must be {other.layer!r} (experiment "
                        f"{other.name} also decides touchpoint {tp}), got {exp.layer!r}"
                    )
                ranges.append((*placement.buckets, k))
        self._layers: dict[str, tuple[str, list[int], list[tuple[int, int, int]]]] = {}
        for tp, (salt, ranges) in by_touchpoint.items():
            ranges.sort()
            for (_, hi, a), (lo, _, b) in itertools.pairwise(ranges):
                if lo < hi:
                    raise ConfigError(
                        f"experiments {self.placements[a].experiment.name} and "
                        f"{self.placements[b].experiment.name} must own disjoint buckets of "
                        f"layer {self.placements[a].experiment.layer!r}, got overlapping ranges"
                    )
            self._layers[tp] = (salt, [lo for lo, _, _ in ranges], ranges)
        # per placement: its dates and salt (read per request), cumulative bucket bounds of
        # its served arms
        self._windows = [
            (p.experiment.start, p.experiment.end, p.experiment.assignment_salt)
            for p in self.placements
        ]
        self._arms: list[tuple[list[int], list[ArmSpec]]] = []
        for placement in self.placements:
            served = [a for a in placement.experiment.arms if a.served]
            bounds, total = [], 0.0
            for arm in served:
                total += arm.share
                bounds.append(min(BUCKETS, round(total * BUCKETS)))
            bounds[-1] = BUCKETS
            self._arms.append((bounds, served))

    def __bool__(self) -> bool:
        return bool(self.placements)

    def assign(self, touchpoint_id: str, unit: str, now: datetime) -> Assignment | None:
        """The experiment and arm deciding ``unit`` at ``touchpoint_id`` now, if any."""
        layer = self._layers.get(touchpoint_id)
        if layer is None:
            return None
        salt, starts, ranges = layer
        b = bucket(salt, unit)
        at = bisect.bisect_right(starts, b) - 1
        if at < 0:
            return None
        lo, hi, k = ranges[at]
        if not (lo <= b < hi):
            return None
        start, end, salt = self._windows[k]
        if (start is not None and now < start) or (end is not None and now >= end):
            return None
        bounds, served = self._arms[k]
        return Assignment(k, served[bisect.bisect_right(bounds, bucket(salt, unit))])
