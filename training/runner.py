"""``recsys train`` end to end: warehouse -> training set -> models -> evaluation -> MLflow."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from recsys.errors import NotFoundError
from recsys.settings import Settings
from recsys.warehouse import connect
from training.config import TrainingConfig
from training.pipeline import TrainingResult, train_and_evaluate
from training.served import SERVED
from training.tracking import LoggedRun, format_policy_table, log_training

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    result: TrainingResult
    logged: LoggedRun

    def format(self) -> str:
        """The run's headline numbers, for the terminal."""
        r = self.result
        fit = ", ".join(f"{k} {v:g}" for k, v in r.model.fit_summary().items())
        lines = [
            f"trained {r.main} on {r.sizes.get('train', 0):,} examples (valid "
            f"{r.sizes.get('valid', 0):,}, test {r.sizes.get('test', 0):,})"
            + (f"; {fit}" if fit else ""),
            "",
            f"{'model':<20} {'auc':>7} {'logloss':>8} {'ece':>7} {'hit@1':>7} {'ndcg@3':>7}",
        ]
        for name, values in r.offline.items():

            def fmt(key: str, values=values) -> str:
                value = values.get(key, math.nan)
                return "-" if math.isnan(value) else f"{value:.4f}"

            lines.append(
                f"{name:<20} {fmt('auc'):>7} {fmt('logloss'):>8} {fmt('ece'):>7} "
                f"{fmt('hit_at_1'):>7} {fmt('ndcg_at_3'):>7}"
            )
        if r.policy is not None:
            lines += ["", format_policy_table(r).rstrip()]
            wanted = r.config.evaluation.logging_policy
            who = f"the logged {wanted} policy" if wanted else "the logging policy"
            lifts = r.policy.policies[r.main].lifts
            snips, dr = lifts["snips"], lifts["dr"]
            lines.append(
                f"\n{r.main} policy vs {who} (paired bootstrap): SNIPS {snips.value:.2f}x "
                f"[{snips.lower:.2f}, {snips.upper:.2f}], DR {dr.value:.2f}x "
                f"[{dr.lower:.2f}, {dr.upper:.2f}]"
            )
            served = r.policy.policies.get(SERVED)
            if served is not None and r.served is not None:
                snips, dr = served.lifts["snips"], served.lifts["dr"]
                lines.append(
                    f"served policy ({r.main}, {r.served.policy}, P x value x weight over the "
                    f"eligible offers) vs {who}: SNIPS {snips.value:.2f}x "
                    f"[{snips.lower:.2f}, {snips.upper:.2f}], DR {dr.value:.2f}x "
                    f"[{dr.lower:.2f}, {dr.upper:.2f}]"
                )
            lines.append(_objective_line(r))
        lines += [
            "",
            f"MLflow run {self.logged.run_id}"
            + (
                f", registered model version {self.logged.model_version}"
                if self.logged.model_version
                else ""
            ),
        ]
        return "\n".join(lines)


def _objective_line(r: TrainingResult) -> str:
    """The served policy's value on the configured objective, next to the logging policy's."""
    assert r.policy is not None
    objective = r.config.evaluation.objective
    served = r.policy.policies.get(SERVED) or r.policy.policies[r.main]
    if objective == "revenue":
        estimate, logged = served.estimates["snips_revenue"], r.policy.logging_revenue
    else:
        estimate, logged = served.estimates["snips"], r.policy.logging
    line = (
        f"objective {objective}: {served.policy} SNIPS {estimate.value:.4f} "
        f"[{estimate.lower:.4f}, {estimate.upper:.4f}] per decision, logging policy "
        f"{logged.value:.4f}"
    )
    oracle, chance, true = r.policy.oracle, r.policy.random, served.true
    if true is not None and oracle is not None and chance is not None:
        pairs = {
            "acceptance": (true.acceptance, chance.acceptance, oracle.acceptance),
            "revenue": (true.revenue, chance.revenue, oracle.revenue),
        }
        value, low, high = pairs[objective]
        if value is not None and low is not None and high is not None and high > low:
            line += (
                f"; true {value:.4f}, {(value - low) / (high - low):.2f} of the way to the oracle"
            )
    return line


def run_training(
    config: TrainingConfig, settings: Settings, artifact_location: str | None = None
) -> RunOutcome:
    """Train on the warehouse at ``settings.warehouse_path`` and log the run to MLflow.

    The served policy is evaluated with ``evaluation.served_epsilon``, or when that is not
    set with the service's ``serving.epsilon`` (logged as the param either way)."""
    from training.warehouse_data import build_inputs

    if config.evaluation.served_epsilon is None:  # the service's exploration
        evaluation = config.evaluation.model_copy(
            update={"served_epsilon": settings.serving.epsilon}
        )
        config = config.model_copy(update={"evaluation": evaluation})
    path = Path(settings.warehouse_path)
    if not path.is_file():
        raise NotFoundError(
            f"warehouse {str(path)!r} does not exist; load data first with "
            f"`recsys data load DIR --db {path}`"
        )
    con = connect(path, read_only=True, memory_limit=settings.duckdb_memory_limit)
    try:
        inputs = build_inputs(con, config, warehouse_path=path)
        result = train_and_evaluate(inputs, config)
    finally:
        con.close()
    logged = log_training(result, settings, artifact_location=artifact_location)
    return RunOutcome(result, logged)
