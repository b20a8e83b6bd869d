"""DuckDB-queryable manifests that live beside the artifacts (on S3 too).

The manifest is a set of append-only relations. Every append writes one new, uniquely named parquet file
under ``<root>/_manifest/<relation>/``; nothing is ever rewritten, so any number of processes can write
at once without losing or duplicating a record (the shape DuckDB docs recommend for object stores, where
one database file cannot be written concurrently). Readers union the files; "latest wins" views resolve
status updates.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import uuid
from typing import Any, Iterable

import duckdb
import pyarrow as pa

from infra.storage import Store

log = logging.getLogger(__name__)

_S = pa.string()
_TS = pa.timestamp("us", tz="UTC")
_L = pa.list_(pa.string())

RELATIONS: dict[str, pa.Schema] = {
    "runs": pa.schema([("run_id", _S), ("flow", _S), ("status", _S), ("recipe", _S), ("recipe_hash", _S),
                       ("mlflow_run_id", _S), ("host", _S), ("code_version", _S), ("detail", _S), ("ts", _TS)]),
    "artifacts": pa.schema([("key", _S), ("name", _S), ("uri", _S), ("schema_version", _S), ("producer", _S),
                            ("stage", _S), ("stage_version", _S), ("config_hash", _S), ("config_json", _S),
                            ("inputs_json", _S), ("models_json", _S), ("parents", _L), ("files", _L),
                            ("num_rows", pa.int64()), ("stats_json", _S), ("run_id", _S), ("ts", _TS)]),
    "lineage": pa.schema([("child_key", _S), ("parent_key", _S), ("role", _S), ("run_id", _S), ("ts", _TS)]),
    "shards": pa.schema([("artifact_key", _S), ("stage", _S), ("shard_id", _S), ("status", _S),
                         ("num_rows", pa.int64()), ("files", _L), ("error", _S), ("run_id", _S), ("ts", _TS)]),
    "provenance": pa.schema([("example_id", _S), ("kind", _S), ("artifact_key", _S), ("parent_id", _S),
                             ("parent_kind", _S), ("run_id", _S)]),
    "stage_runs": pa.schema([("run_id", _S), ("stage", _S), ("artifact_key", _S), ("status", _S),
                             ("cached", pa.bool_()), ("seconds", pa.float64()), ("detail", _S), ("ts", _TS)]),
}

# Views over the raw relations: the state a reader should see.
VIEWS = {
    "runs_latest": "SELECT * FROM runs QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY ts DESC) = 1",
    "artifacts_committed": "SELECT * FROM artifacts QUALIFY row_number() OVER (PARTITION BY key ORDER BY ts) = 1",
    "shards_latest": ("SELECT * FROM shards QUALIFY row_number() OVER "
                      "(PARTITION BY artifact_key, shard_id ORDER BY ts DESC) = 1"),
}


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Manifest:
    """Append-only manifest relations over a Store, queryable with DuckDB."""

    def __init__(self, store: Store):
        self.store = store
        self.base = store.path("_manifest")
        self._lock = threading.Lock()

    # -- writing ------------------------------------------------------------------------------------
    def append(self, relation: str, rows: Iterable[dict[str, Any]]) -> str | None:
        schema = RELATIONS[relation]
        rows = list(rows)
        if not rows:
            return None
        for r in rows:
            r.setdefault("ts", now()) if "ts" in schema.names else None
        cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
        table = pa.Table.from_pydict(cols, schema=schema)
        stamp = now().strftime("%Y%m%dT%H%M%S%f")
        path = f"{self.base}/{relation}/{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        self.store.write_parquet(path, table)
        return path

    # -- reading ------------------------------------------------------------------------------------
    def files(self, relation: str) -> list[str]:
        return [p for p in self.store.ls(f"{self.base}/{relation}") if p.endswith(".parquet")]

    def table(self, relation: str) -> pa.Table:
        return self.store.read_parquets(self.files(relation), RELATIONS[relation]).cast(RELATIONS[relation])

    def connect(self, data_views: bool = True) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with every relation and view registered (in-memory; reads the store)."""
        con = duckdb.connect()
        for name in RELATIONS:
            con.register(f"_{name}_arrow", self.table(name))
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_arrow")
        for name, sql in VIEWS.items():
            con.execute(f"CREATE VIEW {name} AS {sql}")
        if data_views:
            self._register_data_views(con)
        return con

    def _register_data_views(self, con: duckdb.DuckDBPyConnection) -> None:
        """One view per artifact kind (``data_<name>``) over the parts of its committed artifacts."""
        arts = con.execute("SELECT name, key, files FROM artifacts_committed").fetchall()
        by_name: dict[str, list[tuple[str, str]]] = {}
        for name, key, files in arts:
            for f in files or []:
                if f.endswith(".parquet"):
                    by_name.setdefault(name, []).append((key, f))
        for name, parts in by_name.items():
            tables = []
            for key, f in parts:
                t = self.store.read_parquet(self.store.path(f))
                tables.append(t.append_column("artifact_key", pa.array([key] * t.num_rows, _S)))
            try:
                merged = pa.concat_tables(tables, promote_options="permissive")
            except pa.ArrowInvalid as exc:  # schema versions that cannot be unified: expose the latest only
                log.warning("data_%s: parts have incompatible schemas (%s); showing the newest", name, exc)
                merged = tables[-1]
            con.register(f"_data_{name}_arrow", merged)
            con.execute(f"CREATE VIEW data_{name} AS SELECT * FROM _data_{name}_arrow")

    def sql(self, query: str) -> pa.Table:
        con = self.connect()
        try:
            return con.sql(query).to_arrow_table()
        finally:
            con.close()

    # -- common questions ---------------------------------------------------------------------------
    def artifact(self, key: str) -> dict | None:
        t = self.table("artifacts")
        rows = [r for r in t.to_pylist() if r["key"] == key]
        return min(rows, key=lambda r: r["ts"]) if rows else None

    def latest_artifact(self, stage: str, slot: str | None = None) -> dict | None:
        """Newest committed artifact of a stage (optionally of one recipe slot, stored in stats_json)."""
        rows = [r for r in self.table("artifacts").to_pylist() if r["stage"] == stage]
        if slot is not None:
            rows = [r for r in rows if json.loads(r["stats_json"] or "{}").get("slot") == slot]
        return max(rows, key=lambda r: r["ts"]) if rows else None

    def shard_states(self, artifact_key: str) -> dict[str, dict]:
        latest: dict[str, dict] = {}
        for r in self.table("shards").to_pylist():
            if r["artifact_key"] == artifact_key:
                cur = latest.get(r["shard_id"])
                if cur is None or r["ts"] > cur["ts"]:
                    latest[r["shard_id"]] = r
        return latest
