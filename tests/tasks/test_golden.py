"""Golden outputs per stage, pinned next to each STAGE_VERSION.

A change in what a stage produces (on tiny fixed inputs) without a STAGE_VERSION bump fails here: the cache
would otherwise serve yesterday's artifact for today's code. After an intended change, bump the stage's
STAGE_VERSION and re-pin with ``RLT_UPDATE_GOLDEN=1 pytest tests/tasks/test_golden.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib

import pytest

from infra.engine.runner import run_stage
from tasks import distill, evaluate, generate, ingest, score, train_teacher
from tasks import filter as filter_
from tests.tasks.helpers import setup

GOLDEN = pathlib.Path(__file__).with_name("golden.json")
UPDATE = os.environ.get("RLT_UPDATE_GOLDEN") == "1"


def _canon(rows: list[dict], drop: tuple[str, ...] = ()) -> str:
    def fix(v):
        if isinstance(v, float):
            return round(v, 3)
        return v

    clean = [{k: fix(v) for k, v in sorted(r.items()) if k not in drop} for r in rows]
    clean.sort(key=lambda r: json.dumps(r, sort_keys=True, default=str))
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check(stage_module, name: str, value: str, pins: dict) -> None:
    label = f"{name}@{stage_module.STAGE.version}"
    if UPDATE:
        pins[label] = value
        return
    assert label in pins, (f"no golden output pinned for {label}: bump STAGE_VERSION consciously and re-pin with "
                           "RLT_UPDATE_GOLDEN=1")
    assert pins[label] == value, (f"{name}'s output changed but its STAGE_VERSION is still "
                                  f"{stage_module.STAGE.version}: bump it (cached artifacts would be stale), then "
                                  "re-pin with RLT_UPDATE_GOLDEN=1")


@pytest.fixture(scope="module")
def pins():
    data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    yield data
    if UPDATE:
        GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


# reused_from: where a copied row was computed (infra/engine/reuse.py); NULL on every row a stage computes itself, and an
# artifact committed before the column existed reads NULL too, so its cached rows are not stale.
VOLATILE = ("artifact_key", "latency_s", "teacher_digest", "student_digest", "gen_config_digest", "explanation_id",
            "example_id", "eval_key", "grader", "reused_from")


def test_golden_outputs_per_stage(tmp_path, tiny_model_dir, smol_tokenizer, pins):
    ctx, problems, teacher = setup(str(tmp_path), tiny_model_dir, n=4)
    q = ctx.catalog.sql
    _check(ingest, "ingest", _canon(q("SELECT * EXCLUDE (artifact_key) FROM data_problems").to_pylist()), pins)

    gcfg = generate.GenerateConfig(num_samples=2, sampling={"temperature": 0.7, "max_new_tokens": 8}, shard_size=2)
    g = run_stage(generate.STAGE, ctx, gcfg, problems, teacher)
    _check(generate, "generate", _canon(q("SELECT * FROM data_explanations").to_pylist(), VOLATILE), pins)

    s = run_stage(score.STAGE, ctx, score.ScoreConfig(student_model=tiny_model_dir), g, teacher)
    _check(score, "score", _canon(q("SELECT * FROM data_scored_explanations").to_pylist(), VOLATILE), pins)

    run_stage(filter_.STAGE, ctx, filter_.FilterConfig(rules={"require_end_tag": False}), s, g, problems)
    rows = q("SELECT * FROM data_filter_decisions").to_pylist() + q("SELECT * FROM data_distill_set").to_pylist()
    _check(filter_, "filter", _canon(rows, VOLATILE), pins)

    # training stages: pin the exact examples they train on (the stage's format behaviour)
    from rlt_core.training.distill import student_example
    from rlt_core.training.sft_teacher import teacher_sft_example

    cfg = train_teacher.TrainTeacherConfig()
    probs = q("SELECT question, solution, reasoning_trace FROM data_problems").to_pylist()
    ex = [teacher_sft_example(smol_tokenizer, r, cfg.sft.style, i) for i, r in enumerate(probs)]
    _check(train_teacher, "train_teacher", _canon([{"x": json.dumps(e)} for e in ex]), pins)
    dist = q("SELECT system, question, assistant FROM data_distill_set").to_pylist()
    ex = [student_example(r, distill.DistillStageConfig().train.style, i) for i, r in enumerate(dist)]
    _check(distill, "distill", _canon([{"x": json.dumps(e)} for e in ex]), pins)

    ecfg = evaluate.EvaluateConfig(benchmarks=["countdown-heldout"], max_items=2,
                                   sampling={"temperature": 0.0, "max_new_tokens": 8})
    from infra.models import resolve_model

    run_stage(evaluate.STAGE, ctx, ecfg, resolve_model(tiny_model_dir), label="base")
    _check(evaluate, "evaluate", _canon(q("SELECT * FROM data_eval_results").to_pylist(), VOLATILE), pins)
