"""A local Ray cluster run as managed services of the stack (``rlt stack up --ray-nodes N``).

Topology, all on this host, each a ``ray start --block`` under ``infra/devstack/services.py`` (pid file, process group,
log in ``<root>/_services/<name>/service.log``):

- ``ray-head``: the GCS (the cluster's address, ``RLT_RAY_ADDRESS`` = ``127.0.0.1:<gcs port>``) with
  ``--num-cpus 0 --num-gpus 0``: drivers connect to it, no task runs on it;
- ``ray-node-a``, ``ray-node-b``, ...: ``--num-cpus <cpus_per_node>`` and one custom resource named after the
  node (``{"node_a": 1}``), so work can be pinned to a node; ``RLT_RAY_NODE=node_a`` in its environment (the
  shard code reports which node ran a shard) with the stack's client environment (S3, Prefect API and auth
  string, MLflow, catalog, data root), so tasks running there reach every service and no Ray worker starts a
  temporary Prefect server of its own.

Token authentication is on: one random token per data root (``_services/ray-head/auth-token``, 0600, folder
0700), handed to head and nodes through their environment (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``), never
argv, meta.json or logs. Clients get it from ``rlt stack env``. A node or driver without it is refused
(``ray start --address`` gives up after ~20 s; ``start_node`` turns that into a ``RayClusterError`` naming the
token and where to get it).

Ports: the GCS port, the Ray-client server port, the head's two Prometheus ports, and each node's node-manager and
dashboard-agent HTTP ports are picked free and kept across restarts (Ray's defaults 10001, 44217, 44227 and 52365
are fixed and collide with any other Ray on the host); Ray picks the rest (0 = any free port, worker ports
included). Ray 2.60 binds its gRPC ports on every interface and advertises the host's address (it rewrites
127.0.0.1 to it), with no switch to confine it to loopback: the token is what closes those ports (the Prometheus
ports and the agents' health routes answer without it; they hold no data).

Health: the head is healthy when its GCS answers a node-table query made with the token and lists the head alive;
a node is healthy when that table lists it alive with its custom resource (``query_nodes``: one
``GcsClient.get_all_node_info`` call in a subprocess, ~1-2 s, no driver is registered). While starting, a TCP
accept on the head's GCS port / the node's node-manager port is the quick readiness probe, then ``wait_nodes``
confirms every node in the GCS table.

Stop: SIGTERM to the ``ray start --block`` leader alone, which is Ray's own node shutdown: its handler (installed by
Ray, so it works whatever signal dispositions the stack inherited) ends the node's processes in order, raylet
first, then the GCS, then the agents (SIGTERM, SIGKILL after 1 s each), and exits. ``RAY_GRACEFUL_SHUTDOWN_DRAIN_
TIMEOUT_S=0`` skips the drain wait meant for Serve replicas behind a load balancer (30 s by default). The whole group
gets SIGKILL only if it outlives the grace period. Why not SIGINT to the group (the design until 2026-12): a process
started with SIGINT ignored (a CI job run in the background by a non-interactive shell, ``nohup``) passes that
disposition on, Python then installs no KeyboardInterrupt handler, and ``ray start --block`` with every Python agent
ignores SIGINT (reproduced: 5 processes still up 20 s after it; CI saw 45 s and a SIGKILL). Nor SIGTERM to the
group: the GCS dies while the leader drains against it. Ray's worker processes leave the service's process group
(each is its own group leader); ``stop`` notes the service's process tree first and ends whatever of it outlives
the group.

Session files (logs, sockets) go to a ``--temp-dir`` per service (nodes starting together in one folder race for
the same socket names): ``_services/<name>/tmp`` when Ray's unix socket paths under it fit the 107-byte limit, else
``/tmp/rlt-ray-<sha256(data root)[:12]>/<head|a|b|...>`` (0700, ours). Ray makes its own folders in there 0777:
the 0700 folder around them keeps other users out.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import string
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from infra.devstack import services
from infra.devstack.services import LOOPBACK, HealthCheck, ServiceError, ServiceSpec, ServiceStatus

logger = logging.getLogger(__name__)

HEAD = "ray-head"
NODE_SERVICE_PREFIX = "ray-node-"
NODE_ENV = "RLT_RAY_NODE"          # in every node's environment: node_a, node_b, ... ("head" on the head)
ADDRESS_ENV = "RLT_RAY_ADDRESS"    # clients: the GCS address, 127.0.0.1:<port>
AUTH_MODE_ENV, AUTH_TOKEN_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"
TOKEN_FILE = "auth-token"          # in _services/ray-head/
MAX_NODES = len(string.ascii_lowercase)
LABEL_RE = re.compile(r"^node_[a-z]$")
STOP_SIGNAL = "SIGTERM"   # to the leader alone (stop_scope="leader"): see "Stop" above
# the node shuts its processes down at once on SIGTERM, no drain wait (meant for Serve replicas behind a proxy)
STOP_ENV = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
_SUN_PATH_MAX = 107   # bytes of a unix socket path (sun_path, less its NUL)
# what Ray appends to --temp-dir for its longest socket: session_<date>_<time>_<usec>_<pid>/sockets/plasma_store.<n>
_RAY_SOCKET_TAIL = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.99")


class RayClusterError(ServiceError):
    """The local Ray cluster could not be started, reached or stopped; the message says what to do."""


class RayClusterConfig(BaseModel):
    """Shape of the local cluster: ``nodes`` worker nodes beside the head."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nodes: int = Field(ge=1, le=MAX_NODES)
    cpus_per_node: int = Field(1, ge=1, description="Ray CPUs each node offers (how many tasks run at once there)")
    object_store_mib: int = Field(512, ge=100, description="object store of each node (Ray's default: 30% of RAM)")


