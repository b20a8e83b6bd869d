"""Which of a night's kept examples people review: a stratified, deterministic sample of the distill set.

Strata (an example is drawn for the first stratum that reaches it):

- ``reward_q1`` .. ``reward_q4``: the kept teacher explanations split into reward quartiles (q1 = lowest);
- ``reference_fallback``: problems whose every candidate was dropped, kept with the reference trace;
- ``near_length_limit``: teacher explanations that stopped at the token limit or came within the recipe's fraction
  of it (where truncated reasoning hides);
- ``random``: any kept example.

The strata take turns, one example each, in that order, until the sample is full or every stratum is empty; each
stratum's order is a shuffle seeded by the distill set's key, so the same set always gives the same sample.
"""
from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Sequence

from infra.catalog.lake import Catalog
from rlt_core.prompts import PromptStyle, parse_teacher_completion

STRATA = ("reward_q1", "reward_q2", "reward_q3", "reward_q4", "reference_fallback", "near_length_limit", "random")
TERMS = ("reward", "answer_logprob_mean", "answer_logprob_min", "kl_mean", "kl_max", "format_penalty")


def _rng(distill_key: str, stratum: str) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{distill_key}|{stratum}".encode()).hexdigest()[:16], 16))


def strata(rows: Sequence[dict], near_length_limit: float) -> dict[str, list[dict]]:
    """Each stratum's members, in a stable order (by example id)."""
    rows = sorted(rows, key=lambda r: r["example_id"])
    teacher = sorted((r for r in rows if r["origin"] == "teacher" and r.get("reward") is not None),
                     key=lambda r: (r["reward"], r["example_id"]))
    out: dict[str, list[dict]] = {s: [] for s in STRATA}
    for i, r in enumerate(teacher):
        out[f"reward_q{min(4, 1 + (4 * i) // len(teacher))}"].append(r)
    for s in ("reward_q1", "reward_q2", "reward_q3", "reward_q4"):
        out[s].sort(key=lambda r: r["example_id"])
    out["reference_fallback"] = [r for r in rows if r["origin"] == "reference"]
    out["near_length_limit"] = [r for r in rows if r["origin"] == "teacher" and _near_limit(r, near_length_limit)]
    out["random"] = list(rows)
    return out


def _near_limit(r: dict, fraction: float) -> bool:
    if r.get("finish_reason") == "length":
        return True
    limit, used = r.get("max_new_tokens"), r.get("completion_tokens")
    return bool(limit and used is not None and used >= fraction * limit)


def draw(rows: Sequence[dict], n: int, distill_key: str, near_length_limit: float = 0.9) -> list[dict]:
    """``n`` examples (fewer if the set is smaller), each a copy of its row with its ``stratum``."""
    queues = {}
    for name, members in strata(rows, near_length_limit).items():
        members = list(members)
        _rng(distill_key, name).shuffle(members)
        queues[name] = members
    taken: dict[str, dict] = {}
    while len(taken) < n and any(queues.values()):
        for name in STRATA:
            q = queues[name]
            while q and q[0]["example_id"] in taken:
                q.pop(0)
            if q and len(taken) < n:
                r = q.pop(0)
                taken[r["example_id"]] = {**r, "stratum": name}
    return list(taken.values())


def candidates(catalog: Catalog, distill_key: str) -> list[dict]:
    """Every kept example of the distill set with what a reviewer reads (question, explanation, solution) and every
    reward term of its ledger row (NULL for reference fallbacks), from the catalog alone."""
    rec = catalog.artifact(distill_key)
    if rec is None:
        return []
    inputs = json.loads(rec["inputs_json"] or "{}")
    cfg = json.loads(rec["config_json"] or "{}")
    style = PromptStyle.model_validate(cfg.get("style") or {})
    scored = inputs.get("scored") or inputs.get("scored_explanations")
    rows = catalog.rows(
        "SELECT d.example_id, d.problem_id, d.explanation_id, d.origin, d.question, d.reward, "
        "s.answer_logprob_mean, s.answer_logprob_min, s.kl_mean, s.kl_max, s.format_penalty, s.n_explanation_tokens, "
        "e.completion, e.max_new_tokens, e.completion_tokens, e.finish_reason, p.solution, p.reasoning_trace "
        "FROM lake.data.distill_set d "
        "LEFT JOIN (SELECT * FROM lake.data.scored_explanations WHERE artifact_key = ?) s USING (explanation_id) "
        "LEFT JOIN (SELECT * FROM lake.data.explanations WHERE artifact_key = ?) e USING (explanation_id) "
        "LEFT JOIN (SELECT * FROM lake.data.problems WHERE artifact_key = ?) p ON p.problem_id = d.problem_id "
        "WHERE d.artifact_key = ? ORDER BY d.example_id",
        [scored, inputs.get("explanations"), inputs.get("problems"), distill_key])
    for r in rows:
        if r["origin"] == "teacher" and r["completion"] is not None:
            r["explanation"] = parse_teacher_completion(r.pop("completion"), style).explanation.strip()
        else:
            r.pop("completion", None)
            r["explanation"] = (r["reasoning_trace"] or r["solution"] or "").strip()
    return rows


def trace_payload(r: dict[str, Any], distill_key: str, run_id: str, recipe: str) -> dict[str, Any]:
    """One MLflow trace: what the reviewer reads (inputs: question and reference solution; output: the
    explanation), every reward term as a span attribute, and the ids and terms as tags (searchable in the UI)."""
    terms = {t: r.get(t) for t in TERMS}
    ids = {"example_id": r["example_id"], "explanation_id": r.get("explanation_id") or "", "problem_id":
           r["problem_id"], "distill_set": distill_key, "run_id": run_id, "recipe": recipe, "origin": r["origin"],
           "stratum": r["stratum"]}
    tags = {f"rlt.{k}": str(v) for k, v in ids.items()}
    tags.update({f"rlt.{k}": f"{v:.6g}" for k, v in terms.items() if v is not None})
    return {"name": f"rlt-review {r['origin']}", "inputs": {"question": r["question"], "solution": r["solution"]},
            "outputs": {"explanation": r["explanation"]},
            "attributes": {**{k: v for k, v in terms.items() if v is not None},
                           "n_explanation_tokens": r.get("n_explanation_tokens"), **ids},
            "tags": tags}
