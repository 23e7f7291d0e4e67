"""Campaign results: the `ResultStore` interface and its SQLite backend.

`SQLiteStore.create(...)` makes (or reopens) a campaign database for the one writing
process, `SQLiteStore.open_readonly(path)` reads it while a campaign runs, and
`vmfault.store.export.export(store, path, format=...)` writes the analysis rows as CSV,
JSON lines or Parquet.
"""

from vmfault.store.base import (
    COLUMN_NAMES,
    COLUMNS,
    CampaignInfo,
    Column,
    ColumnKind,
    DuplicateExperiment,
    ExperimentFilter,
    ExperimentPage,
    GoldenMismatchError,
    ResultStore,
    RowSource,
    StoreError,
    WorkerActivity,
)
from vmfault.store.sqlite import PAGE_MAX_ROWS, SCHEMA_VERSION, SQLiteStore, Writer, writer_of

__all__ = [
    "COLUMNS",
    "COLUMN_NAMES",
    "PAGE_MAX_ROWS",
    "SCHEMA_VERSION",
    "CampaignInfo",
    "Column",
    "ColumnKind",
    "DuplicateExperiment",
    "ExperimentFilter",
    "ExperimentPage",
    "GoldenMismatchError",
    "ResultStore",
    "RowSource",
    "SQLiteStore",
    "StoreError",
    "WorkerActivity",
    "Writer",
    "writer_of",
]
