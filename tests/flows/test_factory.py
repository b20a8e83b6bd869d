"""The whole factory on tiny models: end to end, fully cached second run, failed-only rerun, plan, lineage."""
from __future__ import annotations

import json
import os

import pytest

from flows.plan import annotate, stage_keys
from flows.recipe import Recipe
from infra.engine.context import RunContext


def tiny_recipe(model_dir: str, **over) -> dict:
    rt = {"use_cpu": True, "bf16": False, "gradient_checkpointing": False}
    r = {
        "name": "tiny-test",
        "ingest": {"source": {"uri": "builtin:countdown", "n": 8, "seed": 1}, "heldout_fraction": 0.25},
        "train_teacher": {"base_model": model_dir, "student_model": model_dir, "phases": ["sft", "grpo"],
                          "sft": {"max_steps": 2, "batch_size": 2, "max_length": 512, "runtime": rt},
                          "grpo": {"num_generations": 2, "prompts_per_step": 2, "max_steps": 1,
                                   "max_prompt_length": 512, "max_completion_length": 12, "sync_ref_model": False,
                                   "runtime": rt}},
        "generate": {"num_samples": 2, "sampling": {"max_new_tokens": 12}, "shard_size": 2, "batch_size": 4},
        "score": {"student_model": model_dir, "shard_size": 4},
        "filter": {"rules": {"require_end_tag": False}},
        "distill": {"student_model": model_dir,
                    "train": {"max_steps": 2, "batch_size": 2, "max_length": 512, "runtime": rt}},
        "evaluate": {"benchmarks": ["countdown-heldout"], "max_items": 3, "sampling": {"max_new_tokens": 12}},
    }
    for k, v in over.items():
        r[k].update(v)
    return Recipe.model_validate(r).model_dump(mode="json")


def _stage_runs(ctx, run_id):
    return ctx.catalog.sql(f"SELECT stage, status FROM stage_runs WHERE run_id = '{run_id}' ORDER BY ts").to_pylist()


@pytest.mark.slow
def test_factory_end_to_end_cached_rerun_and_failed_only_rerun(tmp_path, tiny_model_dir):
    from flows.factory import factory_flow

    root = str(tmp_path / "data")
    recipe = tiny_recipe(tiny_model_dir)
    first = factory_flow(recipe=recipe, root=root, tracking=True)
    ctx = RunContext(root)
    names = {a["name"] for a in ctx.catalog.sql("SELECT name FROM artifacts_committed").to_pylist()}
    assert {"problems", "quarantine", "teacher_checkpoint", "explanations", "scored_explanations",
            "filter_decisions", "distill_set", "student_checkpoint", "eval_results", "report"} <= names
    ran = _stage_runs(ctx, first["run_id"])
    assert {r["stage"] for r in ran if r["status"] == "done"} == {"ingest", "train_teacher", "generate", "score",
                                                                  "filter", "distill", "evaluate"}
    assert os.path.exists(os.path.join(first["report"]["uri"], "index.html"))
    # MLflow: a parent run and one nested run per stage
    from infra.tracking import Tracker

    tr = Tracker(root)
    runs = tr.client.search_runs([tr.client.get_experiment_by_name("rlt-factory").experiment_id])
    stages = {r.data.tags.get("rlt.stage") for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert {"ingest", "train_teacher", "generate", "score", "filter", "distill", "evaluate"} <= stages

    # each stage ran as a real Prefect task carrying its stage version (shards as tasks of their own)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import TaskRunSort

    from tasks import generate as gen_stage
    from tasks import score as score_stage

    with get_client(sync_client=True) as client:   # newest first: the server answers 200 rows at most
        task_runs = client.read_task_runs(sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=200)
    by_name = {tr.name.split("-")[0]: tr for tr in task_runs}
    assert by_name["generate"].task_version == gen_stage.STAGE.version
    assert by_name["score"].task_version == score_stage.STAGE.version
    assert {"ingest", "train_teacher", "filter", "distill", "evaluate[base]", "evaluate[distilled]"} <= set(by_name)
    assert any(tr.name.startswith("generate-shard") for tr in task_runs)

    # lineage: a distill row back to its raw problem
    from flows.lineage import example_chain

    d = ctx.catalog.sql("SELECT example_id, origin FROM data_distill_set ORDER BY origin DESC LIMIT 1").to_pylist()[0]
    steps = [s["step"] for s in example_chain(ctx.catalog, d["example_id"])]
    assert steps[0] == "distill row" and steps[-2:] == ["raw problem", "ingest artifact"]
    if d["origin"] == "teacher":
        assert {"filter decision", "reward ledger row", "generation request", "teacher checkpoint"} <= set(steps)

    # identical second run: the plan says everything is cached, and no stage body runs
    assert {p.status for p in annotate(ctx, stage_keys(Recipe.model_validate(recipe)))} == {"cached"}
    second = factory_flow(recipe=recipe, root=root, tracking=True)
    assert {r["status"] for r in _stage_runs(ctx, second["run_id"])} == {"cached"}
    assert second["eval_distilled"]["key"] == first["eval_distilled"]["key"]

    # one-field change in filter: plan says filter + downstream run, upstream cached
    changed = tiny_recipe(tiny_model_dir, filter={"rules": {"require_end_tag": False, "top_k": 2}})
    plans = annotate(ctx, stage_keys(Recipe.model_validate(changed)))
    status = {(p.stage, p.label): p.status for p in plans}
    assert status[("generate", "")] == "cached" and status[("score", "")] == "cached"
    assert status[("filter", "")] == "run" and status[("distill", "")] == "run"
    assert status[("evaluate", "base")] == "cached" and status[("evaluate", "distilled")] == "run"
    assert "rules.top_k: 1 -> 2" in [p.reason for p in plans if p.stage == "filter"][0]
    assert "input 'distill_set' changed" in [p.reason for p in plans if p.stage == "distill"][0]

    # failure injection in one generate shard of a changed generation config, then a rerun
    gen_changed = tiny_recipe(tiny_model_dir, generate={"num_samples": 3})
    with pytest.raises(Exception, match="00001"):
        factory_flow(recipe=gen_changed, root=root, tracking=False, fail_shards=["generate:00001"])
    plans = annotate(ctx, stage_keys(Recipe.model_validate(gen_changed)))
    gen = [p for p in plans if p.stage == "generate"][0]
    assert gen.status == "resume" and gen.shards.get("failed") == 1
    rerun = factory_flow(recipe=gen_changed, root=root, tracking=False)
    st = json.loads(ctx.catalog.artifact(rerun["explanations"]["key"])["stats_json"])
    assert st["shards_run"] == 1 and st["shards_reused"] == gen.shards["done"]
    ran = {r["stage"]: r["status"] for r in _stage_runs(ctx, rerun["run_id"])}
    assert ran["ingest"] == "cached" and ran["train_teacher"] == "cached" and ran["generate"] == "done"
