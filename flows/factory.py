"""The nightly factory flow (ingest -> train_teacher -> generate -> score -> filter -> distill -> evaluate -> report)
and one flow per stage (``rlt run STAGE``: that stage and whatever upstream it needs).

Wiring only: the graph is flows/pipeline.py, each stage is a real Prefect task (infra/engine/runner.py) whose "done?"
answer comes from the catalog alone. An identical second night does no model work, a changed config recomputes
that stage and what depends on it, a failed shard is the only work a rerun redoes, and two runs that need the
same key at once compute it once.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
from typing import Any, Optional

from prefect import flow

from data_contracts import ArtifactRef
from flows.pipeline import STAGES, From, Planned, walk
from flows.plan import annotate, stage_keys
from flows.recipe import Recipe, recipe_digest
from flows.releases import report
from infra.engine.context import RunContext, logger
from infra.engine.executor import run_stage
from infra.engine.runner import prefect_task

log = logging.getLogger("rlt")


def run_pipeline(flow_name: str, recipe: dict, root: str, targets: list[str] | None = None,
                 fail_shards: list[str] | None = None, recipe_path: str = "", tracking_uri: str | None = None,
                 tracking: bool = True, catalog_url: str | None = None, with_report: bool = True) -> dict:
    """Plan, then run every planned node in order; record the run; keep the catalog tidy afterwards. A run that
    fails or crashes sends one alert (flows/alerts.py; a failed audit: ``audit_failed``, anything else:
    ``run_failed``) to the recipe's channels, if any, then fails as before."""
    r = Recipe.model_validate(recipe)
    ctx = RunContext(root=root, fail_shards=tuple(fail_shards or ()), tracking_uri=tracking_uri, tracking=tracking,
                     catalog_url=catalog_url, prices=r.costs.model_dump(exclude_none=True),
                     executor=r.executor.model_dump(mode="json") if r.executor.kind != "local" else {})
    ctx.flow_name, ctx.recipe_name = flow_name, r.name   # OpenLineage job and parent-run names
    where = {"step": "plan", "report": ""}   # what the run is doing, for the alert of a failure
    try:
        return _run(ctx, r, flow_name, recipe, targets, recipe_path, with_report, where)
    except BaseException as exc:
        _alert(ctx, r, flow_name, where, exc)
        raise


def _run(ctx: RunContext, r: Recipe, flow_name: str, recipe: dict, targets: list[str] | None, recipe_path: str,
         with_report: bool, where: dict[str, str]) -> dict:
    lg = logger()
    _log_prices(r)
    plans = annotate(ctx, stage_keys(_with_reviews(ctx, r), targets))
    for p in plans:
        lg.info("plan %-20s %-8s %s  %s", p.node.id, p.status, p.key[:12], p.reason)
    ctx.mlflow_parent = ctx.tracker.start_run(f"{flow_name}:{r.name}", tags={"rlt.run_id": ctx.run_id,
                                                                             "rlt.recipe": r.name})
    ctx.tracker.log_params(ctx.mlflow_parent, {"recipe": recipe, "recipe_path": recipe_path})
    _record_run(ctx, flow_name, r, recipe, "running")
    out: dict[str, Any] = {"run_id": ctx.run_id}
    try:
        out.update(_run_nodes(ctx, plans, where))
        if with_report:
            where["step"] = "audit"
            audits, failed = _audit(ctx, r, out)   # write-audit-publish: a failed audit leaves the release in place
            where["step"] = "report"
            out["report"] = report.write_report(ctx, out, plans, r.name, audits=audits)
            where["report"] = f"{out['report'].uri}/index.html"
            if failed is not None:
                raise failed   # the flow run fails visibly: Prefect state, the runs record, exit code 2
    except BaseException as exc:
        ctx.tracker.end_run(ctx.mlflow_parent, "FAILED")   # tracking calls never raise (infra/tracking.py)
        _record_run(ctx, flow_name, r, recipe, "failed", f"{type(exc).__name__}: {exc}")
        _warn_untracked(ctx)
        raise
    finally:
        _maintain(ctx)
        if ctx.executor:
            from infra.engine.executor import disconnect

            disconnect()   # a driver left attached to a cluster that goes away is ended by Ray
    where["step"] = "finish"
    ctx.tracker.set_tags(ctx.mlflow_parent, {f"rlt.artifact.{k}": v.key for k, v in out.items()
                                             if isinstance(v, ArtifactRef)})
    ctx.tracker.end_run(ctx.mlflow_parent)
    _record_run(ctx, flow_name, r, recipe, "done")   # after the tracking's end: its record says if that went in
    _warn_untracked(ctx)
    result = {k: (v.model_dump() if isinstance(v, ArtifactRef) else v) for k, v in out.items()}
    if with_report:
        result["audits"] = audits
    return result


