"""LightGBM's boosting rounds as a progress bar (:func:`recsys.progress.progress_bar`)."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from recsys.progress import progress_bar

__all__ = ["LightGBMProgress", "progress_bar"]


class LightGBMProgress:
    """A ``lightgbm.train`` callback: one step of ``bar`` per boosting round; the bar is
    closed with the rounds done when training ends (early stopping ends before ``total``)."""

    order = 5  # before early stopping (30), which ends the training by raising

    def __init__(self, bar: tqdm):
        self.bar = bar

    def __call__(self, env: Any) -> None:
        done = env.iteration - env.begin_iteration + 1
        self.bar.update(done - self.bar.n)
        if env.iteration + 1 >= env.end_iteration:
            self.bar.close()
