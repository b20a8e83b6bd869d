"""The DuckLake catalog: atomic commits, concurrent writers, schema evolution, time travel, read-only queries,
import of a pre-catalog data root; S3 + PostgreSQL with real services (services marker)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from data_contracts import problems
from infra.catalog.artifacts import ArtifactWriter, KeyParts, ref_from_record
from infra.catalog.lake import Catalog, CatalogError, QueryError, open_reader, read_query
from infra.catalog.store import Store
from tests.infra.devstack.services_fixtures import new_catalog_database

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _writer(store: Store, n: int = 2, tag: str = "a", contract=problems.CONTRACT, name: str = "problems"):
    parts = KeyParts("ingest", "1", {"tag": tag})
    w = ArtifactWriter(store, name, parts.key(), parts, "run-1", contract)
    rows = [dict(contract.example, **{contract.schema.names[0]: f"p_{tag}{i:015d}"}) for i in range(n)]
    w.write_part(rows[: n // 2])
    w.write_part(rows[n // 2:])
    return w


def _roundtrip(store: Store, url: str | None = None) -> None:
    cat = Catalog(store, url)
    w = _writer(store, 4)
    assert cat.artifact(w.key) is None
    assert cat.sql("SELECT count(*) AS n FROM artifacts").to_pylist() == [{"n": 0}]
    assert cat.commit([w.commit_spec(("problem_id", "problem", None, None))]), "first commit"
    assert not cat.commit([w.commit_spec()]), "the same key never commits twice"
    rec = cat.artifact(w.key)
    assert rec["num_rows"] == 4 and len(rec["files"]) == 2
    assert cat.sql("SELECT count(*) AS n, count(DISTINCT problem_id) AS u FROM data_problems").to_pylist() == \
        [{"n": 4, "u": 4}]
    assert cat.sql("SELECT count(*) AS n FROM provenance WHERE artifact_key = ?", [w.key]).to_pylist() == [{"n": 4}]
    streamed = [r for b in cat.scan("problems", w.key, ["problem_id"], "problem_id") for r in b.to_pylist()]
    assert [r["problem_id"] for r in streamed] == sorted(r["problem_id"] for r in streamed) and len(streamed) == 4


def test_local_catalog_roundtrip_and_one_commit_per_key(tmp_path):
    _roundtrip(Store(str(tmp_path)))


def test_parts_alone_are_invisible_and_a_failed_commit_leaves_nothing(tmp_path):
    store = Store(str(tmp_path))
    cat = Catalog(store)
    good, other = _writer(store, 2, "g"), _writer(store, 2, "o")
    bad_spec = other.commit_spec()
    bad_spec.parts = bad_spec.parts + [str(tmp_path / "missing.parquet")]   # fails inside the transaction
    with pytest.raises(Exception):
        cat.commit([good.commit_spec(), bad_spec])
    assert cat.artifacts([good.key, other.key]) == {}, "neither output of a failed commit is visible"
    assert "problems" not in cat.refresh_data_views(), "not even the table its first commit would have created"
    assert cat.commit([good.commit_spec()]) and cat.count("problems", good.key) == 2


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from data_contracts import problems
    from infra.catalog.artifacts import ArtifactWriter, KeyParts
    from infra.catalog.lake import Catalog
    from infra.catalog.store import Store
    store = Store({data!r}); cat = Catalog(store)
    parts = KeyParts("ingest", "1", {{"n": 3}})
    w = ArtifactWriter(store, "problems", parts.key(), parts, {run!r}, problems.CONTRACT)
    for i in range(3):
        w.write_part([dict(problems.EXAMPLE, problem_id=f"p_{{i:016d}}")])
    print("PARTS-WRITTEN", flush=True)
    if {hang}:
        time.sleep(60)
    print("COMMITTED" if cat.commit([w.commit_spec()]) else "EXISTED", flush=True)
""")


def test_killed_writer_leaves_nothing_visible_and_rerun_commits_once(tmp_path):
    data = str(tmp_path / "store")
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT, data=data, hang=True, run="run-a")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "PARTS-WRITTEN"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    cat = Catalog(Store(data))
    key = KeyParts("ingest", "1", {"n": 3}).key()
    assert cat.artifact(key) is None
    assert len(Store(data).glob(f"{data}/03_primary/problems/{key}/runs/run-a/*.parquet")) == 3  # orphans
    out = subprocess.run([sys.executable, "-c", WRITER.format(root=ROOT, data=data, hang=False, run="run-b")],
                         capture_output=True, text=True, timeout=300)
    assert "COMMITTED" in out.stdout, out.stderr[-2000:]
    rec = cat.artifact(key)
    assert rec["num_rows"] == 3 and all("/runs/run-b/" in f for f in rec["files"]), "only the rerun's own parts"
    assert cat.sql("SELECT count(*) AS n FROM data_problems").to_pylist() == [{"n": 3}]


