"""Benchmarks: specs, items from rows in each real schema, SkyThought prompt/shuffle fidelity, pass@1."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from rlt_core.benchmarks import (
    BUILTIN_BENCHMARKS,
    BenchmarkError,
    BenchmarkSpec,
    benchmark_items,
    get_benchmark,
    load_benchmark_rows,
    pass_at_1,
)
from rlt_core.builtin_problems import canonical_key, generate
from rlt_core.grading import GRADERS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REPO = Path(__file__).resolve().parents[2]


def local(name: str, fixture: str) -> BenchmarkSpec:
    return get_benchmark(name).model_copy(update={"dataset": str(FIXTURES / fixture)})


def read_jsonl(fixture: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / fixture).read_text().splitlines()]


def test_builtin_specs_match_skythought_settings():
    kinds = ("countdown", "arithmetic", "arithmetic-easy", "arithmetic-easy-terse", "arithmetic-terse",
             "addition-terse")
    assert set(BUILTIN_BENCHMARKS) == {"math500", "aime24", "gpqa_diamond",
                                       *(f"{k}-{s}" for k in kinds for s in ("heldout", "validation"))}
    m, a, g = get_benchmark("math500"), get_benchmark("aime24"), get_benchmark("gpqa_diamond")
    assert (m.dataset, m.split, m.grader) == ("qq8933/MATH500", "test", "math")
    assert (a.dataset, a.split, a.grader) == ("AI-MO/aimo-validation-aime", "train", "math")
    assert (a.filter.column, a.filter.contains) == ("url", "2024")
    assert (g.dataset, g.subset, g.split, g.grader) == ("Idavidrein/gpqa", "gpqa_diamond", "train", "letter")
    assert g.choice_seed == 41
    with pytest.raises(KeyError, match="unknown benchmark"):
        get_benchmark("mmlu")


def test_spec_is_strict():
    with pytest.raises(ValidationError, match="unknown grader"):
        BenchmarkSpec(name="x", dataset="d", prompt_template="{prompt}", grader="rouge")
    with pytest.raises(ValidationError):
        BenchmarkSpec(name="x", dataset="d", prompt_template="{prompt}", grader="math", temprature=0.0)


def test_math500_rows_in_real_schema():
    spec = local("math500", "math500_sample.jsonl")
    rows = load_benchmark_rows(spec)
    assert rows == read_jsonl("math500_sample.jsonl")
    items = benchmark_items(spec, rows)
    assert [i.item_id for i in items] == [r["unique_id"] for r in rows]
    assert items[0].prompt == "Return your final response within \\boxed{}. " + rows[0]["problem"]
    assert [i.reference for i in items] == [r["answer"] for r in rows]
    # The dataset's own worked solutions must grade as correct against its own answers.
    for item, row in zip(items, rows):
        assert GRADERS[item.grader](row["solution"], item.reference, **item.grader_args).correct, row["unique_id"]
    assert not GRADERS["math"](r"\boxed{\frac{6}{5}}", items[0].reference).correct


def test_aime24_filter_and_integer_answers():
    spec = local("aime24", "aime_sample.jsonl")
    rows = load_benchmark_rows(spec)
    items = benchmark_items(spec, rows)
    kept = [r for r in rows if "2024" in r["url"]]
    assert len(rows) == 4 and len(items) == len(kept) == 2
    assert [i.item_id for i in items] == [str(r["id"]) for r in kept]
    assert [i.reference for i in items] == ["130", "275"]  # 275 is an int in the row
    assert items[1].prompt == "Return your final response within \\boxed{}. " + kept[1]["problem"]
    for item, row in zip(items, kept):
        assert GRADERS["math"](row["solution"], item.reference).correct


def test_gpqa_prompt_and_letters_follow_skythought():
    spec = local("gpqa_diamond", "gpqa_diamond_sample.csv")
    rows = load_benchmark_rows(spec)
    items = benchmark_items(spec, rows)
    assert len(items) == 6 and items[0].item_id == "recA1"
    # SkyThought: set_seed(41), then one global random.shuffle per row in dataset order.
    state = random.getstate()
    try:
        random.seed(41)
        expected = []
        for row in rows:
            answers = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"],
                       row["Incorrect Answer 3"]]
            random.shuffle(answers)
            choices = ", ".join(f"{letter}) {answer}" for letter, answer in zip("ABCD", answers))
            expected.append((row["Question"] + "\n" + choices, "ABCD"[answers.index(row["Correct Answer"])]))
    finally:
        random.setstate(state)
    prefix = ("Return your final response within \\boxed{} and only include the letter choice (A, B, C, or D) "
              "as your final response. ")
    assert [(i.prompt, i.reference) for i in items] == [(prefix + p, letter) for p, letter in expected]
    for item, row in zip(items, rows):
        choice = item.prompt.split(f"{item.reference}) ", 1)[1]
        assert choice.startswith(row["Correct Answer"])
        assert GRADERS["letter"](f"\\boxed{{{item.reference}}}", item.reference).correct
    assert "What is its ground-state energy?" in items[0].prompt  # multi-line CSV field survived
    other = benchmark_items(spec.model_copy(update={"choice_seed": 7}), rows)
    assert [i.prompt for i in other] != [i.prompt for i in items]


def test_limit_keeps_the_prompts_of_a_full_run():
    spec = local("gpqa_diamond", "gpqa_diamond_sample.csv")
    rows = load_benchmark_rows(spec)
    full = benchmark_items(spec, rows)
    assert benchmark_items(spec.model_copy(update={"limit": 3}), rows) == full[:3]


def test_rows_missing_required_columns_fail_loudly():
    spec = get_benchmark("math500")
    with pytest.raises(BenchmarkError, match="row 1 has no value in column 'answer'"):
        benchmark_items(spec, [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?"}])
    with pytest.raises(BenchmarkError, match="column 'Incorrect Answer 3'"):
        benchmark_items(get_benchmark("gpqa_diamond"), [{"Question": "Q", "Correct Answer": "a",
                                                         "Incorrect Answer 1": "b", "Incorrect Answer 2": "c"}])


@pytest.mark.parametrize("name, kind", [("countdown-heldout", "countdown"), ("arithmetic-heldout", "arithmetic")])
def test_builtin_heldout_benchmarks(name, kind):
    spec = get_benchmark(name)
    rows = load_benchmark_rows(spec)
    assert rows == load_benchmark_rows(spec) and len(rows) == 200
    items = benchmark_items(spec, rows)
    assert len({i.item_id for i in items}) == 200 and all(i.item_id.startswith("p_") for i in items)
    for item, row in zip(items, rows):
        assert item.prompt == "Return your final response within \\boxed{}. " + row["question"]
        assert GRADERS[item.grader](row["solution"], item.reference, **item.grader_args).correct
        assert not GRADERS[item.grader](r"\boxed{0}", item.reference, **item.grader_args).correct
    train_keys = {canonical_key(p) for p in generate(kind, 2000, seed=0)}
    assert not train_keys & {canonical_key(r) for r in rows}


@pytest.mark.parametrize("kind", ["countdown", "arithmetic-easy-terse"])
def test_validation_benchmark_never_shares_an_item_with_the_test_items_or_training(kind):
    test_rows = load_benchmark_rows(get_benchmark(f"{kind}-heldout"))
    spec = get_benchmark(f"{kind}-validation")
    rows = load_benchmark_rows(spec)
    assert len(rows) == 200 and rows == load_benchmark_rows(spec)
    keys = [canonical_key(r) for r in rows]
    assert len(set(keys)) == 200 and not set(keys) & {canonical_key(r) for r in test_rows}
    assert not set(keys) & {canonical_key(p) for p in generate(kind, 2000, seed=0)}
    # a shorter validation set is the start of the longer one (settings chosen on 100 items hold on 200)
    assert load_benchmark_rows(spec.model_copy(update={"n": 50})) == rows[:50]
    assert len({i.item_id for i in benchmark_items(spec, rows)}) == 200


def test_unreachable_hub_benchmark_raises_benchmark_error():
    code = ("from rlt_core.benchmarks import get_benchmark, load_benchmark_rows, BenchmarkError\n"
            "try:\n    load_benchmark_rows(get_benchmark('math500'))\n"
            "except BenchmarkError as e:\n    print('BENCHMARK_ERROR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "BENCHMARK_ERROR math500:" in out.stdout and "qq8933/MATH500" in out.stdout, out.stderr[-2000:]


# ---------------------------------------------------------------- pass@1


def test_pass_at_1_hand_computed():
    # item means: 0.5, 1.0, 0.0, 2/3 -> mean = (0.5 + 1 + 0 + 0.6667) / 4 = 0.541667
    mean, low, high = pass_at_1([[True, False], [True, True], [False, False], [True, True, False]])
    assert mean == pytest.approx((0.5 + 1 + 0 + 2 / 3) / 4)
    assert 0.0 <= low <= mean <= high <= 1.0 and high - low > 0.2
    assert pass_at_1([[True]] * 5) == (1.0, 1.0, 1.0)
    assert pass_at_1([[False, False]] * 5) == (0.0, 0.0, 0.0)


def test_pass_at_1_is_reproducible_and_calibrated():
    rng = np.random.default_rng(1)
    correct = [[bool(x)] for x in rng.random(400) < 0.3]
    assert pass_at_1(correct) == pass_at_1(correct)
    mean, low, high = pass_at_1(correct)
    half_width = 1.96 * np.sqrt(mean * (1 - mean) / len(correct))  # normal approximation
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    # More samples per item average out sampling noise: the CI narrows.
    many = [[bool(x) for x in rng.random(8) < p] for p in rng.random(400)]
    one = [[s[0]] for s in many]
    assert pass_at_1(many)[2] - pass_at_1(many)[1] < pass_at_1(one)[2] - pass_at_1(one)[1]


def test_pass_at_1_rejects_empty_input():
    with pytest.raises(ValueError, match="at least one item"):
        pass_at_1([])
    with pytest.raises(ValueError, match="no samples"):
        pass_at_1([[True], []])
