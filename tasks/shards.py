"""Sharded stages: stream input rows into shards, skip finished shards, resume unfinished ones mid-shard.

The shard ledger is the manifest relation ``shards`` (latest status per shard wins). A shard's outputs are
parquet parts under ``<artifact uri>/shards/<shard_id>/``; every part is written atomically, so listing them
after a crash yields only whole parts, and the ids they hold are skipped on the rerun.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from tqdm.auto import tqdm

from data_contracts import Contract
from infra.artifacts import ArtifactWriter
from tasks.common import RunContext

log = logging.getLogger("rlt")
_BARS: dict[str, Any] = {}
_BARS_LOCK = threading.Lock()


@dataclass
class ShardJob:
    stage: str
    artifact_key: str
    uri: str
    shard_id: str
    rows: list[dict]
    done_ids: set[str] = field(default_factory=set)
    id_col: str = "id"

    @property
    def folder(self) -> str:
        return f"{self.uri}/shards/{self.shard_id}"

    def progress(self, n: int) -> None:
        with _BARS_LOCK:
            bar = _BARS.get(self.artifact_key)
        if bar is not None:
            bar.update(n)


@dataclass
class ShardResult:
    shard_id: str
    files: list[str]
    num_rows: int


@dataclass
class ShardSummary:
    done: int = 0
    reused: int = 0
    failed: list[str] = field(default_factory=list)
    resumed_rows: int = 0

    def stats(self) -> dict:
        return {"shards_run": self.done, "shards_reused": self.reused, "rows_resumed": self.resumed_rows}


class _Done:
    """A finished call that looks like a Prefect future (used outside a flow run)."""

    def __init__(self, fn, args):
        try:
            self._value, self._exc = fn(*args), None
        except Exception as exc:  # re-raised by result(), like a failed future
            self._value, self._exc = None, exc

    def result(self):
        if self._exc is not None:
            raise self._exc
        return self._value


def submit_task(task, *args):
    """``task.submit(*args)`` inside a flow run (a Prefect task run per shard); a direct call outside one."""
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is not None:
        return task.submit(*args)
    return _Done(task.fn, args)


def write_part(ctx: RunContext, job: ShardJob, contract: Contract, rows: list[dict]) -> str:
    """Append one part to a shard (atomic), then honour fault injection (a crash after a part is on disk)."""
    path = f"{job.folder}/part-{uuid.uuid4().hex[:12]}.parquet"
    ctx.store.write_parquet(path, contract.to_table(rows))
    if ctx.should_fail(job.stage, job.shard_id):
        raise RuntimeError(f"injected failure in {job.stage} shard {job.shard_id}")
    return path


def shard_parts(ctx: RunContext, job: ShardJob) -> list[str]:
    return [p for p in ctx.store.ls(job.folder) if p.endswith(".parquet") and "/part-" in p]


def done_ids(ctx: RunContext, job: ShardJob) -> set[str]:
    ids: set[str] = set()
    for batch in ctx.store.iter_parquet_batches(shard_parts(ctx, job)):
        ids.update(batch.column(job.id_col).to_pylist())
    return ids


def finish_shard(ctx: RunContext, job: ShardJob) -> ShardResult:
    files = shard_parts(ctx, job)
    n = sum(ctx.store.read_parquet(f).num_rows for f in files)
    ctx.manifest.append("shards", [dict(artifact_key=job.artifact_key, stage=job.stage, shard_id=job.shard_id,
                                        status="done", num_rows=n, files=[ctx.store.rel(f) for f in files],
                                        error="", run_id=ctx.run_id)])
    return ShardResult(job.shard_id, files, n)


def _chunks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    buf: list[dict] = []
    for r in rows:
        buf.append(r)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def run_shards(ctx: RunContext, stage: str, writer: ArtifactWriter, rows: Iterable[dict], shard_size: int,
               submit: Callable[[ShardJob, int], Any], id_col: str, expected_per_row: int = 1,
               parallel: int = 1, label: str = "", total_rows: int | None = None) -> ShardSummary:
    """Run every unfinished shard (at most ``parallel`` in flight), reuse finished ones, record failures.

    ``submit(job, index)`` returns a Prefect future. Input rows are streamed: at most ``parallel`` shards
    of inputs are held in memory at once.
    """
    states = ctx.manifest.shard_states(writer.key)
    summary = ShardSummary()
    bar = tqdm(total=(total_rows * expected_per_row) if total_rows else None, desc=label or stage, unit="row",
               leave=False, mininterval=1.0)
    with _BARS_LOCK:
        _BARS[writer.key] = bar
    inflight: deque = deque()

    def drain(limit: int) -> None:
        while len(inflight) > limit:
            job, fut = inflight.popleft()
            try:
                res: ShardResult = fut.result()
            except Exception as exc:  # the shard is recorded as failed; the others go on
                log.error("%s shard %s failed: %s", stage, job.shard_id, exc)
                ctx.manifest.append("shards", [dict(artifact_key=writer.key, stage=stage, shard_id=job.shard_id,
                                                    status="failed", num_rows=0, files=[],
                                                    error=f"{type(exc).__name__}: {exc}"[:2000],
                                                    run_id=ctx.run_id)])
                summary.failed.append(job.shard_id)
                continue
            writer.add_files(res.files, res.num_rows)
            summary.done += 1

    try:
        for i, chunk in enumerate(_chunks(rows, shard_size)):
            shard_id = f"{i:05d}"
            st = states.get(shard_id)
            if st is not None and st["status"] == "done":
                writer.add_files([ctx.store.path(f) for f in st["files"]], int(st["num_rows"]))
                summary.reused += 1
                bar.update(int(st["num_rows"]))
                continue
            job = ShardJob(stage, writer.key, writer.uri, shard_id, chunk, id_col=id_col)
            job.done_ids = done_ids(ctx, job)
            if job.done_ids:
                summary.resumed_rows += len(job.done_ids)
                bar.update(len(job.done_ids))
                log.info("%s shard %s: resuming, %d rows already written", stage, shard_id, len(job.done_ids))
            ctx.manifest.append("shards", [dict(artifact_key=writer.key, stage=stage, shard_id=shard_id,
                                                status="running", num_rows=0, files=[], error="",
                                                run_id=ctx.run_id)])
            inflight.append((job, submit(job, i)))
            drain(parallel - 1)
        drain(0)
    finally:
        bar.close()
        with _BARS_LOCK:
            _BARS.pop(writer.key, None)
    return summary