COMMITTER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from infra.catalog.lake import Catalog
    from infra.catalog.store import Store
    cat = Catalog(Store({data!r}))
    errors = 0
    for i in range({n}):
        try:
            cat.append("runs", [dict(run_id=f"{tag}-{{i}}", flow="t", status="done")])
            cat.rows("SELECT count(*) FROM runs")
        except Exception as exc:
            errors += 1
            print("ERROR", exc, flush=True)
    print("ERRORS", errors)
""")


def test_two_concurrent_writer_processes_lose_duplicate_and_fail_nothing(tmp_path):
    """SQLite catalog + flock: 2 processes x 100 commits (with reads in between): 0 lost, 0 duplicated, 0 errors."""
    data, n = str(tmp_path / "m"), 100
    Catalog(Store(data)).con   # create it first (both writers then attach an existing catalog)
    procs = [subprocess.Popen([sys.executable, "-c", COMMITTER.format(root=ROOT, data=data, n=n, tag=t)],
                              stdout=subprocess.PIPE, text=True) for t in ("a", "b")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all(o.strip().endswith("ERRORS 0") for o in outs), outs
    rows = Catalog(Store(data)).sql("SELECT run_id, count(*) AS c FROM runs GROUP BY run_id").to_pylist()
    assert len(rows) == 2 * n and all(r["c"] == 1 for r in rows)


def test_schema_evolution_keeps_older_artifacts_queryable(tmp_path):
    store = Store(str(tmp_path))
    cat = Catalog(store)
    old = _writer(store, 2, "old")
    assert cat.commit([old.commit_spec()])
    # a newer stage version adds a column: its parts carry it, the older artifact reads NULL there
    parts = KeyParts("ingest", "2", {"tag": "new"})
    new = ArtifactWriter(store, "problems", parts.key(), parts, "run-2", problems.CONTRACT)
    t = new.table([dict(problems.EXAMPLE, problem_id="p_new000000000001")]).append_column(
        "difficulty", pa.array([3], pa.int64()))
    path = f"{new.run_prefix}/part-x.parquet"
    store.write_parquet(path, t)
    new.add_files([path], 1)
    spec = new.commit_spec()
    spec.schema = t.schema
    assert cat.commit([spec])
    rows = cat.sql("SELECT artifact_key, count(*) AS n, count(difficulty) AS d FROM data_problems GROUP BY 1 "
                   "ORDER BY n DESC").to_pylist()
    assert rows == [{"artifact_key": old.key, "n": 2, "d": 0}, {"artifact_key": new.key, "n": 1, "d": 1}]
    # a changed type is refused, naming the column
    parts3 = KeyParts("ingest", "3", {"tag": "bad"})
    bad = ArtifactWriter(store, "problems", parts3.key(), parts3, "run-3", problems.CONTRACT)
    t3 = bad.table([dict(problems.EXAMPLE, problem_id="p_bad000000000001")])
    t3 = t3.set_column(t3.schema.get_field_index("source_row"), "source_row", pa.array(["x"], pa.string()))
    path3 = f"{bad.run_prefix}/part-y.parquet"
    store.write_parquet(path3, t3)
    bad.add_files([path3], 1)
    spec3 = bad.commit_spec()
    spec3.schema = t3.schema
    with pytest.raises(CatalogError, match="source_row"):
        cat.commit([spec3])


def test_snapshots_give_the_data_as_of_an_earlier_commit(tmp_path):
    store = Store(str(tmp_path))
    cat = Catalog(store)
    first = _writer(store, 2, "n1")
    assert cat.commit([first.commit_spec()])
    night1 = cat.snapshots(1)[0]["snapshot_id"]
    assert cat.commit([_writer(store, 3, "n2").commit_spec()])
    assert cat.sql("SELECT count(*) AS n FROM data_problems").to_pylist() == [{"n": 5}]
    then = open_reader(store, snapshot=night1)
    cols, rows = read_query(then, "SELECT count(*) AS n FROM data_problems")
    assert list(rows) == [(2,)]
    msgs = [s["commit_message"] for s in cat.snapshots(10)]
    assert any(m and m.startswith("commit") for m in msgs)


def test_reader_is_read_only_and_locked_down(tmp_path):
    store = Store(str(tmp_path / "root"))
    cat = Catalog(store)
    w = _writer(store, 2)
    assert cat.commit([w.commit_spec()])
    secret = tmp_path / "outside.csv"
    secret.write_text("a\n1\n")
    rd = open_reader(store)
    cols, rows = read_query(rd, "SELECT count(*) AS n FROM data_problems")
    assert cols == ["n"] and list(rows) == [(2,)]
    for bad, why in [("SELECT 1; SELECT 2", "exactly one statement"),
                     ("INSERT INTO artifacts (key) VALUES ('x')", "only read-only"),
                     ("SET enable_external_access = true", "only read-only"),
                     ("INSTALL httpfs", "only read-only"),
                     ("ATTACH '/tmp/x.db' AS x", "only read-only"),
                     ("COPY (SELECT 1) TO '/tmp/x.csv'", "only read-only"),
                     (f"SELECT * FROM read_csv('{secret}')", "disabled"),
                     ("SELECT * FROM lake.main.artifacts WHERE nope", "")]:
        with pytest.raises(QueryError, match=why):
            read_query(rd, bad)
    with pytest.raises(Exception, match="read-only|read only"):
        rd.con.execute("INSERT INTO lake.main.runs (run_id) VALUES ('x')")


def test_a_pre_catalog_data_root_is_refused_until_imported(tmp_path):
    """The old layout: parquet relations under _manifest/, parts without an artifact_key column."""
    root = tmp_path / "old"
    store = Store(str(root))
    key = "k" * 20
    part = f"03_primary/problems/{key}/part-0-abc.parquet"
    store.write_parquet(store.path(part), problems.CONTRACT.to_table([problems.EXAMPLE]))
    ts = pa.scalar(time.time(), pa.float64())
    art = dict(key=key, name="problems", uri=store.path(f"03_primary/problems/{key}"), schema_version="problems/v1",
               producer="ingest@1", stage="ingest", stage_version="1", config_hash="c", config_json="{}",
               inputs_json="{}", models_json="{}", parents=[], files=[part], num_rows=1, stats_json="{}",
               run_id="run-old", ts=pa.scalar(0, pa.timestamp("us", tz="UTC")).as_py())
    store.write_parquet(store.path("_manifest/artifacts/0001.parquet"), pa.Table.from_pylist([art]))
    store.write_parquet(store.path("_manifest/runs/0001.parquet"), pa.Table.from_pylist(
        [dict(run_id="run-old", flow="rlt-factory", status="done", ts=art["ts"])]))
    del ts
    with pytest.raises(CatalogError, match="catalog import"):
        Catalog(store).con
    from flows.cli import main

    assert main(["--data-root", str(root), "catalog", "import"]) == 0
    cat = Catalog(store)
    assert ref_from_record(cat.artifact(key)).num_rows == 1
    assert cat.sql("SELECT problem_id FROM data_problems WHERE artifact_key = ?", [key]).to_pylist() == \
        [{"problem_id": problems.EXAMPLE["problem_id"]}]
    assert main(["--data-root", str(root), "catalog", "import"]) == 2, "a second import is refused"


def test_remote_root_without_a_shared_catalog_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RLT_CATALOG_URL", raising=False)
    from infra.catalog.lake import locate

    class FakeS3:
        local, root = False, "s3://bucket/prefix"

        def path(self, *p):
            return "/".join([self.root, *p])

    with pytest.raises(CatalogError, match="RLT_CATALOG_URL=postgresql://"):
        locate(FakeS3())


def test_maintenance_expires_bookkeeping_but_keeps_commits(tmp_path):
    store = Store(str(tmp_path))
    cat = Catalog(store)
    assert cat.commit([_writer(store, 2, "m").commit_spec()])
    for i in range(5):
        cat.append("shards", [dict(artifact_key="x", stage="generate", shard_id=f"{i:05d}", status="done")])
    before = {s["snapshot_id"]: s["commit_message"] for s in cat.snapshots(100)}
    out = cat.maintain(ledger_retention_s=0)
    after = {s["snapshot_id"]: s["commit_message"] for s in cat.snapshots(100)}
    assert out["expired_snapshots"] >= 4
    assert [k for k, m in before.items() if m and m.startswith("commit")] == \
        [k for k, m in after.items() if m and m.startswith("commit")], "artifact commits stay in the history"
    assert len(cat.shard_states("x")) == 5, "expiring snapshots never loses current rows"


@pytest.mark.services
def test_s3_data_and_postgres_catalog_roundtrip(seaweed_s3, postgres_url, monkeypatch):
    for k, v in seaweed_s3["env"].items():
        monkeypatch.setenv(k, v)
    store = Store(f"s3://{seaweed_s3['bucket']}/rlt-cat-{time.time_ns()}")
    _roundtrip(store, postgres_url)
    rd = open_reader(store, postgres_url)
    cols, rows = read_query(rd, "SELECT count(*) FROM data_problems")
    assert list(rows) == [(4,)]
    password = postgres_url.split(":")[2].split("@")[0]
    with pytest.raises(QueryError) as err:
        read_query(rd, "SELECT * FROM nope")
    assert password not in str(err.value)


@pytest.mark.services
def test_postgres_writers_creating_the_same_new_table_at_once_all_commit(seaweed_s3, postgres_server, monkeypatch):
    """Two recipes' first artifacts of a kind committed at the same moment from separate connections: DuckLake
    refuses all but one CREATE TABLE ("Transaction conflict"); the others are redone and commit (CI saw two
    overlapping factory runs fail on exactly this)."""
    import threading

    for k, v in seaweed_s3["env"].items():
        monkeypatch.setenv(k, v)
    store = Store(f"s3://{seaweed_s3['bucket']}/rlt-race-{time.time_ns()}")
    postgres_url = new_catalog_database(postgres_server, "rlt_race")["writer"]   # a catalog of its own (one data path)
    for rnd in range(3):
        table = f"race{rnd}_{time.time_ns() % 10**8}"
        writers = [_writer(store, 2, f"{table}{i}", name=table) for i in range(4)]
        cats = [Catalog(store, postgres_url) for _ in writers]
        for c in cats:
            c.con   # attach first: the race is in the commits
        gate, results = threading.Barrier(len(writers)), {}

        def commit(i):
            gate.wait()
            try:
                results[i] = cats[i].commit([writers[i].commit_spec()])
            except Exception as exc:   # recorded, asserted below
                results[i] = exc

        threads = [threading.Thread(target=commit, args=(i,)) for i in range(len(writers))]
        [t.start() for t in threads]
        [t.join(timeout=300) for t in threads]
        assert results == {i: True for i in range(len(writers))}, results
        assert cats[0].count(table, writers[0].key) == 2
        assert len(cats[0].artifacts([w.key for w in writers])) == len(writers)
        for c in cats:
            c.close()


def test_catalog_sql_never_reads_data_files_it_does_not_need(tmp_path, capsys):
    """Lazy views: with an artifact's part deleted from disk, queries that do not touch it still answer."""
    from flows.cli import main

    store = Store(str(tmp_path))
    w = _writer(store, 2)
    assert Catalog(store).commit([w.commit_spec()])
    for p in w.parquet_parts():
        os.remove(p)
    assert main(["--data-root", str(tmp_path), "catalog", "sql", "SELECT 1 AS one", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"one": 1}]
    assert main(["--data-root", str(tmp_path), "catalog", "sql", "SELECT name, num_rows FROM artifacts_committed",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "problems", "num_rows": 2}]
    # count(*) comes from the catalog's own statistics; reading values needs the files (and names the missing one)
    assert main(["--data-root", str(tmp_path), "catalog", "sql", "SELECT count(*) AS n FROM data_problems",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 2}]
    assert main(["--data-root", str(tmp_path), "catalog", "sql", "SELECT max(problem_id) FROM data_problems"]) == 2
    assert "part-" in capsys.readouterr().err


