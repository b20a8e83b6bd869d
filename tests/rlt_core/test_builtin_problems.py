"""Built-in generators: deterministic, distinct, solvable, with correct worked solutions."""
import random
import re
from fractions import Fraction

import pytest

from rlt_core.builtin_problems import KINDS, Node, canonical_key, generate, partition_of, render, steps
from rlt_core.grading import evaluate_expression, grade_arithmetic, grade_countdown

TERSE = ["arithmetic-easy-terse", "arithmetic-terse", "addition-terse"]
WORKED = [k for k in KINDS if k not in TERSE]   # the kinds whose reference solution is a worked derivation


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_given_seed_and_prefix_stable(kind):
    a, b = generate(kind, 40, seed=7), generate(kind, 40, seed=7)
    assert a == b
    assert generate(kind, 10, seed=7) == a[:10]
    assert [p["question"] for p in generate(kind, 40, seed=8)] != [p["question"] for p in a]


@pytest.mark.parametrize("kind", KINDS)
def test_records_have_contract_keys_and_distinct_problems(kind):
    problems = generate(kind, 300, seed=1)
    assert len(problems) == 300
    keys = {"question", "solution", "answer", "task", "meta"} | ({"worked_solution"} if kind in TERSE else set())
    assert all(set(p) == keys for p in problems)
    assert all(p["task"] == kind for p in problems)
    assert len({canonical_key(p) for p in problems}) == 300


def test_countdown_reference_equation_verifies_and_uses_every_number():
    for p in generate("countdown", 400, seed=2):
        numbers, target = p["meta"]["numbers"], p["meta"]["target"]
        assert 3 <= len(numbers) <= 4 and all(1 <= x <= 50 for x in numbers)
        assert f"{numbers}" in p["question"] and f"equals {target}." in p["question"]
        grade = grade_countdown(p["solution"], numbers, target, require_all=True)
        assert grade.correct, (p["solution"], grade)
        assert grade.extracted == p["answer"]
        value, used = evaluate_expression(p["answer"])
        assert value == target and sorted(used) == sorted(numbers)
        assert p["solution"].endswith(f"so the equation is {p['answer']} = {target}")


def test_arithmetic_answer_is_value_of_question_expression():
    for p in generate("arithmetic", 400, seed=3):
        expr = re.fullmatch(r"Compute (.+)\.", p["question"]).group(1)
        value, used = evaluate_expression(expr)
        assert value.denominator == 1 and str(value.numerator) == p["answer"]
        assert 3 <= len(used) <= 4
        assert p["solution"].endswith(f"The answer is \\boxed{{{p['answer']}}}.")
        assert grade_arithmetic(p["solution"], p["answer"]).correct


def test_arithmetic_easy_has_three_small_operands_and_its_own_heldout_benchmark():
    from rlt_core.benchmarks import benchmark_items, get_benchmark, load_benchmark_rows

    for p in generate("arithmetic-easy", 300, seed=5):
        expr = re.fullmatch(r"Compute (.+)\.", p["question"]).group(1)
        value, used = evaluate_expression(expr)
        assert len(used) == 3 and all(1 <= u <= 10 for u in used), expr
        assert str(value.numerator) == p["answer"] and p["task"] == "arithmetic-easy"
    spec = get_benchmark("arithmetic-easy-heldout")
    items = benchmark_items(spec, load_benchmark_rows(spec))
    assert len(items) == 200 and all(partition_of(r) == "eval" for r in load_benchmark_rows(spec))


@pytest.mark.parametrize("kind", WORKED)
def test_every_worked_step_is_arithmetically_right(kind):
    step_re = re.compile(r"^\w[\w ]*, (\d+) ([-+*/]) (\d+) = (\d+)\.$")
    for p in generate(kind, 200, seed=4):
        lines = [ln for ln in p["solution"].splitlines() if step_re.match(ln)]
        assert len(lines) >= 2, p["solution"]
        for line in lines:
            a, op, b, r = step_re.match(line).groups()
            value, _ = evaluate_expression(f"{a} {op} {b}")
            assert value == Fraction(int(r)), line


