"""filter: reward ledger -> distill set + filter decisions (every candidate, kept or dropped, with the reason).

Needs no model: re-filtering with new rules or re-weighted coefficients reuses the ledger (no forward pass).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Annotated, Literal, Optional

from pydantic import Field

from data_contracts import distill_set, filter_decisions
from infra.catalog.artifacts import digest
from infra.engine.config import KEY_IF_SET, NOT_IN_KEY, StageConfig
from infra.engine.stage import Artifact, StageRun, declare
from rlt_core import text_rules
from rlt_core.filtering import FilterRules, decide_problem, rules_digest
from rlt_core.prompts import PromptStyle, parse_teacher_completion, student_assistant_content
from rlt_core.text_rules import TextFeatures, TextRules

PART_ROWS = 2000
LEDGER_COLS = ["explanation_id", "problem_id", "sample_index", "reward", "answer_logprob_mean",
               "answer_logprob_min", "kl_mean", "kl_max", "format_penalty", "n_explanation_tokens"]


class FilterConfig(StageConfig):
    rules: FilterRules = Field(default_factory=FilterRules)
    style: PromptStyle = Field(default_factory=PromptStyle)
    # added after keys were recorded: a recipe without text rules keeps its keys
    text: Annotated[Optional[TextRules], KEY_IF_SET] = Field(
        default=None, description="rules on the explanation's text (rlt_core/text_rules.py); `text: {}` turns "
        "them on at their defaults, None leaves them off")
    # human review (flows/releases/review.py): the flow fills rejected_ids from the catalog's `reviews` when
    # reject_reviewed is on; their digest is the key (key_extra), so a recipe without it keeps its keys
    reject_reviewed: Annotated[bool, NOT_IN_KEY] = Field(
        default=False, description="drop explanations people rejected in review (reason human_rejected)")
    rejected_ids: Annotated[tuple[str, ...], NOT_IN_KEY] = Field(
        default=(), description="explanation ids to drop as human_rejected (filled from `reviews` when "
        "reject_reviewed is on; may be set by hand)")

    # added after keys were recorded: at "teacher" it stays out of the key
    source: Annotated[Literal["teacher", "reference"], KEY_IF_SET] = Field(
        default="teacher", description="teacher: the rules pick among the teacher's explanations (the night's "
        "distill set); reference: every problem's reference solution as the thought, no explanation (the "
        "`filter[reference]` node of `evaluate.baselines: [reference]`, flows/pipeline.py)")

    def key_extra(self) -> dict[str, str]:
        """The rejected explanations' digest, when there are any (none: the key is what it always was)."""
        if self.source == "reference":
            return {}
        return {"human_rejected": digest(sorted(set(self.rejected_ids)))} if self.rejected_ids else {}

    def key_config(self) -> dict:
        """The reference distill set depends on the student format alone, not on the rules."""
        if self.source == "reference":
            return {"source": "reference", "style": self.style.model_dump(mode="json")}
        return super().key_config()

    def key_inputs(self, declared: tuple[str, ...]) -> tuple[str, ...]:
        # the reference distill set reads the problems only: a new night's explanations leave its key alone
        return ("problems",) if self.source == "reference" else declared


def _row(style: PromptStyle, problem_id: str, explanation_id: str | None, origin: str, question: str,
         solution: str, thought: str, reward: float | None) -> dict:
    return dict(example_id="d_" + digest([problem_id, explanation_id or "reference"]), problem_id=problem_id,
                explanation_id=explanation_id, origin=origin, system=style.student_system_prompt,
                question=question, assistant=student_assistant_content(question, solution, thought, style),
                reward=reward)


def _write(writer, rows: list[dict]) -> None:
    for i in range(0, len(rows), PART_ROWS):
        writer.write_part(rows[i:i + PART_ROWS])


def _text_features(rules: TextRules, style: PromptStyle, explanations: Artifact) -> dict[str, TextFeatures]:
    """One streaming pass over the explanations: each candidate's text features (small; no text kept)."""
    return {e["explanation_id"]: text_rules.features(
                parse_teacher_completion(e["completion"], style).explanation, e["question"], e["solution"],
                e["finish_reason"], rules)
            for e in explanations.rows(["explanation_id", "question", "solution", "completion", "finish_reason"])}


