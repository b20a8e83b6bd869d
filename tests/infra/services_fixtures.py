"""Fixtures that start real local services; loaded through ``pytest_plugins`` in tests/conftest.py.

``seaweed_s3`` runs one ``weed mini`` (SeaweedFS S3 gateway) per test session in a temporary
folder on free loopback ports, with a bucket created, and stops it (SIGTERM, then SIGKILL)
at the end. ``postgres_url`` runs one PostgreSQL server the same way (the stack's own code: a
non-root user under root, a random password) and yields its ``postgresql://`` URL. ``mlflow_server``
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

from infra import services, stack


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
def postgres_url(tmp_path_factory):
    """A running PostgreSQL server (only that service), for a DuckLake catalog or any client.

    Yields ``postgresql://rlt:<password>@127.0.0.1:<port>/rlt_catalog``; the database exists
    and answered a query. Stopped (fast shutdown) at the end of the session.
    """
    root = tmp_path_factory.mktemp("postgres")
    cluster = stack.prepare_postgres(root)
    password = stack.postgres_password(root)
    spec = stack.postgres_spec(cluster, services.free_port())
    services.start_and_wait(root, spec, timeout_s=120.0)
    try:
        port = spec.health.port
        stack.ensure_catalog_database(port, password, timeout_s=60.0,
                                      alive=lambda: services.running_pid(root, spec.name) is not None)
        yield stack.catalog_url(port, password)
    finally:
        services.stop(root, spec.name, grace_s=10.0)
        drop_postgres_cluster(root, cluster.cluster_dir)


class MlflowServer:
    """A real ``mlflow server`` on a free loopback port: sqlite backend and proxied artifacts in ``folder``,
    started like the stack's (infra/stack.py ``mlflow_spec``, one worker, no job workers)."""

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
