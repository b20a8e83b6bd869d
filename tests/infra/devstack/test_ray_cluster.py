"""The local Ray cluster of the stack (infra/devstack/ray_cluster.py): a head (no CPUs) and worker nodes as managed services.

The fast tests check the command lines and environments built for the services (no process starts). The slow ones
share one real cluster per module (head + 2 nodes, started through ``ray_cluster.start``, not the whole stack) and run
in file order: tasks pinned to each node -> a node without the token is refused -> a killed node -> down.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from infra import settings
from infra.devstack import ray_cluster, services, stack
from infra.devstack.ray_cluster import HEAD, RayClusterConfig, RayClusterError

TOKEN = "f" * 64
STACK_ENV = {"PREFECT_API_URL": "http://127.0.0.1:9/api", "PREFECT_API_AUTH_STRING": "rlt:prefect-secret",
             "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "RLT_DATA_ROOT": "s3://rlt/factory"}


def _specs(root: Path, nodes: int = 2) -> tuple[ray_cluster.RayPorts, dict[str, services.ServiceSpec]]:
    names = [HEAD, *ray_cluster.node_services(nodes)]
    ports = ray_cluster.allocate_ports(names)
    return ports, ray_cluster.cluster_specs(root, RayClusterConfig(nodes=nodes, cpus_per_node=2), ports,
                                            SecretStr(TOKEN), STACK_ENV)


def _fallback_dir(root: Path) -> Path | None:
    """The /tmp/rlt-ray-<hash> folder of ``root`` when its own paths are too long for Ray's sockets."""
    parent = ray_cluster.temp_dir(root, HEAD).parent
    return parent if parent.name.startswith("rlt-ray-") else None


# ---------------------------------------------------------------- fast: what the services are started with


@pytest.fixture
def root(tmp_path):
    """A data root; the /tmp/rlt-ray-<hash> folder its long path sends Ray's session files to is removed after."""
    yield tmp_path
    fallback = _fallback_dir(tmp_path)
    if fallback is not None:
        shutil.rmtree(fallback, ignore_errors=True)


def test_names_and_labels():
    assert ray_cluster.node_services(3) == ["ray-node-a", "ray-node-b", "ray-node-c"]
    assert ray_cluster.node_label(1) == "node_b"
    assert ray_cluster.node_service("node_b") == "ray-node-b"
    assert ray_cluster.service_label("ray-node-b") == "node_b"
    assert ray_cluster.service_label(HEAD) == "head"
    with pytest.raises(ValueError):
        ray_cluster.node_label(ray_cluster.MAX_NODES)
    with pytest.raises(ValidationError):
        RayClusterConfig(nodes=0)
    with pytest.raises(ValidationError):
        stack.StackConfig(ray_nodes=ray_cluster.MAX_NODES + 1)
    assert stack.StackConfig().ray_nodes == 0


def test_argv_and_env_of_head_and_nodes(root):
    ports, specs = _specs(root)
    assert list(specs) == [HEAD, "ray-node-a", "ray-node-b"]
    head, node_a = specs[HEAD], specs["ray-node-a"]
    argv = list(head.argv)
    assert argv[:5] == [sys.executable, "-m", "ray.scripts.scripts", "start", "--block"]
    assert argv[argv.index("--port") + 1] == str(ports.gcs)
    assert argv[argv.index("--num-cpus") + 1] == "0" and "--head" in argv and "--include-dashboard=false" in argv
    argv = list(node_a.argv)
    assert argv[argv.index("--address") + 1] == f"127.0.0.1:{ports.gcs}" == ports.address
    assert argv[argv.index("--num-cpus") + 1] == "2"
    assert json.loads(argv[argv.index("--resources") + 1]) == {"node_a": 1}
    assert argv[argv.index("--node-manager-port") + 1] == str(ports.nodes["ray-node-a"].node_manager)
    assert node_a.health.kind == "tcp" and node_a.health.port == ports.nodes["ray-node-a"].node_manager
    assert head.health.port == ports.gcs
    for spec in specs.values():
        assert spec.stop_signal == "SIGTERM" and spec.stop_scope == "leader"   # Ray's own node shutdown
        assert spec.env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "0"
        assert not any(TOKEN in a for a in spec.argv), f"the token is on {spec.name}'s command line"
        assert spec.env["RAY_AUTH_MODE"] == "token" and spec.env["RAY_AUTH_TOKEN"] == TOKEN
        assert spec.env["RAY_USAGE_STATS_ENABLED"] == "0"
        assert TOKEN not in repr(spec)
        tmp = Path(spec.argv[spec.argv.index("--temp-dir") + 1])
        assert len(str(tmp)) + ray_cluster._RAY_SOCKET_TAIL <= 107
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o700
    assert node_a.env["RLT_RAY_NODE"] == "node_a" and specs["ray-node-b"].env["RLT_RAY_NODE"] == "node_b"
    assert all(node_a.env[k] == v for k, v in STACK_ENV.items())   # tasks on the node reach every service
    # one --temp-dir per service: nodes starting together in one folder race for the same socket names
    assert len({s.argv[s.argv.index("--temp-dir") + 1] for s in specs.values()}) == 3