def test_maintenance_runs_in_a_process_of_its_own_and_a_crash_there_is_one_warning(tmp_path, caplog):
    """infra/catalog/maintenance.py: the real maintenance in a child process returns its summary; a child killed by
    a signal (as one overlapping run was, SIGABRT inside DuckDB) or failing is a warning, never an exception."""
    import logging
    import stat

    from infra.catalog.maintenance import maintain_isolated

    root = str(tmp_path / "data")
    Catalog(Store(root)).close()   # a fresh catalog
    out = maintain_isolated(root)
    assert out is not None and {"expired_snapshots", "seconds"} <= set(out)
    aborts = tmp_path / "aborting-python"
    aborts.write_text("#!/bin/sh\necho 'malloc(): unaligned tcache chunk detected' >&2\nkill -ABRT $$\n")
    aborts.chmod(aborts.stat().st_mode | stat.S_IEXEC)
    with caplog.at_level(logging.WARNING, logger="infra.catalog.maintenance"):
        assert maintain_isolated(root, python=str(aborts)) is None
        assert maintain_isolated(root, url="postgresql://u:secret@db/x", python="/bin/false") is None
    msgs = [r.getMessage() for r in caplog.records]
    assert "killed by SIGABRT" in msgs[0] and "unaligned tcache chunk" in msgs[0]
    assert "exit 1" in msgs[1] and "secret" not in " ".join(msgs)
