"""What every stage shares: the run context, the cache check, the commit and the MLflow stage run."""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pyarrow as pa
from pydantic import BaseModel

from data_contracts import ArtifactRef, Contract
from infra import artifacts as arts
from infra.artifacts import ArtifactWriter, KeyParts
from infra.manifest import Manifest
from infra.storage import Store
from infra.tracking import Tracker

log = logging.getLogger("rlt")


class StageFailed(RuntimeError):
    """A stage (or some of its shards) failed; committed work is kept for the rerun."""


@dataclass
class RunContext:
    """Resources of one factory run. Picklable parts only (root, ids); stores are rebuilt lazily."""

    root: str
    run_id: str = field(default_factory=lambda: "run-" + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6])
    mlflow_parent: str = ""
    tracking: bool = True
    tracking_uri: str | None = None
    fail_shards: tuple[str, ...] = ()   # fault injection for tests: "stage:shard_id"

    @functools.cached_property
    def store(self) -> Store:
        return Store(self.root)

    @functools.cached_property
    def manifest(self) -> Manifest:
        return Manifest(self.store)

    @functools.cached_property
    def tracker(self) -> Tracker:
        return Tracker(self.store.root, uri=self.tracking_uri, enabled=self.tracking)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("store", "manifest", "tracker")}

    def should_fail(self, stage: str, shard: str) -> bool:
        return f"{stage}:{shard}" in self.fail_shards or f"{stage}:*" in self.fail_shards


def logger():
    """Prefect's run logger inside a run, the module logger outside."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:
        return log


def config_dict(cfg: BaseModel | dict) -> dict[str, Any]:
    return cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else dict(cfg)


@contextmanager
def stage_run(ctx: RunContext, stage: str, parts: KeyParts) -> Iterator[str]:
    """An MLflow run nested under the flow's run, with the resolved config as params and keys as tags."""
    tr = ctx.tracker
    run_id = tr.start_run(stage, parent_run_id=ctx.mlflow_parent or None,
                          tags={"rlt.stage": stage, "rlt.stage_version": parts.stage_version,
                                "rlt.artifact_key": parts.key(), "rlt.run_id": ctx.run_id,
                                **{f"rlt.input.{k}": v for k, v in parts.inputs.items()}})
    tr.log_params(run_id, {"config": parts.config, "models": parts.models, "stage_version": parts.stage_version})
    t0 = time.time()
    try:
        yield run_id
    except BaseException:
        tr.end_run(run_id, "FAILED")
        ctx.manifest.append("stage_runs", [dict(run_id=ctx.run_id, stage=stage, artifact_key=parts.key(),
                                                status="failed", cached=False, seconds=time.time() - t0)])
        raise
    tr.log_metrics(run_id, {"stage_seconds": time.time() - t0})
    tr.end_run(run_id)


def cached(ctx: RunContext, stage: str, key: str) -> ArtifactRef | None:
    """The committed artifact with this key, if any (the flow records cache hits in ``stage_runs``)."""
    ref = arts.find(ctx.manifest, key)
    if ref is not None:
        logger().info("%s: cache hit %s (%d rows), no work to do", stage, key, ref.num_rows)
    return ref


def finish(ctx: RunContext, writer: ArtifactWriter, stage: str, t0: float, stats: dict | None = None,
           mlflow_run: str = "") -> ArtifactRef:
    """Commit the artifact (manifest record last) and record the stage run."""
    stats = dict(stats or {})
    ref = writer.commit(stats)
    seconds = time.time() - t0
    ctx.manifest.append("stage_runs", [dict(run_id=ctx.run_id, stage=stage, artifact_key=ref.key, status="done",
                                            cached=False, seconds=seconds, detail=json.dumps(stats, default=str))])
    ctx.tracker.set_tags(mlflow_run, {f"rlt.output.{writer.name}": ref.key, "rlt.output_uri": ref.uri})
    numeric = {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ctx.tracker.log_metrics(mlflow_run, {**numeric, "rows": ref.num_rows})
    return ref


def load(ctx: RunContext, ref: ArtifactRef, contract: Contract | None = None) -> pa.Table:
    return arts.load_table(ctx.store, ctx.manifest, ref, contract)


def iter_rows(ctx: RunContext, ref: ArtifactRef, batch_size: int = 256) -> Iterator[dict]:
    """Stream an artifact's rows part by part (bounded memory)."""
    for batch in ctx.store.iter_parquet_batches(arts.part_paths(ctx.store, ctx.manifest, ref), batch_size):
        yield from batch.to_pylist()


def write_provenance(ctx: RunContext, key: str, kind: str, rows: list[dict], id_col: str, parent_col: str | None,
                     parent_kind: str | None) -> None:
    ctx.manifest.append("provenance", [dict(example_id=r[id_col], kind=kind, artifact_key=key,
                                            parent_id=r.get(parent_col) if parent_col else None,
                                            parent_kind=parent_kind, run_id=ctx.run_id) for r in rows])


def host() -> str:
    return socket.gethostname()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
