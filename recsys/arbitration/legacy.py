"""Arbitration: priority of eligible offers, the slate, and exploration with propensities.

Priority = P(accept) x value x weight. The greedy slate is the ``limit`` offers of highest
priority (ties: catalogue order). Epsilon-greedy exploration fills each position from the
offers still available: with probability ``1 - epsilon`` the best of them, with probability
``epsilon`` one of them uniformly at random. The propensity logged for the offer served at
position ``k`` is its probability of being chosen there given the offers served at
positions ``< k`` (for a one-slot touchpoint, simply its probability of being shown):

    propensity = (1 - epsilon) * [offer is the best remaining] + epsilon / n_remaining

Propensities are computed over the offers left after every eligibility rule, so they are
the true probabilities of the logging policy, as off-policy evaluation needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


def priorities(p_accept: np.ndarray, value: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Priority of each offer; all arrays shape (n,) -> (n,)."""
    return p_accept * value * weight


def greedy_order(priority: np.ndarray) -> np.ndarray:
    """Indices by decreasing priority, ties in input order; shape (n,) -> (n,)."""
    return np.argsort(-priority, kind="stable")


@dataclass(frozen=True)
class Slate:
    """The offers chosen for one decision, best position first.

    Attributes
    ----------
    positions : ndarray of int, shape (k,)
        Indices into the eligible offers.
    propensity : ndarray of float, shape (k,)
        Probability of choosing that offer at that position (given earlier positions).
    explored : ndarray of bool, shape (k,)
        True where the offer is not the greedy choice at that position.
    position_probabilities : tuple of ndarray, each shape (n,)
        The full choice distribution over eligible offers at each position (zero for
        offers already placed); each sums to 1. Kept for traces and tests.
    """

    positions: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    position_probabilities: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class EpsilonGreedy:
    """Epsilon-greedy slate policy.

    Parameters
    ----------
    epsilon : float in [0, 1]
        Share of positions filled by a uniformly random remaining offer. 0 = greedy, fully
        deterministic, every propensity 1.

    Examples
    --------
    >>> policy = EpsilonGreedy(epsilon=0.0)
    >>> slate = policy.select(np.array([0.1, 0.3, 0.2]), limit=2, rng=None)
    >>> slate.positions.tolist(), slate.propensity.tolist()
    ([1, 2], [1.0, 1.0])
    """

    epsilon: float = 0.0
    kind: ClassVar[str] = "epsilon_greedy"

    def __post_init__(self) -> None:
        if not (0.0 <= self.epsilon <= 1.0):
            raise ValueError(f"`epsilon` must be in [0, 1], got {self.epsilon}")

    @property
    def name(self) -> str:
        return "greedy" if self.epsilon == 0 else f"epsilon_greedy(epsilon={self.epsilon:g})"

    @property
    def explores(self) -> bool:
        return self.epsilon > 0

    def select(
        self,
        priority: np.ndarray,
        limit: int,
        rng: np.random.Generator | None,
        with_distributions: bool = False,
    ) -> Slate:
        """Choose up to ``limit`` offers.

        Parameters
        ----------
        priority : ndarray of float, shape (n,)
        limit : int >= 1
        rng : numpy Generator, required when ``epsilon > 0``
        with_distributions : bool
            Also return the choice distribution of every position.

        Returns
        -------
        Slate with k = min(limit, n) positions.

        Raises
        ------
        ValueError
            If ``limit < 1`` or an exploring policy gets no ``rng``.
        """
        if limit < 1:
            raise ValueError(f"`limit` must be >= 1, got {limit}")
        n = priority.shape[0]
        k = min(limit, n)
        order = greedy_order(priority)
        if not self.explores:
            dists: tuple[np.ndarray, ...] = ()
            if with_distributions:
                dists = tuple(_one_hot(n, order[i]) for i in range(k))
            return Slate(order[:k], np.ones(k), np.zeros(k, dtype=bool), dists)
        if rng is None:
            raise ValueError("`rng` must be a numpy Generator when epsilon > 0, got None")
        epsilon = self.epsilon
        remaining = order.tolist()  # kept in greedy order: remaining[0] is the best left
        positions: list[int] = []
        propensity: list[float] = []
        explored: list[bool] = []
        dist_list: list[np.ndarray] = []
        for _ in range(k):
            m = len(remaining)
            if with_distributions:
                dist = np.zeros(n)
                dist[remaining] = epsilon / m
                dist[remaining[0]] += 1.0 - epsilon
                dist_list.append(dist)
            pick = int(rng.integers(m)) if rng.random() < epsilon else 0
            positions.append(remaining.pop(pick))
            propensity.append(epsilon / m + (1.0 - epsilon if pick == 0 else 0.0))
            explored.append(pick != 0)
        return Slate(
            np.array(positions, dtype=np.int64),
            np.array(propensity, dtype=np.float64),
            np.array(explored, dtype=bool),
            tuple(dist_list),
        )


