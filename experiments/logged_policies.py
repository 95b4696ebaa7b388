"""Compare two logged policies on the same touchpoints (``recsys evaluate-logs``).

A round is one shown offer (one ``decisions`` row); it is positive when an outcome of the
chosen types follows it within the attribution window (training's label rule). Per touchpoint:

- each policy's rate (e.g. click-through rate) with its interval, their difference with its
  interval and p-value, the relative lift (``experiments.proportions``);
- off-policy: each policy's value estimated from the OTHER policy's log by IPS and SNIPS
  (``training.ope``), with the rounds and positives behind it, the effective sample size of the
  importance weights and the largest weight. The target policy's action distribution is its
  share of each offer at each position in its own log, so this is exact for policies that do
  not read the context (uniform random, Bernoulli Thompson sampling as in the Open Bandit
  Dataset) and an average policy otherwise. An estimate whose interval misses the policy's
  observed rate points at wrong propensities or a policy that reads the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from experiments.proportions import Comparison, Rate
from recsys.contract import OUTCOMES
from recsys.errors import ConfigError, NotFoundError
from training.ope import IPS, SNIPS, Estimate, Rounds, estimate_many

# An off-policy estimate behind fewer positives or a smaller effective sample size is "weak".
MIN_POSITIVES = 10
MIN_ESS = 100
ROUND_COLUMNS = ("touchpoint_id", "policy", "position", "offer_id", "propensity", "reward")

_ROUNDS_SQL = """
SELECT d.touchpoint_id, d.policy, d.position, d.offer_id, d.propensity,
       EXISTS (
           SELECT 1 FROM outcomes o
           WHERE o.decision_id = d.decision_id AND o.offer_id = d.offer_id
             AND list_contains(?, o.outcome)
             AND o.ts >= d.ts AND o.ts <= d.ts + to_seconds(?)
       ) AS reward
FROM decisions d
WHERE d.policy IN (?, ?)
ORDER BY d.ts, d.decision_id, d.offer_id
"""


def read_rounds(
    con: duckdb.DuckDBPyConnection,
    policies: tuple[str, str],
    *,
    positive_outcomes: Sequence[str] = ("click",),
    attribution_days: float = 7,
) -> pd.DataFrame:
    """The warehouse's rounds of two policies, shape (n_rounds, 6): ``ROUND_COLUMNS``.

    Raises
    ------
    ConfigError
        If an outcome is not one of the contract's or ``attribution_days`` is not > 0.
    NotFoundError
        If a policy logged no decision (the message lists the logged policies).
    """
    bad = [o for o in positive_outcomes if o not in OUTCOMES]
    if not positive_outcomes or bad:
        raise ConfigError(
            f"`outcome` must be among {', '.join(OUTCOMES)}, got {', '.join(positive_outcomes)}"
        )
    if not attribution_days > 0:
        raise ConfigError(f"`attribution_days` must be > 0, got {attribution_days}")
    logged = dict(
        con.execute(
            "SELECT coalesce(policy, '<none>'), count(*) FROM decisions GROUP BY ALL ORDER BY 1"
        ).fetchall()
    )
    missing = [p for p in policies if p not in logged]
    if missing:
        found = ", ".join(f"{p} ({n:,} rows)" for p, n in logged.items()) or "no decisions"
        raise NotFoundError(
            f"policy {missing[0]!r} logged no decision; decisions.policy has {found}"
        )
    seconds = float(attribution_days) * 86_400
    frame = con.execute(_ROUNDS_SQL, [list(positive_outcomes), seconds, *policies]).fetchdf()
    return frame.assign(reward=frame["reward"].astype(np.float64))


@dataclass(frozen=True)
class OffPolicy:
    """``target``'s value estimated on the log of ``log_of``, with its diagnostics."""

    target: str
    log_of: str
    ips: Estimate
    snips: Estimate
    rounds: int  # rounds of the log with a propensity
    matched: int  # rounds the target policy could have shown (weight > 0)
    positives: int  # positive rounds among the matched ones
    effective_sample_size: float
    max_weight: float
    observed: float  # the target policy's own observed rate

    @property
    def covers_observed(self) -> bool:
        return self.ips.covers(self.observed)


@dataclass(frozen=True)
class TouchpointComparison:
    touchpoint_id: str
    policy: Rate
    baseline: Rate
    comparison: Comparison
    off_policy: tuple[OffPolicy, ...]
    note: str = ""  # why an off-policy estimate is missing


