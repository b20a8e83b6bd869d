"""The plan: every stage's artifact key, computed up front from the recipe, and what will run and why."""
from __future__ import annotations

import json
from typing import Any

from flows.pipeline import Planned, plan as plan_keys
from flows.recipe import Recipe
from infra.artifacts import KeyParts, digest
from infra.locks import describe
from tasks.common import RunContext

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
        reasons.append("config " + "; ".join(changed[:6]) + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""))
    old_in = json.loads(old["inputs_json"])
    for role, k in sorted(new.inputs.items()):
        if old_in.get(role) != k:
            reasons.append(f"input '{role}' changed ({str(old_in.get(role))[:8]} -> {k[:8]})")
    old_m = json.loads(old["models_json"])
    for role, k in sorted(new.models.items()):
        if old_m.get(role) != k:
            reasons.append(f"model '{role}' changed")
    return "; ".join(reasons) or "same key parts, never committed"


def annotate(ctx: RunContext, plans: list[Planned]) -> list[Planned]:
    """Fill in status and reason for each stage from the catalog (and the locks: what runs elsewhere now).

    Three catalog queries whatever the number of stages: committed keys, shard ledgers, latest artifacts."""
    found = ctx.catalog.artifacts(k for p in plans for k in p.keys.values())
    todo = [p for p in plans if not all(k in found for k in p.keys.values())]
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


def _secondary(p: Planned) -> list[str]:
    return [o.name for o in p.node.stage.outputs[1:]]


def plan_id(plans: list[Planned]) -> str:
    return digest([p.key for p in plans])
