"""Training inputs from the warehouse: the features training set, encoding and candidates.

Candidate offers of a logged decision are scored exactly as serving would have scored them
at the decision time: the customer's point-in-time feature vector (``features.pipeline``
point tables, as of the decision) goes through ``features.decision_matrix`` with the
candidate offers. For the shown offer this reproduces the training-set row.

The same vectors feed the replay of the served policy (:meth:`WarehouseCandidates.replay`):
the warehouse's catalogue, the vectors as a point-in-time feature source, the contact history
from the warehouse's ``decisions`` and ``outcomes`` before each round, and the model's
``DecisionMatrixBuilder``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pandas as pd

from features.decision_matrix import DecisionMatrixBuilder, MatrixColumns
from features.engines import ibis_backend
from features.matrix import Encoding, encode, fit_encoding
from features.offers import offer_arrays
from features.online import CatalogNames, Layout, block_of
from features.online.base import AS_OF_KEY, SPEC_KEY, STATS_KEY
from features.pipeline import STAT_TABLES, point_tables, sources
from features.spec import FEATURE_SPEC_VERSION
from features.training_set import build_training_set
from recsys.catalog import Catalog, load_catalog_from_warehouse
from recsys.decision import FeatureBlock
from recsys.errors import DataError
from recsys.eventlog import ACCEPTED_TYPES
from training.config import TrainingConfig
from training.pipeline import TrainingInputs
from training.served import PointInTimeFeatures, PointInTimeHistory, Replay, epoch_us
from training.truth import TRUTH_DIR, TRUTH_FILE, read_truth

logger = logging.getLogger(__name__)


class FeaturesEncoder:
    """:class:`training.encoding.Encoder` over a ``features.matrix.Encoding``."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        self.spec_version = encoding.spec_version
        self.columns = tuple(encoding.names)
        self.categorical = tuple(encoding.categorical_indexes)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        X, _, _ = encode(frame, self.encoding)
        return X

    def metadata(self) -> dict[str, Any]:
        return self.encoding.to_dict()


def features_encoder(frame: pd.DataFrame) -> FeaturesEncoder:
    return FeaturesEncoder(fit_encoding(frame))


CandidateSets = Callable[[pd.DataFrame], pd.DataFrame]


def truth_candidates(truth: pd.DataFrame) -> CandidateSets:
    """Candidates of a generated decision: the truth's candidate set for it."""
    pairs = truth[["decision_id", "offer_id"]]

    def sets(logged: pd.DataFrame) -> pd.DataFrame:
        return pairs[pairs["decision_id"].isin(set(logged["decision_id"]))]

    return sets


def support_candidates(history: pd.DataFrame) -> CandidateSets:
    """Candidates of a decision: every offer the logging policy showed at its touchpoint in
    ``history`` (the training periods), plus the offer actually shown."""
    shown = history[["touchpoint_id", "offer_id"]].drop_duplicates()

    def sets(logged: pd.DataFrame) -> pd.DataFrame:
        pairs = logged[["decision_id", "touchpoint_id"]].merge(shown, on="touchpoint_id")
        own = logged[["decision_id", "offer_id"]]
        return pd.concat([pairs[["decision_id", "offer_id"]], own]).drop_duplicates()

    return sets


#: A block of (customer, decision time) points, its last row the cold start, and the row of
#: each point.
Points = tuple[FeatureBlock, dict[tuple[str, pd.Timestamp], int]]