class RayNodePorts(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    node_manager: int = Field(ge=1, le=65535)
    agent_http: int = Field(ge=1, le=65535)


class RayPorts(BaseModel):
    """The ports we choose for the cluster (Ray picks the others): GCS, Ray-client server, the head's two
    Prometheus ports (dashboard, autoscaler monitor: fixed 44227/44217 in Ray), and per service (head included)
    its node-manager and dashboard-agent HTTP ports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gcs: int = Field(ge=1, le=65535)
    client_server: int = Field(ge=1, le=65535)
    dashboard_metrics: int = Field(ge=1, le=65535)
    autoscaler_metrics: int = Field(ge=1, le=65535)
    nodes: dict[str, RayNodePorts]

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.gcs}"

    def all(self) -> set[int]:
        head = {self.gcs, self.client_server, self.dashboard_metrics, self.autoscaler_metrics}
        return head | {p for n in self.nodes.values() for p in (n.node_manager, n.agent_http)}


class RayNode(BaseModel):
    """One row of the GCS node table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: str
    alive: bool
    head: bool
    label: str | None = Field(description="our custom resource (node_a, ...), None for the head or a foreign node")
    node_manager_port: int
    resources: dict[str, float]


# ---------------------------------------------------------------- names


def node_label(index: int) -> str:
    """``node_a`` for 0, ``node_b`` for 1, ... (the node's custom resource and its RLT_RAY_NODE)."""
    if not 0 <= index < MAX_NODES:
        raise ValueError(f"node index {index} out of range 0..{MAX_NODES - 1}")
    return f"node_{string.ascii_lowercase[index]}"


def node_service(label: str) -> str:
    """``ray-node-a`` for ``node_a``."""
    if not LABEL_RE.match(label):
        raise ValueError(f"not a node label: {label!r} (node_a .. node_z)")
    return NODE_SERVICE_PREFIX + label.removeprefix("node_")


def service_label(name: str) -> str:
    """``node_a`` for ``ray-node-a``; ``head`` for the head."""
    return "head" if name == HEAD else "node_" + name.removeprefix(NODE_SERVICE_PREFIX)


def node_services(n: int) -> list[str]:
    return [node_service(node_label(i)) for i in range(n)]


def services_on_disk(root: str | os.PathLike) -> list[str]:
    """Ray services that have a folder under ``_services/`` (started once), nodes first, head last."""
    top = Path(root) / services.SERVICES_DIR
    with contextlib.suppress(FileNotFoundError):
        nodes = sorted(p.name for p in top.iterdir()
                       if p.is_dir() and p.name.startswith(NODE_SERVICE_PREFIX)
                       and LABEL_RE.match(service_label(p.name)))
        return nodes + ([HEAD] if (top / HEAD).is_dir() else [])
    return []


# ---------------------------------------------------------------- token, env, temp dir


def token_path(root: str | os.PathLike) -> Path:
    return services.service_dir(root, HEAD) / TOKEN_FILE


def cluster_token(root: str | os.PathLike, create: bool = False) -> SecretStr | None:
    """The cluster's token (``_services/ray-head/auth-token``); with ``create`` a random one (``secrets.token_hex(32)``,
    Ray's own format) is made when there is none. None when there is none and ``create`` is False."""
    return services.secret_file(token_path(root), create, lambda: secrets.token_hex(32), "Ray cluster token")


def _secret(token: str | SecretStr) -> str:
    return token.get_secret_value() if isinstance(token, SecretStr) else token


def auth_env(token: str | SecretStr) -> dict[str, str]:
    return {AUTH_MODE_ENV: "token", AUTH_TOKEN_ENV: _secret(token)}


def client_env(address: str, token: str | SecretStr) -> dict[str, str]:
    """What a driver needs: ``RLT_RAY_ADDRESS``, ``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``."""
    return {ADDRESS_ENV: address, **auth_env(token)}


def temp_dir(root: str | os.PathLike, name: str) -> Path:
    """Ray's ``--temp-dir`` for one service (one per node: nodes starting at once in one folder race for the
    same socket names): ``_services/<name>/tmp`` when Ray's socket paths under it fit in a unix socket address,
    else ``/tmp/rlt-ray-<sha256(data root)[:12]>/<head|a|b...>`` (0700; refused unless the folder is ours)."""
    root = Path(root).resolve()
    preferred = services.service_dir(root, name) / "tmp"
    if len(os.fsencode(str(preferred))) + _RAY_SOCKET_TAIL <= _SUN_PATH_MAX:
        services.private_service_dir(root, name)
        return services.private_dir(preferred)
    short = Path("/tmp") / f"rlt-ray-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}"
    with contextlib.suppress(FileExistsError):
        short.mkdir(mode=0o700)
    st = short.lstat()
    if short.is_symlink() or not short.is_dir() or st.st_uid != os.geteuid():
        raise RayClusterError(f"{short} exists but is not a folder of this user: remove it (Ray's session "
                              "files for this data root go there because the data root's path is too long)")
    services.private_dir(short)
    return services.private_dir(short / service_label(name).removeprefix("node_"))


# ---------------------------------------------------------------- ports


def _pick(previous: int | None, running: bool, taken: set[int]) -> int:
    """``previous`` when it is ours to keep (its service runs, or the port is free), else a fresh free port."""
    if previous and previous not in taken and (running or services.port_free(previous)):
        port = previous
    else:
        port = services.free_port(exclude=taken)
    taken.add(port)
    return port


def allocate_ports(names: Sequence[str], previous: RayPorts | None = None, running: Iterable[str] = (),
                   exclude: Iterable[int] = ()) -> RayPorts:
    """Ports for the services ``names`` (head and nodes): previous ones kept when their service runs or they are
    still free, so a restarted cluster answers at the same address; ``exclude`` (the stack's ports) never."""
    running, taken = set(running), set(exclude)
    old = previous.nodes if previous else {}
    head = {field: _pick(getattr(previous, field) if previous else None, HEAD in running, taken)
            for field in ("gcs", "client_server", "dashboard_metrics", "autoscaler_metrics")}
    nodes = {name: RayNodePorts(node_manager=_pick(old[name].node_manager if name in old else None,
                                                   name in running, taken),
                                agent_http=_pick(old[name].agent_http if name in old else None, name in running,
                                                 taken))
             for name in names}
    return RayPorts(**head, nodes=nodes)


# ---------------------------------------------------------------- service specs


def _ray_start(root: str | os.PathLike, name: str, node_ports: RayNodePorts, object_store_mib: int) -> list[str]:
    """``ray start --block`` with the options every service of the cluster shares."""
    return [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
            "--node-manager-port", str(node_ports.node_manager),
            "--dashboard-agent-listen-port", str(node_ports.agent_http),
            "--min-worker-port", "0", "--max-worker-port", "0",
            "--object-store-memory", str(object_store_mib * 1024 * 1024),
            "--temp-dir", str(temp_dir(root, name)), "--disable-usage-stats", "--log-style", "record",
            "--log-color", "false"]


def head_spec(root: str | os.PathLike, cfg: RayClusterConfig, ports: RayPorts, token: str | SecretStr,
              env: Mapping[str, str] | None = None) -> ServiceSpec:
    """The head: GCS on ``ports.gcs``, no CPUs and no GPUs (work runs on the nodes only), no dashboard."""
    argv = [*_ray_start(root, HEAD, ports.nodes[HEAD], cfg.object_store_mib), "--head", "--port", str(ports.gcs),
            "--ray-client-server-port", str(ports.client_server), "--num-cpus", "0", "--num-gpus", "0",
            "--include-dashboard=false"]
    return ServiceSpec(name=HEAD, argv=tuple(argv), cwd=str(services.private_service_dir(root, HEAD)),
                       env={**(env or {}), NODE_ENV: "head", "RAY_USAGE_STATS_ENABLED": "0", **auth_env(token),
                            "DASHBOARD_METRIC_PORT": str(ports.dashboard_metrics),
                            "AUTOSCALER_METRIC_PORT": str(ports.autoscaler_metrics), **STOP_ENV},
                       health=HealthCheck(kind="tcp", port=ports.gcs), stop_signal=STOP_SIGNAL, stop_scope="leader")


def node_spec(root: str | os.PathLike, label: str, address: str, node_ports: RayNodePorts, token: str | SecretStr,
              cfg: RayClusterConfig, env: Mapping[str, str] | None = None, with_token: bool = True,
              resources: Mapping[str, float] | None = None) -> ServiceSpec:
    """A worker node joining the head at ``address`` with ``cfg.cpus_per_node`` CPUs and the custom resource
    ``{label: 1}`` (plus ``resources``, e.g. ``{"vllm_endpoint_8000": 1}`` to advertise a vLLM server: see
    infra/engine/endpoints.discover); ``env`` (the stack's client environment) and ``RLT_RAY_NODE=<label>`` in its
    environment. ``with_token=False`` starts it without the cluster's token (token auth off on its side): the head
    refuses it."""
    name = node_service(label)
    argv = [*_ray_start(root, name, node_ports, cfg.object_store_mib), "--address", address,
            "--num-cpus", str(cfg.cpus_per_node), "--resources", json.dumps({**(resources or {}), label: 1})]
    auth = auth_env(token) if with_token else {AUTH_MODE_ENV: "disabled", AUTH_TOKEN_ENV: ""}
    return ServiceSpec(name=name, argv=tuple(argv), cwd=str(services.private_service_dir(root, name)),
                       env={**(env or {}), NODE_ENV: label, "RAY_USAGE_STATS_ENABLED": "0", **auth, **STOP_ENV},
                       health=HealthCheck(kind="tcp", port=node_ports.node_manager), stop_signal=STOP_SIGNAL,
                       stop_scope="leader")


def cluster_specs(root: str | os.PathLike, cfg: RayClusterConfig, ports: RayPorts, token: str | SecretStr,
                  env: Mapping[str, str] | None = None) -> dict[str, ServiceSpec]:
    """Head first, then ``cfg.nodes`` nodes (``ports`` must hold each one's ports)."""
    specs = {HEAD: head_spec(root, cfg, ports, token, env)}
    for name in node_services(cfg.nodes):
        specs[name] = node_spec(root, service_label(name), ports.address, ports.nodes[name], token, cfg, env)
    return specs


# ---------------------------------------------------------------- the GCS node table

_NODES_SCRIPT = r"""
import json, socket, sys, time
address, want, labels, timeout_s = sys.argv[1], int(sys.argv[2]), set(json.loads(sys.argv[3])), float(sys.argv[4])
host, port = address.rsplit(":", 1)
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
deadline, client, nodes, error = time.monotonic() + timeout_s, None, [], None
while True:
    try:
        socket.create_connection((host, int(port)), timeout=2).close()   # GcsClient blocks 40 s on a closed port
        client = client or GcsClient(address=address)
        nodes, error = [], None
        for info in client.get_all_node_info(timeout=5).values():
            res = {k: float(v) for k, v in info.resources_total.items()}
            label = next((k for k in sorted(res) if k.startswith("node_") and len(k) == 6), None)
            nodes.append({"node_id": info.node_id.hex(), "alive": info.state == 0, "head": bool(info.is_head_node),
                          "label": label, "node_manager_port": info.node_manager_port, "resources": res})
    except AuthenticationError as exc:
        print(json.dumps({"nodes": [], "error": "auth", "detail": str(exc)[:300]}))
        sys.exit(0)
    except Exception as exc:
        client, error = None, f"{type(exc).__name__}: {exc}"[:300]
    alive = [n for n in nodes if n["alive"] and not n["head"]]
    if error is None and len(alive) >= want and labels <= {n["label"] for n in alive}:
        break
    if time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps({"nodes": nodes, "error": error}))
"""


def token_hint(address: str, what: str) -> str:
    return (f"the Ray cluster at {address} refused {what}: it requires its token (RAY_AUTH_MODE=token, "
            "RAY_AUTH_TOKEN): eval \"$(rlt stack env)\" sets RAY_AUTH_TOKEN (the local stack keeps it in "
            f"_services/{HEAD}/{TOKEN_FILE})")


def _token_or_env(token: str | SecretStr | None, address: str) -> str:
    value = _secret(token) if token is not None else os.environ.get(AUTH_TOKEN_ENV, "")
    if not value:
        raise RayClusterError(token_hint(address, "a client without RAY_AUTH_TOKEN"))
    return value


def _node_table(address: str, token: str, want: int, labels: Sequence[str], timeout_s: float) -> list[RayNode]:
    """Poll the GCS node table (in a subprocess: Ray reads the token once per process) until ``want`` alive
    nodes besides the head, ``labels`` among them, or ``timeout_s``; the last table read."""
    env = {**os.environ, **auth_env(token), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    argv = [sys.executable, "-c", _NODES_SCRIPT, address, str(want), json.dumps(list(labels)), str(timeout_s)]
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s + 60,  # noqa: S603
                              stdin=subprocess.DEVNULL)
        reply = json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        raise RayClusterError(f"could not read the node table of the Ray cluster at {address}: {exc}") from exc
    if reply.get("error") == "auth":
        raise RayClusterError(token_hint(address, "the node-table query") + f" ({reply.get('detail')})")
    if reply.get("error") and not reply["nodes"]:
        raise RayClusterError(f"the Ray cluster at {address} does not answer: {reply['error']}")
    return [RayNode(**n) for n in reply["nodes"]]


def query_nodes(address: str, token: str | SecretStr | None = None, timeout_s: float = 10.0) -> list[RayNode]:
    """The cluster's node table (dead nodes included), read with ``token`` (default: $RAY_AUTH_TOKEN)."""
    return _node_table(address, _token_or_env(token, address), 0, (), timeout_s)


def wait_nodes(address: str, n: int, timeout_s: float = 120.0, *, token: str | SecretStr | None = None,
               labels: Sequence[str] = ()) -> list[RayNode]:
    """Wait until ``n`` worker nodes (the head not counted), every one of ``labels`` among them, are alive in the
    cluster's node table; returns those alive worker nodes. RayClusterError on timeout or a refused token."""
    nodes = _node_table(address, _token_or_env(token, address), n, labels, timeout_s)
    alive = [node for node in nodes if node.alive and not node.head]
    missing = sorted(set(labels) - {node.label for node in alive})
    if len(alive) < n or missing:
        raise RayClusterError(f"the Ray cluster at {address} has {len(alive)} live worker node(s) after "
                              f"{timeout_s:.0f} s, {n} wanted" + (f"; missing {', '.join(missing)}" if missing else ""))
    return alive


# ---------------------------------------------------------------- start / stop / status


def _refused_for_token(root: str | os.PathLike, name: str) -> bool:
    tail = services.log_tail(root, name, lines=80)
    return "InvalidAuthToken" in tail or "AuthenticationError" in tail


def _await(root: str | os.PathLike, specs: Mapping[str, ServiceSpec], pids: Mapping[str, int], address: str,
           timeout_s: float) -> dict[str, float]:
    """``services.wait_all_healthy`` with a refused token named as such."""
    try:
        return services.wait_all_healthy(root, {n: (specs[n], pids[n]) for n in pids}, timeout_s)
    except ServiceError as err:
        refused = [n for n in pids if not services.pid_alive(pids[n]) and _refused_for_token(root, n)]
        if refused:
            raise RayClusterError(token_hint(address, f"node {refused[0]}") +
                                  f"; log: {services.log_path(root, refused[0])}") from err
        raise


def _check_reusable(root: str | os.PathLike, spec: ServiceSpec) -> None:
    if services.read_meta(root, spec.name).get("argv") != list(spec.argv):
        raise RayClusterError(f"{spec.name} runs with other settings than requested (log: "
                              f"{services.log_path(root, spec.name)}): run `rlt stack down` first")


def start_node(root: str | os.PathLike, label: str, address: str, token: str | SecretStr, cfg: RayClusterConfig,
               env: Mapping[str, str] | None = None, *, node_ports: RayNodePorts | None = None,
               with_token: bool = True, timeout_s: float = 120.0, grace_s: float = 10.0,
               resources: Mapping[str, float] | None = None) -> float:
    """Start one node joining the cluster at ``address`` and wait until the node table lists it alive with its
    resource; returns seconds to healthy. ``with_token=False``: started without the token, it is refused, which
    surfaces as a RayClusterError naming the token (within ~25 s). A failed node is stopped again."""
    name = node_service(label)
    if node_ports is None:
        manager = services.free_port()
        node_ports = RayNodePorts(node_manager=manager, agent_http=services.free_port(exclude={manager}))
    spec = node_spec(root, label, address, node_ports, token, cfg, env, with_token=with_token, resources=resources)
    pid = services.start(root, spec)
    try:
        ready = _await(root, {name: spec}, {name: pid}, address, timeout_s)[name]
        wait_nodes(address, 1, timeout_s, token=token, labels=[label])
    except BaseException:
        services.stop(root, name, grace_s)
        raise
    return ready


def start(root: str | os.PathLike, cfg: RayClusterConfig, ports: RayPorts, token: str | SecretStr,
          env: Mapping[str, str] | None = None, timeout_s: float = 180.0, grace_s: float = 10.0) -> dict[str, float]:
    """Start (or reuse) the head and ``cfg.nodes`` nodes; returns service -> seconds to healthy for those it
    started, once the node table lists every node alive with its resource.

    Running services started with the same command line are reused; nodes beyond ``cfg.nodes``, or services
    running with other settings, are an error (``rlt stack down`` first). Nodes whose head is gone are stopped
    and started again. A failure or Ctrl-C stops what this call started.
    """
    specs = cluster_specs(root, cfg, ports, token, env)
    running = {n for n in services_on_disk(root) if services.running_pid(root, n) is not None}
    if extra := sorted(running - set(specs)):
        raise RayClusterError(f"the Ray cluster runs more nodes than the {cfg.nodes} requested ({', '.join(extra)}): "
                              "run `rlt stack down` first")
    if HEAD not in running:
        for name in sorted(running):   # orphans of a dead head
            services.stop(root, name, grace_s)
        running = set()
    for name in running:
        _check_reusable(root, specs[name])
    started: dict[str, int] = {}
    try:
        ready: dict[str, float] = {}
        if HEAD not in running:
            started[HEAD] = services.start(root, specs[HEAD])
            ready |= _await(root, specs, {HEAD: started[HEAD]}, ports.address, timeout_s)
        nodes = {n: services.start(root, specs[n]) for n in specs if n != HEAD and n not in running}
        started |= nodes
        ready |= _await(root, specs, nodes, ports.address, timeout_s)
        labels = [service_label(n) for n in specs if n != HEAD]
        t0 = time.monotonic()
        wait_nodes(ports.address, len(labels), timeout_s, token=token, labels=labels)
        logger.info("Ray cluster at %s: %d node(s) alive in the GCS node table (+%.1f s)", ports.address,
                    len(labels), time.monotonic() - t0)
    except BaseException:
        for name in reversed(list(started)):
            services.stop(root, name, grace_s)
        raise
    for name in specs:
        logger.info("%s: %s", name, f"started, healthy in {ready[name]:.1f} s" if name in ready
                    else "already running, reused")
    return ready


def _group_members(pgid: int) -> list:
    import psutil

    out = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
    return out


def _processes(root: str | os.PathLike, name: str) -> list:
    """Live processes of a running Ray service (psutil objects, leader first): the process group of its ``ray
    start`` leader (proven ours by ``services.running_pid``) and every descendant of those: Ray's workers are the
    raylet's children but lead process groups of their own. Their /proc environ cannot prove them ours (Ray
    rewrites their process titles over it), the tree can while the raylet lives."""
    import psutil

    leader = services.running_pid(root, name)
    if leader is None:
        return []
    found = {p.pid: p for p in _group_members(leader)}
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            found.update({c.pid: c for c in proc.children(recursive=True)})
    live = []
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
    return sorted(live, key=lambda p: (p.pid != leader, p.pid))


def node_pids(root: str | os.PathLike, name: str) -> list[int]:
    """Pids of a running Ray service (``ray-head``, ``ray-node-a``, ...): its ``ray start`` leader first, its
    process group (raylet, agents, the GCS on the head) and Ray's workers. [] when it does not run. Signal them to
    simulate a node failure (``kill_node``)."""
    return [p.pid for p in _processes(root, name)]


def kill_node(root: str | os.PathLike, name: str, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` (default SIGKILL: a crashed node) to every process of a Ray service at once; returns their pids."""
    import psutil

    procs = _processes(root, name)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)   # psutil checks the pid still is that process
    logger.info("sent %s to %s: %d process(es)", signal.Signals(sig).name, name, len(procs))
    return [p.pid for p in procs]


def _sweep(name: str, procs: Sequence, grace_s: float) -> int:
    """End what a stopped service left behind (Ray workers, outside its process group): they exit by themselves
    once their raylet is gone; SIGKILL after ``grace_s``. Returns how many had to be killed."""
    import psutil

    def alive() -> list:
        out = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
        return out

    deadline = time.monotonic() + grace_s
    while (left := alive()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        logger.warning("%s: %d process(es) outlived their raylet; sending SIGKILL", name, len(left))
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
    return len(left)


def stop(root: str | os.PathLike, grace_s: float = 10.0) -> dict[str, str]:
    """Stop every Ray service found under ``root`` (nodes first, then the head) and whatever they left behind.
    Returns service -> how it ended (see ``services.stop``)."""
    outcome = {}
    for name in services_on_disk(root):
        before = _processes(root, name)
        outcome[name] = services.stop(root, name, grace_s)
        _sweep(name, before, grace_s)
    return outcome


def status(root: str | os.PathLike, ports: RayPorts | None, names: Sequence[str] | None = None) -> list[ServiceStatus]:
    """Head and nodes (``names``, default those on disk): running from their pid files, healthy from one read of
    the GCS node table (the head: listed alive; a node: listed alive with its resource)."""
    names = list(names) if names is not None else [HEAD, *[n for n in services_on_disk(root) if n != HEAD]]
    rows = [services.status(root, name) for name in names]
    table: dict[str, RayNode] = {}
    token = cluster_token(root)
    if ports is not None and token is not None and services.running_pid(root, HEAD) is not None:
        try:
            nodes = query_nodes(ports.address, token)
            table = {("head" if n.head else n.label or n.node_id): n for n in nodes if n.alive}
        except RayClusterError as err:
            logger.warning("Ray node table not readable: %s", err)
    out = []
    for row in rows:
        label = service_label(row.name)
        node = table.get(label)
        healthy = row.running and node is not None and (label == "head" or node.resources.get(label, 0) >= 1)
        url = None
        if ports is not None:
            url = (ports.address if row.name == HEAD else
                   f"tcp://{LOOPBACK}:{ports.nodes[row.name].node_manager}" if row.name in ports.nodes else None)
        out.append(row.model_copy(update={"healthy": healthy, "url": url}))
    return out
