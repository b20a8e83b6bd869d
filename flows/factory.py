"""The nightly factory: ingest -> train_teacher -> generate -> score -> filter -> distill -> evaluate -> report.

Artifacts pass by reference. Each stage is a Prefect task whose cache key is its artifact key (stage version,
resolved config, input keys, model digests), so an identical second night does no model work, a changed
config recomputes that stage and what depends on it, and a failed shard is the only work a rerun redoes.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Optional

from prefect import flow, task

from data_contracts import ArtifactRef
from flows.plan import annotate, stage_keys
from flows.recipe import STAGES, Recipe
from infra import artifacts as arts
from infra.artifacts import digest
from infra.models import resolve_model
from tasks import distill, evaluate, filter as filter_, generate, ingest, report, score, train_teacher
from tasks.common import RunContext, logger

log = logging.getLogger("rlt")


def _cache_key(context, parameters: dict[str, Any]) -> str:
    return f"rlt-{parameters['stage']}-{parameters['key']}"


@task(name="stage", cache_key_fn=_cache_key, persist_result=True, result_serializer="json")
def stage_task(stage: str, key: str, fn: Callable[[], Any]) -> Any:
    """Run one stage body; Prefect caches its (small, JSON) result under the artifact key."""
    return fn()


def result_storage(root: str) -> Path:
    if "://" in root:
        return Path(os.path.expanduser("~/.cache/rlt-factory/prefect-results")) / digest(root)
    return Path(root) / "_prefect" / "results"


def _refs(value: Any) -> list[ArtifactRef]:
    if isinstance(value, ArtifactRef):
        return [value]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, ArtifactRef)]
    return []


def _run(ctx: RunContext, stage: str, key: str, fn: Callable[[], Any], label: str = "") -> Any:
    opts = dict(name=stage, task_run_name=f"{stage}{'-' + label if label else ''}[{key[:8]}]",
                result_storage=result_storage(ctx.root))
    out = stage_task.with_options(**opts)(stage, key, fn)
    refs = _refs(out)
    if not any(r.key == key for r in refs) or any(arts.find(ctx.manifest, r.key) is None for r in refs):
        # Prefect remembered a result whose artifact is gone from the store, or that was made under another
        # key (older code): recompute it, so the manifest and Prefect's cache agree on this key
        out = stage_task.with_options(refresh_cache=True, **opts)(stage, key, fn)
    refs = _refs(out)
    if refs and all(r.run_id != ctx.run_id for r in refs):  # served by Prefect's cache: no body ran
        logger().info("%s: cached (artifact %s from run %s)", stage, refs[0].key[:12], refs[0].run_id)
        ctx.manifest.append("stage_runs", [dict(run_id=ctx.run_id, stage=stage, artifact_key=key, status="cached",
                                                cached=True, seconds=0.0)])
    return out


@flow(name="rlt-factory", log_prints=False)
def factory_flow(recipe: dict, root: str, until: Optional[str] = None, fail_shards: Optional[list[str]] = None,
                 recipe_path: str = "", tracking_uri: Optional[str] = None, tracking: bool = True) -> dict:
    """Run the recipe's stages in order (up to ``until``), then write the run report."""
    r = Recipe.model_validate(recipe)
    ctx = RunContext(root=root, fail_shards=tuple(fail_shards or ()), tracking_uri=tracking_uri, tracking=tracking)
    lg = logger()
    plans = annotate(ctx, stage_keys(r))
    for p in plans:
        lg.info("plan %-14s %-9s %s  %s", p.stage + (f"[{p.label}]" if p.label else ""), p.status, p.key[:12],
                p.reason)
    ctx.mlflow_parent = ctx.tracker.start_run(f"factory:{r.name}", tags={"rlt.run_id": ctx.run_id,
                                                                        "rlt.recipe": r.name})
    ctx.tracker.log_params(ctx.mlflow_parent, {"recipe": recipe, "recipe_path": recipe_path})
    _record_run(ctx, r, recipe, recipe_path, "running")
    stop = STAGES.index(until) if until else len(STAGES) - 1
    keys = {(p.stage, p.label): p.key for p in plans}
    out: dict[str, Any] = {"run_id": ctx.run_id}
    try:
        out.update(_chain(ctx, r, keys, stop))
        if until is None:
            out["report"] = report.write_report(ctx, out, plans, r.name)
    except BaseException as exc:
        _record_run(ctx, r, recipe, recipe_path, "failed", f"{type(exc).__name__}: {exc}")
        ctx.tracker.end_run(ctx.mlflow_parent, "FAILED")
        raise
    _record_run(ctx, r, recipe, recipe_path, "done")
    ctx.tracker.set_tags(ctx.mlflow_parent, {f"rlt.artifact.{k}": v.key for k, v in out.items()
                                             if isinstance(v, ArtifactRef)})
    ctx.tracker.end_run(ctx.mlflow_parent)
    return {k: (v.model_dump() if isinstance(v, ArtifactRef) else v) for k, v in out.items()}