def _one_hot(n: int, i: int) -> np.ndarray:
    out = np.zeros(n)
    out[i] = 1.0
    return out


POLICIES: dict[str, type[EpsilonGreedy]] = {EpsilonGreedy.kind: EpsilonGreedy}


def make_policy(kind: str = EpsilonGreedy.kind, **params: float) -> EpsilonGreedy:
    """Build a policy from the registry by ``kind`` (e.g. ``epsilon_greedy``)."""
    try:
        cls = POLICIES[kind]
    except KeyError:
        raise ValueError(
            f"`policy` must be one of {', '.join(sorted(POLICIES))}, got {kind!r}"
        ) from None
    return cls(**params)


# --------------------------------------------------------------------------- many decisions
#
# ``select_many`` is ``select`` for many decisions at once, with the same results: the
# greedy order, the random draws of each decision's generator (numpy's ``default_rng(seed)``,
# i.e. PCG64 seeded through SeedSequence, reproduced with vectorised integer arithmetic for
# large batches), the propensities and the explored flags are those ``select`` gives each
# decision alone.

#: Below this many exploring decisions the draws come from real numpy generators (cheaper
#: for a handful; the vectorised PCG64 costs a fixed few hundred numpy operations).
VECTORISED_DRAWS_FROM = 48
#: Up to this many decisions, ``select_many`` runs ``select`` row by row (fewer numpy calls).
SMALL_BATCH = 8


@dataclass(frozen=True)
class SlateBatch:
    """The slates of many decisions, best position first; padded with -1 past ``k``.

    Attributes
    ----------
    positions : ndarray of int64, shape (n, k_max)
        Column (candidate) index of the offer at each position; -1 past ``k``.
    propensity : ndarray of float64, shape (n, k_max)
    explored : ndarray of bool, shape (n, k_max)
    k : ndarray of int64, shape (n,)
        Positions filled: ``min(limit, eligible offers)``.
    """

    positions: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    k: np.ndarray


