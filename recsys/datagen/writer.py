"""Streaming table writers: one Parquet row group (or CSV chunk) per customer block.

Writer options are fixed so the same data gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

FILE_FORMATS = ("parquet", "csv")
PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 1,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
}


class TableWriter:
    """Appends Arrow tables of one fixed schema to ``path`` (Parquet or CSV)."""

    def __init__(self, path: Path, schema: pa.Schema, file_format: str):
        if file_format not in FILE_FORMATS:
            raise ValueError(f"`file_format` must be one of {FILE_FORMATS}, got {file_format!r}")
        self.path = path
        self.schema = schema
        self.file_format = file_format
        self.rows = 0
        if file_format == "parquet":
            self._writer: pq.ParquetWriter | pa_csv.CSVWriter = pq.ParquetWriter(
                path, schema, **PARQUET_OPTIONS
            )
        else:
            # whole seconds read better in CSV than Arrow's default microseconds
            self._csv_schema = pa.schema(
                [
                    pa.field(f.name, pa.timestamp("s")) if pa.types.is_timestamp(f.type) else f
                    for f in schema
                ]
            )
            self._writer = pa_csv.CSVWriter(path, self._csv_schema)

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        if self.file_format == "csv":
            table = table.cast(self._csv_schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
