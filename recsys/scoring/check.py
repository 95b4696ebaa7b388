"""A model file tried where a crash cannot hurt: parsed and test-scored in a child process.

LightGBM and LLVM do not raise on every damaged file: a truncated text model or a damaged
tree line makes LightGBM segfault or abort, and a damaged compiled binary makes LLVM abort
(``LLVM ERROR``). Such a file loaded by a serving process kills it, and every restart of
it. :func:`check_model_files` therefore loads the file and scores :meth:`check_matrix
<recsys.scoring.base.ModelScorer.check_matrix>` rows in a child process (a fresh
interpreter of the same code, given only the file names) before the serving process loads it:

- the plain scorer (``lightgbm``, ``sklearn``) crashes, raises, hangs past ``timeout`` or
  scores non-finite values: :class:`~recsys.errors.ModelRefused` naming the step and why;
- the compiled copy (``lleaves``) does: the cached binary is discarded and the report says
  to serve the plain scorer (:attr:`CheckReport.compiled_failed`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import ModelRefused, SpecMismatchError
from recsys.scoring.base import LoadOptions, ModelFiles, ModelScorer

logger = logging.getLogger(__name__)

#: Rows scored by the check (per scorer).
CHECK_ROWS = 256


@dataclass(frozen=True)
class CheckReport:
    """What the child process found.

    Attributes
    ----------
    scorer : str
        The scorer that passed and is to be served (``lleaves``, ``lightgbm``, ...).
    compiled_failed : str or None
        Why the compiled copy was refused (it was discarded; the plain scorer serves), or
        None when it passed or was not asked for.
    seconds : float
        Wall time of the check.
    options : LoadOptions
        How the serving process is to load the model: compiled only if that passed.
    """

    scorer: str
    compiled_failed: str | None
    seconds: float
    options: LoadOptions


def check_model_files(
    flavour: str, files: ModelFiles, options: LoadOptions, timeout: float
) -> CheckReport:
    """Load ``files`` (a model of ``flavour``) and score test rows in a child process.

    Parameters
    ----------
    flavour : str
        The recorded flavour (``lightgbm``, ``sklearn``).
    files : ModelFiles
    options : LoadOptions
        With ``compiled_dir``, the compiled copy is checked too (and cached there).
    timeout : float
        Seconds the child may take (compiling a large model takes tens of seconds).

    Returns
    -------
    CheckReport
        ``report.options`` says how to load the model in the serving process.

    Raises
    ------
    ModelRefused
        The plain scorer crashed, failed, hung or scored non-finite values in the child.
    SpecMismatchError
        The model reads another number of columns than ``files.columns`` (the scorer's own
        check, as in :meth:`ModelScorer.load <recsys.scoring.base.ModelScorer.load>`).
    """
    from recsys.scoring import scorer_class

    plain = scorer_class(flavour)
    compiled = scorer_class(flavour, compiled=options.compiled)
    started = time.monotonic()
    messages, exitcode = _run_child(flavour, files, options, timeout)
    seconds = time.monotonic() - started
    by_kind: dict[str, tuple[Any, ...]] = {m[0]: m for m in messages}
    if "spec_mismatch" in by_kind:
        raise SpecMismatchError(by_kind["spec_mismatch"][2])
    if "plain_ok" not in by_kind:
        raise ModelRefused(
            f"model file {files.model_file.name} failed its check "
            f"{_why(messages, exitcode, timeout)}"
        )
    if compiled is plain:
        return CheckReport(plain.name, None, seconds, LoadOptions())
    if "passed" in by_kind:
        return CheckReport(compiled.name, None, seconds, options)
    reason = _why(messages, exitcode, timeout)
    compiled.discard_cache(files, options)
    logger.warning(
        "model file %s: compiled copy failed its check %s; discarded, serving %s",
        files.model_file.name,
        reason,
        plain.name,
    )
    return CheckReport(plain.name, reason, seconds, LoadOptions())


@dataclass
class _Child:
    """A checking process waiting for its job on stdin; its messages come on ``reader``."""

    process: subprocess.Popen[bytes]
    reader: int

    def discard(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.reader)


_spare: _Child | None = None
_spare_lock = threading.Lock()


def _spawn() -> _Child:
    """A fresh interpreter of this code that imports the scorers, then waits for a job.

    A subprocess, not a multiprocessing child: ``spawn`` would run the parent's
    ``__main__`` again, which a script without a main guard does not survive.
    """
    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from {__name__} import child_main; child_main()",
                str(write_end),
            ],
            stdin=subprocess.PIPE,
            pass_fds=(write_end,),
            env=env,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return _Child(process, read_end)


def _take_child() -> _Child:
    """The spare child (its imports done while idle), or a new one."""
    global _spare
    with _spare_lock:
        child, _spare = _spare, None
    if child is not None and child.process.poll() is None:
        return child
    if child is not None:
        child.discard()
    return _spawn()


def _keep_spare() -> None:
    """Start the next check's process now: importing the scorers takes seconds, and a
    version promoted to fix a bad one should be checked without them. One per process;
    it exits when this process does (its stdin closes)."""
    global _spare
    with _spare_lock:
        if _spare is None:
            _spare = _spawn()


def _run_child(
    flavour: str, files: ModelFiles, options: LoadOptions, timeout: float
) -> tuple[list[tuple[Any, ...]], int | None]:
    """The child's messages, and its exit code (None: killed at ``timeout``). Each check
    runs in a process of its own (never one that checked another model)."""
    job = {
        "flavour": flavour,
        "model_file": str(files.model_file),
        "columns": list(files.columns),
        "compiled_dir": None if options.compiled_dir is None else str(options.compiled_dir),
    }
    child = _take_child()
    process = child.process
    try:
        with os.fdopen(child.reader, "rb", closefd=False) as reader:
            assert process.stdin is not None
            try:
                process.stdin.write(json.dumps(job).encode("utf-8"))
                process.stdin.close()
            except BrokenPipeError:  # it died waiting; its exit code says how
                pass
            exitcode: int | None
            try:
                exitcode = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()  # before reading: its end of the pipe closes with it
                process.wait()
                exitcode = None
            messages = [tuple(json.loads(line)) for line in reader.read().splitlines() if line]
    finally:
        child.discard()
        _keep_spare()
    return messages, exitcode


def _why(messages: list[tuple[Any, ...]], exitcode: int | None, timeout: float) -> str:
    """'while STEP: REASON' from the child's last messages and exit code."""
    steps = [m[1] for m in messages if m[0] == "step"]
    step = steps[-1] if steps else "starting"
    failures = [m for m in messages if m[0] == "failed"]
    if failures:
        return f"while {failures[-1][1]}: {failures[-1][2]}"
    if exitcode is None:
        return f"while {step}: did not finish within {timeout:g} s"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"while {step}: the process crashed ({name})"
    return f"while {step}: the process exited with code {exitcode}"


