"""The plan: every stage's artifact key, computed up front from the recipe, and what will run and why."""
from __future__ import annotations

import json
from typing import Any

from flows.pipeline import Planned
from flows.pipeline import plan as plan_keys
from flows.recipe import Recipe
from infra.catalog.artifacts import KeyParts, digest
from infra.catalog.lake import all_of
from infra.catalog.locks import describe
from infra.engine.context import RunContext

StagePlan = Planned   # the name older code and tests use


def stage_keys(recipe: Recipe, targets: list[str] | None = None) -> list[Planned]:
    """Keys of every stage, in order (content-addressed: computable before anything runs)."""
    return plan_keys(recipe, targets)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def explain_change(new: KeyParts, old: dict) -> str:
    """Which part of the key differs from the newest earlier artifact of the same stage."""
    reasons = []
    if old["stage_version"] != new.stage_version:
        reasons.append(f"stage version {old['stage_version']} -> {new.stage_version}")
    a, b = _flat(json.loads(old["config_json"])), _flat(new.config)
    changed = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if changed:
        reasons.append("config " + "; ".join(changed[:6])
                       + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""))
    old_in = json.loads(old["inputs_json"])
    for role, k in sorted(new.inputs.items()):
        if old_in.get(role) != k:
            reasons.append(f"input '{role}' changed ({str(old_in.get(role))[:8]} -> {k[:8]})")
    old_m = json.loads(old["models_json"])
    for role, k in sorted(new.models.items()):
        if old_m.get(role) != k:
            reasons.append("source content changed" if role == "source" else f"model '{role}' changed")
    return "; ".join(reasons) or "same key parts, never committed"


def annotate(ctx: RunContext, plans: list[Planned]) -> list[Planned]:
    """Fill in status and reason for each stage from the catalog (and the locks: what runs elsewhere now).

    Three catalog queries whatever the number of stages: committed keys, shard ledgers, latest artifacts."""
    found = ctx.catalog.artifacts(k for p in plans for k in p.keys.values())
    todo = [p for p in plans if not all_of(found, p.keys.values())]
    shards = ctx.catalog.shard_states_many(p.key for p in todo)
    secondary = sorted({n for p in todo for n in _secondary(p)})
    latest = ctx.catalog.latest_artifacts([(p.stage, p.label) for p in todo], exclude_names=secondary)
    for p in plans:
        if p not in todo:
            p.status, p.reason = "cached", f"committed by run {found[p.key]['run_id']}"
            continue
        states = shards.get(p.key, {})
        if states:
            counts: dict[str, int] = {}
            for s in states.values():
                counts[s["status"]] = counts.get(s["status"], 0) + 1
            p.status, p.shards = "resume", counts
            failed = [f"{sid}: {(s['error'] or '')[:60]}" for sid, s in sorted(states.items())
                      if s["status"] == "failed"]
            p.reason = f"shards {counts}" + (f"; failed {failed[:3]}" if failed else "")
        else:
            p.status = "run"
            prev = latest.get((p.stage, p.label))
            p.reason = explain_change(p.parts, prev) if prev else "new: no earlier artifact of this stage"
        holder = ctx.locks.holder(f"stage:{p.key}")
        if holder is not None:
            p.status, p.reason = "running", f"in progress in {describe(holder)}; this run would wait for it"
    return plans


def count_reuse(ctx: RunContext, plans: list[Planned]) -> list[Planned]:
    """For incremental stages that will run: how many of their rows earlier artifacts hold (infra/engine/reuse.py).

    The rows a stage will work on are known before it runs: from its input when that is committed, from the
    source (read, not written: ``ingest.preview``) when ingest has yet to run, or from the upstream stage's own
    expected ids. Counts are by row id; score also compares explanation texts when it runs."""
    from infra.engine.reuse import count_reusable, find_donors
    from infra.engine.shards import chunks

    by_id = {p.node.id: p for p in plans}
    for p in plans:
        spec = p.node.stage.incremental
        if spec is None or p.status not in ("run", "resume"):
            continue
        ids = _expected_ids(ctx, p, by_id)
        if ids is None:
            continue
        donors = find_donors(ctx.catalog, p.stage, p.node.stage.primary, spec, p.parts, p.key)
        total = reused = 0
        for batch in chunks(ids, 50_000):
            total += len(batch)
            reused += count_reusable(ctx.catalog, p.node.stage.primary, spec.id_col, donors, batch)
        p.reuse = {"rows": total, "reused": reused, "new": total - reused, "donors": len(donors)}
        p.reason = (f"{total - reused:,} new of {total:,} ({reused:,} reused"
                    + (f" from {len(donors)} earlier artifact(s))" if donors else ")") + f"; {p.reason}")
    return plans


def _expected_ids(ctx: RunContext, p: Planned, by_id: dict[str, Planned]):
    """The output ids node ``p`` will produce, streamed; None when they cannot be known before running."""
    import itertools

    from infra.engine.shards import chunks

    spec = p.node.stage.incremental
    src = p.sources[spec.input]
    up = by_id.get(src.node)
    if up is None:
        return None
    in_key = up.keys[src.output]
    sel = spec.select(p.cfg)
    limit = sel.limit
    if ctx.catalog.artifact(in_key) is not None:
        rows = _scan(ctx, src.output, in_key, spec.columns, sel.where)
    elif up.node.stage.name == "ingest":
        from tasks.ingest import preview

        rows = (r for r in preview(up.cfg) if sel.matches(r))
        if limit:   # the stage takes the first ``limit`` in id order
            rows = iter(sorted(rows, key=lambda r: r[spec.columns[0]]))
    elif up.node.stage.incremental is not None and spec.one_to_one:
        up_ids = _expected_ids(ctx, up, by_id)
        return None if up_ids is None else itertools.islice(up_ids, limit)
    else:
        return None
    rows = itertools.islice(rows, limit)
    return (i for batch in chunks(rows, 512) for i in spec.ids(p.cfg, p.parts, batch))


def _scan(ctx: RunContext, name: str, key: str, columns, where: str):
    from data_contracts import registry

    for b in ctx.catalog.scan(name, key, list(columns), registry()[name].order_by, where, 4096):
        yield from b.to_pylist()


def _secondary(p: Planned) -> list[str]:
    return [o.name for o in p.node.stage.outputs[1:]]


def plan_id(plans: list[Planned]) -> str:
    return digest([p.key for p in plans])
