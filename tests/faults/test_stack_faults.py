"""Faults on the real stack (`rlt stack up`: SeaweedFS S3, PostgreSQL catalog, MLflow server, Prefect server).

- S3 outage: SeaweedFS is stopped at an exact moment of a real ``rlt run`` (infra/faults.py ``RLT_FAULT_PAUSE``
  holds the run there while the test stops the service): in the middle of a sharded stage (after a shard part
  was written) and in the middle of a catalog commit (after the parts were registered, before COMMIT). The run
  must fail within a bounded time with one clear ``rlt:`` line naming the endpoint, commit nothing; after
  SeaweedFS is started again the rerun completes and its rows equal an uninterrupted run's.
- Secrets: the whole factory runs with unique marker secrets in its environment; every object in the bucket,
  every file under the local data root (but the credential files themselves), the MLflow and Prefect
  databases, the PostgreSQL catalog's tables, the service logs and the process list are searched: no hits.

Every ``rlt`` here is a real CLI process with exactly the environment ``rlt stack up`` hands out.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from infra.faults import PAUSE_ENV
from tests.faults.conftest import ROOT
from tests.faults.test_kill import VOLATILE
from tests.flows.test_factory import tiny_recipe
from tests.flows.test_overlap import ID_COLS
from tests.infra.devstack.services_fixtures import drop_postgres_cluster

pytestmark = [pytest.mark.faults, pytest.mark.services, pytest.mark.timeout(2400)]

OUTAGE_BOUND_S = 180.0   # from the object store going away to the run's exit


def _rlt(args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory):
    from infra.devstack import stack

    local = str(tmp_path_factory.mktemp("stack"))
    env_vars = stack.up(local)
    env = {**os.environ, **env_vars, "PYTHONPATH": ROOT}
    env.pop("PREFECT_HOME", None)
    try:
        yield local, env_vars, env
    finally:
        cluster = (stack.load_state(local).get("postgres") or {}).get("cluster_dir")
        stack.down(local)
        if cluster:
            drop_postgres_cluster(local, cluster)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory, tiny_model_dir) -> str:
    recipe = tiny_recipe(tiny_model_dir, train_teacher={"phases": []}, generate={"shard_size": 1},
                         evaluate={"include_base": False, "benchmarks": ["countdown-heldout"], "max_items": 2})
    path = tmp_path_factory.mktemp("recipe") / "outage.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _rows(root: str, name: str, catalog_url: str | None, env: dict) -> list[dict]:
    """The rows of the one committed ``name`` artifact, volatile columns dropped, in id order."""
    from infra.catalog.lake import Catalog
    from infra.catalog.store import Store

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cat = Catalog(Store(root), catalog_url, read_only=True)
        keys = [r["key"] for r in cat.rows("SELECT key FROM artifacts_committed WHERE name = ?", [name])]
        assert len(keys) == 1, (name, keys)
        cat.refresh_data_views()
        rows = cat.rows(f"SELECT * FROM data_{name} WHERE artifact_key = ? ORDER BY {ID_COLS[name]}", keys)
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _committed(name: str, env: dict) -> int:
    q = _rlt(["catalog", "sql", f"SELECT count(*) AS n FROM artifacts_committed WHERE name = '{name}'", "--json"],
             env)
    assert q.returncode == 0, q.stderr[-2000:]
    import json

    return json.loads(q.stdout)[0]["n"]


def _outage(local: str, env: dict, argv: list[str], pause_at: str, tmp: Path) -> tuple[subprocess.CompletedProcess,
                                                                                     float]:
    """Run ``argv`` held at ``pause_at``; stop SeaweedFS there, let the run go on; returns (result, seconds from
    the outage to the run's exit)."""
    from infra.devstack import services, stack

    flag = tmp / f"pause-{time.time_ns()}"
    # output to files, not pipes: a pipe nobody reads while we wait for the pause fills at 64 KiB and blocks the run
    out_path, err_path = Path(f"{flag}.out"), Path(f"{flag}.err")
    with open(out_path, "w") as out_f, open(err_path, "w") as err_f:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *argv], cwd=ROOT,
                                env={**env, PAUSE_ENV: f"{pause_at}:{flag}"}, stdout=out_f, stderr=err_f, text=True)
        deadline = time.time() + 900
        while not Path(f"{flag}.reached").exists():
            assert proc.poll() is None, f"the run ended before {pause_at}: " + err_path.read_text()[-4000:]
            assert time.time() < deadline, f"{pause_at} never reached"
            time.sleep(0.2)
        services.stop(stack._services_root(local), "seaweedfs", grace_s=5.0)
        t0 = time.monotonic()
        Path(f"{flag}.go").touch()
        proc.wait(timeout=900)
        seconds = time.monotonic() - t0
    out, err = out_path.read_text(), err_path.read_text()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seconds


