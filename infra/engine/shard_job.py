"""One shard's unit of work, below the machinery that schedules shards (infra/engine/shards.py, executor.py,
reuse.py all use it): the job a shard function receives (its rows, the ids an earlier attempt already wrote, a
part writer that writes off the engine's thread), its result, and the helpers that list a shard's parts.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from infra.catalog.artifacts import ArtifactWriter
from infra.engine.context import RunContext

_BARS: dict[str, Any] = {}   # artifact key -> its progress bar (infra/engine/shards.py opens and closes them)
_BARS_LOCK = threading.Lock()
T = TypeVar("T")


@dataclass
class ShardJob:
    """One shard's work: its input rows, the ids already written by an earlier attempt, and a part writer."""

    ctx: RunContext
    writer: ArtifactWriter
    stage: str
    shard_id: str
    rows: list[dict[str, Any]]
    id_col: str
    done_ids: set[str] = field(default_factory=set)
    digests: dict[str, str] = field(default_factory=dict)   # part path -> sha256 of its bytes
    written_rows: int = 0
    usage: dict[str, int] = field(default_factory=dict)   # tokens this job computed (infra/engine/costs.py)
    _pending: list[Future[str]] = field(default_factory=list)
    _io: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:   # shippable to another worker (Ray): no threads, no futures
        d = dict(self.__dict__)
        d["_pending"], d["_io"] = [], None
        return d

    @property
    def artifact_key(self) -> str:
        return self.writer.key

    @property
    def folder(self) -> str:
        return f"{self.writer.uri}/shards/{self.shard_id}"

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append one part, written on a background thread so the engine can go on; errors surface here
        (on the next call) or in ``finish``."""
        self._raise_failed()
        table = self.writer.table(rows)
        if self._io is None:
            self._io = ThreadPoolExecutor(1, thread_name_prefix=f"{self.stage}-io")
        self._pending.append(self._io.submit(self._write, table))
        self.written_rows += table.num_rows
        self.progress(table.num_rows)

    def _write(self, table: pa.Table) -> str:
        import uuid

        path = f"{self.folder}/part-{uuid.uuid4().hex[:12]}.parquet"
        self.digests[path] = self.ctx.store.write_parquet(path, table)
        if self.ctx.should_fail(self.stage, self.shard_id):   # fault injection: a crash after a part is on disk
            raise RuntimeError(f"injected failure in {self.stage} shard {self.shard_id}")
        return path

    def _raise_failed(self) -> None:
        for f in [f for f in self._pending if f.done()]:
            f.result()

    def count_tokens(self, **counts: int | None) -> None:
        """Add the tokens this shard computed (see infra/engine/costs.add_tokens); summed into the stage's cost
        record."""
        from infra.engine.costs import add_tokens

        add_tokens(self.usage, **counts)

    def progress(self, n: int) -> None:
        with _BARS_LOCK:
            bar = _BARS.get(self.writer.key)
        if bar is not None:
            bar.update(n)

    def finish(self) -> "ShardResult":
        try:
            for f in self._pending:
                f.result()
        finally:
            if self._io is not None:
                self._io.shutdown(wait=True)
                self._io = None
        files = shard_parts(self.ctx, self)
        unknown = [f for f in files if f not in self.digests]
        if unknown:   # a part this job did not write or read: another writer in this shard folder
            raise RuntimeError(f"{self.stage} shard {self.shard_id}: unexpected parts {unknown} appeared while "
                               "this run held the shard")
        return ShardResult(self.shard_id, files, len(self.done_ids) + self.written_rows,
                           [self.digests[f] for f in files], dict(self.usage))


@dataclass
class ShardResult:
    shard_id: str
    files: list[str]
    num_rows: int
    digests: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)   # tokens computed (infra/engine/costs.py)
    host: str = ""   # where it ran, when not this process (a Ray worker: infra/engine/executor.py)
    pid: int = 0
    node: str = ""


def shard_parts(ctx: RunContext, job: ShardJob) -> list[str]:
    return [p for p in ctx.store.ls(job.folder) if p.endswith(".parquet") and "/part-" in p]


def done_ids(ctx: RunContext, job: ShardJob) -> set[str]:
    """Ids in the parts an earlier holder of this shard left (each part is whole: writes are atomic)."""
    import hashlib
    import io

    ids: set[str] = set()
    for p in shard_parts(ctx, job):
        data = ctx.store.read_bytes(p)
        job.digests[p] = hashlib.sha256(data).hexdigest()[:16]
        ids.update(pq.read_table(io.BytesIO(data), columns=[job.id_col]).column(0).to_pylist())
    return ids


def chunks(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter), streamed."""
    buf: list[T] = []
    for r in rows:
        buf.append(r)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf
