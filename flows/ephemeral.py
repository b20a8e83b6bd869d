"""This process's temporary Prefect server, proven to be its own.

With no ``PREFECT_API_URL`` Prefect starts a temporary API server for the process: it picks a port that binds
free, starts uvicorn on it in a subprocess, and polls ``/api/health`` until it answers. When several runs start at
once on one machine (overlapping nights, the overlap test's 4 ``rlt factory`` processes), another process's
temporary server can take that port between the check and uvicorn's bind: our uvicorn then fails to bind, but the
health poll is answered by the other process's server and the run goes on talking to it, until that process ends
and stops its server. Seen in the slow suite: a stage failed with ``ConcurrencySlotAcquisitionError`` (the API
gone), then the flow's final state with ``Connection refused``.

:func:`own_ephemeral_server` starts the server before a flow does and checks that the port is listened on by our
own uvicorn child; if that child exited (or never listens), it stops it and starts again on another port.
"""
from __future__ import annotations

import logging
import time

from data_contracts.errors import ExpectedError

log = logging.getLogger("rlt")
ATTEMPTS = 5


class EphemeralServerError(ExpectedError, RuntimeError):
    """No temporary Prefect server of this process's own could be started."""


def own_ephemeral_server(attempts: int = ATTEMPTS, listen_wait_s: float = 120.0) -> int | None:
    """Start this process's temporary Prefect server (only when no ``PREFECT_API_URL`` is set and ephemeral mode is
    on) and make sure the port Prefect talks to is our own child's. Returns the port (None: not ephemeral)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    for attempt in range(1, attempts + 1):
        server = SubprocessASGIServer()   # the instance Prefect's own clients use (port key None)
        server.start()
        proc = server.server_process
        if proc is not None and _listens(proc, server.port, listen_wait_s):
            return server.port
        log.warning("temporary Prefect server: port %s answered, but not from this process's server (another "
                    "process's took the port first); starting ours on another port (%d of %d)", server.port, attempt,
                    attempts)
        server.stop()
    raise EphemeralServerError(f"could not start a temporary Prefect server of this process's own in {attempts} "
                               "tries; set PREFECT_API_URL to a running server (`rlt stack up`) instead")


def _listens(proc, port: int | None, wait_s: float) -> bool:
    """Whether the uvicorn child ``proc`` (a Popen) listens on ``port``; waits while it is alive and starting."""
    import psutil

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:   # exited: its bind failed
            return False
        try:
            conns = psutil.Process(proc.pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            return False
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            return True
        time.sleep(0.1)
    return False
