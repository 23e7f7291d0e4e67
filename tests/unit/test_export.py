"""Exports: each format reads back as the store's rows, columns in order; writes are atomic."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmfault.store.export as export_module
import vmfault.store.sqlite as sqlite_backend
from tests.unit.test_store import (
    create_store,
    make_instruction_record,
    make_testbed_record,
    record,
    record_storm,
)
from vmfault.errors import UsageError
from vmfault.store import COLUMN_NAMES, COLUMNS, SQLiteStore
from vmfault.store.export import FORMATS, ExportFormat, export

IDS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 20, 21, 30, 42, 43]
STORM_IDS = frozenset({20, 21})
"""Storm experiments: 20 with real_world_s, 21 without."""
TESTBED_ID = 8
"""An experiment of two machines, `server` judged."""
INSTRUCTION_ID = 30
"""An experiment of two instruction faults."""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A store with experiments of every kind (128-bit values, None and empty fields, storms,
    instruction faults, a testbed of two machines)."""
    (tmp_path / "db").mkdir()
    with create_store(tmp_path / "db" / "campaign.db") as opened:
        for i in reversed(IDS):
            if i in STORM_IDS:
                record_storm(opened, i)
            elif i in (TESTBED_ID, INSTRUCTION_ID):
                make = make_testbed_record if i == TESTBED_ID else make_instruction_record
                opened.record(i, "other", make(i), worker="w", started_at=1.0, finished_at=2.5)
            else:
                record(opened, i)
        yield opened


def read_csv(path: Path) -> list[dict[str, object]]:
    """Parse a CSV export back by column kind (an empty cell is None)."""
    kinds = {column.name: column.kind for column in COLUMNS}
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        assert tuple(next(reader)) == COLUMN_NAMES
        rows = []
        for cells in reader:
            row: dict[str, object] = {}
            for name, cell in zip(COLUMN_NAMES, cells, strict=True):
                kind = kinds[name]
                if cell == "":
                    row[name] = None
                elif kind == "int":
                    row[name] = int(cell)
                elif kind == "float":
                    row[name] = float(cell)
                elif kind == "bool":
                    assert cell in ("true", "false")
                    row[name] = cell == "true"
                else:
                    row[name] = cell
            rows.append(row)
    return rows


def read_back(path: Path, format: ExportFormat) -> list[dict[str, Any]]:
    if format == "csv":
        return read_csv(path)
    if format == "jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(path)
    assert tuple(table.schema.names) == COLUMN_NAMES
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def as_csv_reads(row: dict[str, object]) -> dict[str, object]:
    """What CSV keeps of a row: an empty string reads back as None."""
    return {name: None if value == "" else value for name, value in row.items()}