@dataclass(frozen=True)
class LogComparison:
    """``policy`` against ``baseline`` at every touchpoint where both logged rounds."""

    policy: str
    baseline: str
    positive_outcomes: tuple[str, ...]
    confidence: float
    touchpoints: tuple[TouchpointComparison, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (NaN becomes None)."""

        def clean(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            if isinstance(value, float) and not np.isfinite(value):
                return None
            return value

        out = asdict(self)
        for tp, row in zip(self.touchpoints, out["touchpoints"], strict=True):
            for side in ("policy", "baseline"):
                row[side]["value"] = getattr(tp, side).value
            for off, off_row in zip(tp.off_policy, row["off_policy"], strict=True):
                off_row["covers_observed"] = off.covers_observed
        return clean(out)

    def format(self) -> str:
        """The comparison as text tables: rates and their difference, then off-policy."""
        label = "+".join(self.positive_outcomes)
        head = "CTR" if self.positive_outcomes == ("click",) else "rate"
        level = f"{self.confidence:.0%}"
        rates = [("touchpoint", "policy", "rounds", f"{label}s", f"{head} [{level} interval]")]
        diffs = [("touchpoint", f"{self.policy} - {self.baseline} [{level}]", "p-value", "lift")]
        offs = [
            ("touchpoint", "target", "on log of", "IPS", "SNIPS", "observed", "matched",
             f"{label}s", "ESS", "max weight", "")
        ]  # fmt: skip
        notes = []
        for tp in self.touchpoints:
            for name, rate in ((self.policy, tp.policy), (self.baseline, tp.baseline)):
                rates.append(
                    (tp.touchpoint_id, name, f"{rate.rounds:,}", f"{rate.positives:,}",
                     f"{_pct(rate.value)} {_interval(rate.lower, rate.upper, _pct)}")
                )  # fmt: skip
            c = tp.comparison
            lift = (  # no lift without a baseline rate, and no interval of it either
                "n/a" if np.isnan(c.lift)
                else f"{_signed_pct(c.lift)} {_interval(c.lift_lower, c.lift_upper, _signed_pct)}"
            )  # fmt: skip
            diffs.append(
                (tp.touchpoint_id,
                 f"{_pp(c.difference)} {_interval(c.difference_lower, c.difference_upper, _pp)}",
                 f"{c.p_value:.3f}",
                 lift)
            )  # fmt: skip
            for o in tp.off_policy:
                weak = o.positives < MIN_POSITIVES or o.effective_sample_size < MIN_ESS
                offs.append(
                    (tp.touchpoint_id, o.target, o.log_of,
                     f"{_pct(o.ips.value)} {_interval(o.ips.lower, o.ips.upper, _pct)}",
                     f"{_pct(o.snips.value)} {_interval(o.snips.lower, o.snips.upper, _pct)}",
                     f"{_pct(o.observed)}{'' if o.covers_observed else ' (outside IPS)'}",
                     f"{o.matched:,}/{o.rounds:,}", f"{o.positives:,}",
                     f"{o.effective_sample_size:,.0f}", f"{o.max_weight:,.1f}",
                     "weak" if weak else "")
                )  # fmt: skip
            if tp.note:
                notes.append(f"{tp.touchpoint_id}: {tp.note}")
        lines = [
            f"{self.policy} vs {self.baseline}: a round is one shown offer; positive = {label} "
            f"within the attribution window; {level} intervals (Wilson; difference "
            "Agresti-Caffo; lift log ratio)",
            "",
            *_aligned(rates),
            "",
            *_aligned(diffs),
            "",
            "off-policy: each policy's value estimated on the other's log (its action shares "
            "per position; paired bootstrap intervals)",
            *_aligned(offs),
            f"weak = fewer than {MIN_POSITIVES} {label}s behind the estimate or an effective "
            f"sample size (ESS) under {MIN_ESS}",
            *notes,
        ]
        return "\n".join(line.rstrip() for line in lines)


def _pct(value: float) -> str:
    return f"{value:.3%}"


def _pp(value: float) -> str:
    return f"{value * 100:+.3f} pp"


def _signed_pct(value: float) -> str:
    return f"{value:+.0%}"


def _interval(lower: float, upper: float, fmt: Any) -> str:
    if np.isnan(lower) or np.isnan(upper):
        return "[n/a]"
    return f"[{fmt(lower)}, {fmt(upper)}]"


def _aligned(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]


def _action_shares(log: pd.DataFrame) -> pd.Series:
    """Share of each offer among a log's rounds at each position, indexed (position, offer_id)."""
    counts = log.groupby(["position", "offer_id"]).size()
    return counts / counts.groupby(level="position").transform("sum")


def _off_policy(
    target: str,
    target_log: pd.DataFrame,
    log_of: str,
    log: pd.DataFrame,
    observed: float,
    *,
    confidence: float,
    bootstrap_samples: int,
    seed: int,
) -> OffPolicy:
    shares = _action_shares(target_log)
    keys = pd.MultiIndex.from_arrays([log["position"], log["offer_id"]])
    target_prob = shares.reindex(keys).fillna(0.0).to_numpy()
    reward = log["reward"].to_numpy(dtype=np.float64)
    zeros = np.zeros_like(reward)
    rounds = Rounds(reward, log["propensity"].to_numpy(np.float64), target_prob, zeros, zeros)
    ips, snips = estimate_many(
        [(IPS(), rounds), (SNIPS(), rounds)],
        bootstrap_samples=bootstrap_samples,
        confidence=confidence,
        seed=seed,
    )
    behind = ips.diagnostics  # IPS applies the raw weights: what both estimates rest on
    assert behind is not None  # estimate_many gives every estimate its diagnostics
    return OffPolicy(
        target=target,
        log_of=log_of,
        ips=ips,
        snips=snips,
        rounds=len(log),
        matched=behind.matched,
        positives=behind.positives,
        effective_sample_size=behind.effective_sample_size,
        max_weight=behind.max_weight,
        observed=observed,
    )


def compare_logged_policies(
    rounds: pd.DataFrame,
    policy: str,
    baseline: str,
    *,
    positive_outcomes: Sequence[str] = ("click",),
    confidence: float = 0.95,
    bootstrap_samples: int = 500,
    seed: int = 0,
) -> LogComparison:
    """Compare ``policy`` with ``baseline`` per touchpoint on ``rounds`` (see :func:`read_rounds`).

    Parameters
    ----------
    rounds : DataFrame, shape (n_rounds, 6)
        ``ROUND_COLUMNS``; ``reward`` 0/1, ``propensity`` may be missing (then no off-policy
        estimate on that log), ``position`` may be missing (one position).

    Raises
    ------
    ConfigError
        If ``policy`` equals ``baseline`` or no touchpoint has rounds of both.
    """
    if policy == baseline:
        raise ConfigError(f"`baseline` must differ from `policy`, got {baseline!r} for both")
    missing = [c for c in ROUND_COLUMNS if c not in rounds.columns]
    if missing:
        raise ConfigError(f"`rounds` must have the columns {missing}, got {list(rounds.columns)}")
    rounds = rounds.assign(position=rounds["position"].fillna(0))
    results = []
    for touchpoint, at in rounds.groupby("touchpoint_id", sort=True):
        logs = {p: at[at["policy"] == p] for p in (policy, baseline)}
        if any(log.empty for log in logs.values()):
            continue
        rates = {
            p: Rate.of(int(log["reward"].sum()), len(log), confidence) for p, log in logs.items()
        }
        estimates, notes = [], []
        for target, log_of in ((policy, baseline), (baseline, policy)):
            log = logs[log_of][logs[log_of]["propensity"].notna()]
            if log.empty:
                notes.append(f"{log_of} logged no propensity: no estimate of {target} on its log")
                continue
            estimates.append(
                _off_policy(
                    target,
                    logs[target],
                    log_of,
                    log,
                    rates[target].value,
                    confidence=confidence,
                    bootstrap_samples=bootstrap_samples,
                    seed=seed,
                )
            )
        results.append(
            TouchpointComparison(
                str(touchpoint),
                rates[policy],
                rates[baseline],
                Comparison.of(rates[policy], rates[baseline], confidence),
                tuple(estimates),
                "; ".join(notes),
            )
        )
    if not results:
        raise ConfigError(
            f"no touchpoint has rounds of both {policy!r} and {baseline!r}; touchpoints per "
            f"policy: {rounds.groupby('policy')['touchpoint_id'].unique().to_dict()}"
        )
    return LogComparison(policy, baseline, tuple(positive_outcomes), confidence, tuple(results))
