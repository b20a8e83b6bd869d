"""The evaluation contract: any change in model, data, grader, template, sampling, k or seeds is a new key."""
from __future__ import annotations

from flows.releases.report import paper_comparison
from infra.catalog.artifacts import digest
from rlt_core import benchmarks as bm
from tasks import evaluate


def _key(cfg, name="countdown-heldout", model="m" * 16, items=None):
    items = items if items is not None else evaluate._items(cfg, name)
    return digest(evaluate.eval_contract(cfg, name, items, model), 20)


def test_every_part_of_the_contract_changes_the_key():
    base = evaluate.EvaluateConfig(max_items=3)
    k0 = _key(base)
    assert _key(base) == k0
    variants = [
        _key(base, model="n" * 16),                                                     # student digest
        _key(base, items=evaluate._items(base, "countdown-heldout")[:2]),                # dataset digest
        _key(evaluate.EvaluateConfig(max_items=3, sampling={"temperature": 0.5})),        # sampling
        _key(evaluate.EvaluateConfig(max_items=3, k=2)),                                  # k
        _key(evaluate.EvaluateConfig(max_items=3, seed=7)),                               # seeds
        _key(evaluate.EvaluateConfig(max_items=3, system_prompt="none")),                 # prompt
    ]
    assert len({k0, *variants}) == len(variants) + 1
    c = evaluate.eval_contract(base, "countdown-heldout", evaluate._items(base, "countdown-heldout"), "m" * 16)
    assert c["grader"].startswith("countdown@") and c["template"] == bm.get_benchmark("countdown-heldout").prompt_template


def test_paper_table_only_when_paper_benchmarks_ran():
    assert paper_comparison({"distilled": {"countdown-heldout": 10.0}}) is None
    table = paper_comparison({"distilled": {"aime24": 10.0, "math500": 50.0, "gpqa_diamond": 30.0}})
    rows = {label: (cells, overall) for label, cells, overall in table["rows"]}
    assert table["benchmarks"] == ["aime24", "math500", "gpqa_diamond"]
    assert rows["ours: distilled"] == (["10.0", "50.0", "30.0"], "30.00") and rows["RLT-7B"][0][1] == "82.8"


def test_sampled_evaluation_reports_avg_pass_maj_at_k_and_greedy_beside_them(tmp_path, tiny_model_dir):
    """A real forward pass of a tiny model: k sampled answers and one greedy answer per item, each set under its
    own evaluation key; the summary's metrics are the ones the rows give."""
    import json

    from infra.engine.context import RunContext
    from infra.engine.runner import run_stage
    from infra.models import resolve_model
    from rlt_core.eval_metrics import sampled_metrics

    ctx = RunContext(str(tmp_path), tracking=False)
    cfg = evaluate.EvaluateConfig(benchmarks=["countdown-heldout"], max_items=3, k=3, greedy=True,
                                  sampling={"temperature": 0.7, "max_new_tokens": 8})
    out = run_stage(evaluate.STAGE, ctx, cfg, resolve_model(tiny_model_dir), label="base")
    ref = out["eval_results"] if isinstance(out, dict) else out
    s = json.loads(ctx.catalog.artifact(ref.key)["stats_json"])["benchmarks"]["countdown-heldout"]
    rows = ctx.catalog.sql("SELECT * FROM data_eval_results ORDER BY eval_key, item_id, sample_index").to_pylist()
    sampled = [r for r in rows if r["eval_key"] == s["eval_key"]]
    greedy = [r for r in rows if r["eval_key"] == s["greedy"]["eval_key"]]
    assert len(sampled) == 9 and len(greedy) == 3 and len(rows) == 12
    assert s["greedy"]["eval_key"] != s["eval_key"] and {r["sample_index"] for r in greedy} == {0}
    items = sorted({r["item_id"] for r in sampled})
    correct = [[r["correct"] for r in sampled if r["item_id"] == i] for i in items]
    extracted = [[r["extracted"] for r in sampled if r["item_id"] == i] for i in items]
    assert s["sampled"] == sampled_metrics(correct, extracted)
    assert s["greedy"]["pass@1"] == sum(r["correct"] for r in greedy) / 3
    assert s["warning"] is None   # k > 1
    # greedy and k are in the key; a config that leaves greedy off keeps the key it had before the field existed
    assert "greedy" not in evaluate.EvaluateConfig().key_config()
    assert evaluate.EvaluateConfig(greedy=True).key_config()["greedy"] is True
    one = evaluate.EvaluateConfig(benchmarks=["countdown-heldout"], max_items=3,
                                  sampling={"temperature": 0.0, "max_new_tokens": 8})
    out1 = run_stage(evaluate.STAGE, ctx, one, resolve_model(tiny_model_dir), label="base")
    ref1 = out1["eval_results"] if isinstance(out1, dict) else out1
    s1 = json.loads(ctx.catalog.artifact(ref1.key)["stats_json"])["benchmarks"]["countdown-heldout"]
    assert "one item is 33.3 points" in s1["warning"] and "sampled" not in s1 and "greedy" not in s1


def test_report_shows_sampled_metrics_greedy_and_the_small_benchmark_warning():
    from flows.releases.report import render
    from rlt_core.eval_metrics import small_benchmark_warning

    cell = {"value": 0.625, "ci_low": 0.5, "ci_high": 0.75}
    ev = [dict(label="distilled", benchmark="aime24", pass1=0.1, ci_low=0.0, ci_high=0.2, n_items=30, k=1,
               sampled={}, greedy=None, warning=small_benchmark_warning(30, 1)),
          dict(label="distilled", benchmark="math500", pass1=0.5, ci_low=0.4, ci_high=0.6, n_items=500, k=8,
               sampled={"avg@k": cell, "pass@k": cell, "maj@k": cell},
               greedy={"pass@1": 0.55, "ci_low": 0.5, "ci_high": 0.6, "eval_key": "x"}, warning=None)]
    page = render(dict(recipe="r", run_id="x", night=None, toc=[("evaluation", "Evaluation")], audits=None,
                       pending="", night_table=[], history=[], history_columns=[], stages=[], images=[],
                       cost={"error": "n/a"}, generation="", reward_means={}, evaluation=ev, paper=None, plan=[],
                       gains={"math500": {"value": 0.125, "ci_low": -0.05, "ci_high": 0.3, "items": 500,
                                          "distilled": 0.5, "baseline": 0.375}}))
    section = page[page.index('id="evaluation"'):page.index('id="plan"')]
    assert "<th>avg@k</th><th>pass@k</th>" in section and section.count("0.625\n[0.500, 0.750]") == 3
    assert "0.550 [0.500," in section
    assert "distilled / aime24: 30 items x 1 sample: one item is 3.3 points" in section
    assert "math500: " not in section   # 500 items: no warning
    assert "<td>math500</td><td>0.500</td>\n<td>0.375</td><td>+0.125</td>\n<td>[-0.050, +0.300]</td><td>500</td>" \
        in section   # the paired gain over the reference baseline student
