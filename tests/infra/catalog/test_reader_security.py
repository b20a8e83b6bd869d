"""A read-only query is read-only: every probe that once wrote, leaked a secret or reached the catalog's server is
refused, on the SQLite default and on S3 + PostgreSQL, and nothing under the data root or in the catalog changes.

Found 2026-12 (issue 21): ``EXPLAIN ANALYZE COPY ... TO '<a committed part>'`` overwrote committed data;
``current_setting('s3_secret_access_key')`` printed the S3 secret; ``postgres_query('__ducklake_metadata_lake', ...)``
ran any SELECT on the catalog's server as a superuser (password hashes, server files)."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from data_contracts import problems
from infra.catalog import roles as pg_roles
from infra.catalog.artifacts import ArtifactWriter, KeyParts, verify
from infra.catalog.lake import Catalog, CatalogError, QueryError, open_reader, read_query
from infra.catalog.store import Store
from tests.infra.devstack.services_fixtures import new_catalog_database


def _commit(store: Store, url: str | None = None) -> dict:
    parts = KeyParts("ingest", "1", {"probe": True})
    w = ArtifactWriter(store, "problems", parts.key(), parts, "run-1", problems.CONTRACT)
    w.write_part([dict(problems.EXAMPLE, problem_id=f"p_{i:016d}") for i in range(3)])
    cat = Catalog(store, url)
    assert cat.commit([w.commit_spec(("problem_id", "problem", None, None))])
    rec = cat.artifact(w.key)
    cat.close()
    return rec


def _probes(part: str, root: str, catalog_file: str | None) -> list[tuple[str, str]]:
    """(query, what the refusal says): writes hidden behind EXPLAIN, settings, the catalog's own database through
    the scanner functions, functions that run SQL we never parsed, maintenance calls, files outside the data."""
    out = [
        (f"EXPLAIN ANALYZE COPY (SELECT 'pwned' AS question) TO '{part}' (FORMAT parquet)", "only read-only"),
        (f"EXPLAIN COPY (SELECT 1) TO '{part}'", "only read-only"),
        (f"COPY (SELECT 1) TO '{part}' (FORMAT parquet)", "only read-only"),
        ("COPY (SELECT 1) TO '/tmp/rlt-outside.csv'", "only read-only"),
        ("EXPLAIN ANALYZE INSERT INTO lake.main.runs (run_id) VALUES ('x')", "only read-only"),
        ("EXPLAIN ANALYZE CREATE TABLE lake.main.x AS SELECT 1", "only read-only"),
        ("EXPLAIN ANALYZE DELETE FROM lake.main.artifacts", "only read-only"),
        ("DELETE FROM lake.main.artifacts", "only read-only"),
        ("UPDATE lake.main.artifacts SET name = 'x'", "only read-only"),
        ("CREATE TABLE x AS SELECT 1", "only read-only"),
        ("ATTACH ':memory:' AS m", "only read-only"),
        ("SET lock_configuration = false", "only read-only"),
        ("RESET allowed_directories", "only read-only"),
        ("LOAD httpfs", "only read-only"),
        ("CHECKPOINT", "only read-only"),
        ("EXPORT DATABASE '/tmp/rlt-export'", "only read-only"),
        ("PRAGMA enable_checkpoint_on_shutdown", "only read-only"),
        ("PIVOT artifacts ON name", "only read-only|exactly one"),
        ("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)", "only read-only"),
        ("SELECT * FROM ducklake_cleanup_old_files('lake', cleanup_all => true)", "ducklake_cleanup_old_files"),
        ("SELECT * FROM ducklake_expire_snapshots('lake', older_than => now())", "ducklake_expire_snapshots"),
        ("SELECT * FROM ducklake_merge_adjacent_files('lake')", "ducklake_merge_adjacent_files"),
        ("SELECT * FROM ducklake_set_commit_message('lake', 'a', 'b')", "ducklake_set_commit_message"),
        ("SELECT current_setting('s3_secret_access_key') AS v", "current_setting"),
        ("SELECT current_setting('s3_access_key_id') AS v", "current_setting"),
        ("SELECT * FROM duckdb_settings()", "duckdb_settings"),
        ("SELECT * FROM duckdb_secrets()", "duckdb_secrets"),
        ("SELECT * FROM query('SELECT 42')", "query"),
        ("SELECT * FROM query_table('artifacts')", "query_table"),
        ("SELECT * FROM json_execute_serialized_sql('{}')", "json_execute_serialized_sql"),
        ("WITH x AS (SELECT * FROM postgres_query('__ducklake_metadata_lake', 'SELECT 1')) SELECT * FROM x",
         "postgres_query"),
        ("SELECT (SELECT count(*) FROM postgres_scan('__ducklake_metadata_lake', 'pg_catalog', 'pg_shadow'))",
         "postgres_scan"),
        ("SELECT * FROM postgres_execute('__ducklake_metadata_lake', 'CREATE TABLE z (a int)')", "postgres_execute"),
        ("SELECT * FROM postgres_attach('x')", "postgres_attach"),
        ("SELECT * FROM read_text('/etc/hostname')", "read_text"),
        ("SELECT * FROM read_blob('/etc/hostname')", "read_blob"),
        ("SELECT * FROM read_csv('/etc/passwd')", "not allowed|disabled|Permission"),
        (f"SELECT * FROM read_csv('{root}/_services/postgres/password')", "not allowed|disabled|Permission"),
        (f"FROM '{root}/_services/postgres/password'", ""),
        ("SELECT * FROM read_parquet('/etc/*.parquet')", "not allowed|disabled|Permission"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
    ]
    if catalog_file:
        out += [(f"SELECT * FROM sqlite_scan('{catalog_file}', 'ducklake_snapshot')", "sqlite_scan"),
                (f"SELECT * FROM sqlite_query('{catalog_file}', 'DELETE FROM ducklake_snapshot')", "sqlite_query"),
                (f"SELECT * FROM sqlite_attach('{catalog_file}')", "sqlite_attach")]
    return out


def _local_snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "locks" not in p.parts and not p.name.endswith(
                (".lock", "-wal", "-shm"))}


def _assert_refused_and_nothing_changed(rd: Catalog, probes: list[tuple[str, str]], snapshot, before) -> None:
    import re

    wrong = []
    for sql, why in probes:
        try:
            cols, rows = read_query(rd, sql)
            wrong.append(f"RAN: {sql} -> {list(rows)[:3]}")
        except QueryError as exc:
            if not re.search(why, str(exc)):
                wrong.append(f"refused for another reason: {sql} -> {exc}")
    assert not wrong, "\n".join(wrong)
    assert snapshot() == before, "a refused query changed files under the data root"


def _reads_still_work(rd: Catalog) -> None:
    for sql, want in [("SELECT count(*) FROM data_problems", [(3,)]),
                      ("SELECT count(*) > 0 FROM lake.snapshots()", [(True,)]),
                      ("EXPLAIN ANALYZE SELECT count(*) FROM artifacts_committed", None),
                      ("DESCRIBE data_problems", None), ("SHOW TABLES", None),
                      ("/* a comment */ EXPLAIN SELECT 1", None),
                      ("WITH n AS (SELECT name FROM artifacts_committed) SELECT count(*) FROM n", [(1,)])]:
        cols, rows = read_query(rd, sql)
        got = list(rows)
        if want is not None:
            assert got == want, sql


def test_the_reader_refuses_every_probe_and_changes_nothing_on_the_sqlite_default(tmp_path):
    root = tmp_path / "data"
    store = Store(str(root))
    rec = _commit(store)
    (root / "_services" / "postgres").mkdir(parents=True)   # where a stack keeps its passwords
    (root / "_services" / "postgres" / "password").write_text("pg-superuser-secret\n")
    rd = open_reader(store)
    catalog_file = rd.location.sqlite_path
    _reads_still_work(rd)
    before = _local_snapshot(root)
    _assert_refused_and_nothing_changed(rd, _probes(store.path(rec["files"][0]), str(root), catalog_file),
                                        lambda: _local_snapshot(root), before)
    # the proof that it *cannot* write, beside "was refused": the lake is attached read-only
    with pytest.raises(Exception, match="read-only|read only"):
        rd.con.execute("INSERT INTO lake.main.runs (run_id) VALUES ('x')")
    assert rd.con.execute("SELECT readonly FROM duckdb_databases() WHERE database_name = 'lake'").fetchone() == (
        True,)
    assert verify(store, Catalog(store).artifact(rec["key"])) == []


def test_a_catalog_with_nothing_committed_says_so(tmp_path):
    with pytest.raises(CatalogError, match="no catalog yet .* nothing has been committed"):
        open_reader(Store(str(tmp_path / "empty")))


def test_credential_settings_are_emptied_on_a_reader(tmp_path, monkeypatch):
    """httpfs copies AWS_* from the environment into s3_* settings; a reader's connection keeps none of them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "probe-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "probe-secret-value")
    store = Store(str(tmp_path))
    _commit(store)
    rd = open_reader(store)
    # httpfs is loaded by infra.catalog.duck.connect(); the settings are read here directly, bypassing the guard
    values = dict(rd.con.execute("SELECT name, value FROM duckdb_settings() WHERE name LIKE 's3_%'").fetchall())
    assert "probe-secret-value" not in values.values() and "probe-key-id" not in values.values(), values