def _log_prices(r: Recipe) -> None:
    """Validate the prices in effect (recipe `costs:` + RLT_PRICE_*) before any work, and say which they are."""
    from infra.engine.costs import resolve_prices

    prices = resolve_prices(r.costs)
    if prices.priced:
        logger().info("costs priced at %s", prices.model_dump(exclude_none=True))


def _audit(ctx: RunContext, r: Recipe, out: dict[str, Any]) -> tuple[dict, Exception | None]:
    """Audit the night's committed artifacts and, when all pass, publish its distill set under the alias. Returns
    the summary (for the report) and the AuditFailed to raise once the report is written (or None)."""
    from flows.releases.audit import AuditFailed, audit_and_publish

    if "distill_set" not in out:
        return {"passed": True, "published": False, "results": [], "alias": r.audits.publish_alias}, None
    refs = {k: v.key for k, v in out.items() if isinstance(v, ArtifactRef)}
    _log_review_sample(ctx, r, refs["distill_set"])
    try:
        return audit_and_publish(ctx.catalog, r.audits, refs, ctx.run_id), None
    except AuditFailed as exc:
        return {"passed": False, "published": False, "results": exc.results, "alias": exc.alias}, exc


def _log_review_sample(ctx: RunContext, r: Recipe, distill_key: str) -> None:
    """Human spot-check (recipe `review:`): the night's sample into an MLflow review queue, before the audits that
    may wait for it (flows/releases/review.py; never fails the night)."""
    if r.review is not None:
        from flows.releases.review import log_night_safely

        log_night_safely(ctx.catalog, r, ctx.tracker.uri, distill_key, ctx.run_id, ctx.mlflow_parent)


def _with_reviews(ctx: RunContext, r: Recipe) -> Recipe:
    """``filter.reject_reviewed``: the explanations people rejected join the filter's config (and key)."""
    if not r.filter.reject_reviewed:
        return r
    from flows.releases.review import with_rejections

    return with_rejections(ctx.catalog, r)


def _run_nodes(ctx: RunContext, plans: list[Planned], where: dict[str, str]) -> dict[str, ArtifactRef]:
    refs: dict[tuple[str, str], ArtifactRef] = {}
    out: dict[str, ArtifactRef] = {}
    for p, inputs in walk(plans):
        where["step"] = p.node.id
        resolved = {role: (refs[(v.node, v.output)] if isinstance(v, From) else v) for role, v in inputs.items()}
        task = prefect_task(p.node.stage).with_options(
            task_run_name=f"{p.node.id}-{p.key[:10]}", tags=[f"stage:{p.stage}", f"key:{p.key}"])
        result = run_stage(ctx, p.node.stage, task, dict(ctx=ctx, cfg=p.cfg.model_dump(mode="json"),
                                                          inputs=resolved, label=p.label, key=p.key))
        for name, ref in result.items():
            ref = ArtifactRef.model_validate(ref)
            refs[(p.node.id, name)] = ref
            out[p.node.out_name(name)] = ref
    return out


