"""The live catalogue: offers and touchpoints changed while the service runs reach every
worker within ``serving.catalog_poll_seconds``, without a restart, all at once.

How a worker learns of a change (the design choice). Every worker polls, like the running
experiments (:mod:`serving.experiment_arms`), but what it polls is the catalogue's own
source, not a message another process must remember to send:

1. every ``catalog_poll_seconds`` it ``stat``\\ s the source (the warehouse DuckDB file and
   its ``.wal``; or the offers/touchpoints files of a catalogue folder): microseconds, no
   lock, nothing opened. Only when size or modification time changed does it
2. open the warehouse read-only, read the two tables and compute the catalogue's
   fingerprint (:attr:`recsys.catalog.Catalog.version`). The same fingerprint (a load of
   transactions, a rewrite with the same values) changes nothing; another one is checked
   and swapped in.

So any writer is seen (``recsys data load``, ``PUT /admin/offers/{id}`` of any worker, a
script of the data team), with no second store of "catalogue versions" to keep in step with
the warehouse, and the warehouse is opened only after it changed. DuckDB allows one writing
process and refuses a read-only open meanwhile: such a read fails, the worker keeps its
catalogue and tries again at the next tick (the change is not committed before the writer
closes anyway). Writers wait for a worker's short read (:func:`recsys.warehouse.
connect_when_free`).

A new catalogue is checked before it is served: it must build (unique ids, known
touchpoints), its eligibility rules must name features the online store has (a rule that
was already unknown in the served catalogue is only logged, as at start), and trial
decisions (one per touchpoint, not recorded) with the served model must pass. A catalogue
that fails is refused: the old one stays, the refusal is logged ("refusing catalogue ...")
and counted (``recsys_catalog_swaps_total{result="refused"}``), and it is not tried again
until the source changes again.

The swap is one assignment of a new :class:`recsys.decision.DecisionPipeline`, built whole on
the new catalogue with everything derived from it (its candidates and eligibility arrays,
contact caps, the customer feature names its rules use, the experiment arms with their
levers applied to it); the model's matrix builder prepares each touchpoint's offers for the
catalogue object a batch hands it. A batch reads the pipeline once, so it decides on the old
catalogue or on the new one, never on a mix.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from recsys.catalog import Catalog, load_catalog
from recsys.errors import RecsysError
from serving.polling import Poller

logger = logging.getLogger(__name__)

#: What a catalogue source looks like without opening it: (name, size, mtime_ns) per file.
Signal = tuple[tuple[str, int, int], ...]


class CatalogRefused(RecsysError):
    """A new catalogue cannot be served; the served one stays."""


class CatalogueObserver(Protocol):
    def catalog_swap(self, result: str) -> None: ...


@dataclass(frozen=True)
class CatalogSwap:
    """The outcome of one look at the source: swapped | unchanged | refused | unreadable."""

    result: str
    previous: str
    current: str
    detail: str = ""


def source_signal(source: str | Path) -> Signal:
    """The source's files as ``stat`` sees them: a warehouse file and its write-ahead log,
    or every file of a catalogue folder. Changes whenever a writer changed them."""
    path = Path(source)
    files = sorted(path.iterdir()) if path.is_dir() else [path, Path(f"{path}.wal")]
    out = []
    for file in files:
        try:
            st = file.stat()
        except OSError:
            continue
        out.append((file.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class LiveCatalogue:
    """The catalogue a worker serves, followed from its source (see the module docstring).

    Parameters
    ----------
    source : path
        Warehouse DuckDB file or folder of offers/touchpoints files.
    catalog : Catalog
        The catalogue read at start.
    seen : Signal
        The source's signal taken *before* ``catalog`` was read.
    apply : callable(Catalog) -> None
        Checks a new catalogue and swaps it in; raises (CatalogRefused or any error) to
        refuse it.
    poll_seconds : float
        How often the source is looked at (0: only :meth:`refresh`).
    observer : CatalogueObserver, optional
    """

    def __init__(
        self,
        source: str | Path,
        catalog: Catalog,
        seen: Signal,
        apply: Callable[[Catalog], None],
        poll_seconds: float = 2.0,
        observer: CatalogueObserver | None = None,
    ):
        self.source = Path(source)
        self.apply = apply
        self.poll_seconds = poll_seconds
        self.observer = observer
        self._catalog = catalog
        self._seen = seen
        self._loaded_at = datetime.now(UTC)
        self._lock = threading.Lock()
        self._poller = Poller("catalogue-poller", self.refresh, self._poll_failed)
        self.last_error: str | None = None

    @property
    def current(self) -> Catalog:
        return self._catalog

    def status(self) -> dict[str, Any]:
        return {
            "worker": os.getpid(),
            "version": self._catalog.version,
            "offers": len(self._catalog.offers),
            "touchpoints": len(self._catalog.touchpoints),
            "source": str(self.source),
            "loaded_at": self._loaded_at.isoformat(),
            "poll_seconds": self.poll_seconds,
            "last_error": self.last_error,
        }

    def refresh(self, force: bool = False) -> CatalogSwap:
        """Look at the source; read, check and swap in the catalogue if it changed.

        ``force`` reads it even if its files look unchanged (after a write of this worker).
        """
        with self._lock:
            before = self._catalog.version
            signal = source_signal(self.source)
            if not force and signal == self._seen:
                return CatalogSwap("unchanged", before, before)
            try:
                catalog = load_catalog(self.source)
            except RecsysError as exc:  # readable but not a catalogue: wait for a fix
                self._seen = signal
                return self._refused(before, f"cannot be read as a catalogue: {exc}")
            except Exception as exc:  # locked by a writer, or mid-write: the next tick retries
                detail = f"{type(exc).__name__}: {exc}"
                logger.info("catalogue not read now (%s); trying again", detail)
                return self._observed(CatalogSwap("unreadable", before, before, detail))
            self._seen = signal
            if catalog.version == before:
                return CatalogSwap("unchanged", before, before)
            try:
                self.apply(catalog)
            except Exception as exc:
                return self._refused(catalog.version, str(exc), before)
            self._catalog = catalog
            self._loaded_at = datetime.now(UTC)
            self.last_error = None
            logger.info("serving catalogue %s (was %s): %s", catalog.version, before, catalog)
            return self._observed(CatalogSwap("swapped", before, catalog.version))

    def _refused(self, version: str, why: str, before: str | None = None) -> CatalogSwap:
        kept = before or self._catalog.version
        self.last_error = f"catalogue {version} refused: {why}"
        logger.error("refusing catalogue %s (keeping %s): %s", version, kept, why)
        return self._observed(CatalogSwap("refused", kept, kept, why))

    def _observed(self, swap: CatalogSwap) -> CatalogSwap:
        if self.observer is not None:
            self.observer.catalog_swap(swap.result)
        return swap

    def start_polling(self) -> None:
        self._poller.start(self.poll_seconds)

    @staticmethod
    def _poll_failed(exc: Exception) -> None:
        logger.error("catalogue poll failed", exc_info=exc)

    def stop(self) -> None:
        self._poller.stop()


def new_unknown_rules(
    new: Catalog, old: Catalog, find: Callable[[Catalog], list[Any]]
) -> list[str]:
    """Messages of the rules of ``new`` naming unknown features that ``old`` did not have
    (``find`` lists a catalogue's unknown rule features, each with ``offer_id``, ``rule``
    and ``message``)."""
    before = {(u.offer_id, u.rule) for u in find(old)}
    return [u.message for u in find(new) if (u.offer_id, u.rule) not in before]