def test_node_without_token_has_token_auth_off(root):
    ports, _ = _specs(root, nodes=1)
    spec = ray_cluster.node_spec(root, "node_z", ports.address, ports.nodes["ray-node-a"], TOKEN,
                                 RayClusterConfig(nodes=1), with_token=False)
    assert spec.env["RAY_AUTH_MODE"] == "disabled" and spec.env["RAY_AUTH_TOKEN"] == ""


def test_long_data_root_falls_back_to_a_short_private_temp_dir(tmp_path):
    root = tmp_path / ("x" * 60)
    short = ray_cluster.temp_dir(root, "ray-node-b")
    try:
        assert short.parent.name.startswith("rlt-ray-") and short.name == "b"
        assert len(str(short)) + ray_cluster._RAY_SOCKET_TAIL <= 107
        assert stat.S_IMODE(short.parent.stat().st_mode) == 0o700
        assert ray_cluster.temp_dir(root, "ray-node-b") == short   # stable per data root
    finally:
        shutil.rmtree(short.parent, ignore_errors=True)
    other = tmp_path / "elsewhere"
    other.mkdir()
    short.parent.symlink_to(other)   # someone else's (or a link planted in /tmp): refused
    try:
        with pytest.raises(RayClusterError, match="not a folder of this user"):
            ray_cluster.temp_dir(root, HEAD)
    finally:
        short.parent.unlink()


def test_cluster_token_file_is_private_and_stable(tmp_path):
    assert ray_cluster.cluster_token(tmp_path) is None
    token = ray_cluster.cluster_token(tmp_path, create=True)
    assert len(token.get_secret_value()) == 64
    path = ray_cluster.token_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ray_cluster.cluster_token(tmp_path, create=True).get_secret_value() == token.get_secret_value()


def test_ports_are_distinct_kept_and_exclude_the_stack():
    names = [HEAD, "ray-node-a", "ray-node-b"]
    stack_ports = {services.free_port() for _ in range(5)}
    ports = ray_cluster.allocate_ports(names, exclude=stack_ports)
    assert len(ports.all()) == 4 + 2 * len(names) and not ports.all() & stack_ports
    assert ray_cluster.allocate_ports(names, previous=ports) == ports   # free again: the same address after a restart


