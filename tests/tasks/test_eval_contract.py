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
