"""Fixtures shared by several test packages: built once for the whole session."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def model_files_checked_once() -> Iterator[None]:
    """Each model file's check in a child process runs once per session and file content.

    The service checks every model file it loads in a fresh interpreter (seconds of imports:
    ``recsys.scoring.check``), and the in-process tests build hundreds of services on the
    same tiny model. Here a file whose bytes, columns and timeout already passed that real
    check in this session is not checked again; every other file (damaged, truncated,
    another spec or timeout) and every compiled copy is checked for real, and the check's
    own tests call it directly. ``recsys serve`` and uvicorn processes check as always.
    """
    from recsys.scoring.base import LoadOptions, ModelFiles
    from recsys.scoring.check import CheckReport
    from serving import model

    real = model.check_model_files
    passed: dict[tuple[str, str, tuple[str, ...], float], CheckReport] = {}

    def check_once(
        flavour: str, files: ModelFiles, options: LoadOptions, timeout: float
    ) -> CheckReport:
        if options.compiled_dir is not None:
            return real(flavour, files, options, timeout)
        content = hashlib.sha256(files.model_file.read_bytes()).hexdigest()
        key = (flavour, content, tuple(files.columns), timeout)
        if key not in passed:
            passed[key] = real(flavour, files, options, timeout)  # raises if refused
        return passed[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "check_model_files", check_once)
        yield


@pytest.fixture(scope="session")
def demo_env(tmp_path_factory):
    """Generated demo data, loaded, materialised, with a tiny LightGBM on the real matrix.

    Returns a dict: settings (core), model_dir (feature_spec.json + model.txt with the
    features encoding), warehouse path and customers (id -> email_opt_in).
    """
    import json

    import lightgbm as lgb

    from features.matrix import encode, fit_encoding
    from features.online import SQLiteOnlineStore, materialize
    from features.spec import FEATURE_SPEC_VERSION
    from features.training_set import build_training_set
    from recsys import warehouse
    from recsys.datagen.generate import generate_dataset
    from recsys.loading import load_directory
    from recsys.settings import Settings

    root = tmp_path_factory.mktemp("demo")
    generate_dataset(customers=300, days=20, seed=11, out=root / "demo", progress=False)
    db = root / "warehouse.duckdb"
    con = warehouse.connect(db)
    load_directory(root / "demo", con)
    store = SQLiteOnlineStore(root / "online.sqlite")
    materialize(con, store)
    store.close()
    frame = build_training_set(con)
    customers = dict(con.execute("SELECT customer_id, email_opt_in FROM customers").fetchall())
    con.close()

    encoding = fit_encoding(frame)
    x, names, categorical = encode(frame, encoding)
    data = lgb.Dataset(
        x,
        label=frame["label"].to_numpy(),
        feature_name=list(names),
        categorical_feature=list(categorical),
        free_raw_data=False,
    )
    booster = lgb.train(
        {
            "objective": "binary",
            "num_leaves": 7,
            "learning_rate": 0.1,
            "min_data_in_leaf": 20,
            "verbose": -1,
            "seed": 1,
            "num_threads": 1,
            "deterministic": True,
        },
        data,
        num_boost_round=20,
    )
    model_dir = root / "model"
    model_dir.mkdir()
    booster.save_model(str(model_dir / "model.txt"))
    (model_dir / "feature_spec.json").write_text(
        json.dumps(
            {
                "feature_spec_version": FEATURE_SPEC_VERSION,
                "columns": list(names),
                "encoding": encoding.to_dict(),
                "model_file": "model.txt",
            },
            default=str,
        )
    )
    settings = Settings(
        warehouse_path=db,
        online_sqlite_path=root / "online.sqlite",
        event_log_url=f"sqlite:///{root / 'events.sqlite'}",
        mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        environment="test",
        lifecycle={"model_cache_dir": root / "model_cache"},
    )
    return {
        "settings": settings,
        "model_dir": model_dir,
        "root": root,
        "db": db,
        "customers": customers,
    }
