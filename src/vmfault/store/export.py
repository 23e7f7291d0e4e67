"""Export a store's analysis rows (`COLUMNS`) as CSV, JSON lines or Parquet.

One row per experiment, `experiment_id` first, the columns always in `COLUMNS` order. The
file is written under a temporary name in the target's directory, synced, then renamed over
the target: readers see the old file or the complete new one, never a part.

Encodings: CSV (RFC 4180 via `csv`, UTF-8, header row) writes None as an empty cell and
booleans as `true`/`false`, so a None and an empty string read back alike; JSON lines write
one object per line (null for None); Parquet (needs pyarrow) has a fixed schema (int64,
float64, string, bool per column kind, every column nullable, each column's description in
its field metadata under `doc`). Hex columns are strings in every format.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import logging
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal, get_args

from vmfault.errors import UsageError
from vmfault.store.base import COLUMN_NAMES, COLUMNS, ColumnKind, RowSource

__all__ = ["FORMATS", "PARQUET_BATCH_ROWS", "ExportFormat", "export", "parquet_schema"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

ExportFormat = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
PARQUET_BATCH_ROWS = 4096
"""Rows per Parquet record batch: memory stays bounded whatever the campaign's size."""

_ARROW_TYPES: dict[ColumnKind, str] = {
    "int": "int64",
    "float": "float64",
    "str": "string",
    "bool": "bool_",
}


def export(store: RowSource, path: Path, *, format: ExportFormat) -> int:
    """Write every row of `store` to `path` in `format`, atomically; returns the rows written.

    UsageError for an unknown format, a missing pyarrow (parquet) or a path that cannot be
    written; the target is then left as it was.
    """
    path = Path(path)
    if format not in FORMATS:
        raise UsageError(
            f"unknown export format {format!r}", hint=f"use one of {', '.join(FORMATS)}"
        )
    writers = {"csv": _write_csv, "jsonl": _write_jsonl, "parquet": _write_parquet}
    write = writers[format]
    if format == "parquet":
        _pyarrow()
    with _atomic(path) as stream:
        written = write(store.rows(), stream)
    logger.info("exported %d rows to %s (%s)", written, path, format)
    return written


def parquet_schema() -> Any:
    """The pyarrow schema of a Parquet export (UsageError if pyarrow is missing)."""
    pa, _ = _pyarrow()
    return pa.schema(
        [
            pa.field(
                column.name,
                getattr(pa, _ARROW_TYPES[column.kind])(),
                nullable=True,
                metadata={"doc": column.doc},
            )
            for column in COLUMNS
        ]
    )


def _pyarrow() -> tuple[Any, Any]:
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise UsageError(
            "parquet export needs pyarrow", hint="pip install 'vmfault[parquet]'"
        ) from None
    return pa, pq


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[IO[bytes]]:
    """A binary stream whose content replaces `path` only if the block ends normally."""
    directory = path.parent
    if not directory.is_dir():
        raise UsageError(
            f"cannot write {path}: {directory} is not a directory",
            hint="create the directory first",
        )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    while True:
        temporary = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(temporary, flags, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise UsageError(
                f"cannot write {path}: {exc.strerror}", hint="check the directory's permissions"
            ) from None
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        temporary.replace(path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _write_csv(rows: Iterable[dict[str, object]], stream: IO[bytes]) -> int:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    writer = csv.writer(text)
    writer.writerow(COLUMN_NAMES)
    written = 0
    for row in rows:
        writer.writerow([_csv_cell(row[name]) for name in COLUMN_NAMES])
        written += 1
    text.flush()
    text.detach()
    return written


def _write_jsonl(rows: Iterable[dict[str, object]], stream: IO[bytes]) -> int:
    written = 0
    for row in rows:
        line = json.dumps({name: row[name] for name in COLUMN_NAMES})
        stream.write(line.encode("ascii") + b"\n")
        written += 1
    return written


def _write_parquet(rows: Iterable[dict[str, object]], stream: IO[bytes]) -> int:
    pa, pq = _pyarrow()
    schema = parquet_schema()
    written = 0
    writer = pq.ParquetWriter(stream, schema)
    try:
        batch: list[dict[str, object]] = []
        for row in rows:
            batch.append({name: row[name] for name in COLUMN_NAMES})
            if len(batch) == PARQUET_BATCH_ROWS:
                writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
                written += len(batch)
                batch = []
        if batch:
            writer.write_batch(pa.RecordBatch.from_pylist(batch, schema=schema))
            written += len(batch)
    finally:
        writer.close()
    return written
