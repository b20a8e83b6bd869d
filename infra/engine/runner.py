"""The one stage runner: key, "already done?", per-key lock, MLflow run, body, commit, stage records.

The catalog is the only truth of "done": an artifact is done when its record is committed, nothing else
(no Prefect result cache, no marker files). A key is computed by one run at a time: a run that finds another
holding the key waits, then reuses what that run committed (sharded stages instead share the work shard by
shard, see infra/engine/shards.py, and take the key's lock only to commit). Locks are crash-safe, so a SIGKILLed holder
lets the next run proceed at once.
"""
from __future__ import annotations

import json
import time
from typing import Any, Mapping

from pydantic import BaseModel

from data_contracts import ArtifactRef
from infra import faults
from infra.catalog.artifacts import KeyParts, ref_from_record
from infra.catalog.locks import acquire, describe
from infra.engine import costs, lineage_events
from infra.engine.config import StageConfig
from infra.engine.context import RunContext, logger
from infra.engine.stage import AlreadyCommitted, Input, Stage, StageRun
from infra.settings import redact_text


def input_keys(inputs: Mapping[str, Input]) -> dict[str, Any]:
    return {role: (v.key if isinstance(v, ArtifactRef) else v) for role, v in inputs.items()}


def _refs(stage: Stage, records: Mapping[str, dict[str, Any]], keys: Mapping[str, str]) -> dict[str, ArtifactRef]:
    return {o.name: ref_from_record(records[keys[o.name]]) for o in stage.outputs}


def _record_stage(ctx: RunContext, stage: Stage, key: str, label: str, status: str, seconds: float = 0.0,
                  detail: str = "") -> None:
    ctx.catalog.append("stage_runs", [dict(run_id=ctx.run_id, stage=stage.name, label=label, artifact_key=key,
                                           status=status, cached=status in ("cached", "waited"), seconds=seconds,
                                           detail=redact_text(detail)[:4000])])


def execute(stage: Stage, ctx: RunContext, cfg: BaseModel | Mapping[str, Any], inputs: Mapping[str, Input],
            label: str = "", expect_key: str | None = None) -> dict[str, ArtifactRef]:
    """Make sure ``stage``'s outputs for (cfg, inputs) are committed; return them by output name."""
    cfg = cfg if isinstance(cfg, stage.config) else stage.config.model_validate(cfg)
    inputs = dict(inputs)
    parts = stage.key_parts(cfg, inputs)
    keys = stage.output_keys(parts.key())
    key, log = parts.key(), logger()
    name = stage.name + (f"[{label}]" if label else "")
    if expect_key is not None and expect_key != key:
        raise RuntimeError(f"{name}: the plan computed key {expect_key} but the runner computes {key}; "
                           "plan and run disagree on the key function (a bug)")
    found = ctx.catalog.committed(keys.values())
    if found is not None:
        log.info("%s: done already (artifact %s, run %s); nothing to compute", name, key[:12],
                 found[key]["run_id"])
        _record_stage(ctx, stage, key, label, "cached")
        return _refs(stage, found, keys)

    lease, t_wait = None, time.time()
    if not stage.sharded:   # the whole key is one unit of work: one run computes it, others wait
        lease = acquire(ctx.locks, f"stage:{key}", ctx.owner(), poll_s=1.0,
                        on_wait=lambda h: log.info("%s: %s is computing key %s; waiting to reuse its result",
                                                   name, describe(h), key[:12]))
        found = ctx.catalog.committed(keys.values())
        if found is not None:
            log.info("%s: reusing %s, committed while we waited %.1fs", name, key[:12], time.time() - t_wait)
            lease.release()
            _record_stage(ctx, stage, key, label, "waited", time.time() - t_wait)
            return _refs(stage, found, keys)
    try:
        return _run_body(stage, ctx, cfg, inputs, parts, keys, label, name)
    finally:
        if lease is not None:
            lease.release()


def run_stage(stage: Stage, ctx: RunContext, cfg: BaseModel | Mapping[str, Any], *inputs: Input, label: str = "",
              **named: Input) -> ArtifactRef | dict[str, ArtifactRef]:
    """Run one stage outside a flow (tests, notebooks, benchmarks), its inputs in declared order or by name.
    Returns the output's ref, or ``{name: ref}`` when the stage has several outputs."""
    given = dict(zip(stage.input_names, inputs), **named)
    refs = execute(stage, ctx, cfg, given, label)
    return refs if len(stage.outputs) > 1 else refs[stage.primary]


