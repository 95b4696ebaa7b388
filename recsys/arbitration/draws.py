"""Exploration's random numbers: one counter-based hash of (seed, customer, touchpoint,
time, position), so every draw is reproducible and independent of batch size or order.

Draw ``c`` of a decision is 64 bits of the BLAKE2b-512 digest of (seed, customer,
touchpoint, decision time, ``c // 8``) — number ``c % 8`` of the digest's eight — mapped to
[0, 1). No generator state exists, so one request alone and the same request inside a batch
of any size draw the same numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

#: Draws per digest (BLAKE2b-512: 8 x 64 bits).
PER_DIGEST = 8
_TO_UNIT = 1.0 / (1 << 53)


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

    def uniform(self, counters: int | np.ndarray) -> np.ndarray:
        """Draws number ``counters`` of every decision: shape (n,) for one counter, (n, c)
        for an array of c counters; float64 in [0, 1)."""
        c = np.asarray(counters, dtype=np.int64)
        blocks = int(c.max()) // PER_DIGEST + 1 if c.size else 0
        bits = self._bits(blocks)
        return (bits[:, c] >> np.uint64(11)).astype(np.float64) * _TO_UNIT

    def _bits(self, blocks: int) -> np.ndarray:
        """The first ``8 * blocks`` 64-bit draws of every decision, shape (n, 8 * blocks)."""
        raw = b"".join(
            hashlib.blake2b(f"{self.seed}|{c}|{t}|{self.now_us}|{block}".encode()).digest()
            for c, t in zip(self.customer_ids, self.touchpoint_ids, strict=True)
            for block in range(blocks)
        )
        return np.frombuffer(raw, dtype="<u8").reshape(len(self), PER_DIGEST * blocks)

    def take(self, rows: np.ndarray) -> Draws:
        """The draws of the decisions at ``rows``."""
        idx = rows.tolist()
        return Draws(
            self.seed,
            [self.customer_ids[i] for i in idx],
            [self.touchpoint_ids[i] for i in idx],
            self.now_us,
        )
