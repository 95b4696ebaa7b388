"""The local model cache of a service (``lifecycle.model_cache_dir``), shared by its workers.

- Every version downloaded from the registry is kept as ``<source key>/v<N>/`` with its
  checksum beside it (``v<N>.sha256``), compared with the registry's ``recsys.model_sha256``
  tag; a copy that fails its checksum is discarded and downloaded again. A download lands
  in a staging folder first, so a half-downloaded copy is never under its name.
- ``<model>/last_good.json`` names the last version served, whichever source it came from:
  what a service serves when the registry is unreachable at start.
- ``<source key>/refused/v<N>.json`` remembers a refused version for every worker, until an
  admin reload that succeeds clears it. A local model folder has no versions: its refusals
  are remembered in the process.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from recsys.errors import ModelRefused, RecsysError
from serving.model import read_model_dir
from serving.model_sources import LocalDirSource, ModelSource

logger = logging.getLogger(__name__)

LAST_GOOD = "last_good.json"


class FilesRefused(ModelRefused):
    """The candidate's files fail (checksum, child-process check, load): a cached copy of
    them is worth downloading again, unlike a model that loads and is refused."""


class ModelCache:
    """Downloaded versions, the last good pointer and the remembered refusals of one
    model from one source.

    Parameters
    ----------
    root : Path
        ``lifecycle.model_cache_dir``.
    source : ModelSource or None
        Where versions come from (None: no model is ever loaded).
    model_name : str
    """

    def __init__(self, root: Path, source: ModelSource | None, model_name: str):
        self.root = root
        self.source = source
        self.model_name = model_name
        self._refused: dict[str, str] = {}  # version -> why, where no marker can be kept
        self._told: set[str] = set()  # versions refused by another worker, logged here once

    # ---------------------------------------------------------------- versions

    def _source_root(self) -> Path:
        """One folder per source: v1 of one registry is not v1 of another."""
        key = self.source.cache_key if self.source is not None else self.model_name
        return self.root / key

    def _entry(self, version: str) -> tuple[Path, Path]:
        """The folder of ``version`` and the checksum file beside it."""
        folder = self._source_root()
        return folder / f"v{version}", folder / f"v{version}.sha256"

    def fetch(self, version: str) -> tuple[Path, bool]:
        """The folder of ``version`` and whether it was just downloaded.

        A cached copy is used if its checksum matches the one written beside it (and the
        registry's); else it is discarded and downloaded again. A local model folder is used
        where it is.

        Raises
        ------
        FilesRefused
            The downloaded files' checksum differs from the registry's.
        """
        assert self.source is not None
        if isinstance(self.source, LocalDirSource):
            return self.source.path, True
        final, digest_file = self._entry(version)
        expected = self.source.expected_digest(version)
        if final.is_dir():
            problem = digest_problem(final, digest_file, expected)
            if problem is None:
                return final, False
            logger.warning("model %s v%s: the cached copy %s: discarding it and downloading "
                           "it again", self.model_name, version, problem)  # fmt: skip
            self.discard(version)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=final.parent))
        try:
            self.source.download(version, staging)
            digest = read_model_dir(staging).digest()
            if expected is not None and digest != expected:
                raise FilesRefused(
                    f"checksum mismatch: the registry records {expected}, the downloaded "
                    f"files give {digest}"
                )
            write_atomic(digest_file, digest)
            try:
                os.replace(staging, final)  # a half-downloaded copy is never under its name
            except OSError:
                if not final.is_dir():  # another worker published it first: use theirs
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final, True

    def discard(self, version: str) -> None:
        final, digest_file = self._entry(version)
        shutil.rmtree(final, ignore_errors=True)
        digest_file.unlink(missing_ok=True)

    # ---------------------------------------------------------------- the last good copy

    def _pointer(self) -> Path:
        return self.root / self.model_name / LAST_GOOD

    def remember_last_good(self, path: Path, version: str) -> None:
        pointer = self._pointer()
        pointer.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "name": self.model_name,
            "version": version,
            "path": str(path.resolve()),
            "saved_at": datetime.now(UTC).isoformat(),
        }
        write_atomic(pointer, json.dumps(record))

    def last_good(self) -> tuple[Path, str]:
        """The folder and version of the last good copy, its checksum checked.

        Raises
        ------
        ModelRefused
            No pointer, an unreadable one, or a copy that fails its checksum.
        """
        pointer = self._pointer()
        if not pointer.is_file():
            raise ModelRefused(f"no {pointer}")
        try:
            record = json.loads(pointer.read_text(encoding="utf-8"))
            path, version = Path(record["path"]), str(record["version"])
        except (ValueError, KeyError) as exc:
            raise ModelRefused(f"{pointer} is unreadable: {exc}") from exc
        problem = digest_problem(path, path.with_name(path.name + ".sha256"), None)
        if problem is not None:
            raise ModelRefused(f"the last good copy {path} {problem}")
        return path, version

    # ---------------------------------------------------------------- refused versions

    def _refusal_file(self, version: str) -> Path | None:
        """Where a refusal of ``version`` is remembered for every worker (registry only)."""
        if isinstance(self.source, LocalDirSource):
            return None
        return self._source_root() / "refused" / f"v{version}.json"

    def refusal(self, version: str) -> str | None:
        """Why ``version`` was refused before (here or by another worker), or None."""
        if version in self._refused:
            return self._refused[version]
        marker = self._refusal_file(version)
        if marker is None or not marker.is_file():
            return None
        try:
            reason = str(json.loads(marker.read_text(encoding="utf-8"))["reason"])
        except (OSError, ValueError, KeyError, TypeError):
            reason = "reason unreadable"
        if version not in self._told:  # every worker says once why it keeps its model
            self._told.add(version)
            logger.error("refusing model %s v%s (refused by another worker): %s",
                         self.model_name, version, reason)  # fmt: skip
        return reason

    def remember_refusal(self, version: str, reason: str) -> None:
        """Remember in the cache (every worker sees it), or in this process where there is
        no marker."""
        self._told.add(version)  # this process logged its own refusal
        marker = self._refusal_file(version)
        if marker is None:
            self._refused[version] = reason
            return
        record = {"version": version, "reason": reason, "at": datetime.now(UTC).isoformat()}
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(marker, json.dumps(record))
        except OSError as exc:
            logger.warning("cannot record the refusal of v%s in %s: %s", version, marker, exc)
            self._refused[version] = reason

    def forget_refusal(self, version: str) -> None:
        self._refused.pop(version, None)
        self._told.discard(version)
        marker = self._refusal_file(version)
        if marker is not None:
            marker.unlink(missing_ok=True)


def digest_problem(folder: Path, digest_file: Path, expected: str | None) -> str | None:
    """What is wrong with the checksum of a cached model folder, or None."""
    try:
        digest = read_model_dir(folder).digest()
    except (OSError, RecsysError) as exc:
        return f"is unreadable ({exc})"
    if not digest_file.is_file():
        return f"has no checksum beside it ({digest_file.name})"
    recorded = digest_file.read_text(encoding="utf-8").strip()
    if digest != recorded:
        return f"fails its checksum (recorded {recorded}, files give {digest})"
    if expected is not None and digest != expected:
        return f"differs from the registry's checksum ({expected}, files give {digest})"
    return None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new, never a part."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
