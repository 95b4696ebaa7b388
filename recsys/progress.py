"""Progress bars of the long steps (tqdm, as the data generator's): on a terminal only.

A bar writes to stderr and disappears from logs and pipes (``disable=None``: tqdm shows it
only when stderr is a terminal), so ``recsys train > run.log`` stays readable. Used by
training, evaluation, materialisation and ``recsys score`` (its model load, which compiles
the model on first use: :func:`progress_while`, for a step that reports nothing until it ends).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from tqdm import tqdm


def progress_bar(
    desc: str, total: int | None = None, unit: str = "it", file: IO[str] | None = None
) -> tqdm:
    """A bar for one long step; shown only on a terminal unless ``file`` is given."""
    return tqdm(
        desc=desc,
        total=total,
        unit=unit,
        file=file,
        disable=None if file is None else False,
        dynamic_ncols=True,
        leave=False,
    )


@contextmanager
def progress_while(
    desc: str, file: IO[str] | None = None, refresh_seconds: float = 1.0
) -> Iterator[tqdm]:
    """A bar with the elapsed time of one step that has no progress of its own to report
    (an LLVM compile): redrawn every ``refresh_seconds`` until the block ends."""
    bar = progress_bar(desc, None, "step", file)
    done = threading.Event()

    def redraw() -> None:
        while not done.wait(refresh_seconds):
            bar.refresh()

    ticker = threading.Thread(target=redraw, name="progress-while", daemon=True)
    ticker.start()
    try:
        yield bar
    finally:
        done.set()
        ticker.join()
        bar.update(1)
        bar.close()