def _chain(ctx: RunContext, r: Recipe, keys: dict, stop: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ing = _run(ctx, "ingest", keys[("ingest", "")], lambda: ingest.run(ctx, r.ingest))
    out.update(problems=ing["problems"], quarantine=ing["quarantine"])
    if stop < 1:
        return out
    teacher = _run(ctx, "train_teacher", keys[("train_teacher", "")],
                   lambda: train_teacher.run(ctx, r.train_teacher, out["problems"]))
    out["teacher_checkpoint"] = teacher
    if stop < 2:
        return out
    out["explanations"] = _run(ctx, "generate", keys[("generate", "")],
                               lambda: generate.run(ctx, r.generate, out["problems"], teacher))
    if stop < 3:
        return out
    out["scored_explanations"] = _run(ctx, "score", keys[("score", "")],
                                      lambda: score.run(ctx, r.score, out["explanations"], teacher))
    if stop < 4:
        return out
    fl = _run(ctx, "filter", keys[("filter", "")], lambda: filter_.run(ctx, r.filter, out["scored_explanations"],
                                                                        out["explanations"], out["problems"]))
    out.update(distill_set=fl["distill_set"], filter_decisions=fl["filter_decisions"])
    if stop < 5:
        return out
    out["student_checkpoint"] = _run(ctx, "distill", keys[("distill", "")],
                                     lambda: distill.run(ctx, r.distill, out["distill_set"]))
    if stop < 6:
        return out
    if r.evaluate.include_base:
        base = resolve_model(r.distill.student_model)
        out["eval_base"] = _run(ctx, "evaluate", keys[("evaluate", "base")], lambda: evaluate.run(
            ctx, r.evaluate, r.distill.student_model, base.path, base.digest, "base"), "base")
    from tasks.models import checkpoint_snapshot

    def eval_student():
        snap = checkpoint_snapshot(ctx, out["student_checkpoint"])
        return evaluate.run(ctx, r.evaluate, out["student_checkpoint"].key, snap.path, snap.digest, "distilled",
                            key_digest="checkpoint:" + out["student_checkpoint"].key)

    out["eval_distilled"] = _run(ctx, "evaluate", keys[("evaluate", "distilled")], eval_student, "distilled")
    return out


def _record_run(ctx: RunContext, r: Recipe, recipe: dict, path: str, status: str, detail: str = "") -> None:
    ctx.manifest.append("runs", [dict(run_id=ctx.run_id, flow="rlt-factory", status=status, recipe=r.name,
                                      recipe_hash=digest(recipe), mlflow_run_id=ctx.mlflow_parent,
                                      host=socket.gethostname(), code_version=_code_version(), detail=detail[:2000])])


def _code_version() -> str:
    try:
        import subprocess

        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(__file__), timeout=5).stdout.strip()
    except Exception:
        return ""
