"""Sharded stages: cut the input into shards, run each exactly once across every run that needs it.

A shard is the unit of retry and of Prefect task fan-out. Before working on a shard a run takes its lock
(``shard:<artifact key>:<shard id>``, crash-safe: flock or a PostgreSQL advisory lock); a shard another live run
holds is skipped and revisited at the end (by then it is done, or its holder died and this run takes it over).
Inside a shard, outputs are appended as parquet parts under ``<artifact uri>/shards/<shard id>/``, each written
atomically off the engine's thread, so a killed run's successor lists whole parts only and skips the ids they
hold. The catalog's ``shards`` relation records each finished (or failed) shard with its exact parts.
"""
from __future__ import annotations

import logging
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, cast

from tqdm.auto import tqdm

from infra.catalog.locks import Lease, acquire, describe
from infra.engine.context import RunContext, StageFailed, host
from infra.engine.shard_job import _BARS, _BARS_LOCK, ShardJob, ShardResult, chunks, done_ids
from infra.settings import redact_text

log = logging.getLogger("rlt")


@dataclass
class ShardSummary:
    done: int = 0
    reused: int = 0
    waited: int = 0
    failed: list[str] = field(default_factory=list)
    resumed_rows: int = 0
    copied_rows: int = 0   # rows copied from earlier artifacts by this run (infra/engine/reuse.py)

    def stats(self) -> dict[str, int]:
        return {"shards_run": self.done, "shards_reused": self.reused, "shards_waited": self.waited,
                "rows_resumed": self.resumed_rows, "rows_copied": self.copied_rows}


