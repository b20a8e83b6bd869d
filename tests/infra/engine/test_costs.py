"""Cost accounting (infra/engine/costs.py): measurement helpers, stage_costs records, the cost views, prices."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from infra.engine import costs
from infra.engine.context import RunContext
from infra.engine.runner import run_stage
from tasks import filter as filter_
from tasks import generate, score
from tests.tasks.helpers import setup

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

GEN = dict(num_samples=2, sampling={"temperature": 0.7, "max_new_tokens": 12}, shard_size=2, batch_size=4)


# ------------------------------------------------------------------------------------------------ measurement
def test_cpu_seconds_grow_with_a_busy_loop():
    m = costs.Meter().start()
    t0 = time.process_time()
    while time.process_time() - t0 < 0.3:
        sum(i * i for i in range(2000))
    u = m.stop()
    assert u.cpu_s >= 0.25, u
    assert u.wall_s >= u.cpu_s * 0.5
    assert u.gpu_s == 0.0 and u.peak_gpu_mb is None   # no CUDA here: nothing claimed
    assert m.stop() is u   # idempotent: the commit and a later failure see the same figures


def test_sleeping_costs_no_cpu():
    m = costs.Meter().start()
    time.sleep(0.3)
    u = m.stop()
    assert u.wall_s >= 0.3 and u.cpu_s < 0.2, u


_TRANSIENT = """
import json, time
from infra.engine import costs
m = costs.Meter(interval_s=0.02).start()
before = costs.rss_mb()
block = bytearray(200 * 2**20)   # 200 MiB, touched so it is resident
for i in range(0, len(block), 4096):
    block[i] = 1
deadline = time.monotonic() + 60   # until the sampler thread has seen it (a fixed sleep raced a busy machine)
while m._rss.peak < before + 150 and time.monotonic() < deadline:
    time.sleep(0.02)
