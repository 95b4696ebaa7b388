"""The champion model: loaded from the MLflow registry, scored as native code.

``models:/offer-ranker@champion`` is a folder with ``feature_spec.json`` (columns,
feature-spec version, ``model_file``) and the LightGBM model in its native text format.
Serving reads them with mlflow (download) + lightgbm: no training code, no pyfunc wrapper
and no pandas on the hot path. By default the booster is compiled to machine code with
lleaves (LLVM): the same predictions (checked at load against LightGBM on rows that cross
every split threshold of the model) about 3-5x faster, which matters most for the 20-200
row matrices of one decision. Compiled binaries are cached by model hash and CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from recsys.decision import ModelInfo
from recsys.errors import NotFoundError, SpecMismatchError

logger = logging.getLogger(__name__)

SPEC_FILE = "feature_spec.json"
MODEL_FILE_PATTERNS = ("*.txt", "*.lgb", "*.model")


@dataclass
class LightGBMScorer:
    """P(accept) from a LightGBM booster; one thread per call (the service runs many).

    Parameters
    ----------
    booster : lightgbm.Booster
    columns : tuple of str
        The model's column order (its feature spec).
    """

    booster: lgb.Booster
    columns: tuple[str, ...]
    num_threads: int = 1

    def __post_init__(self) -> None:
        n = self.booster.num_feature()
        if n != len(self.columns):
            raise SpecMismatchError(
                f"model has {n} features but its feature spec lists {len(self.columns)} columns"
            )

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """matrix shape (n, n_features) -> P(accept), shape (n,)."""
        if matrix.ndim != 2 or matrix.shape[1] != len(self.columns):
            raise SpecMismatchError(
                f"decision matrix must have {len(self.columns)} columns, got shape {matrix.shape}"
            )
        return self.booster.predict(matrix, num_threads=self.num_threads)


#: Largest |compiled - LightGBM| accepted on the check rows (the two agree to ~1e-15).
COMPILED_TOLERANCE = 1e-9
CHECK_ROWS = 512
#: LightGBM's ``kZeroThreshold`` (the float 1e-35): when it predicts, LightGBM reads any
#: |x| <= this as 0, and it puts a split "at zero" at -this or +this.
LIGHTGBM_ZERO = float(np.float32(1e-35))


class CompiledScorer:
    """The booster compiled to native code by lleaves; same interface as LightGBMScorer.

    Parameters
    ----------
    model_file : path of the LightGBM text model
    reference : LightGBMScorer
        The booster the compiled code must agree with (checked here; ValueError if not).
    cache_dir : folder for compiled binaries (one per model hash and CPU), shared by processes
    """

    def __init__(self, model_file: Path, reference: LightGBMScorer, cache_dir: Path):
        from importlib.metadata import version

        import lleaves
        import llvmlite.binding as llvm

        self.columns = reference.columns
        self.num_threads = 1
        digest = hashlib.sha256(model_file.read_bytes()).hexdigest()[:24]
        cpu = llvm.get_host_cpu_name()
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached = cache_dir / f"{digest}-{cpu}-lleaves{version('lleaves')}.so"
        self.model = lleaves.Model(model_file=str(model_file))
        if cached.is_file():
            self.model.compile(cache=str(cached))
        else:
            # Compile to a private name, then publish atomically: workers starting together
            # never load a half-written binary.
            fd, tmp = tempfile.mkstemp(prefix=f".{digest}-", suffix=".so", dir=cache_dir)
            os.close(fd)
            os.unlink(tmp)  # lleaves writes the cache file only when it does not exist
            try:
                self.model.compile(cache=tmp)
                os.replace(tmp, cached)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self._entry = _entry_point(self.model)
        rows = check_rows(reference.booster, CHECK_ROWS)
        diff = float(np.max(np.abs(self.predict(rows) - reference.score(rows))))
        if not diff <= COMPILED_TOLERANCE:
            raise ValueError(
                f"compiled model disagrees with LightGBM by {diff:.3g} "
                f"(expected <= {COMPILED_TOLERANCE:g})"
            )

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        if self._entry is None:
            return self.model.predict(matrix, n_jobs=self.num_threads)
        # The compiled function itself, without lleaves' per-call checks, conversions and
        # ctypes pointer objects (~15 us of a one-decision matrix's ~80 us); ctypes releases
        # the GIL for the call, as with lleaves.
        rows = np.ascontiguousarray(matrix, dtype=np.float64)
        out = np.empty(rows.shape[0], dtype=np.float64)
        self._entry(rows.ctypes.data, out.ctypes.data, 0, rows.shape[0])
        return out

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """matrix shape (n, n_features) -> P(accept), shape (n,)."""
        if matrix.ndim != 2 or matrix.shape[1] != len(self.columns):
            raise SpecMismatchError(
                f"decision matrix must have {len(self.columns)} columns, got shape {matrix.shape}"
            )
        if matrix.shape[0] >= 2**31 - 1:  # the entry point counts rows in an int32
            raise ValueError(f"a matrix of {matrix.shape[0]} rows: score it in chunks")
        return self.predict(matrix)


#: lleaves' compiled entry point, ``void f(double *rows, double *out, int32 start, int32
#: end)``, with the arrays passed as plain addresses.
_ENTRY_TYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32
)


def _entry_point(model: Any) -> Any:
    """The compiled model's entry point as :data:`_ENTRY_TYPE`, or None (then scores go
    through ``lleaves.Model.predict``): only a one-output model in float64, as compiled
    here, and only where this lleaves version keeps the function where it is looked for."""
    entry = getattr(model, "_c_entry_func", None)
    if entry is None or getattr(model, "_n_classes", None) != 1:
        return None
    if getattr(model, "use_fp64", True) is not True:
        return None
    return ctypes.cast(entry, _ENTRY_TYPE)


def check_rows(booster: lgb.Booster, n: int, seed: int = 0) -> np.ndarray:
    """Rows that exercise the model: every cell is a split value of its feature (just
    below, at or above a numeric threshold; in or out of a category set) or missing."""
    values: list[set[float]] = [set() for _ in range(booster.num_feature())]

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" not in node:
            return
        feature = node["split_feature"]
        threshold = node["threshold"]
        if isinstance(threshold, str):  # categorical: "1||4||7"
            cats = [float(c) for c in threshold.split("||") if c]
            values[feature].update(cats)
            values[feature].update(c + 1 for c in cats)
        else:
            values[feature].update((threshold, np.nextafter(threshold, np.inf), threshold - 1))
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    rng = np.random.default_rng(seed)
    rows = np.empty((n, len(values)))
    for j, seen in enumerate(values):
        # A split at zero (threshold -1e-35 or 1e-35) is checked at 0 and on either side, not
        # at 1e-35 itself: LightGBM reads that as 0 and lleaves does not, so the two differ
        # there, and only there: on values within 1e-35 of zero, which the features here
        # (counts, days, amounts, rates) do not take.
        seen = {0.0 if abs(v) <= LIGHTGBM_ZERO else v for v in seen}
        pool = np.array(sorted(seen) or [0.0])
        rows[:, j] = rng.choice(pool, size=n)
    rows[rng.random(rows.shape) < 0.05] = np.nan
    return rows


@dataclass(frozen=True)
class LoadedModel:
    scorer: LightGBMScorer | CompiledScorer
    info: ModelInfo
    spec: dict[str, Any]
    path: Path


def load_model_dir(
    path: str | Path,
    name: str = "offer-ranker",
    version: str = "local",
    compiled_dir: Path | None = None,
) -> LoadedModel:
    """Load a downloaded model folder (``feature_spec.json`` + the LightGBM model file).

    With ``compiled_dir`` the scorer is the lleaves-compiled model (binaries cached there);
    if compiling fails or disagrees with LightGBM, LightGBM scores (one warning line).
    """
    root = Path(path)
    spec_files = sorted(root.rglob(SPEC_FILE))
    if not spec_files:
        raise NotFoundError(f"model folder must contain {SPEC_FILE}, got none under {root}")
    spec_path = spec_files[0]
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    model_file = _model_file(spec_path.parent, spec.get("model_file"))
    booster = lgb.Booster(model_file=str(model_file))
    columns = tuple(spec.get("columns") or booster.feature_name())
    info = ModelInfo(
        name=name, version=str(version), feature_spec_version=spec.get("feature_spec_version")
    )
    scorer: LightGBMScorer | CompiledScorer = LightGBMScorer(booster, columns)
    if compiled_dir is not None:
        try:
            scorer = CompiledScorer(model_file, scorer, Path(compiled_dir))
        except Exception as exc:  # any compiler failure: LightGBM still scores correctly
            logger.warning(
                "model %s v%s: compiled scoring unavailable, using LightGBM: %s: %s",
                name,
                version,
                type(exc).__name__,
                exc,
            )
    logger.info(
        "model %s v%s loaded from %s (%d columns, %s)",
        name,
        version,
        model_file,
        len(columns),
        type(scorer).__name__,
    )
    return LoadedModel(scorer, info, spec, root)


def _model_file(folder: Path, named: str | None) -> Path:
    if named:
        for candidate in (folder / named, *folder.rglob(Path(named).name)):
            if candidate.is_file():
                return candidate
        raise NotFoundError(
            f"feature_spec.json names model_file {named!r}, not found under {folder}"
        )
    for pattern in MODEL_FILE_PATTERNS:
        found = sorted(folder.rglob(pattern))
        if found:
            return found[0]
    raise NotFoundError(f"model folder must contain a LightGBM model file, got none under {folder}")


def load_registered_model(
    tracking_uri: str,
    model_name: str,
    alias: str,
    dst: str | Path | None = None,
    compiled_dir: Path | None = None,
) -> LoadedModel:
    """Download ``models:/NAME@ALIAS`` from the MLflow registry and load it."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except Exception as exc:  # mlflow raises its own exception types for "no such alias"
        raise NotFoundError(
            f"registered model {model_name!r} must have alias {alias!r} "
            f"(train and promote a model first): {exc}"
        ) from exc
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{model_name}@{alias}", dst_path=None if dst is None else str(dst)
    )
    return load_model_dir(
        local, name=model_name, version=str(version.version), compiled_dir=compiled_dir
    )