def filter_(run: StageRun, cfg: FilterConfig, scored_explanations: Optional[Artifact],
            explanations: Optional[Artifact], problems: Artifact) -> dict:
    """Best-of-K (and the other rules) per problem from the reward ledger; winners become student-format examples.
    With ``source: reference``, every problem's reference solution instead (the baseline student's data): it reads
    the problems alone, so the factory runs it without the night's explanations (before the teacher, when the
    baseline student is the reward's student)."""
    if cfg.source == "reference":
        return _reference_set(run, cfg, problems)
    if scored_explanations is None or explanations is None:
        raise TypeError("filter: source 'teacher' needs the scored_explanations and explanations inputs")
    by_problem: dict[str, list[dict]] = defaultdict(list)
    for row in scored_explanations.rows(LEDGER_COLS):
        by_problem[row["problem_id"]].append(row)
    feats = _text_features(cfg.text, cfg.style, explanations) if cfg.text is not None else None
    rejected = frozenset(cfg.rejected_ids)
    decisions = [d for pid in sorted(by_problem)
                 for d in decide_problem(pid, by_problem[pid], cfg.rules, cfg.text, feats, rejected)]
    digest_ = rules_digest(cfg.rules, cfg.text)
    _write(run.writer("filter_decisions"), [
        dict(problem_id=d.problem_id, explanation_id=d.explanation_id, sample_index=d.sample_index, kept=d.kept,
             rank=d.rank, reason=d.reason, reward=d.reward, rules_digest=digest_) for d in decisions])
    kept = {d.explanation_id: d for d in decisions if d.kept and d.explanation_id}
    fallback = {d.problem_id for d in decisions if d.kept and d.explanation_id is None}
    rows = []
    for e in explanations.rows(["explanation_id", "problem_id", "question", "solution", "completion"]):
        d = kept.get(e["explanation_id"])
        if d is not None:
            thought = parse_teacher_completion(e["completion"], cfg.style).explanation
            rows.append(_row(cfg.style, e["problem_id"], e["explanation_id"], "teacher", e["question"],
                             e["solution"], thought, d.reward))
    for p in problems.rows(["problem_id", "question", "solution", "reasoning_trace"]):
        if p["problem_id"] in fallback:  # rlt-method.md 4: fall back to the reference trace
            rows.append(_row(cfg.style, p["problem_id"], None, "reference", p["question"], p["solution"],
                             p["reasoning_trace"] or p["solution"], None))
    _write(run.writer("distill_set"), rows)
    reasons = Counter(d.reason for d in decisions)
    n_cand = sum(1 for d in decisions if d.explanation_id)
    stats = {"candidates": n_cand, "kept": len(rows), "kept_teacher": len(kept), "kept_reference": len(fallback),
             "yield": len(kept) / n_cand if n_cand else 0.0, **{f"reason.{k}": v for k, v in sorted(reasons.items())}}
    run.writer("filter_decisions").stats.update(stats)
    run.log.info("filter: kept %d of %d candidates (+%d reference fallbacks) %s", len(kept), n_cand, len(fallback),
                 dict(reasons))
    return stats


def _reference_set(run: StageRun, cfg: FilterConfig, problems: Artifact) -> dict:
    """Every problem once, its reference as the thought (the reasoning trace when the source has one, else the
    solution): the same rows the filter falls back to when no explanation passes, for every problem."""
    rows, decisions = [], []
    for p in problems.rows(["problem_id", "question", "solution", "reasoning_trace"]):
        rows.append(_row(cfg.style, p["problem_id"], None, "reference", p["question"], p["solution"],
                         p["reasoning_trace"] or p["solution"], None))
        decisions.append(dict(problem_id=p["problem_id"], explanation_id=None, sample_index=-1, kept=True, rank=0,
                              reason="reference_baseline", reward=None, rules_digest="reference"))
    _write(run.writer("filter_decisions"), decisions)
    _write(run.writer("distill_set"), rows)
    stats = {"candidates": 0, "kept": len(rows), "kept_teacher": 0, "kept_reference": len(rows), "yield": None,
             "reason.reference_baseline": len(rows)}
    run.writer("filter_decisions").stats.update(stats)
    run.log.info("filter[%s]: %d reference rows (the baseline student's data)", run.label, len(rows))
    return stats


STAGE = declare(filter_, version="1", outputs=(distill_set.CONTRACT, filter_decisions.CONTRACT),
                key_names={"scored_explanations": "scored"})   # the key's name for this input (keys stay as they were)
