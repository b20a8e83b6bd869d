"""What a user query on the catalog may do: read, and nothing else (``rlt catalog sql``).

A statement type check alone is not enough: ``EXPLAIN ANALYZE COPY ... TO '<a committed part file>'`` is of type
EXPLAIN and runs the COPY (it overwrote committed data, 2026-12). So a query passes only when:

1. it is exactly one statement, a SELECT (``FROM t``, ``VALUES``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE`` are SELECTs
   to DuckDB) or ``EXPLAIN [ANALYZE]`` of one;
2. DuckDB's own parser serialises that SELECT (``json_serialize_sql`` refuses every other statement kind, so a COPY,
   an INSERT, an ATTACH or a SET hidden behind EXPLAIN fails here);
3. every table function in its parse tree is on a read-only allow-list (no ``postgres_query`` / ``postgres_execute``
   on the catalog's server, no ``sqlite_query`` on the catalog file, no ``query()`` running a string we never saw, no
   ``ducklake_cleanup_old_files``, no ``duckdb_settings()``), and no function reads a setting (``current_setting``).

The reader's connection is locked down besides (infra/catalog/lake.py ``open_reader``): the lake attached read-only,
file access confined to the catalog and artifact folders, credentials only in redacted DuckDB secrets, configuration
locked; on PostgreSQL it connects as a role that can only SELECT.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, cast

import duckdb

from data_contracts.errors import ExpectedError

# Table functions a read-only query may call: generators, file readers (confined to the data folders by
# allowed_directories), read-only metadata of DuckDB and of the DuckLake catalog (``lake.snapshots()`` and friends).
READ_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "glob", "histogram", "histogram_values", "summary",
    "read_parquet", "parquet_scan", "parquet_metadata", "parquet_file_metadata", "parquet_kv_metadata",
    "parquet_schema", "read_csv", "read_csv_auto", "read_json", "read_json_auto", "read_ndjson", "read_ndjson_auto",
    "read_json_objects", "read_json_objects_auto", "read_ndjson_objects", "json_each", "json_tree", "sniff_csv",
    "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_functions", "duckdb_indexes",
    "duckdb_keywords", "duckdb_schemas", "duckdb_tables", "duckdb_types", "duckdb_views",
    "pragma_table_info", "pragma_show", "pragma_version", "pg_timezone_names", "icu_calendar_names",
    "ducklake_snapshots", "ducklake_current_snapshot", "ducklake_last_committed_snapshot", "ducklake_table_info",
    "ducklake_table_changes", "ducklake_table_insertions", "ducklake_table_deletions", "ducklake_list_files",
    "snapshots", "current_snapshot", "last_committed_snapshot", "table_info", "table_changes", "table_insertions",
    "table_deletions", "list_files",
})
# Scalar functions refused anywhere: they hand out settings (credentials the extensions read from the environment).
DENIED_FUNCTIONS = frozenset({"current_setting", "getvariable"})
_EXPLAIN = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*EXPLAIN\s+(?:ANALY[SZ]E\s+)?(?P<inner>.*)\Z",
                      re.IGNORECASE | re.DOTALL)


class QueryError(ExpectedError, ValueError):
    """A query ``rlt catalog sql`` will not run (not exactly one read-only statement) or that failed."""


def check(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The statement to run if ``sql`` is one read-only query (see the module docstring); QueryError otherwise."""
    try:
        stmts = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"not valid SQL: {_first_line(exc)}") from None
    if len(stmts) != 1:
        raise QueryError(f"expected exactly one statement, got {len(stmts)}")
    kind, text = stmts[0].type.name, stmts[0].query
    if kind == "EXPLAIN":
        m = _EXPLAIN.match(text)
        if m is None:
            raise QueryError("EXPLAIN with options is not supported here: use EXPLAIN or EXPLAIN ANALYZE <SELECT>")
        inner = m.group("inner")
    elif kind == "SELECT":
        inner = text
    else:
        raise QueryError(f"only read-only queries (SELECT, EXPLAIN [ANALYZE] SELECT) are allowed here, got {kind}")
    row = cast("tuple[Any, ...]", con.execute("SELECT json_serialize_sql(?)", [inner]).fetchone())   # always one row
    tree = json.loads(row[0])
    if tree.get("error"):
        raise QueryError("only read-only queries (SELECT, EXPLAIN [ANALYZE] SELECT) are allowed here: "
                         f"{tree.get('error_message', 'not a SELECT')}")
    if len(tree.get("statements", [])) != 1:
        raise QueryError("expected exactly one SELECT statement")
    table_fns, fns = set(), set()
    for node in _nodes(tree["statements"][0]):
        if node.get("type") == "TABLE_FUNCTION":
            table_fns.add(str((node.get("function") or {}).get("function_name", "")).lower())
        elif node.get("class") == "FUNCTION":
            fns.add(str(node.get("function_name", "")).lower())
    if bad := sorted(table_fns - READ_TABLE_FUNCTIONS):
        raise QueryError(f"table function {', '.join(bad)} is not allowed in a read-only query (allowed: file "
                         "readers, range/unnest/glob and the catalog's metadata functions such as lake.snapshots())")
    if bad := sorted(fns & DENIED_FUNCTIONS):
        raise QueryError(f"function {', '.join(bad)} is not allowed here: it reads settings")
    return text


def _nodes(obj: object) -> Iterator[dict[str, Any]]:
    """Every dict in a parse tree (depth first)."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            yield o
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
