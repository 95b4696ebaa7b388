"""Progress bars of the long steps (tqdm, as the data generator's): on a terminal only.

A bar writes to stderr and disappears from logs and pipes (``disable=None``: tqdm shows it
only when stderr is a terminal), so ``recsys train > run.log`` stays readable. Used by
training, evaluation, materialisation and ``recsys score``.
"""

from __future__ import annotations

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
