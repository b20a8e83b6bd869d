"""The catalog: every manifest relation and every tabular artifact in one DuckLake, committed transactionally.

One write transaction commits a stage's outputs: their data files (parquet parts written by the stage,
registered zero-copy with ``ducklake_add_data_files``), their ``artifacts`` records, lineage edges, per-example
provenance and the stage-run record. Readers see all of it or none of it. Snapshots are the history: every
commit is one, and ``Catalog(..., snapshot=N)`` reads the lake as of snapshot N ("the data as of night N").

Where the catalog lives (``RLT_CATALOG_URL``, else the default):

- ``sqlite:///<path>`` - one machine. The default for a local data root: ``<root>/_catalog/catalog.sqlite``
  (WAL). Every write transaction is serialised by an ``fcntl.flock`` on a file beside it: DuckLake 1.5 retries
  only conflicts, not SQLite's "database is locked" (measured: 7-28 of 400 concurrent commits failed without the
  lock, 0 with it).
- ``postgresql://user:pass@host:port/db`` - many machines (``rlt stack up`` starts one). DuckLake retries
  conflicting commits itself; data files go to ``<root>/_lake/`` on the store (S3 through httpfs).

Tables: relations in the lake's ``main`` schema (runs, artifacts, lineage, shards, provenance, stage_runs),
artifact data in ``data.<artifact name>`` with an ``artifact_key`` column. A stage version that adds a column
adds it to the table (older artifacts read NULL there); a type change is refused with the column named.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar, cast
from urllib.parse import unquote, urlparse

import duckdb
import pyarrow as pa

from data_contracts.errors import ExpectedError
from infra import faults
from infra.catalog import duck, sql_guard
from infra.catalog.locks import Locks, file_mutex
from infra.catalog.records import ARTIFACT_COL, OutputCommit, data_folders, legacy_state, now
from infra.catalog.sql_guard import QueryError  # noqa: F401 (re-exported: the CLI's expected error)
from infra.catalog.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_URL = "RLT_CATALOG_URL"
# PostgreSQL: readers (rlt catalog sql / lineage / export, read-only handles) connect as a role that can only SELECT
ENV_READER_URL = "RLT_CATALOG_READER_URL"
RELATIONS: dict[str, str] = {
    "runs": "run_id VARCHAR, flow VARCHAR, status VARCHAR, recipe VARCHAR, recipe_hash VARCHAR, "
            "mlflow_run_id VARCHAR, host VARCHAR, code_version VARCHAR, detail VARCHAR, ts TIMESTAMPTZ, "
            "tracking VARCHAR",   # complete | incomplete (MLflow calls journaled, see infra/tracking.py) | relogged
    "artifacts": "key VARCHAR, name VARCHAR, uri VARCHAR, schema_version VARCHAR, producer VARCHAR, stage VARCHAR, "
                 "stage_version VARCHAR, label VARCHAR, config_hash VARCHAR, config_json VARCHAR, "
                 "inputs_json VARCHAR, models_json VARCHAR, parents VARCHAR[], files VARCHAR[], num_rows BIGINT, "
                 "digest VARCHAR, stats_json VARCHAR, run_id VARCHAR, ts TIMESTAMPTZ",
    "lineage": "child_key VARCHAR, parent_key VARCHAR, role VARCHAR, run_id VARCHAR, ts TIMESTAMPTZ",
    "shards": "artifact_key VARCHAR, stage VARCHAR, shard_id VARCHAR, status VARCHAR, num_rows BIGINT, "
              "files VARCHAR[], digests VARCHAR[], error VARCHAR, run_id VARCHAR, host VARCHAR, pid BIGINT, "
              "ts TIMESTAMPTZ, node VARCHAR",   # node: the Ray node that ran it ("" = the run's own process)
    "provenance": "example_id VARCHAR, kind VARCHAR, artifact_key VARCHAR, parent_id VARCHAR, parent_kind VARCHAR, "
                  "run_id VARCHAR",
    "stage_runs": "run_id VARCHAR, stage VARCHAR, label VARCHAR, artifact_key VARCHAR, status VARCHAR, "
                  "cached BOOLEAN, seconds DOUBLE, detail VARCHAR, ts TIMESTAMPTZ",
    # what each stage run used (infra/engine/costs.py): written with its stage_runs record; cached stages write none.
    # tokens NULL = not counted (training stages); cost NULL = no price set (prices_json: those in effect)
    "stage_costs": "run_id VARCHAR, stage VARCHAR, label VARCHAR, artifact_key VARCHAR, status VARCHAR, "
                   "wall_s DOUBLE, cpu_s DOUBLE, gpu_s DOUBLE, peak_rss_mb DOUBLE, peak_gpu_mb DOUBLE, "
                   "tokens_in BIGINT, tokens_out BIGINT, forward_tokens BIGINT, rows BIGINT, host VARCHAR, "
                   "cost DOUBLE, currency VARCHAR, prices_json VARCHAR, ts TIMESTAMPTZ",
    # append-only history of named release aliases (flows/releases/aliases.py): action publish | promote | rollback
    "releases": "alias VARCHAR, key VARCHAR, previous_key VARCHAR, action VARCHAR, run_id VARCHAR, actor VARCHAR, "
                "reason VARCHAR, audits_json VARCHAR, ts TIMESTAMPTZ",
    # human spot-checks (flows/releases/review.py): the examples a night logged to an MLflow review queue ...
    "review_samples": "run_id VARCHAR, distill_key VARCHAR, queue_id VARCHAR, queue_name VARCHAR, trace_id VARCHAR, "
                      "example_id VARCHAR, explanation_id VARCHAR, problem_id VARCHAR, origin VARCHAR, "
                      "stratum VARCHAR, reward DOUBLE, tracking_uri VARCHAR, ts TIMESTAMPTZ",
    # ... the verdicts `rlt review pull` read back (a row per change; view reviews_latest) ...
    "reviews": "run_id VARCHAR, queue_id VARCHAR, trace_id VARCHAR, example_id VARCHAR, explanation_id VARCHAR, "
               "verdict VARCHAR, reason VARCHAR, comment VARCHAR, reviewer VARCHAR, reviewed_at TIMESTAMPTZ, "
               "ts TIMESTAMPTZ",   # verdict: pass | fail | declined
    # ... and nights whose publish waits for that review (audits.human_review.wait: hold): pending -> published |
    # failed | superseded (view release_holds_latest)
    "release_holds": "alias VARCHAR, key VARCHAR, run_id VARCHAR, state VARCHAR, baseline VARCHAR, detail VARCHAR, "
                     "audits_json VARCHAR, ts TIMESTAMPTZ",
}
# What a reader should usually look at; the raw relations stay queryable too.
VIEWS = {
    "runs_latest": "SELECT * FROM runs QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY ts DESC) = 1",
    "artifacts_committed": "SELECT * FROM artifacts QUALIFY row_number() OVER (PARTITION BY key ORDER BY ts) = 1",
    "shards_latest": ("SELECT * FROM shards QUALIFY row_number() OVER "
                      "(PARTITION BY artifact_key, shard_id ORDER BY ts DESC) = 1"),
    "aliases_current": "SELECT * FROM releases QUALIFY row_number() OVER (PARTITION BY alias ORDER BY ts DESC) = 1",
    "reviews_latest": ("SELECT * FROM reviews QUALIFY row_number() OVER (PARTITION BY queue_id, trace_id "
                       "ORDER BY ts DESC) = 1"),
    "release_holds_latest": ("SELECT * FROM release_holds QUALIFY row_number() OVER (PARTITION BY alias, key, run_id "
                             "ORDER BY ts DESC) = 1"),
    # cost per run and stage (every attempt of the stage in that run, failed ones included)
    "costs_by_stage": (
        "SELECT run_id, stage, label, count(*) AS attempts, count(*) FILTER (WHERE status = 'failed') AS failed, "
        "sum(wall_s) AS wall_s, sum(cpu_s) AS cpu_s, sum(gpu_s) AS gpu_s, max(peak_rss_mb) AS peak_rss_mb, "
        "max(peak_gpu_mb) AS peak_gpu_mb, sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out, "
        "sum(forward_tokens) AS forward_tokens, max(rows) FILTER (WHERE status = 'done') AS rows, sum(cost) AS cost, "
        "any_value(currency) AS currency, min(ts) AS ts FROM stage_costs GROUP BY run_id, stage, label"),
    # cost per run (a night): totals, and per kept example = per row of the run's distill set, the one its filter
    # stage committed, reused or waited for (a night whose filter was cached still has one; no filter: NULL)
    "costs_by_run": (
        "SELECT r.run_id, r.flow, r.recipe, r.status, coalesce(c.stages_run, 0) AS stages_run, c.failed, "
        "coalesce(c.wall_s, 0) AS wall_s, coalesce(c.cpu_s, 0) AS cpu_s, coalesce(c.gpu_s, 0) AS gpu_s, "
        "c.peak_rss_mb, c.peak_gpu_mb, coalesce(c.tokens_in, 0) AS tokens_in, "
        "coalesce(c.tokens_out, 0) AS tokens_out, coalesce(c.forward_tokens, 0) AS forward_tokens, "
        "c.stages_without_tokens, c.cost, c.currency, k.distill_set, a.num_rows AS kept, "
        "coalesce(c.wall_s, 0) / nullif(a.num_rows, 0) AS wall_s_per_kept, "
        "coalesce(c.cpu_s, 0) / nullif(a.num_rows, 0) AS cpu_s_per_kept, "
        "coalesce(c.gpu_s, 0) / nullif(a.num_rows, 0) AS gpu_s_per_kept, "
        "coalesce(c.forward_tokens, 0) / nullif(a.num_rows, 0) AS forward_tokens_per_kept, "
        "coalesce(c.tokens_out, 0) / nullif(a.num_rows, 0) AS tokens_out_per_kept, "
        "c.cost / nullif(a.num_rows, 0) AS cost_per_kept, r.ts "
        "FROM runs r LEFT JOIN (SELECT run_id, count(DISTINCT stage || '|' || coalesce(label, '')) AS stages_run, "
        "count(*) FILTER (WHERE status = 'failed') AS failed, sum(wall_s) AS wall_s, sum(cpu_s) AS cpu_s, "
        "sum(gpu_s) AS gpu_s, max(peak_rss_mb) AS peak_rss_mb, max(peak_gpu_mb) AS peak_gpu_mb, "
        "sum(tokens_in) AS tokens_in, sum(tokens_out) AS tokens_out, sum(forward_tokens) AS forward_tokens, "
        "count(DISTINCT stage) FILTER (WHERE forward_tokens IS NULL) AS stages_without_tokens, sum(cost) AS cost, "
        "any_value(currency) AS currency FROM stage_costs GROUP BY run_id) c USING (run_id) "
        "LEFT JOIN (SELECT run_id, arg_max(artifact_key, ts) AS distill_set FROM stage_runs WHERE stage = 'filter' "
        "AND status IN ('done', 'cached', 'waited') GROUP BY run_id) k USING (run_id) "
        "LEFT JOIN artifacts_committed a ON a.key = k.distill_set "
        "QUALIFY row_number() OVER (PARTITION BY r.run_id ORDER BY r.ts DESC) = 1"),
}
LEDGER = "ledger"          # commit message of bookkeeping-only snapshots (expired by maintain())


class CatalogError(ExpectedError, RuntimeError):
    """The catalog cannot be reached, or a commit would break it (e.g. a column changed type)."""


@dataclass(frozen=True)
class Location:
    """Where the catalog database lives and how DuckLake attaches it (secrets stay in ``dsn``, never logged)."""

    kind: str                  # sqlite | postgres
    attach: str                # the ATTACH target without secrets
    data_path: str             # DuckLake DATA_PATH (on the store)
    sqlite_path: str = ""
    dsn: str = field(default="", repr=False)
    lock_dir: str = ""

    def locks(self) -> Locks:
        """The crash-safe named locks that go with this catalog: PostgreSQL advisory locks on its server, or flock
        files beside a SQLite catalog (infra/catalog/locks.py)."""
        from infra.catalog.locks import FileLocks, PgLocks

        return PgLocks(self.dsn) if self.kind == "postgres" else FileLocks(self.lock_dir)

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:{self.sqlite_path}"
        u = urlparse(self.dsn)
        return f"postgresql://{u.hostname}:{u.port or 5432}{u.path}"


def locate(store: Store, url: str | None = None, *, reader: bool = False) -> Location:
    """The catalog for a store: ``url`` or ``$RLT_CATALOG_URL``, else a SQLite file in a local data root. A
    ``reader`` takes ``$RLT_CATALOG_READER_URL`` first (a PostgreSQL role with SELECT only; without it, the writer's
    URL, with a warning)."""
    url = url or (_reader_url() if reader else "") or os.environ.get(ENV_URL) or ""
    data_path = store.path("_lake") + "/"
    if url.startswith(("postgresql://", "postgres://")):
        u = urlparse(url)
        if not u.path.strip("/"):
            raise CatalogError(f"{ENV_URL}: no database name in {Location('postgres', '', '', dsn=url).describe()}")
        return Location("postgres", "ducklake:postgres:", data_path, dsn=url)
    if url.startswith("sqlite:"):
        path = unquote(url.removeprefix("sqlite:").removeprefix("//"))
        path = os.path.abspath(os.path.expanduser(path))
    elif url:
        raise CatalogError(f"{ENV_URL} must start with sqlite:/// or postgresql:// (got scheme "
                           f"{urlparse(url).scheme or url[:12]!r})")
    elif store.local:
        path = os.path.join(store.root, "_catalog", "catalog.sqlite")
    else:
        raise CatalogError(
            f"data root {store.root} is remote: its catalog must be shared by every machine that writes to it. "
            f"Set {ENV_URL}=postgresql://user:password@host:port/db (`rlt stack up` prints one), or "
            f"{ENV_URL}=sqlite:////local/path/catalog.sqlite if only this machine will ever write to it.")
    folder = os.path.dirname(path)
    return Location("sqlite", f"ducklake:sqlite:{path}", data_path, sqlite_path=path,
                    lock_dir=os.path.join(folder, "locks"))


_warned_no_reader = False


def _reader_url() -> str:
    """$RLT_CATALOG_READER_URL, for a writer URL that is set (without one the data root's own catalog is meant)."""
    global _warned_no_reader
    writer = os.environ.get(ENV_URL, "")
    if not writer:
        return ""
    if url := os.environ.get(ENV_READER_URL):
        return url
    if writer.startswith(("postgresql://", "postgres://")) and not _warned_no_reader:
        _warned_no_reader = True
        log.warning("%s is not set: this read-only handle connects with the writer's role (%s); give readers a "
                    "role with SELECT only (docs/catalog-roles.md)", ENV_READER_URL, ENV_URL)
    return ""


def _pg_libpq(dsn: str) -> dict[str, str]:
    u = urlparse(dsn)
    out = {"HOST": u.hostname or "localhost", "PORT": str(u.port or 5432), "DATABASE": u.path.strip("/")}
    if u.username:
        out["USER"] = unquote(u.username)
    if u.password:
        out["PASSWORD"] = unquote(u.password)
    return out


def _is_locked(exc: Exception) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or "sqlite_busy" in text


def all_of(found: Mapping[str, dict[str, Any]], keys: Iterable[str]) -> bool:
    """Whether every key is among the committed records ``found`` (one query for many stages: flows/plan.py)."""
    return all(k in found for k in keys)


class Catalog:
    """A process's handle on the lake. Thread-safe (one connection, a mutex around each call)."""

    def __init__(self, store: Store, url: str | None = None, *, read_only: bool = False,
                 snapshot: int | None = None, memory_limit: str | None = None, allow_legacy: bool = False):
        self.store = store
        self.allow_legacy = allow_legacy
        self.read_only = read_only or snapshot is not None
        self.location = locate(store, url, reader=self.read_only)
        self.snapshot = snapshot
        self.memory_limit = memory_limit
        self._con: duckdb.DuckDBPyConnection | None = None
        self._mutex = threading.RLock()
        self._held = threading.local()
        self._data_tables: dict[str, list[tuple[str, str]]] = {}

    def __repr__(self) -> str:
        return f"Catalog({self.location.describe()}, data={self.location.data_path})"

    # ------------------------------------------------------------------ connection
    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        with self._mutex:
            if self._con is None:
                self._con = self._open()
            return self._con

    def _open(self) -> duckdb.DuckDBPyConnection:
        loc = self.location
        if not self.allow_legacy:
            if legacy_state(self.store) == "pending":
                raise CatalogError(
                    f"{self.store.root} holds artifacts recorded in the pre-catalog format "
                    f"({self.store.path('_manifest')}); import them once with `rlt --data-root {self.store.root} "
                    f"catalog import` (or move that folder away to start afresh)")
        con = duck.connect(memory_limit=self.memory_limit)
        duck.add_s3_secret(con, self.store.root)
        opts = [f"DATA_PATH '{loc.data_path}'"]
        if loc.kind == "postgres":
            params = _pg_libpq(loc.dsn)
            # the connection details travel in the default postgres secret, never in the ATTACH string (which
            # DuckDB repeats in error messages)
            con.execute("CREATE OR REPLACE SECRET (TYPE postgres, " +
                        ", ".join(f"{k} '{v.replace(chr(39), chr(39) * 2)}'" for k, v in params.items()) + ")")
            target = "ducklake:postgres:"
        else:
            os.makedirs(os.path.dirname(loc.sqlite_path), exist_ok=True)
            target = loc.attach
        if self.read_only:
            opts.append("READ_ONLY")
        if self.snapshot is not None:
            opts.append(f"SNAPSHOT_VERSION {int(self.snapshot)}")
        fresh = loc.kind == "sqlite" and not os.path.exists(loc.sqlite_path)
        if self.read_only and fresh:
            raise CatalogError(f"no catalog yet at {loc.describe()}: nothing has been committed to {self.store.root}")
        try:
            with self._file_lock(shared=self.read_only), self._init_guard():
                if fresh:
                    self._init_sqlite(loc.sqlite_path)
                self._retry(lambda: con.execute(f"ATTACH '{target}' AS lake ({', '.join(opts)})"))
                if not self.read_only:
                    self._ensure_schema(con)
        except duckdb.Error as exc:
            con.close()
            if self.read_only and "creating a new DuckLake is explicitly disabled" in str(exc):
                raise CatalogError(f"no catalog yet at {loc.describe()}: nothing has been committed to "
                                   f"{self.store.root}") from None
            raise CatalogError(f"cannot open the catalog at {loc.describe()}: {_scrub(str(exc), loc)}") from exc
        self._create_views(con)
        return con

    @contextlib.contextmanager
    def _init_guard(self) -> Iterator[None]:
        """PostgreSQL: one process at a time creates DuckLake's tables and ours (an advisory lock on the server);
        two runs attaching an empty catalog at once would otherwise both run CREATE TABLE."""
        if self.location.kind != "postgres" or self.read_only:
            yield
            return
        from infra.catalog.locks import PgLocks, hold, owner_info

        with hold(PgLocks(self.location.dsn), "catalog:init", owner_info(), poll_s=0.2, timeout_s=300):
            yield

    @staticmethod
    def _init_sqlite(path: str) -> None:
        import sqlite3

        with contextlib.closing(sqlite3.connect(path)) as db:   # WAL: readers never block the (one) writer
            db.execute("PRAGMA journal_mode=WAL")

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create what is missing, in one snapshot: a catalog written by an older release gains new relations and
        new columns (older rows read NULL there)."""
        have: dict[str, set[str]] = {}
        for t, c in con.execute("SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = 'lake' "
                                "AND schema_name = 'main'").fetchall():
            have.setdefault(t, set()).add(c)
        has_data = bool(cast("tuple[Any, ...]", con.execute(   # an aggregate: always one row
            "SELECT count(*) FROM duckdb_schemas() WHERE database_name = 'lake' AND schema_name = 'data'"
        ).fetchone())[0])
        ddl = [] if has_data else ["CREATE SCHEMA IF NOT EXISTS lake.data"]
        for name, cols in RELATIONS.items():
            if name not in have:
                ddl.append(f"CREATE TABLE lake.main.{name} ({cols})")
                continue
            for col in cols.split(", "):
                cname = col.split(" ")[0]
                if cname not in have[name]:
                    ddl.append(f"ALTER TABLE lake.main.{name} ADD COLUMN {col}")
        if not ddl:
            return
        con.execute("BEGIN TRANSACTION")
        con.execute("CALL lake.set_commit_message('rlt', 'schema', extra_info => '{}')")
        for stmt in ddl:
            con.execute(stmt)
        con.execute("COMMIT")

    def _create_views(self, con: duckdb.DuckDBPyConnection) -> None:
        """Reader-facing names in the connection's own (memory) schema; nothing is materialised."""
        con.execute("USE memory")
        for name in RELATIONS:
            if self._table_exists(con, "main", name):
                con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM lake.main.{name}")
        for name, sql in VIEWS.items():
            base = sql.split(" FROM ")[1].split(" ")[0]
            if self._table_exists(con, "main", base):
                try:
                    con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
                except duckdb.CatalogException as exc:   # a read-only older catalog lacks a relation it joins
                    log.debug("view %s not available: %s", name, exc)
        self.refresh_data_views(con)

    @staticmethod
    def _table_exists(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
        return bool(cast("tuple[Any, ...]", con.execute(   # an aggregate: always one row
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'lake' AND schema_name = ? AND table_name = ?",
            [schema, name]).fetchone())[0])

    def refresh_data_views(self, con: duckdb.DuckDBPyConnection | None = None) -> list[str]:
        """One ``data_<name>`` view per artifact table (tables created by other processes appear too)."""
        con = con or self.con
        with self._mutex, self._file_lock(shared=True):
            names = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake' "
                                               "AND schema_name = 'data' ORDER BY 1").fetchall()]
            for n in names:
                con.execute(f"CREATE OR REPLACE VIEW data_{n} AS SELECT * FROM lake.data.{n}")
        return names

    def close(self) -> None:
        with self._mutex:
            if self._con is not None:
                self._con.close()
                self._con = None

    # ------------------------------------------------------------------ locking and retries
    @contextlib.contextmanager
    def _file_lock(self, shared: bool = False) -> Iterator[None]:
        """On a SQLite catalog (one machine): writers exclusive, readers shared.

        Readers need it too: DuckLake reads its metadata with several SQLite queries, and a concurrent
        maintenance (flushing inlined rows into a file) between two of them could hide rows from that reader
        (seen with 4 overlapping runs). Held only while a statement binds and reads metadata (milliseconds);
        re-entrant per thread. PostgreSQL needs none of this (one snapshot per transaction, conflicts retried).
        """
        if self.location.kind != "sqlite" or bool(getattr(self._held, "depth", 0)):
            yield
            return
        with file_mutex(self.location.sqlite_path + ".write.lock", shared=shared):
            self._held.depth = 1
            try:
                yield
            finally:
                self._held.depth = 0

    def _retry(self, fn: Callable[[], T], attempts: int = 8) -> T:
        """Run ``fn``; retry SQLite's transient "database is locked" (a reader racing a WAL checkpoint)."""
        delay = 0.05
        for i in range(attempts):
            try:
                return fn()
            except duckdb.Error as exc:
                if not _is_locked(exc) or i == attempts - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable (attempts >= 1)")

    @contextlib.contextmanager
    def transaction(self, message: str, extra: dict[str, Any] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction, serialised across processes; its snapshot carries ``message``."""
        if self.read_only:
            raise CatalogError("this catalog handle is read-only")
        con = self.con   # opened first: opening takes the file lock itself
        with self._mutex, self._file_lock():
            self._retry(lambda: con.execute("BEGIN TRANSACTION"))
            try:
                con.execute("CALL lake.set_commit_message('rlt', ?, extra_info => ?)",
                            [message, json.dumps(extra or {}, default=str)])
                faults.point("catalog.txn.begin")
                yield con
                faults.point("catalog.txn.before_commit")   # everything written, nothing visible yet
                con.execute("COMMIT")
                faults.point("catalog.txn.committed")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ reads
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        con = self.con
        with self._mutex, self._file_lock(shared=True):
            def run() -> list[dict[str, Any]]:
                cur = con.execute(sql, list(params))
                cols = [d[0] for d in cur.description]
                return [dict(zip(cols, r)) for r in cur.fetchall()]

            return self._retry(run)

    def sql(self, query: str, params: Sequence[Any] = ()) -> pa.Table:
        """Run a query and return the whole result (small results; ``rlt catalog sql`` streams instead)."""
        con = self.con
        with self._mutex, self._file_lock(shared=True):
            self.refresh_data_views()
            return self._retry(lambda: con.execute(query, list(params)).to_arrow_table())

    # Lookups on the relations filter with list_contains(), not "col = ?": an equality filter makes DuckLake plan
    # file pruning, which reads every file's column statistics in the whole catalog (artifact data included) on
    # each query; after maintenance a relation is one merged file, so pruning would gain nothing (measured with
    # bench/manifest_scale.py: with "=" a lookup grew ~2x over 100 nights, with list_contains it stays flat).
    def artifact(self, key: str) -> dict[str, Any] | None:
        return self.artifacts([key]).get(key)

    def committed(self, keys: Iterable[str]) -> dict[str, dict[str, Any]] | None:
        """The records of ``keys`` when every one is committed (a stage is done only when all its outputs are),
        else None."""
        keys = list(keys)
        found = self.artifacts(keys)
        return found if all_of(found, keys) else None

    def artifacts(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        keys = sorted(set(keys))
        if not keys:
            return {}
        rows = self.rows("SELECT * FROM lake.main.artifacts WHERE list_contains(?, key) ORDER BY ts", [keys])
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            out.setdefault(r["key"], r)
        return out

    def latest_artifacts(self, wanted: Sequence[tuple[str, str]], exclude_names: Sequence[str] = ()
                         ) -> dict[tuple[str, str], dict[str, Any]]:
        """The newest artifact of each (stage, label), in one query."""
        if not wanted:
            return {}
        rows = self.rows("SELECT * FROM lake.main.artifacts WHERE list_contains(?, stage || '|' || coalesce(label, "
                         "'')) AND NOT list_contains(?, name) QUALIFY row_number() OVER (PARTITION BY stage, "
                         "coalesce(label, '') ORDER BY ts DESC) = 1",
                         [[f"{s}|{lab or ''}" for s, lab in wanted], list(exclude_names)])
        return {(r["stage"], r["label"] or ""): r for r in rows}

    def latest_artifact(self, stage: str, label: str | None = None, exclude_names: Sequence[str] = ()
                        ) -> dict[str, Any] | None:
        return self.latest_artifacts([(stage, label or "")], exclude_names).get((stage, label or ""))

    def shard_states_many(self, artifact_keys: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """Latest record of every shard of each key, in one query: key -> shard id -> record."""
        keys = sorted(set(artifact_keys))
        if not keys:
            return {}
        rows = self.rows("SELECT * FROM lake.main.shards WHERE list_contains(?, artifact_key) QUALIFY "
                         "row_number() OVER (PARTITION BY artifact_key, shard_id ORDER BY ts DESC) = 1", [keys])
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for r in rows:
            out.setdefault(r["artifact_key"], {})[r["shard_id"]] = r
        return out

    def shard_states(self, artifact_key: str) -> dict[str, dict[str, Any]]:
        return self.shard_states_many([artifact_key]).get(artifact_key, {})

    def shard_state(self, artifact_key: str, shard_id: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT * FROM lake.main.shards WHERE list_contains(?, artifact_key || '|' || shard_id) "
                         "QUALIFY row_number() OVER (ORDER BY ts DESC) = 1", [[f"{artifact_key}|{shard_id}"]])
        return rows[0] if rows else None

    def scan(self, name: str, key: str, columns: Sequence[str] | None = None, order_by: str | None = None,
             where: str = "", batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
        """Stream one artifact's rows from the lake (files pruned by ``artifact_key`` statistics)."""
        cols = ", ".join(f'"{c}"' for c in columns) if columns else f"* EXCLUDE ({ARTIFACT_COL})"
        sql = f"SELECT {cols} FROM lake.data.{name} WHERE {ARTIFACT_COL} = ?" + (f" AND ({where})" if where else "")
        if order_by:
            sql += f" ORDER BY {order_by}"
        con = self.con
        with self._mutex:
            cur = con.cursor()   # its own connection: the stream outlives this call
        try:
            with self._file_lock(shared=True):   # artifact data is never inlined nor rewritten: safe to stream
                reader = self._retry(lambda: cur.execute(sql, [key]).to_arrow_reader(batch_size))
            yield from reader
        finally:
            cur.close()

    def count(self, name: str, key: str, where: str = "") -> int:
        extra = f" AND ({where})" if where else ""
        return int(self.rows(f"SELECT count(*) AS n FROM lake.data.{name} WHERE {ARTIFACT_COL} = ?{extra}",
                             [key])[0]["n"])

    # ------------------------------------------------------------------ writes
    def append(self, relation: str, rows: Iterable[dict[str, Any]], message: str = LEDGER) -> int:
        rows = [dict(r) for r in rows]
        if not rows:
            return 0
        with self.transaction(f"{message} {relation}") as con:
            self._insert(con, relation, rows)
        return len(rows)

    @staticmethod
    def _insert(con: duckdb.DuckDBPyConnection, relation: str, rows: list[dict[str, Any]]) -> None:
        names = [c.strip().split(" ")[0] for c in RELATIONS[relation].split(", ")]
        for r in rows:
            if "ts" in names:
                r.setdefault("ts", now())
        placeholders = ", ".join("?" for _ in names)
        con.executemany(f"INSERT INTO lake.main.{relation} ({', '.join(names)}) VALUES ({placeholders})",
                        [[r.get(n) for n in names] for r in rows])

    def commit(self, outputs: Sequence["OutputCommit"], extra: dict[str, list[dict[str, Any]]] | None = None,
               message: str = "commit", attempts: int = 6) -> bool:
        """Commit artifacts in one transaction; False (and nothing written) if any key is already committed.

        On PostgreSQL, writers from many processes commit optimistically: when two commits both create the same
        new ``data.<table>`` (the first artifacts of a kind, e.g. two recipes' first distill sets) or evolve its
        schema, DuckLake refuses the later one ("Transaction conflict"). That transaction rolled back whole, so it
        is simply redone, and now sees the other's table. (SQLite catalogs never conflict: writes are serialised.)
        """
        delay = 0.1
        for attempt in range(attempts):
            try:
                return self._commit_once(outputs, extra, message)
            except duckdb.TransactionException as exc:
                if "conflict" not in str(exc).lower() or attempt == attempts - 1:
                    raise
                log.info("catalog commit of %s conflicted with another writer (%s); retrying",
                         ", ".join(o.record["key"] for o in outputs),
                         next((ln for ln in str(exc).splitlines() if "onflict" in ln), "")[:200])
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _commit_once(self, outputs: Sequence["OutputCommit"], extra: dict[str, list[dict[str, Any]]] | None,
                     message: str) -> bool:
        keys = [o.record["key"] for o in outputs]
        with self.transaction(f"{message} " + " ".join(keys), {"run_id": outputs[0].record.get("run_id")}) as con:
            taken = con.execute("SELECT DISTINCT key FROM lake.main.artifacts WHERE list_contains(?, key)",
                                [keys]).fetchall()
            if taken:
                con.execute("ROLLBACK")
                con.execute("BEGIN TRANSACTION")   # the context manager commits an empty transaction
                return False
            for o in outputs:
                if o.table and o.parts:
                    self._register_parts(con, o)
                    faults.point("catalog.commit.parts_registered")
                    if o.provenance is not None:
                        self._provenance(con, o)
                self._insert(con, "artifacts", [o.record])
                if o.lineage:
                    self._insert(con, "lineage", list(o.lineage))
            for relation, rows in (extra or {}).items():
                if rows:
                    self._insert(con, relation, [dict(r) for r in rows])
        return True

    def _register_parts(self, con: duckdb.DuckDBPyConnection, o: "OutputCommit") -> None:
        """Create or evolve ``data.<table>`` to the parts' schema, then register the parts (no copy)."""
        self._ensure_table(con, o)
        con.execute(f"CALL ducklake_add_data_files('lake', '{o.table}', ?, schema => 'data', allow_missing => true)",
                    [list(o.parts)])

    def _ensure_table(self, con: duckdb.DuckDBPyConnection, o: "OutputCommit") -> None:
        """``data.<table>`` exists with every column of ``o.schema`` (new columns are added, types must match)."""
        schema = o.schema
        if schema is None or o.table is None:
            raise ValueError(f"{o.record.get('key')}: a tabular output needs its table and schema")
        types = dict(zip(schema.names, con.from_arrow(schema.empty_table()).types))
        if not self._table_exists(con, "data", o.table):
            cols = ", ".join(f'"{n}" {t}' for n, t in types.items())
            con.execute(f"CREATE TABLE lake.data.{o.table} ({cols})")
        else:
            have = {r[0]: r[1] for r in con.execute(f"DESCRIBE lake.data.{o.table}").fetchall()}
            for n, t in types.items():
                if n not in have:
                    con.execute(f'ALTER TABLE lake.data.{o.table} ADD COLUMN "{n}" {t}')
                elif str(have[n]) != str(t):
                    raise CatalogError(f"data.{o.table}: column {n!r} is {have[n]} in the catalog but {t} in "
                                       f"{o.record['key']} ({o.record['producer']}); a contract may add columns, "
                                       "not change a column's type (bump the schema and use a new column name)")

    @staticmethod
    def _provenance(con: duckdb.DuckDBPyConnection, o: "OutputCommit") -> None:
        if o.provenance is None:
            raise ValueError(f"{o.record.get('key')}: no provenance columns to record")
        id_col, kind, parent_col, parent_kind = o.provenance
        parent = f'"{parent_col}"' if parent_col else "NULL"
        con.execute(f"INSERT INTO lake.main.provenance SELECT \"{id_col}\", ?, ?, {parent}, ?, ? "
                    f"FROM read_parquet(?)", [kind, o.record["key"], parent_kind, o.record.get("run_id"),
                                              list(o.parts)])

    # ------------------------------------------------------------------ maintenance
    def snapshots(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.rows("SELECT snapshot_id, snapshot_time::VARCHAR AS snapshot_time, commit_message, "
                         "commit_extra_info, changes::VARCHAR AS changes FROM lake.snapshots() "
                         "ORDER BY snapshot_id DESC LIMIT ?", [limit])

    def maintain(self, ledger_retention_s: float = 3600.0, file_retention_s: float = 86400.0) -> dict[str, Any]:
        """Keep lookups fast after years of nights: bookkeeping-only snapshots older than the retention expire
        (artifact commits and run ends stay: the history a user asks for), inlined relation rows are flushed and
        the relation files merged. Artifact data files are never rewritten."""
        t0 = time.time()
        con = self.con
        with self._mutex, self._file_lock():
            cutoff = now() - dt.timedelta(seconds=ledger_retention_s)
            current = cast("tuple[Any, ...]",   # an aggregate: always one row
                           con.execute("SELECT max(snapshot_id) FROM lake.snapshots()").fetchone())[0]
            # bookkeeping (ledger) snapshots and maintenance's own (no message: flushes, merges) go; artifact
            # commits, run ends, schema changes stay
            old = [r[0] for r in con.execute(
                "SELECT snapshot_id FROM lake.snapshots() WHERE (starts_with(coalesce(commit_message, ''), ?) OR "
                "(commit_message IS NULL AND snapshot_id > 0)) AND snapshot_time < ? AND snapshot_id < ?",
                [LEDGER, cutoff, current]).fetchall()]
            if old:
                con.execute("CALL ducklake_expire_snapshots('lake', versions => ?)", [old])
            con.execute("CALL ducklake_flush_inlined_data('lake')")
            for name in RELATIONS:
                con.execute(f"CALL ducklake_merge_adjacent_files('lake', '{name}', schema => 'main')")
            con.execute("CALL ducklake_cleanup_old_files('lake', older_than => ?)",
                        [now() - dt.timedelta(seconds=file_retention_s)])
        out = {"expired_snapshots": len(old), "seconds": round(time.time() - t0, 3)}
        log.info("catalog maintenance: %s", out)
        return out


def _scrub(text: str, loc: Location) -> str:
    if loc.dsn:
        pw = urlparse(loc.dsn).password
        if pw:
            text = text.replace(unquote(pw), "***")
    return text


def open_reader(store: Store, url: str | None = None, snapshot: int | None = None,
                memory_limit: str = "1GB") -> Catalog:
    """A read-only handle for user queries (``rlt catalog sql``, ``rlt lineage``): views over the lake (nothing
    loaded into memory; DuckDB streams from the catalog and the parquet files), then the connection is locked down:
    the lake attached read-only (on PostgreSQL as the reader role, ``RLT_CATALOG_READER_URL``), files readable only
    in the catalog and artifact folders (not ``_services/``, where the stack keeps its passwords), credentials only
    in redacted DuckDB secrets (not in settings), no extension installs, no configuration changes. What a query may
    call is checked by ``read_query`` (infra/catalog/sql_guard.py)."""
    cat = Catalog(store, url, read_only=True, snapshot=snapshot, memory_limit=memory_limit)
    con = cat.con
    root = store.root.rstrip("/")
    allowed = [f"{root}/{folder}/" for folder in ("_lake", *data_folders())]
    if cat.location.kind == "sqlite":
        allowed.append(os.path.dirname(cat.location.sqlite_path) + "/")
    duck.clear_credential_settings(con)
    con.execute("SET allowed_directories = ?", [allowed])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")
    return cat


def read_query(cat: Catalog, sql: str, batch: int = 1000) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
    """Run one read-only query on a reader (checked by infra/catalog/sql_guard.py); (column names, a row iterator
    fetched in batches)."""
    con = cat.con
    sql = sql_guard.check(con, sql)
    lock = cat._file_lock(shared=True)   # held while the result streams: no maintenance mid-query
    lock.__enter__()
    try:
        cur = con.execute(sql)
    except duckdb.Error as exc:
        lock.__exit__(None, None, None)
        raise QueryError(str(exc)) from None
    cols = [d[0] for d in cur.description]

    def rows() -> Iterator[tuple[Any, ...]]:
        try:
            while chunk := cur.fetchmany(batch):
                yield from chunk
        finally:
            lock.__exit__(None, None, None)

    return cols, rows()
