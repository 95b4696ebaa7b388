"""The feature spec: every fixed feature's name, kind, meaning and source, and its version.

``FEATURE_SPEC_VERSION`` is a hash of the definitions (metadata, the defining code and the
features config), so a
model, a training set and an online-store entry can tell whether they were built alike.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import pkgutil
from dataclasses import asdict, dataclass
from functools import lru_cache

from features import definitions
from features.definitions import FeatureDef


@dataclass(frozen=True)
class FeatureSpec:
    """The versioned list of fixed features (customer, offer, touchpoint, crosses, request)."""

    version: str
    features: tuple[FeatureDef, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def get(self, name: str) -> FeatureDef:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no feature named {name!r} in feature spec {self.version}")

    def to_dict(self) -> dict:
        return {"version": self.version, "features": [asdict(f) for f in self.features]}


def _version(features: tuple[FeatureDef, ...]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([asdict(f) for f in features], sort_keys=True).encode())
    # The code that computes the features is part of their definition: every module of the
    # definitions package, in name order.
    digest.update(inspect.getsource(definitions).encode())
    # So is the features config they were built with (horizons, windows, event vocabulary).
    digest.update(definitions.CONFIG.model_dump_json().encode())
    for name in sorted(m.name for m in pkgutil.iter_modules(definitions.__path__)):
        module = importlib.import_module(f"{definitions.__name__}.{name}")
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:12]


@lru_cache(maxsize=1)
def feature_spec() -> FeatureSpec:
    """The feature spec of this code base (cached)."""
    features = definitions.all_feature_defs()
    names = [f.name for f in features]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AssertionError(f"feature names must be unique, got duplicates {duplicates}")
    return FeatureSpec(version=_version(features), features=features)


FEATURE_SPEC_VERSION: str = feature_spec().version
