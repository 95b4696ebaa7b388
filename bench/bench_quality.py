"""Decision quality against peers (``make bench-quality``): the TRUE value of recsys's served
policy next to MABWiser LinUCB, Vowpal Wabbit ``--cb_explore_adf`` and a plain LightGBM, all
trained on the same demo logs, on two objectives, from the demo's ground truth.

1. Demo data (``recsys.datagen``, with ``ground_truth/``) is generated into ``--work`` and
   loaded into a warehouse there (both reused by a later run with the same arguments).
2. recsys is trained in process as ``recsys train`` trains it (``training.warehouse_data``
   and ``training.pipeline``; no MLflow). Its rounds are the test period's logged rounds
   that training evaluates (first shown offer of each test decision, a seeded sample of at
   most ``evaluation.max_ope_rounds``). Its served policy (the decision pipeline: eligibility,
   caps, priority = P x value x weight, the service's default policy) is
   replayed on them (``training.served``) with two catalogues: weight = 1 (revenue: priority
   P x value) and weight = 1 / value (acceptance: priority P).
3. The peers (``quality_peers``) learn from the decisions before the test period (the rows
   recsys's model learns from, train + validation periods) on simple history features
   (``quality_features``) and choose, per round, their exploit action among the round's
   candidates (the ground truth's candidate set, as training's evaluation uses).
4. Every policy's true value (``training.policy_eval``): acceptance = p_accept of the chosen
   offer, revenue = p_accept x the offer's value; normalised so that random (the mean over
   the round's candidates) = 0 and the oracle (the best candidate) = 1.
5. Information ceilings (``quality_ceiling``, bench rows, not a product feature): the true
   acceptance model with the customer's hidden taste replaced by its posterior mean given the
   categories of the customer's purchases and views before the round, and price sensitivity
   by its prior mean ("oracle from observed history"); and with one of the two known. With
   them, where the greedy regret of the model and of the ceilings comes from, by the offer
   type of each round's best candidate (``regret_by_type`` in the JSON).

    python bench/bench_quality.py [--customers 10000 --days 90 --seed 7] [--quick]
        [--work DIR] [--out results.json] [--threads 2] [--epsilon E]
        [--policy softmax:temperature=0.05,floor=0.01 ...]

Each ``--policy KIND:NAME=VALUE,...`` (a kind of ``recsys.arbitration.POLICIES``) adds a row:
the served policy with that exploration instead of the service's (softmax by default), on
the same replayed rounds (what a round finds eligible and the priorities do not depend on the
policy), with
its exploration (``exploration`` in the JSON): the share of rounds whose first offer is not
the greedy one, the mean propensity of the other eligible offers, the smallest propensity.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from quality_ceiling import ROWS as CEILING_ROWS
from quality_ceiling import HistoryOracle
from quality_features import HistoryFeatures
from quality_peers import OBJECTIVES, LightGBMPeer, LinUCBPeer, Peer, VWPeer, category_levels

from recsys.arbitration import EpsilonGreedy, Policy, make_policy
from recsys.catalog import Catalog
from recsys.datagen import generate_dataset
from recsys.decision import ModelInfo
from recsys.loading import load_directory
from recsys.settings import ServingSettings
from recsys.warehouse import connect
from training.config import build_config
from training.encoding import Encoder
from training.examples import META_COLUMNS
from training.pipeline import TrainingInputs, TrainingResult, train_and_evaluate
from training.policy_eval import TargetPolicy, evaluate_policies, first_shown
from training.served import Replay, ReplayBuilder, ServedRounds, served_rounds
from training.warehouse_data import build_inputs

RANDOM, LOGGING, ORACLE = "random", "logging policy (observed)", "oracle"
SERVED, MODEL = "recsys served", "recsys model, greedy"
ELIGIBLE = ", service-eligible offers"
ELIGIBLE_ORACLE = f"oracle{ELIGIBLE}"
CONTEXT = ("customer_id", "ts", "touchpoint_id", "ctx_device", "ctx_page_category")


def warehouse(work: Path, customers: int, days: int, seed: int) -> Path:
    """The demo data's warehouse under ``work`` (generated and loaded on the first run)."""
    folder = work / f"demo_c{customers}_d{days}_s{seed}"
    db = folder / "warehouse.duckdb"
    if db.is_file():
        print(f"reusing {db}")
        return db
    t0 = time.perf_counter()
    generate_dataset(customers=customers, days=days, seed=seed, out=folder / "demo", progress=False)
    partial = db.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    con = connect(partial)
    try:
        load_directory(folder / "demo", con)
    finally:
        con.close()
    partial.rename(db)
    print(f"generated and loaded {customers:,} customers x {days} days in "
          f"{time.perf_counter() - t0:.1f} s: {db}")  # fmt: skip
    return db