@pytest.mark.parametrize("kind, n_operands, low, high, ops", [("arithmetic-easy-terse", 3, 1, 10, set("+-*")),
                                                              ("arithmetic-terse", 4, 1, 10, set("+-*")),
                                                              ("addition-terse", 3, 10, 99, {"+"})])
def test_terse_kinds_give_the_answer_alone_and_have_a_heldout_benchmark(kind, n_operands, low, high, ops):
    from rlt_core.benchmarks import benchmark_items, get_benchmark, load_benchmark_rows

    for p in generate(kind, 300, seed=6):
        expr = re.fullmatch(r"Compute (.+)\.", p["question"]).group(1)
        value, used = evaluate_expression(expr)
        assert len(used) == n_operands and all(low <= u <= high for u in used), expr
        assert set(re.findall(r"[-+*/]", expr)) <= ops and str(value.numerator) == p["answer"]
        assert p["solution"] == f"The answer is \\boxed{{{p['answer']}}}." and p["task"] == kind
        assert grade_arithmetic(p["solution"], p["answer"]).correct
        # the worked derivation is kept beside the answer (the experiments' warm-up trace), and it is right
        assert p["worked_solution"].startswith(f"We evaluate {expr} step by step")
        assert grade_arithmetic(p["worked_solution"], p["answer"]).correct
    spec = get_benchmark(f"{kind}-heldout")
    rows = load_benchmark_rows(spec)
    assert len(benchmark_items(spec, rows)) == 200 and all(partition_of(r) == "eval" for r in rows)


def test_render_uses_the_parentheses_precedence_needs():
    n = lambda v: Node(Fraction(v))  # noqa: E731
    sub = Node(Fraction(4), "-", n(6), n(2))
    assert render(Node(Fraction(20), "*", sub, n(5))) == "(6 - 2) * 5"
    assert render(Node(Fraction(3), "-", n(6), Node(Fraction(3), "+", n(2), n(1)))) == "6 - (2 + 1)"
    assert render(Node(Fraction(4), "/", n(8), Node(Fraction(2), "/", n(4), n(2)))) == "8 / (4 / 2)"
    assert render(Node(Fraction(9), "+", n(6), Node(Fraction(3), "+", n(2), n(1)))) == "6 + 2 + 1"
    assert steps(Node(Fraction(20), "*", sub, n(5))) == [("6", "-", "2", "4"), ("4", "*", "5", "20")]


def test_render_round_trips_random_trees_through_the_safe_evaluator():
    rng = random.Random(0)
    for _ in range(500):
        pool = [Node(Fraction(rng.randint(1, 20))) for _ in range(rng.randint(2, 5))]
        while len(pool) > 1:
            a, b = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
            op = rng.choice("+-*/" if b.value != 0 else "+-*")
            value = {"+": lambda: a.value + b.value, "-": lambda: a.value - b.value,
                     "*": lambda: a.value * b.value, "/": lambda: a.value / b.value}[op]()
            pool.append(Node(value, op, a, b))
        assert evaluate_expression(render(pool[0]))[0] == pool[0].value


@pytest.mark.parametrize("kind", KINDS)
def test_train_and_eval_partitions_never_share_a_problem(kind):
    evals = generate(kind, 100, seed=0, partition="eval")
    assert all(partition_of(p) == "eval" for p in evals)
    eval_keys = {canonical_key(p) for p in evals}
    for seed in range(3):
        train = generate(kind, 1000, seed=seed)
        assert all(partition_of(p) == "train" for p in train)
        assert not eval_keys & {canonical_key(p) for p in train}


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown builtin problem kind 'sudoku'"):
        generate("sudoku", 3, 0)
    with pytest.raises(ValueError, match="partition"):
        generate("countdown", 3, 0, partition="test")
    with pytest.raises(ValueError, match="n must be"):
        generate("countdown", -1, 0)
    assert generate("arithmetic", 0, 0) == []
