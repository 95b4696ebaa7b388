"""One line per user mistake: how the command line reports errors.

Every command runs inside :class:`OneLineErrors`: an error recsys raises on purpose
(:class:`recsys.errors.RecsysError`), a file that cannot be read or written (``OSError``) or a
setting that does not validate prints ``error: <what, where, expected>`` on stderr and exits
with code 1; anything else prints one line naming the exception and how to see more. The
full traceback only with ``recsys --debug ...`` (or ``RECSYS_DEBUG=1``), as in git or pip.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from recsys.errors import RecsysError

#: The environment variable that turns tracebacks on, like ``--debug``.
DEBUG_VAR = "RECSYS_DEBUG"


def debug_requested(ctx: typer.Context) -> bool:
    return bool(ctx.meta.get("recsys.debug")) or os.environ.get(DEBUG_VAR, "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line, without the library's wrapping."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
            for e in exc.errors(include_input=False)
        )
        return f"invalid settings ({problems})"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class OneLineErrors(TyperGroup):
    """The root command group: user mistakes as one line on stderr, exit code 1."""

    def invoke(self, ctx: Any) -> Any:  # click's Context (typer vendors click privately)
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            if debug_requested(ctx):
                raise
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except (RecsysError, OSError, ValidationError) as exc:
            if debug_requested(ctx):
                raise
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(1) from None
        except Exception as exc:  # a bug, not a user mistake: still one line by default
            if debug_requested(ctx):
                raise
            typer.echo(
                f"error: {type(exc).__name__}: {one_line(exc)} "
                "(run `recsys --debug ...` for the traceback)",
                err=True,
            )
            raise typer.Exit(1) from None