def weighted(catalog: Catalog, objective: str) -> Catalog:
    """The catalogue whose priority P x value x weight ranks by the objective: weight 1
    (revenue) or 1 / value (acceptance)."""
    offers = [
        # an offer worth 0 has priority 0 whatever its weight: it keeps weight 1
        dataclasses.replace(
            o, weight=1.0 if objective == "revenue" or o.value == 0 else 1.0 / o.value
        )
        for o in catalog.offers.values()
    ]
    return Catalog(offers, list(catalog.touchpoints.values()))


class RevenueReplay:
    """Training's replay builder (``TrainingInputs.replay``) with the revenue catalogue; it
    keeps the rounds training replays (its test rounds) and their replay."""

    def __init__(self, build: ReplayBuilder) -> None:
        self.build = build
        self.logged: pd.DataFrame | None = None
        self.replay: Replay | None = None

    def __call__(self, logged: pd.DataFrame, encoder: Encoder) -> Replay:
        replay = self.build(logged, encoder)
        self.logged = logged
        self.replay = dataclasses.replace(replay, catalog=weighted(replay.catalog, "revenue"))
        return self.replay


def served_acceptance(
    result: TrainingResult, logged: pd.DataFrame, replay: Replay, policy: Policy
) -> ServedRounds:
    """The served policy replayed on ``logged`` with the acceptance catalogue."""
    model = result.model
    served = served_rounds(
        logged,
        dataclasses.replace(replay, catalog=weighted(replay.catalog, "acceptance")),
        model.flavour_scorer(),
        ModelInfo(result.main, "candidate", result.encoder.spec_version),
        policy,
        probabilistic=model.probabilistic,
        seed=result.config.seed,
    )
    return served


def parse_policy(text: str) -> Policy:
    """``KIND:NAME=VALUE,...`` (e.g. ``softmax:temperature=0.05,floor=0.01``) -> the policy."""
    kind, _, params = text.partition(":")
    try:
        values = {k: float(v) for k, v in (p.split("=", 1) for p in params.split(",") if p)}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"`--policy` must be KIND:NAME=VALUE,..., got {text!r}"
        ) from None
    try:
        return make_policy(kind, **values)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def exploration(target: TargetPolicy) -> dict[str, float]:
    """How much a served policy explores at the first position: the share of rounds whose
    offer is not the greedy one, the mean propensity of the non-greedy eligible offers and
    the smallest propensity (1 / the largest importance weight an evaluation of it meets)."""
    frame = pd.DataFrame({"decision_id": target.decision_id, "prob": target.prob})
    top = ~frame["decision_id"].duplicated().to_numpy()  # each round's greedy offer first
    others = target.prob[~top]
    return {
        "non_greedy_share": float(1.0 - target.prob[top].mean()),
        "mean_non_greedy_propensity": float(others.mean()) if others.size else 0.0,
        "min_propensity": float(target.prob.min()),
    }