def _alert(ctx: RunContext, r: Recipe, flow_name: str, where: dict[str, str], exc: BaseException) -> None:
    """One alert per failed run: ``audit_failed`` for a failed audit, ``run_failed`` for anything else."""
    from flows import alerts
    from flows.releases.audit import AuditFailed

    if not r.alerts.channels_env:
        return
    try:
        if isinstance(exc, AuditFailed):
            alert = alerts.audit_failed(r.name, ctx.run_id, exc.alias, exc.results, where["report"], ctx.root)
        else:
            alert = alerts.run_failed(r.name, ctx.run_id, flow_name, where["step"], exc, ctx.root)
        alerts.send(r.alerts, alert)
    except Exception as err:   # the run's own error is what must surface
        log.warning("alert for run %s not sent: %s", ctx.run_id, type(err).__name__)


def _maintain(ctx: RunContext) -> None:
    """Catalog housekeeping after the night, in a process of its own (infra/catalog/maintenance.py): it must never
    fail a night, not even by crashing in native code."""
    from infra.catalog.maintenance import maintain_isolated

    try:
        out = maintain_isolated(ctx.root, ctx.catalog_url)
        if out is not None:
            logger().info("catalog maintenance: %s", out)
    except Exception as exc:
        logger().warning("catalog maintenance skipped: %s", exc)


def _record_run(ctx: RunContext, flow_name: str, r: Recipe, recipe: dict, status: str, detail: str = "") -> None:
    from infra.settings import redact_text

    ctx.catalog.append("runs", [dict(run_id=ctx.run_id, flow=flow_name, status=status, recipe=r.name,
                                     recipe_hash=recipe_digest(recipe), mlflow_run_id=ctx.mlflow_parent,
                                     host=socket.gethostname(), code_version=_code_version(),
                                     detail=redact_text(detail)[:2000], tracking=ctx.tracker.tracking_state())],
                       message="run" if status != "running" else "ledger")


def _warn_untracked(ctx: RunContext) -> None:
    """MLflow was unreachable during the run: the data is committed, the tracking waits in the journal."""
    missing = ctx.tracker.pending()
    if missing:
        from infra.settings import redact_text

        logger().warning("run %s is tracked incompletely: MLflow at %s could not be reached; missing %s, kept in %s. "
                         "`rlt tracking status` lists it; `rlt tracking relog %s` replays it once MLflow is back",
                         ctx.run_id, redact_text(ctx.tracker.uri), ", ".join(f"{v} {k}" for k, v in missing.items()),
                         ctx.tracker.journal_path(), ctx.run_id)


def _code_version() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(__file__), timeout=5).stdout.strip()
    except Exception:
        return ""


@flow(name="rlt-factory", log_prints=False)
def factory_flow(recipe: dict, root: str, until: Optional[str] = None, fail_shards: Optional[list[str]] = None,
                 recipe_path: str = "", tracking_uri: Optional[str] = None, tracking: bool = True,
                 catalog_url: Optional[str] = None) -> dict:
    """Run the recipe's stages in order (up to ``until``), then write the run report."""
    targets = None if until is None else list(STAGES[: STAGES.index(until) + 1])
    return run_pipeline("rlt-factory", recipe, root, targets, fail_shards, recipe_path, tracking_uri, tracking,
                        catalog_url, with_report=until is None)


def _stage_flow(stage: str):
    def run_stage(recipe: dict, root: str, fail_shards: Optional[list[str]] = None, recipe_path: str = "",
                  tracking_uri: Optional[str] = None, tracking: bool = True,
                  catalog_url: Optional[str] = None) -> dict:
        return run_pipeline(f"rlt-{stage}", recipe, root, [stage], fail_shards, recipe_path, tracking_uri,
                            tracking, catalog_url, with_report=False)

    run_stage.__doc__ = f"Run the `{stage}` stage of a recipe (and whatever upstream of it is not committed yet)."
    return flow(run_stage, name=f"rlt-{stage.replace('_', '-')}", log_prints=False)


STAGE_FLOWS = {s: _stage_flow(s) for s in STAGES}
