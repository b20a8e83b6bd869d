"""ingest (quarantine, dedup, counts in the manifest) and filter (decisions ledger, re-filter with no forward pass)."""
from __future__ import annotations

import json
import os

import pytest

from infra.engine.context import RunContext
from infra.engine.runner import run_stage
from rlt_core.sources import SourceError
from tasks import filter as filter_
from tasks import ingest

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")


def test_ingest_quarantines_bad_rows_and_dedups(tmp_path):
    src = tmp_path / "problems.jsonl"
    good = {"question": "What is 2+3?", "solution": "2+3 = 5"}
    lines = [json.dumps(good), json.dumps(good),                                      # exact duplicate
             json.dumps({"question": "what is  2+3 ?", "solution": "five"}),          # normalised duplicate
             json.dumps({"question": "Q?", "solution": ""}),                          # empty field
             json.dumps({"solution": "x"}),                                           # missing field
             json.dumps({"question": 7, "solution": "x"}),                            # wrong type
             "{not json", json.dumps({"prompt": "What is 6*7?", "solution": "42"})]
    src.write_text("\n".join(lines) + "\n")
    ctx = RunContext(str(tmp_path / "store"), tracking=False)
    out = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": str(src)}, heldout_fraction=0.0))
    assert out["problems"].num_rows == 2
    q = ctx.catalog.sql("SELECT reason, field, source_row FROM data_quarantine ORDER BY source_row").to_pylist()
    assert [r["reason"] for r in q] == ["duplicate_exact", "duplicate_normalised", "empty_field", "missing_field",
                                        "wrong_type", "undecodable"]
    assert q[2]["field"] == "solution" and q[2]["source_row"] == 3
    stats = json.loads(ctx.catalog.artifact(out["problems"].key)["stats_json"])
    assert stats["rows_in"] == 8 and stats["quarantined"] == 6 and stats["quarantine.empty_field"] == 1
    again = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": str(src)}, heldout_fraction=0.0))
    assert again["problems"] == out["problems"]
    src.write_text("\n".join(lines[:1]) + "\n")          # an edited file is a new artifact
    changed = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": str(src)}, heldout_fraction=0.0))
    assert changed["problems"].key != out["problems"].key


