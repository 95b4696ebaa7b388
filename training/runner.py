"""``recsys train`` end to end: warehouse -> training set -> models -> evaluation -> MLflow."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from recsys.arbitration import EpsilonGreedy
from recsys.errors import NotFoundError
from recsys.settings import Settings
from recsys.warehouse import connect
from training.config import TrainingConfig
from training.ope import Estimate
from training.pipeline import TrainingResult, train_and_evaluate
from training.served import SERVED
from training.tracking import LoggedRun, format_policy_table, log_training, training_run

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
        main = r.offline[r.main]
        lines.append(
            f"{r.main} test AUC {main['auc']:.4f} [{main['auc.lower']:.4f}, "
            f"{main['auc.upper']:.4f}] (bootstrap)"
        )
        if r.policy is not None:
            lines += ["", format_policy_table(r).rstrip()]
            wanted = r.config.evaluation.logging_policy
            who = f"the logged {wanted} policy" if wanted else "the logging policy"
            lines.append(
                f"\n{r.main} policy vs {who} (paired bootstrap): "
                + _lifts(r.policy.policies[r.main].lifts)
            )
            served = r.policy.policies.get(SERVED)
            if served is not None and r.served is not None:
                lines.append(
                    f"served policy ({r.main}, {r.served.policy}, P x value x weight over the "
                    f"eligible offers) vs {who}: " + _lifts(served.lifts)
                )
            lines.append(_objective_line(r))
        lines += [f"warning: {line}" for line in r.ope_warnings]
        registered = r.registered
        lines.append(
            f"\nlogged model: {r.main} "
            + (
                f"refit on all {registered.rows:,} rows (train + valid + test); the "
                "evaluation above is the held-out model's"
                if registered.refit
                else f"the held-out model, fitted on {registered.rows:,} train rows"
            )
        )
        lines.append(self.logged.gate.message())
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


def _lifts(lifts: dict[str, Estimate]) -> str:
    """``SNIPS 1.20x [0.80, 1.70], DR ..., ips-clipped ..., switch-dr ...; rests on 412 matched
    rounds of 5,000, 9 positives, ESS 380.0, max weight 80`` (the raw weights' diagnostics,
    shared by IPS, SNIPS and DR)."""
    keys = ("snips", "dr", "ips_clipped", "switch_dr")
    parts = [
        f"{key.upper() if key in ('snips', 'dr') else key.replace('_', '-')} "
        f"{lifts[key].value:.2f}x [{lifts[key].lower:.2f}, {lifts[key].upper:.2f}]"
        for key in keys
        if key in lifts
    ]
    text = ", ".join(parts)
    d = lifts["ips"].diagnostics
    if d is not None:
        text += (
            f"; rests on {d.matched:,} matched rounds of {d.rounds:,}, {d.positives:,} "
            f"positives, ESS {d.effective_sample_size:,.1f}, max weight {d.max_weight:,.0f}"
        )
    return text


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
    share = r.policy.of_oracle(served.true, objective)
    if served.true is not None and share is not None:
        line += f"; true {served.true.on(objective):.4f}, {share:.2f} of the way to the oracle"
    return line


def run_training(
    config: TrainingConfig,
    settings: Settings,
    artifact_location: str | None = None,
    *,
    force: bool = False,
) -> RunOutcome:
    """Train on the warehouse at ``settings.warehouse_path`` and log the run to MLflow.

    The model is registered only if the quality gate lets it through
    (:func:`training.gate.quality_gate`), or with ``force``.

    The served policy is evaluated with ``evaluation.served_policy`` /
    ``served_policy_params`` / ``served_epsilon`` (epsilon-greedy's), each when not set the
    service's ``serving.policy`` / ``policy_params`` / ``epsilon`` (logged as the params
    either way)."""
    from training.warehouse_data import build_inputs

    kind = config.evaluation.served_policy or settings.serving.policy
    served: dict[str, object] = {  # the service's exploration where the config does not say
        "served_policy": settings.serving.policy,
        "served_policy_params": dict(settings.serving.policy_params.get(kind, {})),
    }
    if kind == EpsilonGreedy.kind:
        served["served_epsilon"] = settings.serving.epsilon
    elif config.evaluation.served_epsilon is not None:
        logger.warning(
            "evaluation.served_epsilon %s is not read: the served policy is %s (the "
            "service's); set evaluation.served_policy: %s to replay epsilon-greedy",
            config.evaluation.served_epsilon,
            kind,
            EpsilonGreedy.kind,
        )
    unset = {k: v for k, v in served.items() if getattr(config.evaluation, k) is None}
    if unset:
        evaluation = config.evaluation.model_copy(update=unset)
        config = config.model_copy(update={"evaluation": evaluation})
    path = Path(settings.warehouse_path)
    if not path.is_file():
        raise NotFoundError(
            f"warehouse {str(path)!r} does not exist; load data first with "
            f"`recsys data load DIR --db {path}`"
        )
    with training_run(settings, config.model.kind, artifact_location):
        con = connect(path, read_only=True, memory_limit=settings.duckdb_memory_limit)
        try:
            inputs = build_inputs(con, config, warehouse_path=path)
            result = train_and_evaluate(inputs, config)
        finally:
            con.close()
        logged = log_training(result, settings, artifact_location=artifact_location, force=force)
    return RunOutcome(result, logged)
