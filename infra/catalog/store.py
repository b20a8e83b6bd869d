"""One fsspec-based store for every artifact: a local folder by default, S3 through s3fs.

Writes are atomic per file (local: write to a temporary name, then rename; S3: a PUT is atomic), so a
reader never sees half a file. Whole-artifact atomicity comes from the manifest: an artifact exists only
once its manifest record is written, and that record lists the exact part files it is made of.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import uuid
from typing import Any, Iterator, cast

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from infra import faults, settings

log = logging.getLogger(__name__)


class Store:
    """A root folder on some filesystem, with the few operations the factory needs."""

    def __init__(self, root: str | None = None, storage_options: dict[str, Any] | None = None):
        self.root = settings.data_root(root)
        if settings.is_remote(self.root):
            protocol = self.root.split("://", 1)[0]
            opts = dict(settings.s3_storage_options() if protocol in ("s3", "s3a") else {})
            opts.update(storage_options or {})
            self.fs = fsspec.filesystem(protocol, **opts)
            self.local = False
        else:
            self.root = self.root.removeprefix("file://")
            self.fs = fsspec.filesystem("file", auto_mkdir=True)
            self.local = True
            os.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    # -- paths ------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def rel(self, path: str) -> str:
        return path.removeprefix(self.root).lstrip("/")

    def exists(self, path: str) -> bool:
        return cast(bool, self.fs.exists(path))

    def ls(self, path: str) -> list[str]:
        try:
            return sorted(self._full(p) for p in self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []

    def glob(self, pattern: str) -> list[str]:
        return sorted(self._full(p) for p in self.fs.glob(pattern))

    def _full(self, p: str) -> str:
        # s3fs returns paths without the protocol
        if not self.local and "://" not in p:
            return f"{self.root.split('://', 1)[0]}://{p}"
        return p

    def rm(self, path: str, recursive: bool = False) -> None:
        if self.fs.exists(path):
            self.fs.rm(path, recursive=recursive)

    # -- bytes --------------------------------------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            faults.point("store.write.tmp")   # bytes on disk under a temporary name, not yet in place
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)
        faults.point("store.write")

    def read_bytes(self, path: str) -> bytes:
        return cast(bytes, self.fs.cat_file(path))

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    # -- tables -------------------------------------------------------------------------------------
    def write_parquet(self, path: str, table: pa.Table) -> str:
        """Write a parquet file atomically; returns the sha256 (16 hex) of the bytes written."""
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        self.write_bytes(path, data)
        return hashlib.sha256(data).hexdigest()[:16]

    def put_file(self, local_path: str, path: str, keep: bool = False) -> None:
        """Place a finished local file at ``path`` atomically (local: copy or move, then rename in place; S3: one
        upload); the local file is removed unless ``keep``."""
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            (shutil.copyfile if keep else shutil.move)(local_path, tmp)
            os.replace(tmp, path)
        else:
            self.fs.put_file(local_path, path)
            if not keep:
                os.remove(local_path)
        faults.point("store.put")

    def file_digest(self, path: str) -> str:
        """sha256 (16 hex) of a stored file's bytes, streamed."""
        h = hashlib.sha256()
        with self.fs.open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        return h.hexdigest()[:16]

    def read_parquet(self, path: str) -> pa.Table:
        with self.fs.open(path, "rb") as f:
            return pq.read_table(f)

    def read_parquets(self, paths: list[str], schema: pa.Schema | None = None) -> pa.Table:
        tables = [self.read_parquet(p) for p in paths]
        if not tables:
            if schema is None:
                raise ValueError("no parts to read and no schema given")
            return schema.empty_table()
        return pa.concat_tables(tables, promote_options="default")

    def iter_parquet_batches(self, paths: list[str], batch_size: int = 1024) -> Iterator[pa.RecordBatch]:
        """Stream record batches part by part: memory stays bounded by one part."""
        for p in paths:
            with self.fs.open(p, "rb") as f:
                yield from pq.ParquetFile(f).iter_batches(batch_size=batch_size)

    # -- folders (model checkpoints) -----------------------------------------------------------------
    def put_dir(self, local_dir: str, path: str) -> list[str]:
        """Upload a local folder's files (flat) and return their relative names."""
        names = []
        for name in sorted(os.listdir(local_dir)):
            src = os.path.join(local_dir, name)
            if os.path.isfile(src):
                self.put_file(src, f"{path}/{name}", keep=True)
                names.append(name)
        return names

    def get_dir(self, path: str, files: list[str], local_dir: str) -> str:
        """Materialise a stored folder locally (no copy when the store is local)."""
        if self.local:
            return path
        os.makedirs(local_dir, exist_ok=True)
        for name in files:
            dst = os.path.join(local_dir, name)
            if not os.path.exists(dst):
                self.fs.get_file(f"{path}/{name}", dst + ".part")
                os.replace(dst + ".part", dst)
        return local_dir


# -- outages ----------------------------------------------------------------------------------------
# What an unreachable object store looks like from each client that talks to it: botocore (s3fs), aiohttp under
# it, DuckDB's httpfs (catalog commits and queries read parquet footers over HTTP), the OS.
_OUTAGE_TYPES = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError",
                 "ClientConnectorError", "ServerDisconnectedError"}
_OUTAGE_TEXT = ("could not establish connection", "connection refused", "could not connect", "failed to connect",
                "couldn't connect to server")


def outage_message(exc: BaseException) -> str | None:
    """One line when ``exc`` (or anything in its cause/context chain) says the object store is unreachable,
    naming the endpoint (credentials masked); None for any other error."""
    from urllib.parse import urlparse

    endpoint = settings.s3_storage_options().get("endpoint_url")
    where = urlparse(endpoint).netloc if endpoint else "http"   # a refused PostgreSQL catalog is not an S3 outage
    seen: set[int] = set()
    cur: BaseException | None = exc

    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = str(cur)
        if type(cur).__name__ in _OUTAGE_TYPES and type(cur).__module__.split(".")[0] in ("botocore", "aiohttp") \
                or (any(t in text.lower() for t in _OUTAGE_TEXT) and where in text):
            endpoint = endpoint or "the S3 endpoint"
            first = text.strip().splitlines()[0] if text.strip() else type(cur).__name__
            return settings.redact_text(
                f"object store {endpoint} unreachable ({type(cur).__name__}: {first[:300]}); nothing half-written "
                "is visible, committed work is kept: re-run when it is back")
        cur = cur.__cause__ or cur.__context__
    return None
