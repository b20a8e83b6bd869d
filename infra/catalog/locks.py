"""Crash-safe named locks: one run computes a key at a time, and a killed holder never blocks anyone.

- One machine: ``fcntl.flock`` on ``<dir>/<name>.lock``. The kernel drops the lock when the holder's process
  ends, SIGKILL included. Each lease opens the file anew, so two threads of one process exclude each other too.
- Many machines: PostgreSQL session advisory locks on the catalog's server, one connection per lease; the server
  drops them when the connection ends (a dead process closes its socket).

A holder writes who it is (run id, host, pid, since) where others can read it: into the lock file, or as the
lock connection's ``application_name``. Waiters log that, so "waiting for run X on host Y" is visible.
Prefect's built-in lock managers were not used: their locks have no expiry, so a SIGKILLed holder blocks the
key forever (measured, see environment.md).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import struct
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, Protocol, cast

from data_contracts.errors import ExpectedError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


class LockTimeout(ExpectedError, TimeoutError):
    """A lock was not acquired within the requested time."""


class Lease(Protocol):
    name: str

    def release(self) -> None: ...


class Locks(Protocol):
    def try_acquire(self, name: str, owner: dict[str, Any]) -> Lease | None: ...

    def holder(self, name: str) -> dict[str, Any] | None: ...


@contextlib.contextmanager
def file_mutex(path: str | os.PathLike[str], shared: bool = False) -> Iterator[None]:
    """Hold an flock on ``path`` (created if missing) for the duration of the block."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def owner_info(run_id: str = "") -> dict[str, Any]:
    return {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return (f"run {holder.get('run_id') or '?'} (host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"since {holder.get('since', '?')})")


@contextlib.contextmanager
def hold(locks: Locks, name: str, owner: dict[str, Any], *,
         on_wait: Callable[[dict[str, Any] | None], None] | None = None,
         poll_s: float = 0.2, timeout_s: float | None = None) -> Iterator[Lease]:
    """Block until ``name`` is ours (calling ``on_wait(holder)`` once when someone else has it); release after."""
    lease = acquire(locks, name, owner, on_wait=on_wait, poll_s=poll_s, timeout_s=timeout_s)
    try:
        yield lease
    finally:
        lease.release()


def acquire(locks: Locks, name: str, owner: dict[str, Any], *,
            on_wait: Callable[[dict[str, Any] | None], None] | None = None,
            poll_s: float = 0.2, timeout_s: float | None = None) -> Lease:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    told = False
    delay = min(poll_s, 0.05)
    while True:
        lease = locks.try_acquire(name, owner)
        if lease is not None:
            return lease
        if not told:
            told = True
            if on_wait is not None:
                on_wait(locks.holder(name))
        if deadline is not None and time.monotonic() > deadline:
            raise LockTimeout(f"lock {name!r} still held by {describe(locks.holder(name))} after {timeout_s}s")
        time.sleep(delay)
        delay = min(delay * 2, poll_s)


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return keep[:80] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


class _FileLease:
    name: str
    _fh: IO[str] | None

    def __init__(self, name: str, fh: IO[str]):
        self.name, self._fh = name, fh

    def release(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.truncate(0)
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class FileLocks:
    """flock-based locks in one folder (one machine; the folder must be local)."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, _safe(name) + ".lock")

    def try_acquire(self, name: str, owner: dict[str, Any]) -> _FileLease | None:
        fh = open(self.path(name), "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        fh.seek(0)
        fh.truncate(0)
        fh.write(json.dumps(owner))
        fh.flush()
        return _FileLease(name, fh)

    def holder(self, name: str) -> dict[str, Any] | None:
        """Who holds ``name`` now (None if nobody does)."""
        path = self.path(name)
        if not os.path.exists(path):
            return None
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                try:
                    return json.loads(fh.read() or "{}") or {"run_id": "?"}
                except ValueError:
                    return {"run_id": "?"}
            fcntl.flock(fh, fcntl.LOCK_UN)
            return None


def _pg_keys(name: str) -> tuple[int, int]:
    """Two signed 32-bit ints for ``pg_advisory_lock(int, int)``: a namespace and the name's hash."""
    ns = struct.unpack(">i", hashlib.sha256(b"rlt-factory").digest()[:4])[0]
    key = struct.unpack(">i", hashlib.sha256(name.encode()).digest()[:4])[0]
    return ns, key


class _PgLease:
    name: str
    _conn: psycopg.Connection[Any] | None

    def __init__(self, name: str, conn: psycopg.Connection[Any]):
        self.name, self._conn = name, conn

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute("SELECT pg_advisory_unlock(%s, %s)", _pg_keys(self.name))
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class PgLocks:
    """PostgreSQL session advisory locks (many machines). ``dsn`` is a libpq URL or key=value string."""

    def __init__(self, dsn: str):
        self.dsn = dsn

    def _connect(self, app: str) -> psycopg.Connection[Any]:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True, application_name=app[:63], connect_timeout=10)

    def try_acquire(self, name: str, owner: dict[str, Any]) -> _PgLease | None:
        app = f"rlt {owner.get('run_id', '')} {owner.get('host', '')}:{owner.get('pid', '')}"
        conn = self._connect(app)
        try:
            # a SELECT of one function call always returns one row
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", _pg_keys(name)).fetchone()
            got = cast("tuple[Any, ...]", row)[0]
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return None
        return _PgLease(name, conn)

    def holder(self, name: str) -> dict[str, Any] | None:
        ns, key = _pg_keys(name)
        with self._connect("rlt lock probe") as conn:
            row = conn.execute(
                "SELECT a.application_name, a.client_addr::text, a.backend_start::text FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = %s::oid AND l.objid = %s::oid AND l.objsubid = 2",
                (ns & 0xFFFFFFFF, key & 0xFFFFFFFF)).fetchone()
        if row is None:
            return None
        parts = (row[0] or "").split(" ")
        run_id = parts[1] if len(parts) > 1 else "?"
        host, _, pid = (parts[2] if len(parts) > 2 else "?").partition(":")
        return {"run_id": run_id, "host": host, "pid": pid, "since": row[2], "client": row[1]}