# ---------------------------------------------------------------- S3 + PostgreSQL (real services)


def _s3_snapshot(fs, prefix: str) -> dict[str, str]:
    fs.invalidate_cache()
    return {p: str(info.get("ETag") or info.get("size")) for p, info in fs.find(prefix, detail=True).items()}


@pytest.mark.services
def test_the_reader_refuses_every_probe_on_s3_and_postgres(seaweed_s3, postgres_server, monkeypatch):
    import s3fs

    for k, v in seaweed_s3["env"].items():
        monkeypatch.setenv(k, v)
    urls = new_catalog_database(postgres_server, "rlt_probe")
    monkeypatch.setenv("RLT_CATALOG_URL", urls["writer"])
    monkeypatch.setenv("RLT_CATALOG_READER_URL", urls["reader"])
    prefix = f"{seaweed_s3['bucket']}/rlt-probe-{time.time_ns()}"
    store = Store(f"s3://{prefix}")
    rec = _commit(store)
    rd = open_reader(store)
    assert rd.location.dsn == urls["reader"]
    _reads_still_work(rd)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": seaweed_s3["env"]["AWS_ENDPOINT_URL"]})
    before = _s3_snapshot(fs, prefix)
    _assert_refused_and_nothing_changed(rd, _probes(store.path(rec["files"][0]), f"s3://{prefix}", None),
                                        lambda: _s3_snapshot(fs, prefix), before)
    secret = seaweed_s3["env"]["AWS_SECRET_ACCESS_KEY"]
    settings = rd.con.execute("SELECT value FROM duckdb_settings() WHERE name LIKE 's3_%'").fetchall()
    assert secret not in str(settings), "the S3 secret is in a setting of the reader's connection"
    assert secret not in str(rd.con.execute("SELECT * FROM duckdb_secrets()").fetchall())
    assert verify(store, Catalog(store).artifact(rec["key"])) == []
    # the same through the real CLI, as a user on the stack runs it: the probe is one line, and no call prints the
    # INFO line aiobotocore logs whenever it finds credentials in the environment
    ls = _rlt(["--data-root", f"s3://{prefix}", "catalog", "ls"])
    assert ls.returncode == 0 and rec["key"][:10] in ls.stdout, ls.stderr[-2000:]
    probe = _rlt(["--data-root", f"s3://{prefix}", "catalog", "sql", "SELECT current_setting('s3_secret_access_key') "
                  "AS v"])
    assert probe.returncode == 2 and probe.stderr.strip().splitlines() == [
        "rlt: function current_setting is not allowed here: it reads settings"], probe.stderr[-2000:]
    for out in (ls, probe):
        assert "Found credentials" not in out.stdout + out.stderr and secret not in out.stdout + out.stderr