def test_s3_outage_mid_shards_and_mid_commit_fails_cleanly_and_recovers(live_stack, recipe_file, tmp_path,
                                                                         fault_report):
    from infra.devstack import stack

    local, env_vars, env = live_stack
    endpoint = env_vars["AWS_ENDPOINT_URL"]
    # the uninterrupted reference: the same recipe on a local root with its embedded catalog
    ref_root = str(tmp_path / "reference")
    ref_env = {k: v for k, v in env.items() if not k.startswith(("RLT_", "AWS_", "MLFLOW_"))}
    ref = _rlt(["--data-root", ref_root, "run", "score", "--recipe", recipe_file], ref_env)
    assert ref.returncode == 0, ref.stderr[-4000:]
    outcomes = []
    for stage, table, pause_at in (("generate", "explanations", "store.write@3"),
                                   ("score", "scored_explanations", "catalog.commit.parts_registered@1")):
        res, secs = _outage(local, env, ["run", stage, "--recipe", recipe_file], pause_at, tmp_path)
        text = res.stdout + res.stderr
        assert res.returncode == 2, text[-4000:]
        assert secs < OUTAGE_BOUND_S, f"{stage}: {secs:.0f}s from the outage to the exit"
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("rlt: ")]
        assert len(lines) == 1 and endpoint in lines[0], text[-3000:]
        assert "Traceback" not in text, text[-4000:]
        env_vars.update(stack.up(local))   # SeaweedFS again, on the same ports, with the same data
        assert _committed(table, env) == 0, f"{stage}: an artifact became visible from the failed run"
        again = _rlt(["run", stage, "--recipe", recipe_file], env)
        assert again.returncode == 0, again.stderr[-4000:]
        catalog = env_vars["RLT_CATALOG_URL"]
        s3_env = {k: v for k, v in env_vars.items() if k.startswith("AWS_")}
        assert _rows(env_vars["RLT_DATA_ROOT"], table, catalog, s3_env) == _rows(ref_root, table, None, {}), \
            f"{stage}: the rerun after the outage differs from an uninterrupted run"
        outcomes.append(f"{stage} at {pause_at}: exit 2 after {secs:.1f}s, '{lines[0][:140]}'")
    fault_report.record(
        fault="S3 outage (SeaweedFS stopped) mid sharded stage and mid commit", trials=len(outcomes),
        outcome=f"one clear line naming the endpoint within {OUTAGE_BOUND_S:.0f}s; nothing committed; after restart "
                "the rerun equals an uninterrupted run", detail=" | ".join(outcomes))


def _secret_values(env_vars: dict, markers: dict) -> dict[str, str]:
    """Every secret the run had in its environment, by name (the stack's own and the markers)."""
    from urllib.parse import unquote, urlparse

    found = dict(markers)
    for name, value in env_vars.items():
        if value and any(w in name for w in ("SECRET", "PASSWORD", "AUTH_STRING", "TOKEN")):
            found[name] = value
    for key, name in (("RLT_CATALOG_URL", "catalog password"), ("RLT_CATALOG_READER_URL", "catalog reader password")):
        if pg := urlparse(env_vars.get(key, "")).password:
            found[name] = unquote(pg)
    return {k: v for k, v in found.items() if len(v) >= 8}


def _scan_files(base: Path, secrets: dict[str, str], skip) -> list[str]:
    hits = []
    for path in base.rglob("*"):
        if not path.is_file() or path.is_symlink() or skip(path):
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        hits += [f"{path}: {name}" for name, value in secrets.items() if value.encode() in data]
    return hits


