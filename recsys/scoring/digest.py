"""The checksum of a model: one SHA-256 over the two files serving reads.

Training records it on the registered version (model version tag :data:`MODEL_DIGEST_TAG`);
serving writes it beside each copy in its model cache and compares both before loading, so
a copy damaged in transit or on disk is never served (a LightGBM text model cut at a tree
boundary still loads, with fewer trees).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: The registry tag (MLflow model version tag) holding :func:`model_digest`.
MODEL_DIGEST_TAG = "recsys.model_sha256"


def model_digest(spec_file: Path, model_file: Path) -> str:
    """SHA-256 (hex) of the feature spec's and the model file's own SHA-256, in that order."""
    outer = hashlib.sha256()
    for path in (spec_file, model_file):
        inner = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                inner.update(block)
        outer.update(inner.hexdigest().encode("ascii"))
    return outer.hexdigest()


__all__ = ["MODEL_DIGEST_TAG", "model_digest"]
