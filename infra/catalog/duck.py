"""DuckDB connections with the DuckLake, SQLite, PostgreSQL and httpfs extensions, loaded offline.

No machine here can download DuckDB extensions, so they come from the PyPI wheels
``duckdb-extension-<name>`` (signed binaries, pinned to the DuckDB version): each is ``INSTALL``ed once from
its wheel file into a private extension directory, and autoinstall is off, so DuckDB never reaches for the
network. S3 access (DuckLake data files, artifact parts) goes through httpfs with a secret built from the
standard ``AWS_*`` variables; the secret lives in the connection only (never logged or stored).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
from urllib.parse import urlparse

import duckdb

from data_contracts.errors import ExpectedError
from infra import settings

log = logging.getLogger(__name__)

EXTENSIONS = {"ducklake": "ducklake", "sqlite": "sqlite_scanner", "postgres": "postgres_scanner",
              "httpfs": "httpfs"}


class ExtensionError(ExpectedError, RuntimeError):
    """A DuckDB extension wheel is missing or does not match the installed DuckDB."""


def extension_dir() -> str:
    d = os.path.join(os.path.expanduser("~"), ".cache", "rlt-factory", "duckdb-extensions")
    os.makedirs(d, exist_ok=True)
    return d


def _wheel_binary(name: str) -> str:
    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    if spec is None or not spec.origin:
        raise ExtensionError(f"the DuckDB extension {name!r} is not installed: pip install "
                             f"duckdb-extension-{name}=={duckdb.__version__}")
    path = os.path.join(os.path.dirname(spec.origin), "extensions", f"v{duckdb.__version__}",
                        f"{name}.duckdb_extension")
    if not os.path.isfile(path):
        raise ExtensionError(f"duckdb-extension-{name} has no binary for DuckDB {duckdb.__version__} ({path}); "
                             f"install duckdb-extension-{name}=={duckdb.__version__}")
    return path


def _install_missing(con: duckdb.DuckDBPyConnection, names: tuple[str, ...]) -> None:
    installed = {r[0] for r in con.execute("SELECT extension_name FROM duckdb_extensions() WHERE installed")
                 .fetchall()}
    missing = [n for n in names if EXTENSIONS[n] not in installed]
    if not missing:
        return
    from infra.catalog.locks import file_mutex

    with file_mutex(os.path.join(extension_dir(), ".install.lock")):  # one installer at a time
        for n in missing:
            con.execute(f"INSTALL '{_wheel_binary(n)}'")
            log.debug("installed DuckDB extension %s from its wheel", n)


def connect(extensions: tuple[str, ...] = ("ducklake", "sqlite", "postgres", "httpfs"),
            memory_limit: str | None = None, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the given extensions installed from their wheels and loaded."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "extension_directory": extension_dir(), "autoinstall_known_extensions": False,
        "autoload_known_extensions": True}
    if memory_limit:
        config["memory_limit"] = memory_limit
    if threads:
        config["threads"] = threads
    con = duckdb.connect(config=config)
    _install_missing(con, extensions)
    for n in extensions:
        con.execute(f"LOAD {EXTENSIONS[n]}")
    return con


def add_s3_secret(con: duckdb.DuckDBPyConnection, root: str, name: str = "rlt_s3") -> None:
    """Let DuckDB read and write ``s3://`` paths under ``root`` with the ``AWS_*`` environment."""
    if not root.startswith(("s3://", "s3a://")):
        return
    bucket = urlparse(root).netloc
    opts = settings.s3_storage_options()
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    parts = ["TYPE s3", f"SCOPE 's3://{bucket}'"]
    if key and secret:
        parts += [f"KEY_ID '{_q(key)}'", f"SECRET '{_q(secret)}'"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            parts.append(f"SESSION_TOKEN '{_q(os.environ['AWS_SESSION_TOKEN'])}'")
    else:
        parts.append("PROVIDER credential_chain")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    parts.append(f"REGION '{_q(region)}'")
    endpoint = opts.get("endpoint_url")
    if endpoint:
        u = urlparse(endpoint)
        parts += [f"ENDPOINT '{_q(u.netloc or u.path)}'", "URL_STYLE 'path'",
                  f"USE_SSL {'true' if u.scheme == 'https' else 'false'}"]
    con.execute(f"CREATE OR REPLACE SECRET {name} ({', '.join(parts)})")


def _q(s: str) -> str:
    return s.replace("'", "''")


# settings that hold credentials: httpfs copies AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN from the
# environment into s3_* settings at load, where current_setting() / duckdb_settings() hand them out in clear
_CREDENTIAL_SETTING = re.compile(r"^(s3|gcs|r2|azure|http|hf)_\w*(secret|key_id|access_key|session_token|password|"
                                 r"token|connection_string)")


def clear_credential_settings(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Empty every credential-like setting of ``con`` (the connection keeps its redacted secrets, which is how it
    reaches S3); returns the names cleared. For connections that run user queries."""
    names = [r[0] for r in con.execute("SELECT name FROM duckdb_settings() WHERE input_type = 'VARCHAR' AND value "
                                       "IS NOT NULL AND value <> ''").fetchall() if _CREDENTIAL_SETTING.search(r[0])]
    for name in names:
        con.execute(f"SET {name} = ''")
    return names