def test_no_secret_reaches_any_store_log_report_or_process_list(live_stack, recipe_file, fault_report):
    import secrets as rnd

    import psutil
    import psycopg
    import s3fs

    from infra.devstack import stack

    local, env_vars, env = live_stack
    markers = {"HF_TOKEN": f"hf_marker{rnd.token_hex(12)}", "OPENAI_API_KEY": f"sk-marker{rnd.token_hex(12)}",
               "RLT_MARKER_PASSWORD": f"pw-marker{rnd.token_hex(12)}"}
    run_env = {**env, **markers}
    res = subprocess.Popen([sys.executable, "-m", "flows.cli", "factory", "--recipe", recipe_file], cwd=ROOT,
                           env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    secrets = _secret_values(env_vars, markers)
    assert {"AWS_SECRET_ACCESS_KEY", "catalog password", "catalog reader password", *markers} <= set(secrets), \
        sorted(secrets)
    cmdline_hits: list[str] = []
    while res.poll() is None:   # the process list, sampled all through the run
        for p in psutil.process_iter(["pid", "cmdline"]):
            line = " ".join(p.info["cmdline"] or [])
            cmdline_hits += [f"pid {p.info['pid']} cmdline: {n}" for n, v in secrets.items() if v in line]
        time.sleep(1.0)
    out = res.stdout.read()
    assert res.returncode == 0, out[-4000:]
    hits = sorted(set(cmdline_hits))
    hits += [f"rlt output: {n}" for n, v in secrets.items() if v in out]
    # every object in the bucket: data, catalog-visible parts, checkpoints, the HTML report, MLflow artifacts
    fs = s3fs.S3FileSystem(endpoint_url=env_vars["AWS_ENDPOINT_URL"], key=env_vars["AWS_ACCESS_KEY_ID"],
                           secret=env_vars["AWS_SECRET_ACCESS_KEY"])
    bucket = env_vars["RLT_DATA_ROOT"].removeprefix("s3://").split("/")[0]
    objects = fs.find(bucket)
    assert any(o.endswith(".html") for o in objects) and any(o.endswith(".parquet") for o in objects)
    for obj in objects:
        data = fs.cat_file(obj)
        hits += [f"s3://{obj}: {n}" for n, v in secrets.items() if v.encode() in data]
    # the local side: service folders (MLflow and Prefect databases, logs, state), the PostgreSQL cluster
    state = stack.load_state(local)
    services_dir = Path(local) / "_services"
    credential_files = {services_dir / "seaweedfs" / stack.S3_CREDENTIALS_FILE, stack.postgres_password_path(local),
                        *(services_dir / "postgres" / f for f in stack.PG_ROLE_PASSWORD_FILES.values()),
                        services_dir / "mlflow" / stack.MLFLOW_CREDENTIALS_FILE,
                        services_dir / "prefect" / stack.PREFECT_AUTH_FILE}

    def is_credential_file(p: Path) -> bool:   # where a secret lives by design (0600 in a 0700 folder)
        return p in credential_files

    scanned = [Path(local)]
    cluster = (state.get("postgres") or {}).get("cluster_dir")
    if cluster and not Path(cluster).resolve().is_relative_to(Path(local).resolve()):
        scanned.append(Path(cluster))
    for base in scanned:
        hits += _scan_files(base, secrets, is_credential_file)
    # the catalog's tables as text (values PostgreSQL may have compressed on disk)
    with psycopg.connect(env_vars["RLT_CATALOG_URL"]) as pg:
        tables = pg.execute("SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
                            "('pg_catalog', 'information_schema')").fetchall()
        for schema, name in tables:
            for (row,) in pg.execute(f'SELECT t::text FROM "{schema}"."{name}" t'):
                hits += [f"catalog {schema}.{name}: {n}" for n, v in secrets.items() if v in row]
    assert not hits, "secrets found:\n" + "\n".join(sorted(set(hits))[:50])
    # the search itself can find: the credential files it skipped hold their secrets
    canary = _scan_files(services_dir, {"AWS_SECRET_ACCESS_KEY": secrets["AWS_SECRET_ACCESS_KEY"]}, lambda p: False)
    assert canary == [f"{services_dir / 'seaweedfs' / stack.S3_CREDENTIALS_FILE}: AWS_SECRET_ACCESS_KEY"], canary
    fault_report.record(
        fault="Secrets in the environment of a whole factory run on the stack", trials=1,
        outcome=f"0 hits for {len(secrets)} secrets",
        detail=f"searched {len(objects)} bucket objects, {', '.join(str(b) for b in scanned)}, "
               f"{len(tables)} catalog tables, the process list every 1s, the CLI output; secrets: "
               + ", ".join(sorted(secrets)))
