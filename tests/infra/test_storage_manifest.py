"""Store, commit protocol and manifest: local folder always; S3 on a real SeaweedFS (services marker)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from data_contracts import problems
from infra import artifacts as arts
from infra.artifacts import ArtifactWriter, KeyParts
from infra.manifest import Manifest
from infra.storage import Store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _roundtrip(store: Store) -> None:
    man = Manifest(store)
    parts = KeyParts("ingest", "1", {"n": 2})
    w = ArtifactWriter(store, man, "problems", parts, "run-1", problems.CONTRACT)
    assert arts.find(man, w.key) is None
    w.write_part(problems.CONTRACT.to_table([problems.EXAMPLE]))
    w.write_part(problems.CONTRACT.to_table([dict(problems.EXAMPLE, problem_id="p_ffffffffffffffff")]))
    assert arts.find(man, w.key) is None, "parts alone must not make an artifact visible"
    ref = w.commit({"note": "x"})
    assert arts.find(man, w.key) == ref
    table = arts.load_table(store, man, ref)
    assert table.num_rows == 2 and set(table["problem_id"].to_pylist()) == {"p_0123456789abcdef",
                                                                              "p_ffffffffffffffff"}
    out = man.sql("SELECT count(*) AS n FROM data_problems").to_pylist()
    assert out == [{"n": 2}]
    store.write_json(store.path("x", "y.json"), {"a": 1})
    assert store.read_json(store.path("x", "y.json")) == {"a": 1}


def test_local_store_roundtrip(tmp_path):
    _roundtrip(Store(str(tmp_path)))


@pytest.mark.services
def test_s3_store_roundtrip_on_seaweedfs(seaweed_s3, monkeypatch):
    for k, v in seaweed_s3["env"].items():
        monkeypatch.setenv(k, v)
    store = Store(f"s3://{seaweed_s3['bucket']}/rlt-test-{time.time_ns()}")
    assert not store.local
    _roundtrip(store)
    # DuckDB queries the manifest living on S3
    man = Manifest(store)
    assert man.sql("SELECT count(*) AS n FROM artifacts_committed").to_pylist() == [{"n": 1}]


def test_data_root_resolution(monkeypatch, tmp_path):
    from infra.settings import data_root

    monkeypatch.delenv("RLT_DATA_ROOT", raising=False)
    assert data_root() == os.path.abspath("./rlt-data")
    monkeypatch.setenv("RLT_DATA_ROOT", str(tmp_path / "a"))
    assert data_root() == str(tmp_path / "a")
    assert data_root("s3://b/p/") == "s3://b/p"


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from data_contracts import problems
    from infra.artifacts import ArtifactWriter, KeyParts
    from infra.manifest import Manifest
    from infra.storage import Store
    store = Store({data!r}); man = Manifest(store)
    w = ArtifactWriter(store, man, "problems", KeyParts("ingest", "1", {{"n": 3}}), "run-x", problems.CONTRACT)
    for i in range(3):
        w.write_part(problems.CONTRACT.to_table([dict(problems.EXAMPLE, problem_id=f"p_{{i:016d}}")]))
    print("PARTS-WRITTEN", flush=True)
    if {hang}:
        time.sleep(60)
    w.commit()
    print("COMMITTED", flush=True)
""")


def test_killed_writer_leaves_nothing_visible_and_rerun_commits_once(tmp_path):
    data = str(tmp_path / "store")
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT, data=data, hang=True)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "PARTS-WRITTEN"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    store = Store(data)
    man = Manifest(store)
    key = KeyParts("ingest", "1", {"n": 3}).key()
    assert arts.find(man, key) is None
    assert len(store.glob(f"{data}/03_primary/problems/{key}/*.parquet")) == 3  # orphans, invisible
    assert man.sql("SELECT count(*) AS n FROM artifacts").to_pylist() == [{"n": 0}]
    out = subprocess.run([sys.executable, "-c", WRITER.format(root=ROOT, data=data, hang=False)],
                         capture_output=True, text=True, timeout=120)
    assert "COMMITTED" in out.stdout, out.stderr
    rows = man.sql(f"SELECT num_rows, len(files) AS nf FROM artifacts WHERE key = '{key}'").to_pylist()
    assert rows == [{"num_rows": 3, "nf": 3}]  # one commit, listing only the rerun's parts
    assert man.sql("SELECT count(*) AS n FROM data_problems").to_pylist() == [{"n": 3}]


APPENDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from infra.manifest import Manifest
    from infra.storage import Store
    man = Manifest(Store({data!r}))
    for i in range({n}):
        man.append("runs", [dict(run_id=f"{tag}-{{i}}", flow="t", status="done")])
""")


def test_two_concurrent_manifest_writers_lose_and_duplicate_nothing(tmp_path):
    data, n = str(tmp_path / "m"), 150
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER.format(root=ROOT, data=data, n=n, tag=t)])
             for t in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=300) == 0
    man = Manifest(Store(data))
    rows = man.sql("SELECT run_id, count(*) AS c FROM runs GROUP BY run_id").to_pylist()
    assert len(rows) == 2 * n
    assert all(r["c"] == 1 for r in rows)


def test_store_write_is_atomic_no_temp_files_left(tmp_path):
    store = Store(str(tmp_path))
    store.write_parquet(store.path("a", "t.parquet"), pa.table({"x": [1, 2]}))
    assert [os.path.basename(p) for p in store.ls(store.path("a"))] == ["t.parquet"]