@pytest.mark.parametrize("format", FORMATS)
def test_each_format_reads_back_as_the_rows(
    store: SQLiteStore, tmp_path: Path, format: ExportFormat
) -> None:
    if format == "parquet":
        pytest.importorskip("pyarrow")
    target = tmp_path / f"results.{format}"
    assert export(store, target, format=format) == len(IDS)
    got = read_back(target, format)
    expected = list(store.rows())
    if format == "csv":
        expected = [as_csv_reads(row) for row in expected]
    assert [row["experiment_id"] for row in got] == sorted(IDS)
    assert all(tuple(row) == COLUMN_NAMES for row in got)
    assert got == expected
    assert got[0]["mask"] == "0x80000000000000000000000000000001"
    storms = [row for row in got if row["experiment_id"] in STORM_IDS]
    assert [row["flips"] for row in storms] == [3, 3]
    assert storms[0]["real_world_s"] == 3600.0 * 21 / 7
    assert storms[1]["real_world_s"] is None
    assert all(row["flips"] is None for row in got if row["experiment_id"] not in STORM_IDS)
    by_id = {row["experiment_id"]: row for row in got}
    testbed = by_id[TESTBED_ID]
    assert (testbed["outcome"], testbed["exit_status"], testbed["signal"]) == (
        "crash",
        139,
        "SIGSEGV",
    )
    assert (testbed["injections"], testbed["register"], testbed["before"]) == (
        2,
        "rax",
        "0xffff888001234000",
    )
    instruction = by_id[INSTRUCTION_ID]
    assert (instruction["target"], instruction["injections"], instruction["width"]) == (
        "instruction:fadd@main",
        2,
        64,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", target.name]


def test_parquet_schema_is_fixed(store: SQLiteStore, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    empty = tmp_path / "empty.parquet"
    with create_store(tmp_path / "db" / "empty.db") as nothing:
        assert export(nothing, empty, format="parquet") == 0
    full = tmp_path / "full.parquet"
    export(store, full, format="parquet")
    kinds = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}
    for path in (empty, full):
        schema = pq.read_schema(path)
        assert [(field.name, field.type) for field in schema] == [
            (column.name, kinds[column.kind]) for column in COLUMNS
        ]
        assert schema.field("mask").metadata == {b"doc": b"the flipped bits (hex)"}


def test_parquet_in_batches(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setattr(export_module, "PARQUET_BATCH_ROWS", 3)
    monkeypatch.setattr(sqlite_backend, "ROW_CHUNK", 4)
    target = tmp_path / "r.parquet"
    assert export(store, target, format="parquet") == len(IDS)
    assert pq.read_table(target).to_pylist() == list(store.rows())


@pytest.mark.parametrize("format", ["csv", "jsonl"])
def test_empty_store(tmp_path: Path, format: ExportFormat) -> None:
    (tmp_path / "db").mkdir()
    target = tmp_path / f"r.{format}"
    with create_store(tmp_path / "db" / "c.db") as empty:
        assert export(empty, target, format=format) == 0
    expected = ",".join(COLUMN_NAMES) + "\r\n" if format == "csv" else ""
    assert target.read_bytes() == expected.encode()


def test_export_from_a_reader_while_the_writer_writes(store: SQLiteStore, tmp_path: Path) -> None:
    target = tmp_path / "r.jsonl"
    with SQLiteStore.open_readonly(store.path) as reader:
        assert export(reader, target, format="jsonl") == len(IDS)
        record(store, 99)
        assert export(reader, target, format="jsonl") == len(IDS) + 1


class FailingRows:
    """Yields two rows of a store, then fails as a database read can."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def rows(self) -> Iterator[dict[str, object]]:
        source = self.store.rows()
        yield next(source)
        yield next(source)
        raise OSError("disk I/O error")


@pytest.mark.parametrize("format", FORMATS)
def test_a_failed_export_leaves_the_target_alone(
    store: SQLiteStore, tmp_path: Path, format: ExportFormat
) -> None:
    if format == "parquet":
        pytest.importorskip("pyarrow")
    target = tmp_path / "results.out"
    target.write_text("the previous export\n")
    with pytest.raises(UsageError, match="disk I/O error"):
        export(FailingRows(store), target, format=format)
    assert target.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "results.out"]


def test_replaces_the_target_with_the_umask_mode(store: SQLiteStore, tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    target.write_text("old\n")
    old_umask = os.umask(0o027)
    try:
        export(store, target, format="csv")
    finally:
        os.umask(old_umask)
    assert target.read_text(encoding="utf-8").startswith("experiment_id,stratum,")
    assert target.stat().st_mode & 0o777 == 0o640


def test_parquet_without_pyarrow(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UsageError, match="parquet export needs pyarrow") as caught:
        export(store, tmp_path / "r.parquet", format="parquet")
    assert caught.value.hint == "pip install 'vmfault[parquet]'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_unknown_format(store: SQLiteStore, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown export format 'xlsx'"):
        export(store, tmp_path / "r.xlsx", format="xlsx")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_missing_directory(store: SQLiteStore, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a directory"):
        export(store, tmp_path / "absent" / "r.csv", format="csv")


def test_target_is_a_directory(store: SQLiteStore, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(UsageError, match="cannot write"):
        export(store, tmp_path / "out", format="jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "out"]