def select_many(
    policy: EpsilonGreedy,
    priority: np.ndarray,
    eligible: np.ndarray,
    limits: np.ndarray,
    seeds: np.ndarray | None,
) -> SlateBatch:
    """``policy.select`` for each row of a priority matrix, over the row's eligible columns.

    Parameters
    ----------
    policy : EpsilonGreedy
    priority : ndarray of float64, shape (n, m)
        Priorities; only the eligible cells are read.
    eligible : ndarray of bool, shape (n, m)
    limits : ndarray of int, shape (n,), each >= 1
    seeds : ndarray of uint64, shape (n,), or None
        Each row's generator is ``np.random.default_rng(int(seeds[i]))``; required when the
        policy explores.

    Returns
    -------
    SlateBatch, equal row by row to ``policy.select(priority[i, eligible[i]], limits[i],
    np.random.default_rng(seeds[i]))`` with positions mapped back to columns.
    """
    n = eligible.shape[0]
    limits = np.asarray(limits, dtype=np.int64)
    if n and limits.min() < 1:
        raise ValueError(f"`limit` must be >= 1, got {int(limits.min())}")
    if policy.explores and seeds is None:
        raise ValueError("`seeds` must be given when epsilon > 0, got None")
    n_eligible = np.count_nonzero(eligible, axis=1)
    k = np.minimum(limits, n_eligible)
    k_max = int(k.max()) if n else 0
    if n <= SMALL_BATCH:
        return _select_rows(policy, priority, eligible, limits, seeds, k, k_max)
    picks = np.zeros((n, k_max), dtype=np.int64)
    if policy.explores and k_max:
        assert seeds is not None
        picks = _exploration_picks(policy.epsilon, np.asarray(seeds, np.uint64), k, n_eligible)
    # Cells the greedy top-k by argmax cannot order like a stable sort (NaN or -inf priority).
    key = np.where(eligible, priority, -np.inf)
    odd = eligible & ~(key > -np.inf)
    full = picks.any(axis=1) | odd.any(axis=1)
    positions = np.full((n, k_max), -1, dtype=np.int64)
    rows = np.flatnonzero(~full)
    if rows.size and k_max:
        positions[rows] = _greedy_top(key[rows], k_max)
    rows = np.flatnonzero(full)
    if rows.size:
        positions[rows] = _ordered_picks(priority[rows], eligible[rows], picks[rows], k_max)
    past = np.arange(k_max)[None, :] >= k[:, None]
    positions[past] = -1
    remaining = n_eligible[:, None] - np.arange(k_max)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        propensity = policy.epsilon / remaining + np.where(picks == 0, 1.0 - policy.epsilon, 0.0)
    if not policy.explores:
        propensity = np.ones((n, k_max))
    propensity[past] = np.nan
    explored = (picks != 0) & ~past
    return SlateBatch(positions, propensity, explored, k)


def _select_rows(
    policy: EpsilonGreedy,
    priority: np.ndarray,
    eligible: np.ndarray,
    limits: np.ndarray,
    seeds: np.ndarray | None,
    k: np.ndarray,
    k_max: int,
) -> SlateBatch:
    """``select_many`` of a few rows: ``policy.select`` row by row."""
    n = eligible.shape[0]
    positions = np.full((n, k_max), -1, dtype=np.int64)
    propensity = np.full((n, k_max), np.nan)
    explored = np.zeros((n, k_max), dtype=bool)
    for i in np.flatnonzero(k).tolist():
        idx = np.flatnonzero(eligible[i])
        rng = np.random.default_rng(int(seeds[i])) if seeds is not None else None
        slate = policy.select(priority[i, idx], int(limits[i]), rng)
        size = slate.positions.shape[0]
        positions[i, :size] = idx[slate.positions]
        propensity[i, :size] = slate.propensity
        explored[i, :size] = slate.explored
    return SlateBatch(positions, propensity, explored, k)


def _greedy_top(key: np.ndarray, k_max: int) -> np.ndarray:
    """Top ``k_max`` columns of each row by decreasing key, ties to the lower column.

    ``key`` shape (n, m), finite where eligible and -inf elsewhere -> (n, k_max).
    """
    work = key.copy()
    rows = np.arange(work.shape[0])
    out = np.empty((work.shape[0], k_max), dtype=np.int64)
    for pos in range(k_max):
        best = np.argmax(work, axis=1)  # first maximum: catalogue order on ties
        out[:, pos] = best
        work[rows, best] = -np.inf
    return out