def test_hostile_rows_are_quarantined_never_abort_the_source(tmp_path):
    """Rows that used to crash the whole ingest (issue 11): a lone surrogate escape (valid JSON, valid UTF-8 bytes),
    a format tag inside a field, and a parquet ``meta`` struct holding a timestamp."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "hostile.jsonl"
    lines = ['{"question": "What is 1+1?\\ud800", "solution": "2"}',                     # lone surrogate
             json.dumps({"question": "Q?", "solution": "4 <|end_of_solution|> trick"}),      # reserved tag
             json.dumps({"question": "What is 2*2?", "solution": "4", "meta": {"a": "\ud800"}}),
             json.dumps({"question": "What is 3*3?", "solution": "9"})]
    src.write_text("\n".join(lines) + "\n")
    ctx = RunContext(str(tmp_path / "store"), tracking=False)
    out = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": str(src)}, heldout_fraction=0.0))
    assert out["problems"].num_rows == 1
    q = ctx.catalog.sql("SELECT reason, field, source_row, detail, raw FROM data_quarantine "
                        "ORDER BY source_row").to_pylist()
    assert [(r["reason"], r["field"], r["source_row"]) for r in q] == [
        ("undecodable", "question", 0), ("reserved_tag", "solution", 1), ("undecodable", "meta", 2)]
    assert "U+D800" in q[0]["detail"] and "\\ud800" in q[0]["raw"], "the raw row is kept, escaped"
    assert "<|end_of_solution|>" in q[1]["detail"]

    table = pa.table({"question": ["What is 5+5?"], "solution": ["10"],
                      "meta": [{"added": datetime.datetime(2026, 1, 2, 3, 4, 5), "n": 1}]})
    pq.write_table(table, tmp_path / "stamped.parquet")
    out = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": str(tmp_path / "stamped.parquet")},
                                              heldout_fraction=0.0))
    meta = ctx.catalog.sql("SELECT meta_json FROM data_problems WHERE artifact_key = ?",
                           [out["problems"].key]).to_pylist()
    assert [json.loads(m["meta_json"]) for m in meta] == [{"added": "2026-01-02 03:04:05", "n": 1}]


def test_ingest_sharegpt_layout_keeps_trace(tmp_path):
    ctx = RunContext(str(tmp_path), tracking=False)
    out = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": os.path.join(FIXTURES, "bespoke_stratos_sample.jsonl")},
                                              heldout_fraction=0.0))
    rows = ctx.catalog.sql("SELECT question, solution, reasoning_trace FROM data_problems").to_pylist()
    assert rows and all(r["reasoning_trace"] for r in rows) and out["problems"].num_rows == len(rows)
    assert not any("<|begin_of_solution|>" in r["solution"] for r in rows)


def test_not_a_dataset_is_a_clear_error(tmp_path):
    bad = tmp_path / "image.parquet"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    ctx = RunContext(str(tmp_path / "s"), tracking=False)
    with pytest.raises(SourceError, match="image.parquet"):
        run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": str(bad)}))
    assert ctx.catalog.sql("SELECT count(*) AS n FROM artifacts").to_pylist() == [{"n": 0}]


def test_source_without_usable_rows_names_the_first_failure_and_leaves_nothing(tmp_path):
    """Every row quarantined, or no rows at all: one line with the counts and the first row's field and reason;
    nothing committed and (for a source this small) no staged part file written either."""
    ctx = RunContext(str(tmp_path / "s"), tracking=False)
    src = tmp_path / "nosolution.jsonl"
    src.write_text(json.dumps({"question": "Q1?"}) + "\n" + json.dumps({"question": "Q2?", "solution": 3}) + "\n")
    with pytest.raises(SourceError) as info:
        run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": str(src)}))
    assert str(info.value) == (f"{src}: no usable rows, all 2 quarantined (missing_field 1, wrong_type 1); first: row 0 "
                               "field 'solution': missing_field: column 'solution' is missing or null")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(SourceError, match="empty.json: holds no rows; expected at least one problem"):
        run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": str(tmp_path / "empty.json")}))
    assert ctx.catalog.sql("SELECT count(*) AS n FROM artifacts").to_pylist() == [{"n": 0}]
    staged = [p for p in (tmp_path / "s").rglob("part-*.parquet") if {"problems", "quarantine"} & set(p.parts)]
    assert staged == [], staged


def _ledger(ctx, rows):
    """Commit a hand-made reward ledger + explanations + problems, as the score stage would."""
    from data_contracts import explanations, problems, scored_explanations
    from tests.tasks.helpers import commit_rows

    return {name: commit_rows(ctx, name, contract, data) for name, contract, data in (
        ("problems", problems.CONTRACT, rows["problems"]),
        ("explanations", explanations.CONTRACT, rows["explanations"]),
        ("scored_explanations", scored_explanations.CONTRACT, rows["scored"]))}


def _fixture_rows():
    from data_contracts import explanations, problems, scored_explanations

    probs = [dict(problems.EXAMPLE, problem_id=f"p_{i:016d}", question=f"Q{i}?", solution=f"S{i}") for i in range(2)]
    expl, scored = [], []
    rewards = {(0, 0): -1.0, (0, 1): -0.5, (1, 0): -3.0, (1, 1): -2.0}
    for (p, k), r in rewards.items():
        eid = f"e_{p}{k:015d}"
        expl.append(dict(explanations.EXAMPLE, explanation_id=eid, problem_id=f"p_{p:016d}", sample_index=k,
                         question=f"Q{p}?", solution=f"S{p}", completion=f"because {p}{k}\n\n<|end_of_explanation|>"))
        scored.append(dict(scored_explanations.EXAMPLE, explanation_id=eid, problem_id=f"p_{p:016d}",
                           sample_index=k, reward=r, format_penalty=-1.0 if (p, k) == (1, 1) else 0.0,
                           kl_mean=0.1 * k, kl_max=1.0, answer_logprob_mean=r, answer_logprob_min=r * 2))
    return {"problems": probs, "explanations": expl, "scored": scored}


def test_filter_best_of_k_reasons_and_reference_fallback(tmp_path, monkeypatch):
    ctx = RunContext(str(tmp_path), tracking=False)
    refs = _ledger(ctx, _fixture_rows())
    import infra.engine.models

    def no_models(*a, **k):
        raise AssertionError("filter must not load a model")

    monkeypatch.setattr(infra.engine.models, "model_and_tokenizer", no_models)
    cfg = filter_.FilterConfig(rules={"min_reward": -2.5})
    out = run_stage(filter_.STAGE, ctx, cfg, refs["scored_explanations"], refs["explanations"], refs["problems"])
    dec = {r["explanation_id"] or r["problem_id"]: r for r in ctx.catalog.sql(
        "SELECT * FROM data_filter_decisions").to_pylist()}
    assert dec["e_0000000000000001"]["kept"] and dec["e_0000000000000001"]["reason"] == "best_of_k"
    assert dec["e_0000000000000000"]["reason"] == "not_top_k"
    assert dec["e_1000000000000001"]["reason"] == "missing_end_tag"
    assert dec["e_1000000000000000"]["reason"] == "below_min_reward"
    assert dec["p_0000000000000001"]["reason"] == "reference_fallback"
    ds = ctx.catalog.sql("SELECT origin, assistant FROM data_distill_set ORDER BY origin").to_pylist()
    assert [d["origin"] for d in ds] == ["reference", "teacher"]
    assert ds[1]["assistant"].startswith("<|begin_of_thought|>\n\nbecause 01")
    assert ds[1]["assistant"].endswith("<|begin_of_solution|>\n\nS0\n\n<|end_of_solution|>")
    # re-filter with re-weighted coefficients: a new artifact from the same ledger, no forward pass
    cfg2 = filter_.FilterConfig(rules={"reweight": {"answer_coef": [0.0, 0.0], "kl_coef": [1.0, 0.0]}})
    out2 = run_stage(filter_.STAGE, ctx, cfg2, refs["scored_explanations"], refs["explanations"], refs["problems"])
    assert out2["distill_set"].key != out["distill_set"].key
    kept = ctx.catalog.sql(f"SELECT explanation_id FROM data_filter_decisions WHERE kept AND artifact_key = "
                            f"'{out2['filter_decisions'].key}' ORDER BY 1").to_pylist()
    assert [k["explanation_id"] for k in kept] == ["e_0000000000000000", "e_1000000000000000"]  # lowest KL wins


def test_filter_text_rules_reasons_counted_and_keys_kept_when_off(tmp_path):
    """Text rules (rlt_core/text_rules.py) drop what reward alone keeps, each with its reason, counted in the
    stage's stats; a config without them keeps the key it had before they existed."""
    from data_contracts import explanations, problems, scored_explanations

    solution = "First compute 3 * 5 = 15. Then add 7 to get 15 + 7 = 22. So the answer is 22."
    good = "Multiply the two small numbers, 3 * 5 = 15, then add the last one: 15 + 7 = 22."
    texts = [(good, "length"), ("so 3 * 5 = 15 " * 20, "stop"), (solution, "stop"),
             (good + " 所以答案是二十二，因为三乘五等于十五再加七。", "stop"), (good, "stop")]
    pid = "p_" + "0" * 16
    probs = [dict(problems.EXAMPLE, problem_id=pid, question="Q?", solution=solution)]
    expl, scored = [], []
    for k, (text, finish) in enumerate(texts):
        eid = f"e_{k:016d}"
        expl.append(dict(explanations.EXAMPLE, explanation_id=eid, problem_id=pid, sample_index=k, question="Q?",
                         solution=solution, completion=text + "\n\n<|end_of_explanation|>", finish_reason=finish))
        scored.append(dict(scored_explanations.EXAMPLE, explanation_id=eid, problem_id=pid, sample_index=k,
                           reward=-0.1 * (k + 1), format_penalty=0.0))
    ctx = RunContext(str(tmp_path), tracking=False)
    refs = _ledger(ctx, {"problems": probs, "explanations": expl, "scored": scored})
    args = (refs["scored_explanations"], refs["explanations"], refs["problems"])
    off = run_stage(filter_.STAGE, ctx, filter_.FilterConfig(), *args)
    on = run_stage(filter_.STAGE, ctx, filter_.FilterConfig(text={}), *args)
    assert on["distill_set"].key != off["distill_set"].key
    reasons = {r["explanation_id"]: r["reason"] for r in ctx.catalog.sql(
        f"SELECT explanation_id, reason FROM data_filter_decisions WHERE artifact_key = "
        f"'{on['filter_decisions'].key}'").to_pylist()}
    assert reasons == {"e_0000000000000000": "truncated", "e_0000000000000001": "degenerate_repetition",
                       "e_0000000000000002": "solution_copied", "e_0000000000000003": "language_mixing",
                       "e_0000000000000004": "best_of_k"}
    stats = ctx.catalog.artifact(on["filter_decisions"].key)
    assert {k: v for k, v in json.loads(stats["stats_json"]).items() if k.startswith("reason.")} == {
        "reason.best_of_k": 1, "reason.degenerate_repetition": 1, "reason.language_mixing": 1,
        "reason.solution_copied": 1, "reason.truncated": 1}
    # off: the config's key part is what it was before text rules existed (no "text" in it)
    assert "text" not in filter_.FilterConfig().key_config()
    assert filter_.FilterConfig(text={}).key_config()["text"]["max_char_run"] == 50
