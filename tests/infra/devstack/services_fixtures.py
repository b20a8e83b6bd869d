"""Fixtures that start real local services; loaded through ``pytest_plugins`` in tests/conftest.py.

``seaweed_s3`` runs one ``weed mini`` (SeaweedFS S3 gateway) per test session in a temporary
folder on free loopback ports, with a bucket created, and stops it (SIGTERM, then SIGKILL)
at the end. ``postgres_server`` runs one PostgreSQL server the same way (the stack's own code: a
non-root user under root, random passwords, the catalog's writer and reader roles) and yields its URLs;
``postgres_url`` is the writer's (what ``RLT_CATALOG_URL`` holds on a stack). ``mlflow_server``
runs a real ``mlflow server`` (sqlite backend, proxied artifacts in a local folder) per test, as a
``MlflowServer`` the test may SIGKILL and start again on the same port and store. Tests using
them should carry ``@pytest.mark.services``.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from infra.devstack import services, stack


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory):
    """A running SeaweedFS S3 endpoint.

    Yields a dict: ``endpoint_url``, ``key``, ``secret``, ``bucket``, ``region``, ``root`` (the
    service folder) and ``env`` (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_DEFAULT_REGION) ready for ``monkeypatch.setenv``. Only that key pair is accepted.
    """
    root = tmp_path_factory.mktemp("seaweedfs")
    creds = stack.S3Credentials(key="rlt-test", secret=SecretStr(f"test-{secrets.token_hex(8)}"))
    ports = stack.allocate_ports(stack.StackConfig())
    spec = stack.seaweedfs_spec(root, ports, creds)
    services.start_and_wait(root, spec, timeout_s=120.0)
    try:
        endpoint, bucket, region = stack.s3_endpoint(ports), "rlt-test", "us-east-1"
        stack.ensure_bucket(endpoint, creds, bucket, region)
        secret = creds.secret.get_secret_value()
        yield {
            "endpoint_url": endpoint, "key": creds.key, "secret": secret, "bucket": bucket,
            "region": region, "root": str(root),
            "env": {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": creds.key,
                    "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": region},
        }
    finally:
        services.stop(root, spec.name, grace_s=10.0)
        stack.remove_weed_sockets(ports)


def drop_postgres_cluster(root, cluster_dir) -> None:
    """Remove a cluster that went outside ``root`` (to /var/lib/rlt-postgres/<hash>, because the
    PostgreSQL user could not reach the 0700 tmp folder): pytest cleans tmp folders, not that."""
    cluster_dir, root = Path(cluster_dir).resolve(), Path(root).resolve()
    if not cluster_dir.is_relative_to(root):
        shutil.rmtree(cluster_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A running PostgreSQL server (only that service), set up as ``rlt stack up`` sets it up: the database
    ``rlt_catalog`` and its roles (infra/catalog/roles.py). Yields ``{"writer", "reader", "admin"}`` URLs of
    ``rlt_catalog`` (``admin``: the cluster's superuser, for tests that create databases) and ``root``. Stopped
    (fast shutdown) at the end of the session."""
    root = tmp_path_factory.mktemp("postgres")
    cluster = stack.prepare_postgres(root)
    spec = stack.postgres_spec(cluster, services.free_port())
    services.start_and_wait(root, spec, timeout_s=120.0)
    try:
        port = spec.health.port
        env = stack.ensure_catalog(root, port, timeout_s=60.0,
                                   alive=lambda: services.running_pid(root, spec.name) is not None)
        yield {"writer": env["RLT_CATALOG_URL"], "reader": env["RLT_CATALOG_READER_URL"], "root": root,
               "admin": stack.catalog_url(port, stack.postgres_password(root), user=stack.PG_SUPERUSER)}
    finally:
        services.stop(root, spec.name, grace_s=10.0)
        drop_postgres_cluster(root, cluster.cluster_dir)


def new_catalog_database(server: dict, prefix: str = "rlt_cat") -> dict[str, str]:
    """A fresh database on ``postgres_server`` set up like the stack's catalog (owned by the writer, readable by
    the reader): ``{"writer", "reader"}`` URLs of it, for a test that must not share ``rlt_catalog``."""
    from urllib.parse import unquote, urlparse

    import psycopg

    from infra.catalog import roles as pg_roles

    db = f"{prefix}_{time.time_ns() % 10**12}"
    base = server["admin"].rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as pg:
        pg.execute(f"CREATE DATABASE {db}")
    u = urlparse(server["admin"])
    admin = {"host": u.hostname, "port": u.port, "user": u.username, "password": unquote(u.password or "")}
    passwords = {k: unquote(urlparse(server[k]).password or "") for k in ("writer", "reader")}
    pg_roles.ensure(admin, db, passwords["writer"], passwords["reader"])
    return {k: server[k].rsplit("/", 1)[0] + f"/{db}" for k in ("writer", "reader")}


@pytest.fixture(scope="session")
def postgres_url(postgres_server):
    """``postgresql://rlt_writer:<password>@127.0.0.1:<port>/rlt_catalog`` of ``postgres_server``."""
    return postgres_server["writer"]


class MlflowServer:
    """A real ``mlflow server`` on a free loopback port: sqlite backend and proxied artifacts in ``folder``,
    started like the stack's (infra/devstack/stack.py ``mlflow_spec``, one worker, no job workers)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.port = services.free_port()
        self.spec = services.ServiceSpec(
            name="mlflow", env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            argv=(sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                  f"sqlite:///{self.folder / 'mlflow.db'}", "--serve-artifacts", "--artifacts-destination",
                  str(self.folder / "artifacts"), "--host", services.LOOPBACK, "--port", str(self.port),
                  "--workers", "1"),
            health=services.HealthCheck(port=self.port, path="/health"))

    @property
    def uri(self) -> str:
        return f"http://{services.LOOPBACK}:{self.port}"

    def start(self, timeout_s: float = 120.0) -> float:
        """Start (again, same port and store); seconds until healthy."""
        return services.start_and_wait(self.folder, self.spec, timeout_s=timeout_s)

    def kill(self) -> None:
        """SIGKILL the server's whole process group (no shutdown at all), and wait until it is gone."""
        pid = services.running_pid(self.folder, "mlflow")
        assert pid is not None, "mlflow server is not running"
        os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while services._group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        services.stop(self.folder, "mlflow", grace_s=1.0)   # clears the pid file (nothing left to signal)

    def stop(self) -> None:
        services.stop(self.folder, "mlflow", grace_s=5.0)


@pytest.fixture
def mlflow_server(tmp_path_factory):
    """A running ``MlflowServer`` for one test (stopped at its end, whatever the test did to it)."""
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