@pytest.mark.services
def test_the_reader_role_can_only_select_and_the_writer_is_no_superuser(postgres_server):
    """What the roles allow, asked of PostgreSQL directly (the probes above never get this far)."""
    import psycopg

    roles = pg_roles.describe(_admin_params(postgres_server["admin"]))
    for role in (pg_roles.WRITER, pg_roles.READER):
        r = roles[role]
        assert not (r["superuser"] or r["createrole"] or r["createdb"] or r["replication"] or r["bypassrls"]), r
    assert "rlt_catalog" in roles[pg_roles.WRITER]["owns_databases"]   # (and the catalogs other tests made)
    assert not {"postgres", "template0", "template1"} & set(roles[pg_roles.WRITER]["owns_databases"])
    assert roles[pg_roles.READER]["owns_databases"] == []
    assert "default_transaction_read_only=on" in roles[pg_roles.READER]["config"]
    with psycopg.connect(postgres_server["writer"], autocommit=True) as pg:
        pg.execute("CREATE TABLE IF NOT EXISTS probe_owned (a int)")   # the owner can create (DuckLake does)
        assert pg.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
    refused = ["SELECT passwd FROM pg_shadow", "SELECT pg_read_file('/etc/hostname')",
               "INSERT INTO probe_owned VALUES (1)", "CREATE TEMP TABLE t (a int)", "CREATE TABLE t2 (a int)",
               "DELETE FROM probe_owned", "SELECT pg_ls_dir('.')"]
    for sql in refused:
        with psycopg.connect(postgres_server["reader"], autocommit=True) as pg:
            with pytest.raises(psycopg.Error):
                pg.execute(sql)
    with psycopg.connect(postgres_server["reader"], autocommit=True) as pg:
        assert pg.execute("SELECT count(*) FROM probe_owned").fetchone() == (0,)   # it reads the writer's tables
    with pytest.raises(psycopg.OperationalError):   # and reaches no other database
        psycopg.connect(postgres_server["reader"].rsplit("/", 1)[0] + "/postgres").close()


