"""A stage run's lineage outside the catalog: OpenLineage run events and MLflow dataset inputs.

Called by the runner (infra/engine/runner.py) at four points of a stage run that computes: ``started`` (START),
``committed`` (COMPLETE with input and output datasets, and the nested MLflow run's dataset inputs/outputs),
``failed`` (FAIL with the redacted error) and ``reused`` (ABORT: another run committed the key first). Cached and
waited stages emit nothing (they compute nothing; the run that computed the key emitted its events). Model
inputs (builtin or hub models) are not datasets here: their digests are in the run's ``rlt`` facet (``models``)
and in the artifact key. Nothing here ever raises into the stage: see infra/openlineage.py.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Callable, Mapping, ParamSpec, cast

from data_contracts import ArtifactRef, registry
from infra.engine.stage import StageRun
from infra.openlineage import DatasetInfo, StageInfo, code_version
from infra.settings import redact_text

log = logging.getLogger("rlt")

# data-quality figures by artifact, from its record's stats (ingest: problems; filter: distill_set)
_QUALITY_KEYS = ("rows_in", "problems", "quarantined", "candidates", "kept", "kept_teacher", "kept_reference",
                 "yield")
_WARNED: set[str] = set()
P = ParamSpec("P")


def _never_raises(fn: Callable[P, None]) -> Callable[P, None]:
    """Lineage is a record of the work, never a condition for it: one warning per kind of failure."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            if fn.__name__ not in _WARNED:
                _WARNED.add(fn.__name__)
                log.warning("lineage: %s not recorded: %s: %s", fn.__name__, type(exc).__name__,
                            redact_text(str(exc))[:300])
    return wrapper


@_never_raises
def started(run: StageRun) -> None:
    if run.ctx.lineage.enabled:
        run.ctx.lineage.start(_info(run), _inputs(run))


@_never_raises
def failed(run: StageRun, exc: BaseException) -> None:
    if run.ctx.lineage.enabled:
        run.ctx.lineage.fail(_info(run), _inputs(run), f"{type(exc).__name__}: {exc}")


@_never_raises
def reused(run: StageRun, refs: Mapping[str, ArtifactRef]) -> None:
    if run.ctx.lineage.enabled:
        by = refs[run.stage.primary].run_id
        run.ctx.lineage.abort(_info(run), _inputs(run), f"run {by} committed {run.key} first; its artifact is used")


@_never_raises
def committed(run: StageRun, records: Mapping[str, dict[str, Any]]) -> None:
    """After the commit: COMPLETE (inputs -> outputs) and the MLflow dataset inputs/outputs of the nested run."""
    emitter, tracked = run.ctx.lineage, run.ctx.tracking and bool(run.mlflow_run)
    if not (emitter.enabled or tracked):
        return
    outputs = [_output(run, records[run.keys[o.name]]) for o in run.stage.outputs if run.keys[o.name] in records]
    if tracked:   # the tracker never raises (degraded mode journals the call)
        run.ctx.tracker.log_datasets(run.mlflow_run, mlflow_datasets(run, outputs))
    if emitter.enabled:
        emitter.complete(_info(run), _inputs(run), outputs)


def mlflow_datasets(run: StageRun, outputs: list[DatasetInfo]) -> list[dict[str, str]]:
    rows = [{"name": r.name, "digest": r.key, "source": r.uri, "context": "input"} for r in _artifact_inputs(run)]
    rows += [{"name": d.name, "digest": d.key, "source": d.uri, "context": "output"} for d in outputs]
    return rows


# ---------------------------------------------------------------------------------------------- building blocks
def job_name(run: StageRun) -> str:
    ctx = run.ctx
    return f"{ctx.recipe_name or ctx.flow_name or 'rlt'}.{run.stage.name}" + (f"[{run.label}]" if run.label else "")