del block
u = m.stop()
print(json.dumps({"before": before, "peak": u.peak_rss_mb, "after": costs.rss_mb()}))
"""


def test_peak_rss_sampler_sees_a_transient_allocation():
    """In a fresh interpreter: in the suite's own process, threads left by earlier tests (servers, loaders) can
    allocate while this runs, and the "freed again" reading then saw their memory, not this block's."""
    if costs.rss_mb() is None:
        pytest.skip("no /proc on this system")
    res = subprocess.run([sys.executable, "-c", _TRANSIENT], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["peak"] >= got["before"] + 150, got
    assert got["after"] < got["peak"] - 100, got   # freed again: the peak is the stage's, not the present


def test_add_tokens_defaults_forward_to_in_plus_out_and_rejects_unknown():
    usage: dict = {}
    costs.add_tokens(usage, tokens_in=10, tokens_out=5)
    costs.add_tokens(usage, tokens_in=3, tokens_out=0, forward_tokens=7)
    assert usage == {"tokens_in": 13, "tokens_out": 5, "forward_tokens": 22}
    with pytest.raises(ValueError, match="unknown token"):
        costs.add_tokens(usage, tokens=1)


# ------------------------------------------------------------------------------------------------ prices
def test_prices_from_recipe_and_environment():
    recipe = costs.CostsConfig(gpu_hour=2.0, per_million_input_tokens=1.0)
    assert costs.resolve_prices(recipe, env={}) == recipe
    p = costs.resolve_prices(recipe, env={"RLT_PRICE_GPU_HOUR": "3.5", "RLT_PRICE_PER_MTOK": "0.5",
                                          "RLT_PRICE_PER_MTOK_OUT": "2", "RLT_PRICE_CURRENCY": "EUR"})
    assert (p.gpu_hour, p.per_million_input_tokens, p.per_million_output_tokens, p.currency) == (3.5, 0.5, 2.0, "EUR")
    assert costs.resolve_prices(None, env={}).priced is False
    with pytest.raises(ValueError, match="RLT_PRICE_CPU_HOUR"):
        costs.resolve_prices(None, env={"RLT_PRICE_CPU_HOUR": "cheap"})
    with pytest.raises(ValidationError):
        costs.CostsConfig.model_validate({"gpu_hours": 1})
    row = {"gpu_s": 1800, "cpu_s": 7200, "tokens_in": 2_000_000, "tokens_out": None}
    assert costs.money(row, p) == pytest.approx(0.5 * 3.5 + 2 * 0.5)   # no CPU price; NULL tokens add 0
    assert costs.money(row, costs.CostsConfig()) is None


def test_costs_section_is_not_stage_config(tiny_model_dir):
    from flows.plan import stage_keys
    from flows.recipe import Recipe
    from tests.flows.test_factory import tiny_recipe

    base = tiny_recipe(tiny_model_dir)
    priced = Recipe.model_validate(dict(base, costs={"gpu_hour": 4.0, "currency": "EUR"}))
    assert priced.costs.gpu_hour == 4.0
    assert [p.key for p in stage_keys(Recipe.model_validate(base))] == [p.key for p in stage_keys(priced)]
    with pytest.raises(ValidationError, match="extra"):
        Recipe.model_validate(dict(base, costs={"gpu_hr": 4.0}))


# ------------------------------------------------------------------------------------------------ records, views
def _costs(ctx, run_id=None):
    return ctx.catalog.rows("SELECT * FROM stage_costs WHERE run_id = ? ORDER BY ts", [run_id or ctx.run_id])


def _sum(ctx, sql_col: str, table: str, key: str) -> int:
    return int(ctx.catalog.rows(f"SELECT sum({sql_col}) AS n FROM lake.data.{table} WHERE artifact_key = ?",
                                [key])[0]["n"])


def test_chain_records_costs_and_views_give_per_kept_figures(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("RLT_PRICE_CPU_HOUR", "3.6")   # 0.001 per CPU second
    ctx, problems, teacher = setup(str(tmp_path), tiny_model_dir)
    ctx.prices = {"per_million_output_tokens": 1000.0, "cpu_hour": 99.0}   # the recipe's; the env wins for CPU
    ex = run_stage(generate.STAGE, ctx, generate.GenerateConfig(**GEN), problems, teacher)
    sc = run_stage(score.STAGE, ctx, score.ScoreConfig(student_model=tiny_model_dir, shard_size=4), ex, teacher)
    out = run_stage(filter_.STAGE, ctx, filter_.FilterConfig(rules={"require_end_tag": False}), sc, ex, problems)
    rows = {r["stage"]: r for r in _costs(ctx)}
    assert set(rows) == {"ingest", "train_teacher", "generate", "score", "filter"}
    assert all(r["status"] == "done" and r["wall_s"] > 0 and r["cpu_s"] > 0 for r in rows.values())
    assert all(r["peak_rss_mb"] > 50 and r["gpu_s"] == 0 and r["peak_gpu_mb"] is None for r in rows.values())

    g = rows["generate"]   # tokens: exactly the explanations' token columns (every row computed by this run)
    assert g["tokens_in"] == _sum(ctx, "prompt_tokens", "explanations", ex.key) > 0
    assert g["tokens_out"] == _sum(ctx, "completion_tokens", "explanations", ex.key) > 0
    assert g["forward_tokens"] == g["tokens_in"] + g["tokens_out"]
    assert g["rows"] == ex.num_rows
    s = rows["score"]   # both models' full sequences: at least explanation twice + solution, plus the prompts
    spans = _sum(ctx, "2 * n_explanation_tokens + n_solution_tokens", "scored_explanations", sc.key)
    assert s["forward_tokens"] == s["tokens_in"] > spans and s["tokens_out"] == 0
    assert (rows["filter"]["forward_tokens"], rows["ingest"]["tokens_in"]) == (0, 0)   # no model: 0
    t = rows["train_teacher"]   # no training phase: the base model teaches, no model ran
    assert (t["tokens_in"], t["tokens_out"], t["forward_tokens"]) == (0, 0, 0)

    assert g["currency"] == "USD" and '"cpu_hour": 3.6' in g["prices_json"]
    assert g["cost"] == pytest.approx(g["cpu_s"] * 0.001 + g["tokens_out"] * 1e-3, rel=1e-6)
    assert s["cost"] == pytest.approx(s["cpu_s"] * 0.001, rel=1e-6)

    # a night: the views need its runs record (the factory flow writes it)
    ctx.catalog.append("runs", [dict(run_id=ctx.run_id, flow="test", status="done", recipe="t")])
    by_stage = {r["stage"]: r for r in ctx.catalog.rows("SELECT * FROM costs_by_stage WHERE run_id = ?",
                                                         [ctx.run_id])}
    assert by_stage["generate"]["tokens_out"] == g["tokens_out"] and by_stage["score"]["attempts"] == 1
    night = ctx.catalog.rows("SELECT * FROM costs_by_run WHERE run_id = ?", [ctx.run_id])[0]
    kept = out["distill_set"].num_rows
    assert (night["distill_set"], night["kept"], night["stages_run"]) == (out["distill_set"].key, kept, 5)
    assert kept > 0
    assert night["wall_s"] == pytest.approx(sum(r["wall_s"] for r in rows.values()))
    assert night["wall_s_per_kept"] == pytest.approx(night["wall_s"] / kept)
    assert night["forward_tokens_per_kept"] == pytest.approx((g["forward_tokens"] + s["forward_tokens"]) / kept)
    assert night["cost_per_kept"] == pytest.approx(sum(r["cost"] for r in rows.values()) / kept)
    assert night["stages_without_tokens"] == 0

    # the same chain again in another run: every stage cached, no cost row; its night still has its distill set
    ctx2 = RunContext(str(tmp_path), tracking=False)
    ex2 = run_stage(generate.STAGE, ctx2, generate.GenerateConfig(**GEN), problems, teacher)
    sc2 = run_stage(score.STAGE, ctx2, score.ScoreConfig(student_model=tiny_model_dir, shard_size=4), ex2, teacher)
    run_stage(filter_.STAGE, ctx2, filter_.FilterConfig(rules={"require_end_tag": False}), sc2, ex2, problems)
    assert _costs(ctx2) == []
    ctx2.catalog.append("runs", [dict(run_id=ctx2.run_id, flow="test", status="done", recipe="t")])
    night2 = ctx2.catalog.rows("SELECT * FROM costs_by_run WHERE run_id = ?", [ctx2.run_id])[0]
    assert (night2["stages_run"], night2["wall_s"], night2["kept"]) == (0, 0, kept)
    assert night2["wall_s_per_kept"] == 0 and night2["cost"] is None


def test_training_stage_records_the_trainer_token_counts(tmp_path, tiny_model_dir, smol_tokenizer):
    """distill (one SFT step on both rows) records what its trainer counted: the batch's non-padding tokens, each
    once through the forward, nothing generated."""
    from data_contracts import distill_set
    from rlt_core.modeling import tiny_causal_lm
    from rlt_core.prompts import PromptStyle, student_assistant_content
    from rlt_core.training.common import RuntimeSettings
    from rlt_core.training.distill import DistillConfig, make_distill_trainer
    from tasks import distill
    from tests.tasks.helpers import commit_rows

    ctx = RunContext(str(tmp_path), tracking=False)
    style = PromptStyle()
    qa = [("What is 12 + 30?", "42"), ("Compute 6 * 7.", "42")]
    rows = [dict(example_id=f"d_{i:016x}", problem_id=f"p_{i:016x}", origin="reference",
                 system=style.student_system_prompt, question=q,
                 assistant=student_assistant_content(q, a, f"\n\n{q} gives {a}.\n\n", style))
            for i, (q, a) in enumerate(qa)]
    ds = commit_rows(ctx, "distill_set", distill_set.CONTRACT, rows)
    train = DistillConfig(max_steps=1, batch_size=2, per_device_batch_size=2, max_length=512,
                          runtime=RuntimeSettings(use_cpu=True, bf16=False, gradient_checkpointing=False))
    run_stage(distill.STAGE, ctx, distill.DistillStageConfig(student_model=tiny_model_dir, train=train), ds)
    d = {r["stage"]: r for r in _costs(ctx)}["distill"]
    probe, _ = make_distill_trainer(tiny_causal_lm(smol_tokenizer, seed=0), smol_tokenizer,
                                    [{k: r[k] for k in ("system", "question", "assistant")} for r in rows], train,
                                    str(tmp_path / "probe"))
    batch = probe.data_collator([probe.train_dataset[i] for i in range(len(rows))])
    assert d["status"] == "done" and d["tokens_in"] == int(batch["attention_mask"].sum()) > 0
    assert (d["tokens_out"], d["forward_tokens"]) == (0, d["tokens_in"])


def test_failed_stage_records_what_it_used(tmp_path, tiny_model_dir):
    from infra.engine.context import StageFailed

    ctx, problems, teacher = setup(str(tmp_path), tiny_model_dir, n=4)
    ctx.fail_shards = ("generate:*",)
    with pytest.raises(StageFailed):
        run_stage(generate.STAGE, ctx, generate.GenerateConfig(**GEN), problems, teacher)
    failed = [r for r in _costs(ctx) if r["stage"] == "generate"]
    assert len(failed) == 1 and failed[0]["status"] == "failed" and failed[0]["wall_s"] > 0
    assert failed[0]["rows"] is None


def test_existing_catalog_gains_the_relation(tmp_path):
    """A catalog written before stage_costs existed gets the relation (and the views) when opened for writing."""
    from tests.tasks.helpers import catalog_written_before

    new = catalog_written_before(str(tmp_path), ("stage_costs",))
    assert new.rows("SELECT count(*) AS n FROM stage_costs")[0]["n"] == 0
    assert new.rows("SELECT run_id, stages_run, kept FROM costs_by_run") == [
        {"run_id": "r0", "stages_run": 0, "kept": None}]
