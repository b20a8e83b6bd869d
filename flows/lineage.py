"""Lineage for auditors: from a distill row, an explanation, an eval sample or an artifact key back to the source."""
from __future__ import annotations

import json
from typing import Any

from infra.catalog.lake import Catalog


def _one(con: Catalog, sql: str, params: list) -> dict | None:
    rows = con.rows(sql + ("" if " LIMIT " in sql else " LIMIT 1"), params)
    return rows[0] if rows else None


def _has(con: Catalog, view: str) -> bool:
    return view.removeprefix("data_") in con.refresh_data_views()


def _artifact(con, key: str) -> dict | None:
    return _one(con, "SELECT key, name, stage, producer, run_id, ts, inputs_json, models_json, config_hash "
                     "FROM artifacts_committed WHERE key = ?", [key])


def artifact_chain(con: Catalog, key: str) -> list[dict]:
    """The artifact and every ancestor (breadth-first through lineage edges)."""
    out, todo, seen = [], [key], set()
    while todo:
        k = todo.pop(0)
        if k in seen:
            continue
        seen.add(k)
        a = _artifact(con, k)
        if a is None:
            continue
        out.append(a)
        todo.extend(v for v in json.loads(a["inputs_json"]).values() if not v.startswith("model:"))
    return out


def example_chain(con: Catalog, example_id: str) -> list[dict[str, Any]]:
    """Steps from an example back to its raw problem; each step names its artifact and run."""
    steps: list[dict[str, Any]] = []
    expl_id = prob_id = None
    if _has(con, "data_eval_results") and (ev := _one(con, "SELECT * FROM data_eval_results WHERE item_id = ? "
                                                            "OR eval_key || ':' || item_id = ? LIMIT 1",
                                                      [example_id, example_id])):
        steps.append({"step": "eval sample", **ev})
        a = _artifact(con, ev["artifact_key"])
        for k in artifact_chain(con, a["key"])[1:]:
            steps.append({"step": f"artifact {k['name']}", **k})
        return steps
    if example_id.startswith("d_") and _has(con, "data_distill_set"):
        d = _one(con, "SELECT * FROM data_distill_set WHERE example_id = ? LIMIT 1", [example_id])
        if d:
            steps.append({"step": "distill row", **{k: v for k, v in d.items() if k not in ("system", "assistant")}})
            expl_id, prob_id = d["explanation_id"], d["problem_id"]
    elif example_id.startswith("e_"):
        expl_id = example_id
    elif example_id.startswith("p_"):
        prob_id = example_id
    if expl_id:
        if _has(con, "data_filter_decisions"):
            f = _one(con, "SELECT * FROM data_filter_decisions WHERE explanation_id = ? ORDER BY rank LIMIT 1",
                     [expl_id])
            if f:
                steps.append({"step": "filter decision", **f})
        if _has(con, "data_scored_explanations"):
            s = _one(con, "SELECT * FROM data_scored_explanations WHERE explanation_id = ? LIMIT 1", [expl_id])
            if s:
                steps.append({"step": "reward ledger row", **s})
        e = _one(con, "SELECT * EXCLUDE (question, solution, completion) FROM data_explanations "
                      "WHERE explanation_id = ? LIMIT 1", [expl_id]) if _has(con, "data_explanations") else None
        if e:
            steps.append({"step": "generation request", **e})
            gen = _artifact(con, e["artifact_key"])
            teacher_key = json.loads(gen["inputs_json"]).get("teacher") if gen else None
            if teacher_key:
                steps.append({"step": "teacher checkpoint", **_artifact(con, teacher_key)})
            prob_id = prob_id or e["problem_id"]
    if prob_id and _has(con, "data_problems"):
        p = _one(con, "SELECT * EXCLUDE (question, solution) FROM data_problems WHERE problem_id = ? LIMIT 1",
                 [prob_id])
        if p:
            steps.append({"step": "raw problem", **p})
            ing = _artifact(con, p["artifact_key"])
            if ing:
                steps.append({"step": "ingest artifact", **ing})
    for s in steps:  # attach the producing artifact's run id to every data row
        if "artifact_key" in s and "run_id" not in s:
            a = _artifact(con, s["artifact_key"])
            s["run_id"] = a["run_id"] if a else None
    return steps