def _info(run: StageRun) -> StageInfo:
    p = run.parts
    facts = {"label": run.label, "stage_version": run.stage.version, "config_hash": p.config_hash(),
             "models": dict(p.models), "mlflow_run_id": run.mlflow_run, "recipe": run.ctx.recipe_name,
             "code_version": code_version()["version"]}
    return StageInfo(run_id=run.ctx.run_id, flow=run.ctx.flow_name or "rlt", job=job_name(run), stage=run.stage.name,
                     key=run.key, facts=facts)


def _artifact_inputs(run: StageRun) -> list[ArtifactRef]:
    """The artifacts the outputs derive from: the key's inputs, as the catalog's lineage records them. An input the
    key leaves out (train_teacher without phases: the base model is the teacher, the problems are not read) is no
    parent in `rlt lineage`, so it is no input dataset either."""
    keyed = run.parts.inputs   # by the inputs' names in the key
    named = sorted((run.stage.key_name(name), v) for name, v in run.inputs.items() if isinstance(v, ArtifactRef))
    return [v for key_name, v in named if key_name in keyed]


def _inputs(run: StageRun) -> list[DatasetInfo]:
    contracts = registry()
    out = []
    for ref in _artifact_inputs(run):
        c = contracts.get(ref.name)
        out.append(DatasetInfo(name=ref.name, key=ref.key, uri=ref.uri, schema=c.schema if c else None,
                               num_rows=ref.num_rows,
                               meta={"producer": ref.producer, "schema_version": ref.schema_version,
                                     "config_hash": ref.config_hash, "run_id": ref.run_id, "label": ref.label,
                                     "digest": ref.digest}))
    return out


def _output(run: StageRun, rec: Mapping[str, Any]) -> DatasetInfo:
    contracts = registry()
    c = contracts.get(rec["name"])
    files = list(rec.get("files") or [])
    stats = _loads(rec.get("stats_json"))
    return DatasetInfo(name=rec["name"], key=rec["key"], uri=rec["uri"], schema=c.schema if c else None,
                       num_rows=int(rec.get("num_rows") or 0), size=_size(run, files), file_count=len(files),
                       quality=quality(rec["name"], stats),
                       meta={"stage": rec.get("stage"), "stage_version": rec.get("stage_version"),
                             "producer": rec.get("producer"), "schema_version": rec.get("schema_version"),
                             "config_hash": rec.get("config_hash"), "label": rec.get("label") or "",
                             "digest": rec.get("digest") or "", "run_id": rec.get("run_id")})


def quality(name: str, stats: Mapping[str, Any]) -> dict[str, Any]:
    """The data-quality figures an artifact's stats hold: ingest's quarantine counts (by reason, and the rate over
    the source rows), the filter's candidates, kept rows, yield and drop reasons. Empty for other artifacts."""
    out: dict[str, Any] = {k: stats[k] for k in _QUALITY_KEYS if isinstance(stats.get(k), (int, float))}
    by_reason = {k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("quarantine.")}
    if name == "quarantine":   # the quarantine artifact's stats are its reason counts
        by_reason = by_reason or {k: v for k, v in stats.items() if k != "of" and isinstance(v, int)}
    if by_reason:
        out["quarantine_by_reason"] = by_reason
    if isinstance(stats.get("rows_in"), int) and stats["rows_in"] and "quarantined" in out:
        out["quarantine_rate"] = out["quarantined"] / stats["rows_in"]
    reasons = {k.split(".", 1)[1]: v for k, v in stats.items() if k.startswith("reason.")}
    if reasons:
        out["filter_reasons"] = reasons
    return out


def _size(run: StageRun, files: list[str]) -> int | None:
    """Bytes of a committed artifact's files, on a local store only (a HEAD per file on S3 is not cheap)."""
    store = run.ctx.store
    if not store.local or not files:
        return None
    try:
        return sum(os.path.getsize(store.path(f)) for f in files)
    except OSError:
        return None


def _loads(text: str | None) -> dict[str, Any]:
    try:
        return cast(dict[str, Any], json.loads(text or "{}"))
    except ValueError:
        return {}