class WarehouseCandidates:
    """Builds and encodes candidate rows for logged rounds, and their replay by the served
    policy (see the module docstring)."""

    def __init__(
        self, con: Any, offers: pd.DataFrame, candidate_sets: CandidateSets, engine: str = "duckdb"
    ) -> None:
        self.con = con
        self.offers = offers.set_index("offer_id", drop=False)
        self.candidate_sets = candidate_sets
        self.engine = engine
        self._points: tuple[tuple[str, ...], Points] | None = None

    def points(self, logged: pd.DataFrame) -> Points:
        """Every (customer, decision time) point of ``logged`` as a feature block (computed
        once for the same rounds: candidates and the replay share it)."""
        key = tuple(logged["decision_id"].tolist())
        if self._points is not None and self._points[0] == key:
            return self._points[1]
        vectors = self._vectors(logged)
        layout = Layout.of({k: v for vector in vectors.values() for k, v in vector.items()})
        block = block_of(
            {**{str(i): v for i, v in enumerate(vectors.values())}, "cold": None},
            FEATURE_SPEC_VERSION,
            layout,
        )
        points = {point: i for i, point in enumerate(vectors)}
        self._points = (key, (block, points))
        return block, points

    def replay(self, logged: pd.DataFrame, encoder: Any) -> Replay:
        """The served policy's world for ``logged``: the warehouse's catalogue, each round's
        point-in-time features, the history before each round, the model's matrix builder."""
        if not isinstance(encoder, FeaturesEncoder):
            raise TypeError(f"`encoder` must be a FeaturesEncoder, got {type(encoder).__name__}")
        catalog = load_catalog_from_warehouse(self.con)
        block, points = self.points(logged)
        features = PointInTimeFeatures(
            CatalogNames(catalog)(block),
            {(c, epoch_us(ts)): i for (c, ts), i in points.items()},
            cold=len(points),
        )
        return Replay(
            catalog,
            features,
            self.history(logged, catalog),
            DecisionMatrixBuilder(catalog, encoder.encoding),
        )

    def history(self, logged: pd.DataFrame, catalog: Catalog) -> PointInTimeHistory:
        """What the logged rounds' customers were shown (over the longest contact-cap window
        before the first round) and accepted (any time before the last round), from the
        warehouse's ``decisions`` and ``outcomes``; each round sees only what came before it.

        Acceptances are the event log's (``accept``, ``convert``), as the service's "already
        accepted" check reads them.
        """
        known = logged[logged["customer_id"].notna()]
        if known.empty:
            return PointInTimeHistory.empty()
        ts = pd.to_datetime(known["ts"])
        lookback = max(
            (o.cap_window_days or 0 for o in catalog.offers.values()),
            default=0,
        )
        first = (ts.min() - pd.Timedelta(days=max(lookback, 1))).to_pydatetime()
        last = ts.max().to_pydatetime()
        customers = pd.DataFrame({"customer_id": known["customer_id"].astype(str).unique()})
        name = "_served_replay_customers"
        self.con.register(name, customers)
        try:
            contacts = self.con.execute(
                "SELECT customer_id, offer_id, ts FROM decisions "
                f"WHERE customer_id IN (SELECT customer_id FROM {name}) AND ts >= ? AND ts < ?",
                [first, last],
            ).fetchdf()
            accepted = self.con.execute(
                "SELECT d.customer_id, o.offer_id, o.ts FROM outcomes o "
                "JOIN decisions d ON o.decision_id = d.decision_id AND o.offer_id = d.offer_id "
                f"WHERE d.customer_id IN (SELECT customer_id FROM {name}) "
                f"AND o.outcome IN ({', '.join('?' * len(ACCEPTED_TYPES))}) AND o.ts < ?",
                [*(str(t) for t in ACCEPTED_TYPES), last],
            ).fetchdf()
        finally:
            self.con.unregister(name)
        return PointInTimeHistory(contacts, accepted)

    def __call__(self, logged: pd.DataFrame, encoder: Any) -> tuple[pd.DataFrame, np.ndarray]:
        if not isinstance(encoder, FeaturesEncoder):
            raise TypeError(f"`encoder` must be a FeaturesEncoder, got {type(encoder).__name__}")
        pairs = self.candidate_sets(logged)
        unknown = set(pairs["offer_id"]) - set(self.offers.index)
        if unknown:
            raise DataError(f"candidate offers {sorted(unknown)[:5]} are not in the offers table")
        # one block of every (customer, time) point, and a cold-start row (anonymous)
        block, points = self.points(logged)
        columns = MatrixColumns(encoder.encoding)
        ctx_cols = [c for c in logged.columns if c.startswith("ctx_")]
        by_decision = pairs.groupby("decision_id", sort=False)["offer_id"].agg(tuple)
        arrays_cache: dict[tuple[str, ...], Any] = {}
        blocks, frames = [], []
        for row in logged.itertuples(index=False):
            offer_ids = by_decision.get(row.decision_id)
            if offer_ids is None:
                raise DataError(f"decision {row.decision_id!r} has no candidate offers")
            arrays = arrays_cache.get(offer_ids)
            if arrays is None:
                arrays = offer_arrays(self.offers.loc[list(offer_ids)].reset_index(drop=True))
                arrays_cache[offer_ids] = arrays
            values = row._asdict()
            context = {c[4:]: values[c] for c in ctx_cols if not pd.isna(values[c])}
            touchpoint = {
                "touchpoint_id": row.touchpoint_id,
                "channel": values.get("tp_channel"),
                "stage": values.get("tp_stage"),
            }
            at = points.get((row.customer_id, pd.Timestamp(row.ts)), len(points))
            m = len(arrays)
            blocks.append(
                columns.rows(
                    block.take([at]),
                    columns.prepare(arrays, touchpoint),
                    [context],
                    pd.Timestamp(row.ts).to_pydatetime(),
                    np.zeros(m, dtype=np.intp),
                    np.arange(m),
                )
            )
            frames.append((row.decision_id, row.touchpoint_id, offer_ids))
        candidates = pd.DataFrame(
            {
                "decision_id": np.concatenate([[d] * len(o) for d, _, o in frames]),
                "touchpoint_id": np.concatenate([[t] * len(o) for _, t, o in frames]),
                "offer_id": np.concatenate([list(o) for _, _, o in frames]),
            }
        )
        return candidates, np.vstack(blocks)

    def _vectors(self, logged: pd.DataFrame) -> dict[tuple[str, pd.Timestamp], dict]:
        """Online-store style vectors of each (customer, decision ts) point."""
        known = logged[logged["customer_id"].notna()]
        if known.empty:
            return {}
        points = known[["customer_id", "ts"]].drop_duplicates().rename(columns={"ts": "as_of"})
        tables = point_tables(sources(ibis_backend(self.con, self.engine)), ibis.memtable(points))
        customer = tables.customer.to_pandas()
        customer["as_of"] = pd.to_datetime(customer["as_of"])
        feature_cols = [c for c in customer.columns if c not in ("customer_id", "as_of")]
        records = customer[feature_cols].astype(object).where(customer[feature_cols].notna(), None)
        vectors: dict[tuple[str, pd.Timestamp], dict] = {}
        for cid, as_of, rec in zip(
            customer["customer_id"], customer["as_of"], records.to_dict("records"), strict=True
        ):
            # Missing values fall back to the cold-start defaults, as in the training set.
            rec = {k: v for k, v in rec.items() if v is not None}
            rec[AS_OF_KEY] = as_of.isoformat()
            rec[SPEC_KEY] = FEATURE_SPEC_VERSION
            rec[STATS_KEY] = {}
            vectors[(cid, as_of)] = rec
        for name, spec in STAT_TABLES.items():
            stats = tables.stats[name].to_pandas()
            stats = stats[stats[spec.key].notna()]
            if stats.empty:
                continue
            stats = stats.assign(
                _key=stats[spec.key].astype(str), as_of=pd.to_datetime(stats["as_of"])
            )
            stats = stats.sort_values(["customer_id", "as_of", "_key"], kind="mergesort")
            values = stats[list(spec.stats)].to_numpy(np.float64)
            keys = stats["_key"].to_numpy()
            group = stats[["customer_id", "as_of"]]
            starts = np.flatnonzero(~group.duplicated().to_numpy())
            ends = np.append(starts[1:], len(stats))
            cids, as_ofs = group["customer_id"].to_numpy(), group["as_of"].to_numpy()
            for start, end in zip(starts, ends, strict=True):
                vector = vectors.get((cids[start], pd.Timestamp(as_ofs[start])))
                if vector is not None:
                    vector[STATS_KEY][name] = {
                        "keys": keys[start:end].tolist(),
                        "values": values[start:end].tolist(),
                    }
        return vectors