def child_main() -> None:
    """The child's entry point: the job as JSON on stdin, messages as JSON lines to the file
    descriptor in ``argv[1]``. The scorers are imported before the job is read (a spare
    child waits with them loaded); no job (the parent exited): nothing to do."""
    import recsys.scoring  # noqa: F401  (the slow part, done while waiting)

    raw = sys.stdin.read()
    if not raw:
        return
    job = json.loads(raw)
    with os.fdopen(int(sys.argv[1]), "w", buffering=1, encoding="utf-8") as out:

        def send(*message: Any) -> None:
            out.write(json.dumps(message) + "\n")

        compiled_dir = job["compiled_dir"]
        _check_in_child(
            job["flavour"],
            ModelFiles(Path(job["model_file"]), tuple(job["columns"])),
            LoadOptions(None if compiled_dir is None else Path(compiled_dir)),
            send,
        )


def _check_in_child(
    flavour: str, files: ModelFiles, options: LoadOptions, send: Callable[..., None]
) -> None:
    """Load and score the plain scorer, then the compiled one, saying each step first."""
    from recsys.scoring import scorer_class

    step = "starting"

    def enter(name: str) -> None:
        nonlocal step
        step = name
        send("step", name)

    try:
        plain_class = scorer_class(flavour)
        enter(f"loading the {plain_class.name} model")
        plain = plain_class.load_strict(files, LoadOptions())
        enter(f"scoring with {plain.name}")
        _score_check_rows(plain)
        send("plain_ok", plain.name)
        compiled_class = scorer_class(flavour, compiled=options.compiled)
        if compiled_class is not plain_class:
            enter(f"loading the {compiled_class.name} model")
            compiled = compiled_class.load_strict(files, options)
            enter(f"scoring with {compiled.name}")
            _score_check_rows(compiled)
        send("passed", step)
    except SpecMismatchError as exc:  # a readable model of another shape: not damage
        send("spec_mismatch", step, str(exc))
    except Exception as exc:
        send("failed", step, f"{type(exc).__name__}: {exc}")


def _score_check_rows(scorer: ModelScorer) -> None:
    scores = scorer.score(scorer.check_matrix(CHECK_ROWS))
    if scores.shape != (CHECK_ROWS,) or not np.all(np.isfinite(scores)):
        raise ValueError(
            f"{scorer.name} must give {CHECK_ROWS} finite scores for {CHECK_ROWS} rows, got "
            f"shape {scores.shape} with {int(np.sum(~np.isfinite(scores)))} non-finite"
        )


__all__ = ["CHECK_ROWS", "CheckReport", "check_model_files"]