def _ordered_picks(
    priority: np.ndarray, eligible: np.ndarray, picks: np.ndarray, k_max: int
) -> np.ndarray:
    """Columns chosen by ``picks`` (index into the remaining greedy order) at each position."""
    n, m = eligible.shape
    key = np.where(eligible, -priority, np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    # eligible cells first, keeping their order (only moves NaN / -inf priorities)
    order = np.take_along_axis(
        order, np.argsort(~np.take_along_axis(eligible, order, axis=1), axis=1, kind="stable"), 1
    )
    rank = np.zeros((n, k_max), dtype=np.int64)
    for pos in range(k_max):
        r = picks[:, pos].copy()
        # the pick-th rank not taken yet: step over taken ranks in increasing order
        taken = np.sort(rank[:, :pos], axis=1)
        for j in range(pos):
            r += taken[:, j] <= r
        rank[:, pos] = r
    rank = np.minimum(rank, m - 1)  # rows past their k (masked by the caller)
    return np.take_along_axis(order, rank, axis=1)


def _exploration_picks(
    epsilon: float, seeds: np.ndarray, k: np.ndarray, n_eligible: np.ndarray
) -> np.ndarray:
    """Index into the remaining greedy order chosen at each position (0 = the greedy one).

    Reproduces ``select``: at each position ``pos < k[i]`` draw ``rng.random()``; below
    ``epsilon``, ``pick = rng.integers(n_eligible[i] - pos)``. Shape (n, max(k)).
    """
    n = seeds.shape[0]
    k_max = int(k.max())
    picks = np.zeros((n, k_max), dtype=np.int64)
    active = np.flatnonzero(k > 0)
    if active.size < VECTORISED_DRAWS_FROM:
        for i in active.tolist():
            rng = np.random.default_rng(int(seeds[i]))
            for pos in range(int(k[i])):
                if rng.random() < epsilon:
                    picks[i, pos] = int(rng.integers(int(n_eligible[i]) - pos))
        return picks
    streams = _PCG64Streams(seeds[active])
    for pos in range(k_max):
        live = np.flatnonzero(k[active] > pos)
        u = streams.random(live)
        explore = live[u < epsilon]
        if explore.size:
            picks[active[explore], pos] = streams.integers(
                explore, n_eligible[active[explore]] - pos
            )
    return picks


_M32 = np.uint64(0xFFFFFFFF)
_U = np.uint64
_PCG_MULT_HI = _U(2549297995355413924)
_PCG_MULT_LO = _U(4865540595714422341)
# numpy.random.SeedSequence constants
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715


def _hashmix(value: np.ndarray, hash_const: int) -> tuple[np.ndarray, int]:
    value = value ^ _U(hash_const)
    hash_const = (hash_const * _MULT_A) & 0xFFFFFFFF
    value = (value * _U(hash_const)) & _M32
    return value ^ (value >> _U(16)), hash_const


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result = (_U(_MIX_MULT_L) * x - _U(_MIX_MULT_R) * y) & _M32
    return result ^ (result >> _U(16))


def _seed_sequence_state(seeds: np.ndarray) -> list[np.ndarray]:
    """``SeedSequence(seed).generate_state(4, np.uint64)`` for 64-bit seeds; 4 x (n,) uint64.

    A seed below 2**32 has one entropy word where larger ones have two; padding the pool
    with zero words hashes the same as a missing word, so both are handled alike.
    """
    words = [seeds & _M32, seeds >> _U(32), np.zeros_like(seeds), np.zeros_like(seeds)]
    hash_const = _INIT_A
    pool = []
    for word in words:
        mixed, hash_const = _hashmix(word, hash_const)
        pool.append(mixed)
    for src in range(4):
        for dst in range(4):
            if src != dst:
                mixed, hash_const = _hashmix(pool[src], hash_const)
                pool[dst] = _mix(pool[dst], mixed)
    hash_const = _INIT_B
    state = []
    for i in range(8):
        value = pool[i % 4] ^ _U(hash_const)
        hash_const = (hash_const * _MULT_B) & 0xFFFFFFFF
        value = (value * _U(hash_const)) & _M32
        state.append(value ^ (value >> _U(16)))
    return [state[2 * i] | (state[2 * i + 1] << _U(32)) for i in range(4)]


def _mulhi(a: np.ndarray, b: np.uint64) -> np.ndarray:
    """High 64 bits of the 128-bit product of uint64 arrays."""
    a0, a1 = a & _M32, a >> _U(32)
    b0, b1 = b & _M32, b >> _U(32)
    p00, p01, p10 = a0 * b0, a0 * b1, a1 * b0
    mid = (p00 >> _U(32)) + (p01 & _M32) + (p10 & _M32)
    return a1 * b1 + (p01 >> _U(32)) + (p10 >> _U(32)) + (mid >> _U(32))


class _PCG64Streams:
    """``np.random.default_rng(seed)`` for many seeds: ``random()`` and ``integers(m)``.

    State per stream: the 128-bit LCG state and increment as (high, low) uint64 pairs, and
    PCG64's buffered upper half-word for 32-bit draws.
    """

    def __init__(self, seeds: np.ndarray):
        s_hi, s_lo, i_hi, i_lo = _seed_sequence_state(seeds)
        self.inc_hi = (i_hi << _U(1)) | (i_lo >> _U(63))
        self.inc_lo = (i_lo << _U(1)) | _U(1)
        # pcg_setseq_128_srandom_r: state = 0; step; state += seed; step
        lo = self.inc_lo + s_lo
        hi = self.inc_hi + s_hi + (lo < s_lo).astype(np.uint64)
        self.hi, self.lo = self._step(hi, lo, self.inc_hi, self.inc_lo)
        self.has32 = np.zeros(seeds.shape[0], dtype=bool)
        self.buf32 = np.zeros(seeds.shape[0], dtype=np.uint64)

    @staticmethod
    def _step(hi, lo, inc_hi, inc_lo):
        new_lo = lo * _PCG_MULT_LO
        new_hi = _mulhi(lo, _PCG_MULT_LO) + lo * _PCG_MULT_HI + hi * _PCG_MULT_LO
        out_lo = new_lo + inc_lo
        return new_hi + inc_hi + (out_lo < inc_lo).astype(np.uint64), out_lo

    def next64(self, rows: np.ndarray) -> np.ndarray:
        hi, lo = self._step(self.hi[rows], self.lo[rows], self.inc_hi[rows], self.inc_lo[rows])
        self.hi[rows], self.lo[rows] = hi, lo
        x = hi ^ lo
        rot = hi >> _U(58)
        return (x >> rot) | (x << ((_U(64) - rot) & _U(63)))

    def random(self, rows: np.ndarray) -> np.ndarray:
        return (self.next64(rows) >> _U(11)).astype(np.float64) * (1.0 / 9007199254740992.0)

    def next32(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(rows.shape[0], dtype=np.uint64)
        buffered = self.has32[rows]
        out[buffered] = self.buf32[rows[buffered]]
        self.has32[rows[buffered]] = False
        fresh = rows[~buffered]
        if fresh.size:
            raw = self.next64(fresh)
            out[~buffered] = raw & _M32
            self.buf32[fresh] = raw >> _U(32)
            self.has32[fresh] = True
        return out

    def integers(self, rows: np.ndarray, high: np.ndarray) -> np.ndarray:
        """``rng.integers(high)`` per row (Lemire's method on 32-bit draws, as numpy)."""
        high = np.asarray(high, dtype=np.uint64)
        out = np.zeros(rows.shape[0], dtype=np.int64)
        todo = np.flatnonzero(high > 1)  # integers(1) is 0 and draws nothing
        threshold = (_U(2**32) - high) % np.maximum(high, _U(1))
        while todo.size:
            m = self.next32(rows[todo]) * high[todo]
            leftover = m & _M32
            retry = leftover < threshold[todo]
            done = todo[~retry]
            out[done] = (m[~retry] >> _U(32)).astype(np.int64)
            todo = todo[retry]
        return out