def _in_prefect() -> bool:
    if "prefect" not in sys.modules:   # not imported: certainly not inside a Prefect run (and stay light)
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_shards(run: Any, rows: Callable[[], Iterable[dict[str, Any]]], shard_size: int,
               fn: Callable[..., ShardResult], args: tuple[Any, ...] | Callable[[int], tuple[Any, ...]], id_col: str,
               parallel: int = 1, expected_per_row: int = 1, total_rows: int | None = None) -> ShardSummary:
    """Run every shard of ``run``'s primary artifact that is not done yet, at most ``parallel`` at once.

    ``rows()`` streams the input (it is called again for shards that were busy elsewhere on the first pass);
    ``fn(job, *args)`` -> ShardResult runs once per shard: as a Prefect task ``<stage>-shard`` carrying the stage
    version inside a Prefect run, a plain call outside one; ``args`` is a tuple or ``args(shard_index)`` -> tuple
    (e.g. to spread shards over endpoints).

    ``parallel`` <= 1 runs each shard inline, on the calling thread (a direct Prefect task call stays on it too):
    what in-process torch engines need. libgomp spin-waits between OpenMP regions only while it manages no more
    threads than there are CPUs; once a second thread has run torch ops, every small op (a decode step) pays a
    futex wake-up instead: measured 12% slower generation on SmolLM2, 45% on decode-sized matmuls, on 2 cores
    (bench/README.md). ``parallel`` > 1 runs shards on a thread pool (Prefect's task runner inside a flow): for
    I/O-bound shards such as a remote vLLM server's clients.
    """
    ctx: RunContext = run.ctx
    writer, stage = run.writer(), run.stage.name
    states = ctx.catalog.shard_states(writer.key)
    deferred: set[str]
    summary, deferred = ShardSummary(), set()
    inflight: deque[tuple[ShardJob, Lease, Any]] = deque()   # (job, its lease, its future)
    pool: ThreadPoolExecutor | None
    task: Any   # the shard function as a Prefect task
    pool = task = None
    from infra.engine.executor import shard_executor

    remote = shard_executor(ctx, stage)   # shards on a Ray cluster (executor: kind ray), or None: here
    if remote is not None:
        from infra.engine.executor import run_remote_shard

        task, parallel = shard_task(run_remote_shard, f"{stage}-shard", run.stage.version), remote.in_flight
    elif _in_prefect():
        task = shard_task(fn, f"{stage}-shard", run.stage.version)
    elif parallel > 1:
        pool = ThreadPoolExecutor(parallel, thread_name_prefix=f"{stage}-shard")
    reuser = None
    if run.stage.incremental is not None:   # rows earlier artifacts hold are copied; the rest is cut into shards
        from infra.engine.reuse import Reuser

        reuser = Reuser(run)
    shard_id: Callable[[int, list[dict[str, Any]]], str]
    if reuser is not None and reuser.donors:
        first_pass = iter([True])
        shard_id = reuser.shard_id

        def source() -> Iterable[dict[str, Any]]:
            return reuser.need(rows(), copy=next(first_pass, False), progress=lambda n: bar.update(n))
    else:
        source, shard_id = rows, (lambda i, chunk: f"{i:05d}")
    bar = tqdm(total=(total_rows * expected_per_row) if total_rows else None, desc=stage, unit="row", leave=False,
               mininterval=1.0)
    with _BARS_LOCK:
        _BARS[writer.key] = bar

    def record(sid: str, status: str, files: list[str], n: int, error: str = "", digests: Sequence[str] = (),
               where: ShardResult | None = None) -> None:
        ctx.catalog.append("shards", [dict(artifact_key=writer.key, stage=stage, shard_id=sid, status=status,
                                           num_rows=n, files=[ctx.store.rel(f) for f in files],
                                           digests=list(digests),
                                           error=redact_text(error),
                                           run_id=ctx.run_id, host=(where and where.host) or host(),
                                           pid=(where and where.pid) or _pid(), node=(where and where.node) or "")])

    def reuse(st: dict[str, Any]) -> None:
        files = [ctx.store.path(f) for f in st["files"]]
        digests = st.get("digests") or []
        writer.add_files(files, int(st["num_rows"]), digests if len(digests) == len(files) else None)
        bar.update(int(st["num_rows"]) * (1 if total_rows else 0))

    def settle(job: ShardJob, lease: Lease, fut: Any) -> None:
        try:
            res: ShardResult = fut.result()
        except Exception as exc:  # recorded as failed; the other shards go on
            log.error("%s shard %s failed: %s", stage, job.shard_id, exc)
            record(job.shard_id, "failed", [], 0, f"{type(exc).__name__}: {exc}"[:2000])
            summary.failed.append(job.shard_id)
        else:
            record(res.shard_id, "done", res.files, res.num_rows, digests=res.digests, where=res)
            writer.add_files(res.files, res.num_rows, res.digests)
            if remote is not None:   # a worker's progress does not reach this process's bar
                bar.update(res.num_rows - len(job.done_ids))
            summary.done += 1
            for k, v in (res.usage or {}).items():   # this run's work only: reused shards cost it nothing
                run.usage[k] = run.usage.get(k, 0) + v
        finally:
            lease.release()

    def drain(limit: int) -> None:
        """Settle finished shards (whichever finish first) until at most ``limit`` are in flight."""
        while len(inflight) > limit:
            wait([_concurrent(f) for _, _, f in inflight], return_when=FIRST_COMPLETED)
            for item in [i for i in inflight if _concurrent(i[2]).done()]:
                inflight.remove(item)
                settle(*item)

    def consider(i: int, chunk: list[dict[str, Any]], wait: bool) -> None:
        sid = shard_id(i, chunk)
        st = states.get(sid)
        if st is not None and st["status"] == "done":
            summary.reused += 1
            return reuse(st)
        name = f"shard:{writer.key}:{sid}"
        lease: Lease | None
        if wait:
            def told(holder: dict[str, Any] | None) -> None:
                log.info("%s shard %s: waiting for %s, which is working on it", stage, sid, describe(holder))
            lease = acquire(ctx.locks, name, ctx.owner(), on_wait=told, poll_s=1.0)
        else:
            lease = ctx.locks.try_acquire(name, ctx.owner())
            if lease is None:
                deferred.add(sid)
                return
        fresh = ctx.catalog.shard_state(writer.key, sid)   # done by another run since we looked?
        if fresh is not None and fresh["status"] == "done":
            lease.release()
            summary.reused += 1
            summary.waited += int(wait)
            return reuse(fresh)
        job = ShardJob(ctx, writer, stage, sid, chunk, id_col)
        job.done_ids = done_ids(ctx, job)
        if job.done_ids:
            summary.resumed_rows += len(job.done_ids)
            bar.update(len(job.done_ids))
            log.info("%s shard %s: resuming, %d rows already written", stage, sid, len(job.done_ids))
        a = args(i) if callable(args) else args
        fut: Any   # a concurrent Future, a Prefect future or a RayShardFuture: settled alike
        if remote is not None:
            fut = remote.submit(task, fn, job, a)
        elif parallel <= 1:
            fut = _inline(task or fn, job, a)
        else:
            fut = task.submit(job, *a) if pool is None else pool.submit(fn, job, *a)
        inflight.append((job, lease, fut))
        drain(parallel - 1)

    try:
        if remote is not None:
            remote.__enter__()
        for i, chunk in enumerate(chunks(source(), shard_size)):
            consider(i, chunk, wait=False)
        drain(0)
        if deferred:
            log.info("%s: %d shard(s) were busy in other runs; revisiting them", stage, len(deferred))
            for i, chunk in enumerate(chunks(source(), shard_size)):
                if shard_id(i, chunk) in deferred:
                    consider(i, chunk, wait=True)
            drain(0)
    finally:
        while inflight:   # an error above: do not leave shard tasks running with their locks
            job, lease, fut = inflight.popleft()
            try:
                fut.result()
            except Exception:
                pass
            lease.release()
        if pool is not None:
            pool.shutdown(wait=True)
        if remote is not None:
            remote.__exit__(None, None, None)
        bar.close()
        with _BARS_LOCK:
            _BARS.pop(writer.key, None)
    if summary.failed:
        raise StageFailed(f"{stage}: {len(summary.failed)} shard(s) failed: {sorted(summary.failed)}; "
                          "re-run the same command to redo only those")
    run.hold_commit_lock()   # from here to the commit the parts are read under the key's lock
    summary.copied_rows = reuser.copied if reuser is not None else 0
    return summary


_SHARD_TASKS: dict[tuple[str, Callable[..., Any]], Any] = {}


def shard_task(fn: Callable[..., Any], name: str, version: str) -> Any:
    """A stage's shard function as a Prefect task carrying the stage version (built on first use, once)."""
    key = (name, fn)   # one name, two bodies: the shard function here, or its Ray wrapper (infra/engine/executor.py)
    if key not in _SHARD_TASKS:
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        _SHARD_TASKS[key] = task(name=name, version=version, cache_policy=NO_CACHE, persist_result=False,
                                 retries=0)(fn)
    return _SHARD_TASKS[key]


def _inline(fn: Callable[..., Any], job: ShardJob, args: tuple[Any, ...]) -> Future[Any]:
    """Run ``fn(job, *args)`` now, on this thread; its outcome as a finished future (settled like the others)."""
    fut: Future[Any] = Future()
    try:
        fut.set_result(fn(job, *args))
    except Exception as exc:  # re-raised by settle's fut.result(), like a failed task
        fut.set_exception(exc)
    return fut


def _concurrent(fut: Any) -> Future[Any]:
    """The concurrent.futures.Future behind a Prefect future (or the future itself)."""
    return cast("Future[Any]", getattr(fut, "wrapped_future", fut))


def _pid() -> int:
    import os

    return os.getpid()