@pytest.mark.services
def test_an_old_stack_whose_clients_used_the_superuser_is_migrated(postgres_server):
    """Before the roles, ``rlt`` (the superuser) owned the catalog database and every table in it; ``ensure``
    (``rlt stack up``) moves all of it to the writer and lets the reader read it. Run twice: idempotent."""
    import psycopg

    from infra.devstack import stack

    with psycopg.connect(postgres_server["admin"], autocommit=True) as pg:
        pg.execute("CREATE TABLE IF NOT EXISTS legacy_owned (a int)")
        pg.execute("ALTER DATABASE rlt_catalog OWNER TO rlt")
        owner = pg.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'legacy_owned'").fetchone()
        assert owner == ("rlt",)
    root, port = postgres_server["root"], int(postgres_server["admin"].rsplit(":", 1)[1].split("/")[0])
    stack.ensure_catalog(root, port)
    with psycopg.connect(postgres_server["admin"], autocommit=True) as pg:
        assert pg.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'legacy_owned'"
                          ).fetchone() == (pg_roles.WRITER,)
        assert pg.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'rlt_catalog'"
                          ).fetchone() == (pg_roles.WRITER,)
    with psycopg.connect(postgres_server["reader"], autocommit=True) as pg:
        assert pg.execute("SELECT count(*) FROM legacy_owned").fetchone() == (0,)
    assert stack.ensure_catalog(root, port) == stack.catalog_env(root, port)


@pytest.mark.services
def test_an_empty_postgres_catalog_says_nothing_was_committed(seaweed_s3, postgres_server, monkeypatch):
    import psycopg

    for k, v in seaweed_s3["env"].items():
        monkeypatch.setenv(k, v)
    db = f"rlt_empty_{time.time_ns() % 10**9}"
    with psycopg.connect(postgres_server["admin"].rsplit("/", 1)[0] + "/postgres", autocommit=True) as pg:
        pg.execute(f"CREATE DATABASE {db}")
    url = postgres_server["admin"].rsplit("/", 1)[0] + f"/{db}"
    store = Store(f"s3://{seaweed_s3['bucket']}/rlt-empty-{time.time_ns()}")
    with pytest.raises(CatalogError) as err:
        open_reader(store, url)
    assert str(err.value).startswith("no catalog yet at postgresql://") and "nothing has been committed" in str(
        err.value)
    assert "DuckLake" not in str(err.value)


def _rlt(argv: list[str]):
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[3])
    return subprocess.run([sys.executable, "-m", "flows.cli", *argv], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": root}, cwd=root)


def _admin_params(url: str) -> dict:
    from urllib.parse import unquote, urlparse

    u = urlparse(url)
    return {"host": u.hostname, "port": u.port, "user": u.username, "password": unquote(u.password or "")}
