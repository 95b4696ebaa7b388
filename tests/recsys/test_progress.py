"""A step with no progress of its own (a model compile) still shows that it is running."""

from __future__ import annotations

import io
import time

from recsys.progress import progress_while


def test_an_opaque_step_redraws_its_elapsed_time_until_it_ends():
    out = io.StringIO()
    with progress_while("compiling model m.txt", file=out, refresh_seconds=0.02):
        time.sleep(0.3)
    text = out.getvalue()
    assert "compiling model m.txt" in text
    # drawn at the start, redrawn while it runs, and once more when it ends
    assert text.count("compiling model m.txt") >= 4
    assert "00:00" in text


def test_the_bar_ends_when_the_step_fails():
    out = io.StringIO()
    try:
        with progress_while("compiling model m.txt", file=out, refresh_seconds=0.02):
            raise RuntimeError("llvm failed")
    except RuntimeError:
        pass
    drawn = out.getvalue().count("compiling model m.txt")
    time.sleep(0.1)
    assert out.getvalue().count("compiling model m.txt") == drawn  # no ticker left redrawing
