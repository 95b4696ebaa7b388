"""lleaves flavour: the LightGBM model compiled to machine code (LLVM), through lleaves'
public API (``lleaves.Model(model_file=...)``, ``.compile(cache=...)``, ``.predict``).

The compiled model gives LightGBM's predictions (checked at load on rows that cross every
split threshold of the model) in a fraction of the time, which matters most for the 20-200
row matrices of one decision. Compiled binaries are cached by model hash, CPU and lleaves
version, each beside its digest. If compiling fails or the compiled model disagrees with LightGBM, :meth:`load` logs
why and returns the LightGBM scorer: scores stay right, only slower.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import lleaves
import llvmlite.binding as llvm
import numpy as np

from recsys.scoring.base import LoadOptions, ModelFiles, ModelScorer, check_width
from recsys.scoring.lightgbm import LightGBMScorer, check_rows

logger = logging.getLogger(__name__)

#: Largest |compiled - LightGBM| accepted on the check rows (the two agree to ~1e-15).
COMPILED_TOLERANCE = 1e-9
CHECK_ROWS = 512


@dataclass
class LleavesScorer(ModelScorer):
    """P(accept) from the compiled model; one thread per call (the service runs many).

    Parameters
    ----------
    model : lleaves.Model
        Compiled.
    columns : tuple of str
        The model's column order (its feature spec).
    """

    name = "lleaves"
    reads = "lightgbm"
    compiled = True

    model: lleaves.Model
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        self.columns = tuple(self.columns)
        check_width(self.name, self.model.num_feature(), self.columns)

    @classmethod
    def load(cls, files: ModelFiles, options: LoadOptions) -> ModelScorer:
        """The compiled scorer, checked against LightGBM; the LightGBM scorer if compiling
        fails or the two disagree (one warning line says why)."""
        reference = LightGBMScorer.load(files, options)
        try:
            compiled = cls._compiled(files, options, reference)
        except Exception as exc:  # any compiler failure: LightGBM still scores correctly
            logger.warning(
                "model file %s: compiled scoring unavailable, using LightGBM: %s: %s",
                files.model_file.name,
                type(exc).__name__,
                exc,
            )
            return reference
        return compiled

    @classmethod
    def load_strict(cls, files: ModelFiles, options: LoadOptions) -> ModelScorer:
        """The compiled scorer, checked against LightGBM; raises why where :meth:`load`
        would fall back."""
        return cls._compiled(files, options, LightGBMScorer.load(files, options))

    @classmethod
    def _compiled(
        cls, files: ModelFiles, options: LoadOptions, reference: LightGBMScorer
    ) -> LleavesScorer:
        compiled = cls(_compile(files.model_file, options.compiled_dir), files.columns)
        compiled.verify(reference)
        return compiled

    @classmethod
    def discard_cache(cls, files: ModelFiles, options: LoadOptions) -> None:
        """Delete the cached binary of ``files`` (and its digest): the next load compiles."""
        if options.compiled_dir is None:
            return
        cached = cache_file(files.model_file, options.compiled_dir)
        for path in (cached, cached.with_name(cached.name + ".sha256")):
            path.unlink(missing_ok=True)

    def verify(self, reference: LightGBMScorer) -> None:
        """Raise ValueError unless this model scores :func:`check_rows` as ``reference`` does."""
        rows = check_rows(reference.booster, CHECK_ROWS)
        diff = float(np.max(np.abs(self.score(rows) - reference.score(rows))))
        if not diff <= COMPILED_TOLERANCE:
            raise ValueError(
                f"compiled model disagrees with LightGBM by {diff:.3g} "
                f"(expected <= {COMPILED_TOLERANCE:g})"
            )

    def _score(self, matrix: np.ndarray) -> np.ndarray:
        return self.model.predict(matrix, n_jobs=1)


def cache_file(model_file: Path, cache_dir: Path) -> Path:
    """Where the binary compiled from ``model_file`` on this CPU is cached."""
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()[:24]
    cpu = llvm.get_host_cpu_name()
    return cache_dir / f"{digest}-{cpu}-lleaves{version('lleaves')}.so"


def _compile(model_file: Path, cache_dir: Path | None) -> lleaves.Model:
    """``model_file`` compiled, the binary read from or written to ``cache_dir``.

    A cached binary is loaded only if its SHA-256 matches the digest written beside it when
    it was published: LLVM aborts the process on a damaged object file, so a truncated or
    overwritten binary is compiled again instead.
    """
    model = lleaves.Model(model_file=str(model_file))
    if cache_dir is None:
        model.compile()
        return model
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_file(model_file, cache_dir)
    digest_file = cached.with_name(cached.name + ".sha256")
    if cached.is_file():
        if digest_file.is_file() and digest_file.read_text().strip() == _sha256(cached):
            model.compile(cache=str(cached))
            return model
        logger.warning("compiled binary %s fails its digest check: compiling again", cached.name)
    # Compile to a private name, then publish atomically (digest first): workers starting
    # together never load a half-written binary.
    fd, tmp = tempfile.mkstemp(prefix=f".{cached.stem}-", suffix=".so", dir=cache_dir)
    os.close(fd)
    os.unlink(tmp)  # lleaves writes the cache file only when it does not exist
    try:
        model.compile(cache=tmp)
        _publish(digest_file, _sha256(Path(tmp)))
        os.replace(tmp, cached)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _publish(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


__all__ = ["COMPILED_TOLERANCE", "LleavesScorer", "cache_file", "check_rows"]