def find_truth(
    config: TrainingConfig, warehouse_path: Path | None, decision_ids: pd.Series
) -> pd.DataFrame | None:
    """The ground truth of generated data: ``data.truth_dir``, else a ``ground_truth/`` folder
    next to the warehouse (``<warehouse dir>/*/ground_truth``) whose decisions match.

    Only the rows of ``decision_ids`` are read."""
    if config.data.truth_dir is not None:
        return read_truth(config.data.truth_dir, decision_ids)
    if warehouse_path is None:
        return None
    sample = set(decision_ids.sample(min(len(decision_ids), 200), random_state=0))
    for candidate in sorted(Path(warehouse_path).parent.glob(f"*/{TRUTH_DIR}/{TRUTH_FILE}")):
        truth = read_truth(candidate.parent, decision_ids)
        if sample <= set(truth["decision_id"]):
            logger.info("using the ground truth in %s", candidate.parent)
            return truth
    return None


def build_inputs(
    con: Any, config: TrainingConfig, warehouse_path: Path | None = None
) -> TrainingInputs:
    """The training set of the warehouse, with candidates for off-policy evaluation.

    ``con`` is the warehouse's DuckDB connection; with ``data.engine: spark`` the training set
    is computed by local PySpark from it; candidate vectors are always computed in DuckDB.
    """
    data = config.data
    frame = build_training_set(
        con,
        start=data.start,
        end=data.end,
        attribution_days=data.attribution_days,
        positive_outcomes=data.positive_outcomes,
        engine=data.engine,
    )
    if frame.empty:
        raise DataError(
            "the warehouse has no decisions in the training window; load data with "
            "`recsys data load DIR --db PATH` or widen `data.start`/`data.end`"
        )
    offers = con.execute("SELECT * FROM offers ORDER BY offer_id").fetchdf()
    truth = find_truth(config, warehouse_path, frame["decision_id"])
    candidate_sets = truth_candidates(truth) if truth is not None else support_candidates(frame)
    candidates = WarehouseCandidates(con, offers, candidate_sets)
    return TrainingInputs(
        frame=frame,
        encoder_factory=features_encoder,
        candidates=candidates,
        replay=candidates.replay,
        truth=truth,
        offers=offers,
        source=str(warehouse_path) if warehouse_path is not None else "warehouse",
    )
