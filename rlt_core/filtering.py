"""Filter scored explanations: best-of-K per problem, thresholds, format and length rules, reference fallback,
and (when a recipe sets them) the text rules of rlt_core/text_rules.py.

Pure functions over ledger rows (dicts with the reward terms), so re-filtering with new rules, or re-weighting
the reward's coefficients, needs no forward pass (rlt-method.md section 4 and "what a faithful reimplementation
must get right" item 12).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Container, Iterable, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field

from rlt_core import text_rules
from rlt_core.reward import RewardConfig, combine
from rlt_core.text_rules import TextFeatures, TextRules


class Reweight(BaseModel):
    """New reward coefficients applied to the stored terms (None = keep the ledger's reward)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    answer_coef: tuple[float, float] = (1.0, 0.01)
    kl_coef: tuple[float, float] = (3.0, 0.03)


class FilterRules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    top_k: int = Field(default=1, ge=1, description="keep the best k candidates per problem (best-of-K: 1)")
    min_reward: Optional[float] = Field(default=None, description="drop candidates below this reward")
    require_end_tag: bool = Field(default=True, description="drop candidates with a format penalty")
    min_explanation_tokens: int = Field(default=1, ge=0)
    max_explanation_tokens: Optional[int] = Field(default=None, ge=1)
    fallback_to_reference: bool = Field(
        default=True, description="when no candidate of a problem survives, keep the reference trace instead")
    reweight: Optional[Reweight] = None

    def digest(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rules_digest(rules: FilterRules, text: Optional[TextRules] = None) -> str:
    """The digest a decision records: the rules', joined by the text rules' when they are on (so a ledger filtered
    before text rules existed keeps its digest)."""
    if text is None:
        return rules.digest()
    blob = json.dumps([rules.digest(), text.model_dump(mode="json")], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Decision:
    problem_id: str
    explanation_id: Optional[str]
    sample_index: int
    kept: bool
    rank: int
    reason: str
    reward: Optional[float]


def effective_reward(row: dict, rules: FilterRules) -> float:
    """The ledger's reward, or the reward recomputed from its stored terms with new coefficients."""
    if rules.reweight is None:
        return float(row["reward"])
    cfg = RewardConfig(answer_coef=rules.reweight.answer_coef, kl_coef=rules.reweight.kl_coef)
    reward, _, _ = combine(row["answer_logprob_mean"], row["answer_logprob_min"], row["kl_mean"], row["kl_max"],
                           row["format_penalty"], cfg)
    return reward


def _rule_violation(row: dict, reward: float, rules: FilterRules) -> Optional[str]:
    if not math.isfinite(reward):
        return "non_finite_reward"
    if rules.require_end_tag and row["format_penalty"] < 0:
        return "missing_end_tag"
    if row["n_explanation_tokens"] < rules.min_explanation_tokens:
        return "too_short"
    if rules.max_explanation_tokens is not None and row["n_explanation_tokens"] > rules.max_explanation_tokens:
        return "too_long"
    if rules.min_reward is not None and reward < rules.min_reward:
        return "below_min_reward"
    return None


def decide_problem(problem_id: str, candidates: Iterable[dict], rules: FilterRules,
                   text: Optional[TextRules] = None, feats: Optional[Mapping[str, TextFeatures]] = None,
                   rejected: Container[str] = frozenset()) -> list[Decision]:
    """Decisions for every candidate of one problem, plus a reference row when it falls back.

    Candidates are ranked by (effective) reward, ties broken by sample index. Eligible candidates are kept
    in rank order up to ``top_k``; each dropped one gets the first rule it broke (``human_rejected`` when its
    explanation id is in ``rejected``: people reviewed and failed it; then the reward rules, then the text rules
    when ``text`` is given with each candidate's ``feats`` by explanation id), ``near_duplicate`` when it repeats a
    better-ranked kept one, or ``not_top_k``.
    """
    if text is not None and feats is None:
        raise ValueError("text rules need the candidates' text features")
    scored = [(effective_reward(c, rules), c) for c in candidates]
    scored.sort(key=lambda t: (-t[0] if math.isfinite(t[0]) else math.inf, t[1]["sample_index"]))
    out: list[Decision] = []
    kept: list[Optional[TextFeatures]] = []
    for rank, (reward, c) in enumerate(scored):
        reason = "human_rejected" if c["explanation_id"] in rejected else _rule_violation(c, reward, rules)
        f = feats[c["explanation_id"]] if text is not None and feats is not None else None
        if reason is None and f is not None and text is not None:
            reason = text_rules.violation(f, text)
            if reason is None and len(kept) < rules.top_k and \
                    text_rules.near_duplicate(f, [k for k in kept if k is not None], text):
                reason = "near_duplicate"
        keep = reason is None and len(kept) < rules.top_k
        if keep:
            kept.append(f)
            reason = "best_of_k" if rules.top_k == 1 else "top_k"
        elif reason is None:
            reason = "not_top_k"
        out.append(Decision(problem_id, c["explanation_id"], c["sample_index"], keep, rank, reason,
                            reward if math.isfinite(reward) else None))
    if not kept and rules.fallback_to_reference:
        out.append(Decision(problem_id, None, -1, True, len(scored), "reference_fallback", None))
    return out
