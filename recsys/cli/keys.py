"""``recsys keys ...``: make API keys, hash them for the settings, list the configured ones.

Keys are made and hashed by :mod:`serving.credentials` (what the service checks them with);
only the hash is configured (``security.api_keys`` or the keys file
``security.api_keys_file``). A new key is printed once: store it in the client's secret
store, it cannot be shown again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from recsys.settings import load_settings

app = typer.Typer(no_args_is_help=True)

SCOPES = ("publishable", "secret", "admin")


@app.command(epilog="Example: recsys keys new --scope secret --id crm --file keys.json")
def new(
    scope: str = typer.Option(..., help="publishable (browsers), secret (servers) or admin."),
    key_id: str = typer.Option(..., "--id", help="Name of the key, safe to log (e.g. crm)."),
    file: Path | None = typer.Option(
        None,
        "--file",
        help="Add the record to this keys file (created if missing; the file "
        "RECSYS_SECURITY__API_KEYS_FILE names).",
    ),
) -> None:
    """Make a new random key: the key on stdout (shown once), its record {id, scope, hash}."""
    from recsys.settings import hash_key
    from serving.credentials import ApiKeyRecord, new_key

    if scope not in SCOPES:
        raise typer.BadParameter(f"must be one of {', '.join(SCOPES)}, got {scope!r}",
                                 param_hint="--scope")  # fmt: skip
    key = new_key(scope)  # type: ignore[arg-type]
    record = ApiKeyRecord(id=key_id, scope=scope, hash=hash_key(key))  # type: ignore[arg-type]
    if file is not None:
        _add_to_file(file, record.model_dump(exclude_none=True))
    typer.echo(key)
    where = f"added to {file}" if file is not None else "add it to security.api_keys"
    typer.echo(f"record ({where}): {record.model_dump_json(exclude_none=True)}", err=True)
    typer.echo("the key is shown only now: keep it in the client's secret store", err=True)


def _add_to_file(path: Path, record: dict) -> None:
    document: dict[str, Any] = {"keys": []}
    if path.exists():
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise typer.BadParameter(
                f'must be a keys file {{"keys": [...]}}, got {path}', param_hint="--file"
            )
    if any(k.get("id") == record["id"] for k in document["keys"]):
        raise typer.BadParameter(
            f"must be a new id; {path} already has {record['id']!r}", param_hint="--id"
        )
    document["keys"].append(record)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


@app.command("hash", epilog='Example: printf %s "$KEY" | recsys keys hash')
def hash_(
    key: str | None = typer.Argument(
        None, help="The key; default: read from stdin (keeps it out of the shell history)."
    ),
) -> None:
    """Print the configured form of a key: sha256:<hex>."""
    from recsys.settings import hash_key

    value = key if key is not None else sys.stdin.read().strip()
    if not value:
        raise typer.BadParameter("must be a key, got nothing", param_hint="KEY")
    typer.echo(hash_key(value))


@app.command("list", epilog="Example: recsys keys list")
def list_keys() -> None:
    """The configured keys (settings and keys file): id, scope, rate; never the keys."""
    from serving.credentials import load_key_records

    records = load_key_records(load_settings().security)
    if not records:
        typer.echo("no API keys configured: the service runs without authentication "
                   "(development only); make one with `recsys keys new`")  # fmt: skip
        return
    typer.echo(f"{'id':<24} {'scope':<12} {'rate/s':>8} {'burst':>6}  hash")
    for r in records:
        rate = "-" if r.rate_per_second is None else f"{r.rate_per_second:g}"
        burst = "-" if r.burst is None else str(r.burst)
        typer.echo(f"{r.id:<24} {r.scope:<12} {rate:>8} {burst:>6}  {r.hash[:19]}...")
