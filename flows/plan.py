"""The plan: every stage's artifact key, computed up front from the recipe, and what will run and why."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from infra.artifacts import KeyParts, digest
from infra.models import resolve_model
from flows.recipe import Recipe
from tasks import distill, evaluate, filter as filter_, generate, ingest, score, train_teacher
from tasks.common import RunContext


@dataclass
class StagePlan:
    stage: str
    parts: KeyParts
    label: str = ""
    status: str = ""          # cached | run | resume
    reason: str = ""
    shards: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.parts.key()


def stage_keys(recipe: Recipe) -> list[StagePlan]:
    """Keys of every stage, in order (content-addressed: computable before anything runs)."""
    r = recipe
    base = resolve_model(r.train_teacher.base_model)
    reward_student = resolve_model(r.train_teacher.student_model)
    score_student = resolve_model(r.score.student_model)
    student_base = resolve_model(r.distill.student_model)
    p_ing = ingest.key_parts(r.ingest)
    p_tt = train_teacher.key_parts(r.train_teacher, p_ing.key(), base.digest, reward_student.digest)
    p_gen = generate.key_parts(r.generate, p_ing.key(), p_tt.key())
    p_sc = score.key_parts(r.score, p_gen.key(), p_tt.key(), score_student.digest)
    p_fl = filter_.key_parts(r.filter, p_sc.key(), p_gen.key(), p_ing.key())
    p_ds = distill.key_parts(r.distill, p_fl.key(), student_base.digest)
    plans = [StagePlan("ingest", p_ing), StagePlan("train_teacher", p_tt), StagePlan("generate", p_gen),
             StagePlan("score", p_sc), StagePlan("filter", p_fl), StagePlan("distill", p_ds)]
    if r.evaluate.include_base:
        plans.append(StagePlan("evaluate", evaluate.key_parts(r.evaluate, r.distill.student_model,
                                                              student_base.digest), label="base"))
    plans.append(StagePlan("evaluate", evaluate.key_parts(r.evaluate, p_ds.key(), "checkpoint:" + p_ds.key()),
                           label="distilled"))
    return plans


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


def annotate(ctx: RunContext, plans: list[StagePlan]) -> list[StagePlan]:
    """Fill in status and reason for each stage from the manifest."""
    arts = ctx.manifest.table("artifacts").to_pylist()
    committed = {a["key"] for a in arts}
    for p in plans:
        if p.key in committed:
            p.status, p.reason = "cached", "artifact committed"
            continue
        states = ctx.manifest.shard_states(p.key)
        if states:
            counts: dict[str, int] = {}
            for s in states.values():
                counts[s["status"]] = counts.get(s["status"], 0) + 1
            p.status, p.shards = "resume", counts
            failed = [f"{sid}: {s['error'][:60]}" for sid, s in sorted(states.items()) if s["status"] == "failed"]
            p.reason = f"shards {counts}" + (f"; failed {failed[:3]}" if failed else "")
            continue
        p.status = "run"
        previous = [a for a in arts if a["stage"] == p.stage and a["name"] not in ("quarantine", "filter_decisions")]
        if p.stage == "evaluate":
            previous = [a for a in previous if json.loads(a["stats_json"] or "{}").get("label") == p.label]
        if previous:
            p.reason = explain_change(p.parts, max(previous, key=lambda a: a["ts"]))
        else:
            p.reason = "new: no earlier artifact of this stage"
    return plans


def plan_id(plans: list[StagePlan]) -> str:
    return digest([p.key for p in plans])
