"""Reading contract files (CSV, Parquet, YAML) in raw chunks, with errors that name the
file, the line and what is wrong. Validation and merging are :mod:`recsys.loading`'s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from recsys.contract import TABLES, ContractYamlLoader, Problem, TableSpec
from recsys.errors import ContractError

CHUNK_ROWS = 500_000
SUFFIXES = (".parquet", ".csv", ".yaml", ".yml")


def find_table_files(directory: Path) -> dict[str, Path]:
    """The contract files present in ``directory`` (one per table)."""
    if not directory.is_dir():
        raise ContractError(f"{directory}: expected a folder of contract files, got no such folder")
    found = {name: path for name in TABLES if (path := table_file(directory, name)) is not None}
    if not found:
        expected = ", ".join(f"{n}.csv|parquet" for n in TABLES)
        raise ContractError(
            f"{directory}: no contract table found; expected files named {expected}"
        )
    return found


def table_file(directory: Path, name: str) -> Path | None:
    """The file of contract table ``name`` in ``directory`` (CSV, Parquet, and YAML where the
    table allows it), or None.

    Raises ContractError if the table is given in more than one file.
    """
    spec = TABLES[name]
    candidates = [
        directory / f"{name}{suffix}"
        for suffix in SUFFIXES
        if suffix in (".parquet", ".csv") or spec.yaml_allowed
    ]
    present = [p for p in candidates if p.is_file()]
    if len(present) > 1:
        raise ContractError(
            f"{directory}: table '{name}' given twice ({', '.join(p.name for p in present)}); "
            "expected one file per table"
        )
    return present[0] if present else None


def yaml_problem(path: Path, err: yaml.YAMLError) -> Problem:
    """A YAML error as one line naming the file, the line and what is wrong."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        reason = " ".join(f"{err.context or ''} {err.problem or ''}".split())
        return Problem(f"{path}, line {err.problem_mark.line + 1}", None, None,
                       f"not valid YAML: {reason}")  # fmt: skip
    return Problem(str(path), None, None, f"not valid YAML: {' '.join(str(err).split())}")


def _utf8_problem(path: Path) -> Problem:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        byte = data[err.start : err.start + 1].hex()
        return Problem(
            str(path),
            max(line - 1, 1),
            None,
            f"not UTF-8 text: invalid byte 0x{byte} on line {line}; "
            "expected UTF-8 (save the file as UTF-8)",
        )
    return Problem(str(path), None, None, "expected UTF-8 text")


def read_chunks(path: Path, spec: TableSpec) -> Iterator[pd.DataFrame]:
    """Raw chunks of a contract file (CSV as text, Parquet/YAML with native types).

    Raises ContractError for a file that cannot be read at all (empty, wrong encoding,
    not a table).
    """
    if path.stat().st_size == 0:
        raise ContractError(
            f"{path}: file is empty; expected a header row with columns "
            f"{', '.join(spec.required_columns)}",
            problems=[Problem(str(path), None, None, "file is empty")],
        )
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise ContractError(
                f"{path}: not a Parquet file ({err})",
                problems=[Problem(str(path), None, None, "not a Parquet file")],
            ) from err
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
            yield batch.to_pandas(types_mapper=None).reset_index(drop=True)
    elif suffix == ".csv":
        try:
            reader = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding="utf-8-sig",
                chunksize=CHUNK_ROWS,
            )
            yield from (chunk.reset_index(drop=True) for chunk in reader)
        except UnicodeDecodeError as err:
            problem = _utf8_problem(path)
            raise ContractError(str(problem), problems=[problem]) from err
        except pd.errors.EmptyDataError as err:
            raise ContractError(
                f"{path}: file is empty; expected a header row with columns "
                f"{', '.join(spec.required_columns)}",
                problems=[Problem(str(path), None, None, "file is empty")],
            ) from err
        except pd.errors.ParserError as err:
            raise ContractError(
                f"{path}: not a well-formed CSV file ({err})",
                problems=[Problem(str(path), None, None, str(err))],
            ) from err
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            problem = _utf8_problem(path)
            raise ContractError(str(problem), problems=[problem]) from err
        try:
            records = yaml.load(text, Loader=ContractYamlLoader)
        except yaml.YAMLError as err:
            problem = yaml_problem(path, err)
            raise ContractError(str(problem), problems=[problem]) from err
        if isinstance(records, dict) and spec.name in records:
            records = records[spec.name]
        if records is None:
            raise ContractError(
                f"{path}: file is empty; expected a list of {spec.name}",
                problems=[Problem(str(path), None, None, "file is empty")],
            )
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ContractError(
                f"{path}: expected a YAML list of mappings (one per row), "
                f"got {type(records).__name__}",
                problems=[Problem(str(path), None, None, "expected a YAML list of mappings")],
            )
        yield pd.DataFrame.from_records(records).reset_index(drop=True)