def _run_body(stage: Stage, ctx: RunContext, cfg: StageConfig, inputs: dict[str, Input], parts: KeyParts,
              keys: dict[str, str], label: str, name: str) -> dict[str, ArtifactRef]:
    log, key, t0 = logger(), parts.key(), time.time()
    tr = ctx.tracker
    mlrun = tr.start_run(name, parent_run_id=ctx.mlflow_parent or None,
                         tags={"rlt.stage": stage.name, "rlt.stage_version": stage.version, "rlt.label": label,
                               "rlt.artifact_key": key, "rlt.run_id": ctx.run_id,
                               **{f"rlt.input.{k}": v for k, v in parts.inputs.items()}})
    tr.log_params(mlrun, {"config": parts.config, "models": parts.models, "stage_version": stage.version})
    run = StageRun(stage, ctx, cfg, inputs, parts, keys, label, mlrun)
    run.meter = costs.Meter().start()   # seconds, memory (tokens: run.usage); recorded in stage_costs
    lineage_events.started(run)   # OpenLineage START (a no-op unless configured: infra/openlineage.py)
    try:
        stats = dict(run.call_body() or {})
        run.writer().stats.update(stats)
        committed = _commit(stage, run, time.time() - t0)
    except AlreadyCommitted:
        committed = False
    except BaseException as exc:
        tr.end_run(mlrun, "FAILED")
        lineage_events.failed(run, exc)   # OpenLineage FAIL
        _record_stage(ctx, stage, key, label, "failed", time.time() - t0, f"{type(exc).__name__}: {exc}")
        costs.record(run, "failed")
        raise
    finally:
        run.meter.stop()
        if run.commit_lease is not None:
            run.commit_lease.release()
    found = ctx.catalog.artifacts(keys.values())
    refs = _refs(stage, found, keys)
    if committed:
        primary = run.writer()
        tr.set_tags(mlrun, {**{f"rlt.output.{n}": r.key for n, r in refs.items()}, "rlt.output_uri": primary.uri})
        numeric = {k: v for k, v in primary.stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tr.log_metrics(mlrun, {**numeric, "rows": primary.num_rows, "stage_seconds": time.time() - t0})
        log.info("%s: committed %s (%d rows) in %.1fs", name, key[:12], primary.num_rows, time.time() - t0)
        lineage_events.committed(run, found)   # OpenLineage COMPLETE; MLflow dataset inputs/outputs
    else:
        log.info("%s: another run committed %s first; using its artifact", name, key[:12])
        tr.set_tags(mlrun, {"rlt.reused_from_run": refs[stage.primary].run_id})
        lineage_events.reused(run, refs)   # OpenLineage ABORT
        _record_stage(ctx, stage, key, label, "waited", time.time() - t0)
        costs.record(run, "waited")   # the body's work was done all the same
    tr.end_run(mlrun)
    return refs


def _commit(stage: Stage, run: StageRun, seconds: float) -> bool:
    """One transaction: every output's data, record, lineage and provenance, plus the stage record."""
    if stage.sharded:   # shards were shared with other runs: commit under the key's lock, once
        run.hold_commit_lock()   # usually held already (run_shards takes it); raises AlreadyCommitted
    return _consolidate_and_commit(stage, run, seconds)   # non-sharded: the key's lock is held since the start


def _consolidate_and_commit(stage: Stage, run: StageRun, seconds: float) -> bool:
    ctx = run.ctx
    staging = [p for o in stage.outputs for p in run.writers[o.name].consolidate()]
    reused = {}
    if stage.incremental is not None:   # which rows were copied from earlier artifacts, read from the parts
        from infra.engine.reuse import reuse_stats

        reused = reuse_stats(run.writer())
        run.writer().stats.update(reused)
        if reused["rows_reused"]:
            logger().info("%s: %d of %d rows reused from %d earlier artifact(s), %d computed", stage.name,
                          reused["rows_reused"], run.writer().num_rows, len(reused["reused_from"]),
                          reused["rows_computed"])
    specs = [run.writers[o.name].commit_spec(o.provenance) for o in stage.outputs]
    if reused:
        from infra.engine.reuse import reuse_lineage

        specs[0].lineage.extend(reuse_lineage(run.writer(), reused))
    stats = run.writer().stats
    stage_row = dict(run_id=ctx.run_id, stage=stage.name, label=run.label, artifact_key=run.key, status="done",
                     cached=False, seconds=seconds, detail=json.dumps(stats, default=str)[:4000])
    cost = costs.measured_row(run, "done", run.writer().num_rows)   # the stage's cost, in the same transaction
    committed = ctx.catalog.commit(specs, {"stage_runs": [stage_row], "stage_costs": [cost] if cost else []},
                                   message=f"commit {stage.name}")
    faults.point("stage.committed")   # visible in the catalog; staging parts not yet freed, MLflow not yet told
    if committed:   # the small staging parts now live on in the consolidated files: free their space
        for path in staging:
            try:
                ctx.store.rm(path)
            except OSError as exc:
                logger().warning("could not remove staging part %s: %s", path, exc)
    return committed


# ---------------------------------------------------------------------------------------------- Prefect
_TASKS: dict[str, Any] = {}


def prefect_task(stage: Stage) -> Any:
    """The stage as a real Prefect task carrying its version; no Prefect cache (the catalog decides)."""
    if stage.name not in _TASKS:
        from prefect import task
        from prefect.cache_policies import NO_CACHE

        def run_stage(ctx: RunContext, cfg: dict[str, Any], inputs: dict[str, Input], label: str = "", key: str = ""
                      ) -> dict[str, Any]:
            refs = execute(stage, ctx, cfg, inputs, label, expect_key=key or None)
            return {n: r.model_dump() for n, r in refs.items()}

        run_stage.__doc__ = stage.body.__doc__
        _TASKS[stage.name] = task(name=stage.name, version=stage.version, cache_policy=NO_CACHE,
                                  persist_result=False, retries=0,
                                  task_run_name=f"{stage.name}" + "{label}-{key}")(run_stage)
    return _TASKS[stage.name]