def with_context(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every ``CONTEXT`` column (absent request context = None)."""
    missing = [c for c in CONTEXT if c not in frame.columns]
    return frame.assign(**dict.fromkeys(missing)) if missing else frame


def peer_data(
    inputs: TrainingInputs, result: TrainingResult, features: HistoryFeatures
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every shown offer before the test period, every candidate of each first-shown
    decision before it), as feature rows."""
    frame = with_context(inputs.frame)
    frame = frame[frame["ts"] < result.split.test_start].sort_values(
        ["ts", "decision_id", "position"], kind="mergesort"
    )
    shown = features.rows(frame[list(CONTEXT)], frame["offer_id"])
    shown = shown.assign(
        label=frame["label"].to_numpy(),
        position=frame["position"].fillna(1).to_numpy(np.float64),
        period=np.where(frame["ts"] < result.split.valid_start, "train", "valid"),
    )
    first = frame[first_shown(frame)]
    assert inputs.truth is not None
    pairs = inputs.truth[inputs.truth["decision_id"].isin(set(first["decision_id"]))]
    slates = pairs[["decision_id", "offer_id"]].merge(
        first[[*CONTEXT, "decision_id", "offer_id", "label", "propensity"]].rename(
            columns={"offer_id": "logged_offer"}
        ),
        on="decision_id",
    )
    slates = slates.sort_values(["ts", "decision_id", "offer_id"], kind="mergesort")
    rows = features.rows(slates[list(CONTEXT)], slates["offer_id"])
    chosen = (slates["offer_id"] == slates["logged_offer"]).to_numpy()
    rows = rows.assign(
        decision_id=slates["decision_id"].to_numpy(),
        chosen=chosen,
        label=np.where(chosen, slates["label"].to_numpy(), 0),
        propensity=slates["propensity"].to_numpy(),
    )
    return shown, rows


def true_values(
    logged: pd.DataFrame,
    candidates: pd.DataFrame,
    scores: dict[str, np.ndarray | None],
    targets: dict[str, TargetPolicy],
    truth: pd.DataFrame,
    seed: int,
) -> dict[str, dict[str, float | None]]:
    """Each policy's true value on ``logged`` (``raw``), with random's and the oracle's on the
    same rounds, their number, and the logging policy and the oracle as policies."""
    zeros = np.zeros(len(logged))
    evaluation = evaluate_policies(
        logged, zeros, candidates, np.zeros(len(candidates)), {RANDOM: None, **scores},
        targets=targets, truth=truth, bootstrap_samples=10, seed=seed,
    )  # fmt: skip
    values = {n: v.true_value for n, v in evaluation.policies.items()}
    values[LOGGING] = evaluation.logging_true_value
    values[ORACLE] = evaluation.oracle_value
    low, high = values[RANDOM], values[ORACLE]
    assert low is not None and high is not None
    return {
        name: {
            "raw": raw,
            "normalised": None if raw is None else (raw - low) / (high - low),
            "random": low,
            "oracle": high,
            "rounds": len(logged),
        }
        for name, raw in values.items()
    }


def outside_truth(target: TargetPolicy, truth: pd.DataFrame) -> pd.DataFrame:
    """``decision_id, offer_id`` that ``target`` may serve (probability > 0) and the ground
    truth does not list as a candidate (its true value is unknown there)."""
    chosen = target.candidates[target.prob > 0]
    known = truth[["decision_id", "offer_id"]].assign(_known=True)
    merged = chosen.merge(known, on=["decision_id", "offer_id"], how="left")
    return chosen[merged["_known"].isna().to_numpy()]


def evaluate(
    logged: pd.DataFrame,
    candidates: pd.DataFrame,
    scores: dict[str, np.ndarray | None],
    served_by: dict[str, TargetPolicy],
    truth: pd.DataFrame,
    seed: int,
) -> dict[str, dict[str, float | None]]:
    """Every policy on every round; the served policies (``SERVED`` first) on the rounds
    where the truth knows every offer they may serve (random and oracle of those rounds
    normalise them)."""
    out = true_values(logged, candidates, scores, {}, truth, seed)
    served = served_by[SERVED]
    unknown = pd.concat([outside_truth(t, truth) for t in served_by.values()])
    unknown = unknown.drop_duplicates()
    if len(unknown):
        print(f"{SERVED}: {len(unknown):,} offers outside the ground truth's candidates in "
              f"{unknown['decision_id'].nunique():,} rounds, left out of its row; most "
              f"frequent: {unknown['offer_id'].value_counts().head(5).to_dict()}")  # fmt: skip
    keep = ~logged["decision_id"].isin(set(unknown["decision_id"])).to_numpy()
    kept = set(logged.loc[keep, "decision_id"])
    sub = true_values(
        logged[keep].reset_index(drop=True),
        candidates[candidates["decision_id"].isin(kept)].reset_index(drop=True),
        {},
        {name: target.of_decisions(kept) for name, target in served_by.items()},
        truth[truth["decision_id"].isin(kept)],
        seed,
    )
    for name in served_by:
        out[name] = sub[name]
    eligible = served.candidates.merge(truth, on=["decision_id", "offer_id"])
    eligible = eligible[eligible["decision_id"].isin(kept)]
    best = eligible.groupby("decision_id")["p_accept"].max().reindex(sorted(kept)).fillna(0.0)
    low, high = sub[SERVED]["random"], sub[SERVED]["oracle"]
    assert low is not None and high is not None
    out[ELIGIBLE_ORACLE] = {
        **sub[SERVED],
        "raw": float(best.mean()),
        "normalised": (float(best.mean()) - low) / (high - low),
    }
    return out


def regret_by_type(
    candidates: pd.DataFrame, score: np.ndarray, truth: pd.DataFrame, offer_type: pd.Series
) -> dict[str, dict[str, float]]:
    """Where a greedy policy's regret (the oracle's value - its choice's, summed over rounds)
    comes from, by the offer type of each round's best candidate: that type's share of the
    rounds, of the regret, and how often the policy chose an offer of that type there."""
    frame = candidates[["decision_id", "offer_id"]].assign(score=score)
    frame = frame.merge(truth[["decision_id", "offer_id", "p_accept"]], how="left")
    frame = frame.reset_index(drop=True)
    chosen = frame.loc[frame.groupby("decision_id", sort=True)["score"].idxmax()]
    best = frame.loc[frame.groupby("decision_id", sort=True)["p_accept"].idxmax()]
    rounds = pd.DataFrame(
        {
            "type": best["offer_id"].map(offer_type).to_numpy(),
            "same_type": (
                chosen["offer_id"].map(offer_type).to_numpy()
                == best["offer_id"].map(offer_type).to_numpy()
            ),
            "regret": best["p_accept"].to_numpy() - chosen["p_accept"].to_numpy(),
        }
    )
    total = rounds["regret"].sum()
    by = rounds.groupby("type")
    return {
        str(t): {
            "rounds": float(len(g) / len(rounds)),
            "regret": float(g["regret"].sum() / total),
            "same_type": float(g["same_type"].mean()),
        }
        for t, g in by
    }


def eligibility(served: TargetPolicy, truth: pd.DataFrame) -> dict[str, float]:
    """How the offers the service finds eligible compare with the truth's candidates."""
    pairs = truth[["decision_id", "offer_id"]]
    both = pairs.merge(served.candidates, on=["decision_id", "offer_id"])
    per_round = pairs.groupby("decision_id").size()
    eligible = both.groupby("decision_id").size().reindex(per_round.index, fill_value=0)
    return {
        "truth_candidates_per_round": float(per_round.mean()),
        "service_eligible_per_round": len(served.candidates) / len(per_round),
        "truth_candidates_not_eligible": 1 - len(both) / len(pairs),
        "rounds_with_a_truth_candidate_not_eligible": float((eligible < per_round).mean()),
    }


def run(args: argparse.Namespace, work: Path) -> dict:
    seconds: dict[str, float] = {}
    db = warehouse(work, args.customers, args.days, args.seed)
    # the service's default policy, or epsilon-greedy with --epsilon
    policy = (
        ServingSettings().slate_policy() if args.epsilon is None else EpsilonGreedy(args.epsilon)
    )
    config = build_config(
        {
            "seed": args.seed,
            "model": {"params": {"num_threads": args.threads}},
            "baselines": ["random"],
            "evaluation": {
                "bootstrap_samples": 50,
                "served_policy": policy.kind,
                "served_policy_params": dataclasses.asdict(policy),
            },
        }
    )
    con = connect(db, read_only=True)
    try:
        t0 = time.perf_counter()
        inputs = build_inputs(con, config, warehouse_path=db)
        if inputs.truth is None or inputs.replay is None:
            raise SystemExit(f"no ground truth found next to {db}")
        replay = RevenueReplay(inputs.replay)
        inputs = dataclasses.replace(inputs, replay=replay)
        result = train_and_evaluate(inputs, config)
        assert result.served is not None and replay.logged is not None and replay.replay
        seconds["recsys train + evaluate (revenue replay)"] = time.perf_counter() - t0
        logged = with_context(replay.logged)
        print(f"recsys trained on {result.sizes}; {len(logged):,} test rounds "
              f"from {result.split.test_start}")  # fmt: skip

        t0 = time.perf_counter()
        rounds = {
            "revenue": result.served,
            "acceptance": served_acceptance(result, logged, replay.replay, policy),
        }
        served_by = {
            o: {
                SERVED: r.target,
                **{f"{SERVED}, {p.name}": r.under(p) for p in args.policy},
            }
            for o, r in rounds.items()
        }
        served = {o: by[SERVED] for o, by in served_by.items()}
        seconds["recsys acceptance replay"] = time.perf_counter() - t0
        candidates, cand_X = inputs.candidates(logged, result.encoder)
        candidates = candidates.reset_index(drop=True)
        model_p = result.model.predict(cand_X, candidates.reindex(columns=list(META_COLUMNS)))

        t0 = time.perf_counter()
        features = HistoryFeatures(con)
        shown, slates = peer_data(inputs, result, features)
        requests = candidates[["decision_id", "offer_id"]].merge(
            logged[["decision_id", *(c for c in CONTEXT if c != "touchpoint_id")]],
            on="decision_id",
        )
        requests["touchpoint_id"] = candidates["touchpoint_id"].to_numpy()
        test_rows = features.rows(requests[list(CONTEXT)], requests["offer_id"])
        test_rows["decision_id"] = requests["decision_id"].to_numpy()
        seconds["peer features"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        ceiling = HistoryOracle(db.parent / "demo").scores(con, logged, candidates, inputs.truth)
        seconds["information ceilings"] = time.perf_counter() - t0
    finally:
        con.close()
    context = features.context_columns()
    levels = category_levels([shown, slates, test_rows])
    peers: list[Peer] = [
        LightGBMPeer(context, levels, args.threads, args.seed),
        LinUCBPeer(features.share_columns(), levels, args.seed),
        VWPeer(context, args.seed),
    ]
    value = test_rows["value"].to_numpy()
    scores: dict[str, dict[str, np.ndarray | None]] = {
        o: {MODEL: model_p * (value if o == "revenue" else 1.0)} for o in OBJECTIVES
    }
    for peer in peers:
        t0 = time.perf_counter()
        peer.fit(slates if isinstance(peer, VWPeer) else shown)
        for objective in OBJECTIVES:
            scores[objective][peer.name] = peer.score(test_rows, objective)
        seconds[peer.name] = time.perf_counter() - t0
        print(f"{peer.name}: fitted and scored in {seconds[peer.name]:.1f} s")
    # The same policies choosing only among the offers the service finds eligible.
    pairs = served["revenue"].candidates.assign(_eligible=True)
    eligible = (
        candidates[["decision_id", "offer_id"]]
        .merge(pairs, on=["decision_id", "offer_id"], how="left")["_eligible"]
        .notna()
        .to_numpy()
    )
    for objective in OBJECTIVES:
        for name, score in list(scores[objective].items()):
            assert score is not None
            scores[objective][f"{name}{ELIGIBLE}"] = np.where(eligible, score, -np.inf)
        for name, p_estimate in ceiling.items():
            scores[objective][name] = p_estimate * (value if objective == "revenue" else 1.0)

    truth = inputs.truth[inputs.truth["decision_id"].isin(set(logged["decision_id"]))]
    offer_value = features.offers.set_index("offer_id")["value"]
    offer_type = features.offers.set_index("offer_id")["offer_type"]
    values: dict[str, dict] = {}
    regret: dict[str, dict] = {}
    for objective in OBJECTIVES:
        t = truth
        if objective == "revenue":
            t = truth.assign(p_accept=truth["p_accept"] * truth["offer_id"].map(offer_value))
        values[objective] = evaluate(
            logged, candidates, scores[objective], served_by[objective], t, args.seed
        )
        regret[objective] = {
            name: regret_by_type(candidates, scores[objective][name], t, offer_type)
            for name in (MODEL, *CEILING_ROWS)
        }
    return {
        "customers": args.customers,
        "days": args.days,
        "seed": args.seed,
        "rounds": len(logged),
        "served_policy": policy.name,
        "test_start": str(result.split.test_start),
        "train_sizes": result.sizes,
        "policies": table(values),
        "exploration": {
            name: {o: exploration(by[name]) for o, by in served_by.items()}
            for name in served_by["revenue"]
        },
        "eligibility": eligibility(served["revenue"], truth),
        "regret_by_type": regret,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def table(values: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Policy -> objective -> its values, in the table's order."""
    served = [n for n in values["acceptance"] if n.startswith(SERVED)]
    first, last = [RANDOM, LOGGING, *served, MODEL], [*CEILING_ROWS, ELIGIBLE_ORACLE, ORACLE]
    names = [*first, *(n for n in values["acceptance"] if n not in (*first, *last)), *last]
    return {name: {o: by_name[name] for o, by_name in values.items()} for name in names}


def format_table(results: dict) -> str:
    def cell(entry: dict) -> str:
        if entry["raw"] is None:
            return "n/a | n/a"
        return f"{entry['normalised']:.3f} | {entry['raw']:.4f}"

    lines = [
        "| policy | acceptance (normalised) | acceptance (raw) | revenue (normalised) | "
        "revenue (raw) | rounds |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in results["policies"].items():
        label = f"{name} ({results['served_policy']})" if name == SERVED else name
        rounds = sorted({row[o]["rounds"] for o in OBJECTIVES})
        lines.append(
            f"| {label} | {cell(row['acceptance'])} | {cell(row['revenue'])} | "
            f"{' / '.join(f'{r:,}' for r in rounds)} |"
        )
    lines += [
        "",
        "| served policy | objective | non-greedy share | mean non-greedy propensity | "
        "min propensity |",
        "|---|---|---|---|---|",
    ]
    for name, by_objective in results["exploration"].items():
        label = f"{name} ({results['served_policy']})" if name == SERVED else name
        for objective, e in by_objective.items():
            lines.append(
                f"| {label} | {objective} | {e['non_greedy_share']:.4f} | "
                f"{e['mean_non_greedy_propensity']:.4f} | {e['min_propensity']:.4f} |"
            )
    lines += [
        "",
        "| policy | objective | best offer's type: share of rounds / of regret / chosen "
        "of that type |",
        "|---|---|---|",
    ]
    for objective, by_name in results["regret_by_type"].items():
        for name, by_type in by_name.items():
            cells = ", ".join(
                f"{t} {v['rounds']:.2f} / {v['regret']:.2f} / {v['same_type']:.2f}"
                for t, v in sorted(by_type.items(), key=lambda kv: -kv[1]["regret"])
            )
            lines.append(f"| {name} | {objective} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="1,500 customers x 45 days")
    parser.add_argument("--work", type=Path, help="data folder, kept and reused [default: temp]")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=2, help="LightGBM threads")
    parser.add_argument(
        "--epsilon",
        type=float,
        help="serve epsilon-greedy with this exploration [the default serving.policy]",
    )
    parser.add_argument(
        "--policy",
        type=parse_policy,
        action="append",
        default=[],
        metavar="KIND:NAME=VALUE,...",
        help="also the served policy with this exploration (repeatable), e.g. "
        "softmax:temperature=0.05,floor=0.01",
    )
    args = parser.parse_args()
    if args.quick:
        args.customers, args.days = 1_500, 45
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    if args.work is None:
        with tempfile.TemporaryDirectory() as tmp:
            results = run(args, Path(tmp))
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        results = run(args, args.work)
    results["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    results["command"] = " ".join(["python", *sys.argv])
    print(f"\n== decision quality: {args.customers:,} customers x {args.days} days, seed "
          f"{args.seed}; true value on the test rounds (random 0, oracle 1)\n")  # fmt: skip
    print(format_table(results))
    print(
        "\n"
        + ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in results["eligibility"].items())
    )
    print("\nseconds: " + ", ".join(f"{k} {v}" for k, v in results["seconds"].items()))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
