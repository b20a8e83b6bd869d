"""filter: reward ledger -> filter decisions (every candidate, kept or dropped, with the reason) + distill set.

Needs no model: re-filtering with new rules or re-weighted coefficients reuses the ledger (no forward pass).
"""
from __future__ import annotations

import time
from collections import defaultdict

from pydantic import BaseModel, ConfigDict, Field

from data_contracts import ArtifactRef, distill_set, filter_decisions
from infra.artifacts import ArtifactWriter, KeyParts, digest
from rlt_core.filtering import FilterRules, decide_problem
from rlt_core.prompts import PromptStyle, parse_teacher_completion, student_assistant_content
from tasks.common import RunContext, cached, finish, iter_rows, logger, stage_run, write_provenance

STAGE = "filter"
STAGE_VERSION = "1"
PART_ROWS = 2000
LEDGER_COLS = ["explanation_id", "problem_id", "sample_index", "reward", "answer_logprob_mean",
               "answer_logprob_min", "kl_mean", "kl_max", "format_penalty", "n_explanation_tokens"]


class FilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: FilterRules = Field(default_factory=FilterRules)
    style: PromptStyle = Field(default_factory=PromptStyle)


def key_parts(cfg: FilterConfig, scored_key: str, explanations_key: str, problems_key: str) -> KeyParts:
    return KeyParts(STAGE, STAGE_VERSION, cfg.model_dump(mode="json"),
                    inputs={"scored": scored_key, "explanations": explanations_key, "problems": problems_key})


def _decisions(ctx: RunContext, scored: ArtifactRef, rules: FilterRules) -> list:
    by_problem: dict[str, list[dict]] = defaultdict(list)
    paths = [ctx.store.path(f) for f in ctx.manifest.artifact(scored.key)["files"]]
    for batch in ctx.store.iter_parquet_batches(paths):
        for row in batch.select(LEDGER_COLS).to_pylist():
            by_problem[row["problem_id"]].append(row)
    out = []
    for pid in sorted(by_problem):
        out.extend(decide_problem(pid, by_problem[pid], rules))
    return out


def run(ctx: RunContext, cfg: FilterConfig, scored: ArtifactRef, explanations: ArtifactRef,
        problems: ArtifactRef) -> dict[str, ArtifactRef]:
    parts = key_parts(cfg, scored.key, explanations.key, problems.key)
    key = parts.key()
    dkey = digest({"decisions_of": key}, 20)
    if (hit := cached(ctx, STAGE, key)) is not None:
        return {"distill_set": hit, "filter_decisions": cached(ctx, STAGE, dkey) or hit}
    log, t0 = logger(), time.time()
    with stage_run(ctx, STAGE, parts) as mlrun:
        decisions = _decisions(ctx, scored, cfg.rules)
        rules_digest = cfg.rules.digest()
        dwriter = ArtifactWriter(ctx.store, ctx.manifest, "filter_decisions", parts, ctx.run_id,
                                 filter_decisions.CONTRACT, key=dkey)
        rows = [dict(problem_id=d.problem_id, explanation_id=d.explanation_id, sample_index=d.sample_index,
                     kept=d.kept, rank=d.rank, reason=d.reason, reward=d.reward, rules_digest=rules_digest)
                for d in decisions]
        for i in range(0, len(rows), PART_ROWS):
            dwriter.write_part(filter_decisions.CONTRACT.to_table(rows[i:i + PART_ROWS]))
        kept_expl = {d.explanation_id: d for d in decisions if d.kept and d.explanation_id}
        fallback = {d.problem_id for d in decisions if d.kept and d.explanation_id is None}
        writer = ArtifactWriter(ctx.store, ctx.manifest, "distill_set", parts, ctx.run_id, distill_set.CONTRACT)
        buf: list[dict] = []
        for e in iter_rows(ctx, explanations):
            d = kept_expl.get(e["explanation_id"])
            if d is not None:
                thought = parse_teacher_completion(e["completion"], cfg.style).explanation
                buf.append(_row(cfg.style, e["problem_id"], e["explanation_id"], "teacher", e["question"],
                                e["solution"], thought, d.reward))
        for p in iter_rows(ctx, problems):
            if p["problem_id"] in fallback:  # rlt-method.md 4: fall back to the reference trace
                buf.append(_row(cfg.style, p["problem_id"], None, "reference", p["question"], p["solution"],
                                p["reasoning_trace"] or p["solution"], None))
        for i in range(0, len(buf), PART_ROWS):
            writer.write_part(distill_set.CONTRACT.to_table(buf[i:i + PART_ROWS]))
        write_provenance(ctx, writer.key, "distill_row", buf, "example_id", "explanation_id", "explanation")
        reasons: dict[str, int] = defaultdict(int)
        for d in decisions:
            reasons[d.reason] += 1
        n_cand = sum(1 for d in decisions if d.explanation_id)
        stats = {"candidates": n_cand, "kept": len(buf), "kept_teacher": len(kept_expl),
                 "kept_reference": len(fallback), "yield": len(kept_expl) / n_cand if n_cand else 0.0,
                 "decisions_key": dkey, **{f"reason.{k}": v for k, v in sorted(reasons.items())}}
        dref = dwriter.commit({"of": key, **stats})
        ref = finish(ctx, writer, STAGE, t0, stats, mlrun)
        log.info("filter: kept %d of %d candidates (+%d reference fallbacks) %s", len(kept_expl), n_cand,
                 len(fallback), dict(reasons))
    return {"distill_set": ref, "filter_decisions": dref}


def _row(style: PromptStyle, problem_id: str, explanation_id: str | None, origin: str, question: str,
         solution: str, thought: str, reward: float | None) -> dict:
    return dict(example_id="d_" + digest([problem_id, explanation_id or "reference"]), problem_id=problem_id,
                explanation_id=explanation_id, origin=origin, system=style.student_system_prompt,
                question=question, assistant=student_assistant_content(question, solution, thought, style), reward=reward)
