"""Compare this checkout with a baseline commit on the same host: ``--baseline REF``.

A bench given ``--baseline REF`` measures two sides: ``old``, the commit REF checked out in
a temporary git worktree (``git worktree add --detach``, removed at the end), and ``new``,
this checkout as it is (uncommitted changes included). Both run with the same Python (this
virtual environment) and the same data, model and load; a side's code is chosen by
``PYTHONPATH=<its checkout>`` and the working directory, which win over the environment's
editable install. The sides alternate, round by round (old, new, old, new, ...), so a host
that slows down or speeds up during the run weighs on both alike; the table gives each
side's median over the rounds and the ratio new/old of the medians.

Each bench drives a side through its command line (``recsys serve``, ``recsys score``) or
through that side's own copy of a bench script, so the code's internal API may differ
between the two. A script reports to the harness with one last line ``RESULT {json}``
(:func:`emit_result`, :func:`parse_result`).

This module knows nothing of what is measured: a bench passes a ``measure(side)`` returning
numbers by key and the :class:`Metric` rows to show.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = "RESULT "

Sample = dict[str, float]


@dataclass(frozen=True)
class Side:
    """A checkout whose code a bench runs: ``old`` (the baseline) or ``new`` (this one)."""

    name: str
    root: Path
    commit: str

    def process(self, env: Mapping[str, str]) -> dict:
        """Keyword arguments for :mod:`subprocess` that run this side's code."""
        return {"env": {**env, "PYTHONPATH": str(self.root)}, "cwd": self.root}

    def script(self, name: str) -> Path:
        """This side's copy of ``bench/<name>``."""
        return self.root / "bench" / name


@dataclass(frozen=True)
class Guard:
    """A bound the medians must keep, e.g. ``new/old >= 0.8``."""

    text: str
    holds: Callable[[float, float], bool]

    @classmethod
    def ratio_at_least(cls, bound: float) -> Guard:
        return cls(f"new/old >= {bound:g}", lambda old, new: new >= bound * old)

    @classmethod
    def ratio_at_most(cls, bound: float) -> Guard:
        return cls(f"new/old <= {bound:g}", lambda old, new: new <= bound * old)

    @classmethod
    def new_at_least(cls, bound: float) -> Guard:
        return cls(f"new >= {bound:g}", lambda old, new: new >= bound)


@dataclass(frozen=True)
class Metric:
    """One row of the comparison.

    ``key`` names the number in a side's sample (or the row, when ``of`` computes it from
    the sample); ``label`` and ``unit`` are shown; ``guard`` is the bound the medians keep.
    """

    key: str
    label: str
    unit: str
    guard: Guard | None = None
    of: Callable[[Mapping[str, float]], float] | None = None

    def value(self, sample: Mapping[str, float]) -> float | None:
        if self.of is not None:
            try:
                return self.of(sample)
            except (KeyError, ZeroDivisionError):
                return None
        return sample.get(self.key)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--baseline REF`` and ``--rounds N`` for a bench's command line."""
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="compare with this commit (a temporary git worktree), alternating on this host",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="with --baseline: rounds of old, new (default 3)"
    )


def emit_result(result: Mapping) -> None:
    """Print the machine-readable last line a harness parses."""
    print(RESULT + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict | None:
    """The last ``RESULT {json}`` line of a script's output, or None when it printed none."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT)]
    return json.loads(lines[-1][len(RESULT) :]) if lines else None


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def current() -> Side:
    """This checkout, as it is on disk."""
    commit = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " + uncommitted changes"
    return Side("new", ROOT, commit)


@contextmanager
def checkout(ref: str) -> Iterator[Side]:
    """REF in a temporary git worktree, removed on the way out."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise SystemExit(f"--baseline must name a commit of {ROOT}, got {ref!r}")
    commit = found.stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix="recsys-baseline-"))
    try:
        _git("worktree", "add", "--detach", str(folder), commit)
        if (ROOT / ".env").exists():  # the same settings file on both sides
            shutil.copy2(ROOT / ".env", folder / ".env")
        yield Side("old", folder, commit[:7])
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)])
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"])


def alternate(
    sides: Sequence[Side],
    rounds: int,
    measure: Callable[[Side], Mapping[str, float]],
    *,
    shared: Callable[[], Mapping[str, float]] | None = None,
    warm: Callable[[Side], None] | None = None,
) -> dict[str, list[Sample]]:
    """``measure`` each side in turn, ``rounds`` times; ``shared`` (a side-free reference,
    e.g. another server's throughput) once per round, its numbers added to both sides'
    samples of that round; ``warm`` once per side before the first round."""
    if rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {rounds}")
    if warm is not None:
        for side in sides:
            print(f"warming {side.name} ({side.commit})", flush=True)
            warm(side)
    samples: dict[str, list[Sample]] = {side.name: [] for side in sides}
    for round_no in range(1, rounds + 1):
        for side in sides:
            print(f"round {round_no}/{rounds}: {side.name} ({side.commit})", flush=True)
            samples[side.name].append(dict(measure(side)))
        if shared is not None:
            common = shared()
            for side in sides:
                samples[side.name][-1].update(common)
    return samples


def _median(metric: Metric, samples: Sequence[Sample]) -> float | None:
    values = [v for v in (metric.value(s) for s in samples) if v is not None]
    return statistics.median(values) if values else None


def report(
    old: Side, new: Side, samples: Mapping[str, list[Sample]], metrics: Sequence[Metric]
) -> list[dict]:
    """Print the side-by-side table (medians over rounds, new/old, the guards) and return
    its rows."""
    rounds = len(samples[old.name])
    print()
    print(
        f"baseline: old = {old.commit} (temporary worktree), new = {new.commit}; "
        f"{rounds} round(s) alternating old, new; medians over the rounds"
    )
    print(f"{'metric':<44}{'unit':>8}{'old':>12}{'new':>12}{'new/old':>9}  guard")
    rows = []
    for metric in metrics:
        a, b = _median(metric, samples[old.name]), _median(metric, samples[new.name])
        ratio = b / a if a and b is not None else None
        verdict = ""
        if metric.guard is not None:
            if a is None or b is None:
                verdict = f"{metric.guard.text}: n/a"
            else:
                verdict = f"{metric.guard.text}: {'met' if metric.guard.holds(a, b) else 'MISSED'}"
        print(
            f"{metric.label:<44}{metric.unit:>8}{_fmt(a):>12}{_fmt(b):>12}"
            f"{'n/a' if ratio is None else f'{ratio:.3f}':>9}  {verdict}"
        )
        rows.append({"key": metric.key, "old": a, "new": b, "ratio": ratio, "guard": verdict})
    print("per round (old | new):")
    for metric in metrics:
        per_side = [
            ", ".join(_fmt(metric.value(s)) for s in samples[side.name]) for side in (old, new)
        ]
        print(f"  {metric.label:<46}{per_side[0]} | {per_side[1]}")
    return rows


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:,.3f}"


def compare(
    ref: str,
    rounds: int,
    measure: Callable[[Side], Mapping[str, float]],
    metrics: Sequence[Metric],
    out: Path,
    *,
    shared: Callable[[], Mapping[str, float]] | None = None,
    warm: Callable[[Side], None] | None = None,
) -> None:
    """Check REF out, alternate it with this checkout, print the table, write ``out``."""
    new = current()
    with checkout(ref) as old:
        samples = alternate([old, new], rounds, measure, shared=shared, warm=warm)
    rows = report(old, new, samples, metrics)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"old": old.commit, "new": new.commit, "rows": rows, "samples": samples}, indent=2
        )
    )
    print(f"numbers in {out}")