def test_stack_env_gains_ray_only_with_a_cluster(monkeypatch):
    cfg, ports = stack.StackConfig(), stack.allocate_ports(stack.StackConfig())
    creds = stack.S3Credentials(key="k", secret=SecretStr("s"))
    plain = stack.stack_env(cfg, ports, creds)
    assert not {k for k in plain if "RAY" in k}
    env = stack.stack_env(cfg, ports, creds, ray_address="127.0.0.1:6379", ray_token=SecretStr(TOKEN))
    assert set(env) - set(plain) == {"RLT_RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    assert env["RLT_RAY_ADDRESS"] == "127.0.0.1:6379" and env["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    exports = stack.format_exports(env)
    assert TOKEN not in exports and "RAY_AUTH_TOKEN is already set" in exports
    assert TOKEN not in settings.redact_text(f"ray said: token {TOKEN} refused")


def test_stack_with_ray_in_its_state_lists_and_exports_it(root, monkeypatch):
    """stack.json of a stack brought up with --ray-nodes 2 (nothing running): status lists head and nodes, the
    env names the cluster and its token; without Ray in the config neither shows."""
    cfg = stack.StackConfig(ray_nodes=2)
    names = [HEAD, *ray_cluster.node_services(2)]
    ray_ports = ray_cluster.allocate_ports(names)
    state = {"config": cfg.model_dump(), "ports": stack.allocate_ports(cfg).model_dump(),
             "ray": {"ports": ray_ports.model_dump()}}
    services.private_dir(root / services.SERVICES_DIR)
    (root / services.SERVICES_DIR / stack.STATE_FILE).write_text(json.dumps(state))
    token = ray_cluster.cluster_token(root, create=True)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    rows = stack.status(root)
    assert [r.name for r in rows] == [*stack.SERVICE_NAMES, *names]
    assert not any(r.running or r.healthy for r in rows)
    env = stack.current_env(root)
    assert env["RLT_RAY_ADDRESS"] == ray_ports.address and env["RAY_AUTH_TOKEN"] == token.get_secret_value()
    state["config"] = stack.StackConfig().model_dump()
    (root / services.SERVICES_DIR / stack.STATE_FILE).write_text(json.dumps(state))
    assert [r.name for r in stack.status(root)] == list(stack.SERVICE_NAMES)
    assert "RLT_RAY_ADDRESS" not in stack.current_env(root)


# ---------------------------------------------------------------- slow: a real cluster

_DRIVER = textwrap.dedent("""
    import json, os, sys
    import ray
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)

    from infra.devstack import ray_cluster

    @ray.remote(num_cpus=1)
    def where():
        return {"node": os.environ.get("RLT_RAY_NODE"), "prefect": os.environ.get("PREFECT_API_URL"),
                "pid": os.getpid(), "pgid": os.getpgid(0)}

    root, labels = sys.argv[2], sys.argv[3:]
    out = {label: ray.get(where.options(resources={label: 1}).remote(), timeout=120) for label in labels}
    for label, row in out.items():   # while the job runs, its workers live: node_pids must list them
        row["listed"] = row["pid"] in ray_cluster.node_pids(root, ray_cluster.node_service(label))
    print(json.dumps(out))
""")


def _rss_mib(root: Path) -> int:
    import psutil

    total = 0
    for name in ray_cluster.services_on_disk(root):
        for pid in ray_cluster.node_pids(root, name):
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
    return total >> 20


def _ray_processes_under(folders: list[str]) -> list[str]:
    """Command lines of live raylet/gcs_server/ray processes that name one of ``folders`` (our temp dirs)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()
            if any(k in line for k in ("raylet", "gcs_server", "ray.scripts", "default_worker", "ray::"))
            and any(f in line for f in folders)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    cfg = RayClusterConfig(nodes=2)
    ports = ray_cluster.allocate_ports([HEAD, *ray_cluster.node_services(2)])
    token = ray_cluster.cluster_token(root, create=True)
    t0 = time.monotonic()
    # started the way a CI job run in the background by a non-interactive shell starts it: SIGINT ignored, which
    # every service inherits (the cause of the stop that hung for 45 s in CI; see ray_cluster's "Stop")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ready = ray_cluster.start(root, cfg, ports, token, {"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    finally:
        signal.signal(signal.SIGINT, previous)
    healthy_s = time.monotonic() - t0
    temp_dirs = [str(ray_cluster.temp_dir(root, n)) for n in ray_cluster.services_on_disk(root)]
    print(f"\nray cluster: head + 2 nodes healthy in {healthy_s:.1f} s (per service {ready})")
    try:
        yield {"root": root, "ports": ports, "token": token, "address": ports.address, "temp_dirs": temp_dirs}
    finally:
        ray_cluster.stop(root, grace_s=10.0)
        fallback = _fallback_dir(root)
        if fallback is not None:
            shutil.rmtree(fallback, ignore_errors=True)


@pytest.mark.slow
def test_tasks_run_on_the_node_their_resource_names(cluster):
    root = cluster["root"]
    time.sleep(10)   # idle: the agents are up
    print(f"\nray cluster idle RSS: {_rss_mib(root)} MiB over "
          f"{sum(len(ray_cluster.node_pids(root, n)) for n in ray_cluster.services_on_disk(root))} processes")
    env = {**os.environ, **ray_cluster.auth_env(cluster["token"])}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _DRIVER, cluster["address"], str(root), "node_a", "node_b"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"driver: connect + one task per node in {time.monotonic() - t0:.1f} s")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["node_a"]["node"] == "node_a" and out["node_b"]["node"] == "node_b"
    assert out["node_a"]["prefect"] == "http://127.0.0.1:9/api"   # the stack's env reached the task
    # Ray's workers leave the node's process group (each leads its own) yet node_pids (and so stop) finds them
    assert out["node_a"]["pgid"] == out["node_a"]["pid"] and out["node_a"]["listed"] and out["node_b"]["listed"]
    rows = {s.name: s for s in ray_cluster.status(root, cluster["ports"])}
    assert list(rows) == [HEAD, "ray-node-a", "ray-node-b"]
    assert all(s.running and s.healthy for s in rows.values()), rows
    assert rows[HEAD].url == cluster["address"]
    # the token is in no command line, meta.json or log
    secret = cluster["token"].get_secret_value()
    for name in ray_cluster.services_on_disk(root):
        assert secret not in services.service_dir(root, name).joinpath("meta.json").read_text()
        assert secret not in services.log_path(root, name).read_text(errors="replace")
    assert not [line for line in subprocess.run(["ps", "-ww", "-eo", "args="], capture_output=True, text=True).stdout
                .splitlines() if secret in line]


@pytest.mark.slow
def test_a_node_without_the_token_is_refused_with_a_clear_error(cluster):
    t0 = time.monotonic()
    with pytest.raises(RayClusterError) as err:
        ray_cluster.start_node(cluster["root"], "node_z", cluster["address"], cluster["token"],
                               RayClusterConfig(nodes=1), with_token=False, timeout_s=90)
    elapsed = time.monotonic() - t0
    print(f"\nnode without the token refused after {elapsed:.1f} s")
    message = str(err.value)
    assert f"the Ray cluster at {cluster['address']} refused node ray-node-z" in message
    assert "requires its token" in message and 'eval "$(rlt stack env)" sets RAY_AUTH_TOKEN' in message
    assert cluster["token"].get_secret_value() not in message
    assert elapsed < 60
    assert ray_cluster.node_pids(cluster["root"], "ray-node-z") == []   # the refused node was cleaned up
    with pytest.raises(RayClusterError, match="requires its token"):   # a client with another token: same hint
        ray_cluster.query_nodes(cluster["address"], token="0" * 64)
    assert {n.label for n in ray_cluster.query_nodes(cluster["address"], cluster["token"]) if n.alive} >= {
        "node_a", "node_b"}


@pytest.mark.slow
def test_a_killed_node_shows_as_down(cluster):
    root = cluster["root"]
    import psutil

    before = [psutil.Process(pid) for pid in ray_cluster.node_pids(root, "ray-node-b")]
    pids = ray_cluster.kill_node(root, "ray-node-b", signal.SIGKILL)
    assert pids == [p.pid for p in before] and pids[0] == services.read_meta(root, "ray-node-b")["pid"]
    assert len(pids) >= 3   # ray start, raylet, agents

    def alive() -> list[int]:
        services.pid_alive(pids[0])   # reap our child, the ray start leader
        out = []
        for proc in before:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc.pid)
            except psutil.Error:
                continue
        return out

    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive() == [] and ray_cluster.node_pids(root, "ray-node-b") == []
    rows = {s.name: s for s in ray_cluster.status(root, cluster["ports"])}
    assert not rows["ray-node-b"].running and not rows["ray-node-b"].healthy
    assert rows["ray-node-a"].healthy and rows[HEAD].healthy


@pytest.mark.slow
def test_stop_leaves_no_ray_process(cluster):
    import psutil

    root = cluster["root"]
    assert _ray_processes_under(cluster["temp_dirs"])   # the check sees them while they run
    procs = [psutil.Process(pid) for n in ray_cluster.services_on_disk(root) for pid in ray_cluster.node_pids(root, n)]
    assert len(procs) >= 5
    t0 = time.monotonic()
    # graceful: SIGTERM to each node's `ray start` leader is enough (no SIGKILL), although the cluster was started
    # with SIGINT ignored (the fixture); Ray's shutdown kills what ignores SIGTERM for 1 s, so 30 s is ample
    outcome = ray_cluster.stop(root, grace_s=30.0)
    print(f"\nray cluster stopped in {time.monotonic() - t0:.1f} s: {outcome}")
    assert outcome == {"ray-node-a": "SIGTERM", "ray-node-b": "not-running", "ray-node-z": "not-running",
                       HEAD: "SIGTERM"}
    assert all(ray_cluster.node_pids(root, n) == [] for n in ray_cluster.services_on_disk(root))
    assert _ray_processes_under(cluster["temp_dirs"]) == []
    assert [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert all(not s.running for s in ray_cluster.status(root, cluster["ports"]))
