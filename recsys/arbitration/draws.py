"""Exploration's random numbers: one counter-based hash of (seed, customer, touchpoint,
time, position), so every draw is reproducible and independent of batch size or order.

A decision's key is the BLAKE2b hash of (seed, customer, touchpoint, decision time); draw
``c`` of a decision is SplitMix64 of its key and ``c``, mapped to [0, 1). No generator state
exists, so one request alone and the same request inside a batch of any size draw the same
numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cached_property

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser of each value (uint64 -> uint64; array arithmetic wraps)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _key(seed: int, customer_id: str, touchpoint_id: str, now_us: int) -> int:
    text = f"{seed}|{customer_id}|{touchpoint_id}|{now_us}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


class Draws:
    """Uniform draws in [0, 1) for n decisions, ``uniform(c)`` the c-th of each.

    Parameters
    ----------
    seed : int
    customer_ids, touchpoint_ids : sequences of str, length n
    now_us : int
        Decision time, microseconds since the epoch.
    """

    def __init__(
        self, seed: int, customer_ids: Sequence[str], touchpoint_ids: Sequence[str], now_us: int
    ):
        if len(customer_ids) != len(touchpoint_ids):
            raise ValueError(
                f"`touchpoint_ids` must have one entry per customer ({len(customer_ids)}), "
                f"got {len(touchpoint_ids)}"
            )
        self.seed = seed
        self.customer_ids = customer_ids
        self.touchpoint_ids = touchpoint_ids
        self.now_us = now_us

    def __len__(self) -> int:
        return len(self.customer_ids)

    @cached_property
    def keys(self) -> np.ndarray:
        """One uint64 key per decision, shape (n,) (computed on the first draw)."""
        keys = [
            _key(self.seed, c, t, self.now_us)
            for c, t in zip(self.customer_ids, self.touchpoint_ids, strict=True)
        ]
        return np.array(keys, dtype=np.uint64)

    def uniform(self, counters: int | np.ndarray) -> np.ndarray:
        """Draws number ``counters`` of every decision: shape (n,) for one counter, (n, c)
        for an array of c counters; float64 in [0, 1)."""
        c = np.asarray(counters, dtype=np.uint64).reshape(-1)
        mixed = splitmix64(np.add.outer(self.keys, (c + np.uint64(1)) * _GOLDEN))
        u = (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        return u.reshape(len(self)) if np.ndim(counters) == 0 else u

    def take(self, rows: np.ndarray) -> Draws:
        """The draws of the decisions at ``rows``."""
        idx = rows.tolist()
        return Draws(
            self.seed,
            [self.customer_ids[i] for i in idx],
            [self.touchpoint_ids[i] for i in idx],
            self.now_us,
        )
