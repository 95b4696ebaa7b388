"""One background thread that calls ``refresh`` every ``interval`` seconds until stopped.

The model holder, the experiment arms and the live catalogue each follow a store this way.
A failing ``refresh`` never ends the thread: ``on_error`` hears of it (the owner keeps what
it has) and the next tick tries again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Poller:
    """Calls ``refresh`` every ``interval`` seconds in a daemon thread named ``name``.

    Parameters
    ----------
    name : str
        The thread's name (shown by ``py-spy`` and in thread dumps).
    refresh : callable
        The work of one tick.
    on_error : callable taking the exception
        Called when ``refresh`` raises; the poller goes on.
    """

    def __init__(
        self, name: str, refresh: Callable[[], object], on_error: Callable[[Exception], None]
    ):
        self.name = name
        self.refresh = refresh
        self.on_error = on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, interval: float) -> None:
        """Start polling every ``interval`` seconds (no-op if running or ``interval <= 0``)."""
        if interval <= 0 or self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception as exc:  # never let the poller die; the next tick retries
                    self.on_error(exc)

        self._thread = threading.Thread(target=loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait (up to 5 s) for a tick in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
