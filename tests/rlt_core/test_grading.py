"""Graders: extraction, math equivalence via math-verify, letters, countdown, exact arithmetic, threads."""
import importlib.metadata
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from rlt_core.grading import (
    GRADERS,
    ExpressionError,
    Grade,
    evaluate_expression,
    extract_answer,
    extract_boxed,
    extract_equation,
    get_grader,
    grade_arithmetic,
    grade_countdown,
    grade_letter,
    grade_math,
    parse_exact_number,
)

# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize("text, expected", [
    (r"first \boxed{1} then \boxed{2}", "2"),
    (r"\boxed{\frac{\sqrt{3}}{2}}.", r"\frac{\sqrt{3}}{2}"),
    (r"$\boxed{\{1, 2\}}$", r"\{1, 2\}"),
    (r"\fbox{7}", "7"),
    (r"answer: \boxed 5$", "5"),
    (r"\boxed{a} and \fbox{b}", "b"),
    (r"\boxed{unclosed {", None),
    ("no box here", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("blah \\boxed{3} The answer is 4", "3"),                 # a box wins over phrases
    ("So the answer is 12.\nCheck: 12 + 0 = 12", "12"),      # rest of that line only
    ("The final answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("We get 3, then 5, and finally 1,024 apples", "1024"),  # last number, thousands separators removed
    ("I cannot solve this.", None),
])
def test_extract_answer_skythought_fallbacks(text, expected):
    assert extract_answer(text) == expected


# ---------------------------------------------------------------- math


@pytest.mark.parametrize("response, reference", [
    (r"Thus $\boxed{\dfrac{14}{3}}$.", r"\frac{14}{3}"),
    (r"\boxed{14/3}", r"\frac{14}{3}"),
    (r"\boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{25\%}", r"25\%"),
    (r"\boxed{25}", r"25\%"),
    (r"\boxed{\{3, 2\}}", r"\{2, 3\}"),
    (r"\boxed{3, 2}", "2, 3"),
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{[-2, 7)}", r"[-2,7)"),
    (r"\boxed{\sqrt{200}}", r"10\sqrt{2}"),
    (r"\boxed{(x+2)(x+5)}", r"x^2+7x+10"),
    (r"\boxed{x = 3}", "3"),
    (r"\boxed{1,000}", "1000"),
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}"),
    (r"\boxed{001}", "1"),
    ("The answer is 52.", "52"),
    ("After simplifying we obtain 17", "17"),
    ("work...", r"the solution, so it is \boxed{9}"),  # reference given as a full solution
])
def test_grade_math_accepts_equivalent_answers(response, reference):
    if reference.startswith("the solution"):
        response = r"\boxed{9}"
    grade = grade_math(response, reference)
    assert grade.correct, grade
    assert grade.grader == f"math-verify@{importlib.metadata.version('math-verify')}+rlt1"


@pytest.mark.parametrize("response, reference", [
    (r"\boxed{53}", "52"),
    (r"\boxed{\frac{14}{5}}", r"\frac{14}{3}"),
    (r"\boxed{4.6667}", r"\frac{14}{3}"),        # rounded, not equal
    (r"\boxed{\{1, 2\}}", r"\{1, 2, 3\}"),
    (r"\boxed{(2, 7)}", r"[2, 7]"),
    (r"\boxed{\text{Alice}}", r"\text{Evelyn}"),
    (r"\boxed{}", "3"),
    (r"\boxed{\frac{", "3"),                        # malformed, unclosed box
    (r"\boxed{))((}", "3"),
    ("I don't know.", "3"),
    ("", "3"),
])
def test_grade_math_rejects_wrong_or_malformed_answers(response, reference):
    assert not grade_math(response, reference).correct


def test_grade_math_reports_what_it_extracted():
    assert grade_math(r"so \boxed{\dfrac{1}{2}}", "0.5").extracted == r"\dfrac{1}{2}"
    assert grade_math("nothing", "0.5").extracted is None


def test_grade_math_works_outside_the_main_thread():
    # math-verify's default signal-based timeout raises off the main thread (Prefect runs tasks in threads).
    # These pairs need real math-verify equivalence (no string shortcut), so a swallowed error would fail them.
    cases = [(r"\boxed{\dfrac{1}{2}}", "0.5", True), (r"\boxed{\sqrt{200}}", r"10\sqrt{2}", True),
             (r"\boxed{50\%}", "0.5", True), (r"\boxed{3}", "4", False)]

    def run(case):
        assert threading.current_thread() is not threading.main_thread()
        return grade_math(case[0], case[1]).correct

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, cases))
    assert results == [c[2] for c in cases]
    assert [grade_math(c[0], c[1]).correct for c in cases] == results


# ---------------------------------------------------------------- letters


@pytest.mark.parametrize("response, letter, correct, extracted", [
    (r"Option B fits. \boxed{C}", "C", True, "C"),
    ("the answer is (d).", "D", True, "D"),
    ("I pick A, no wait, B", "A", False, "B"),
    ("None of them", "A", False, None),
    ("ABCD", "A", False, None),  # not a standalone letter
    ("C is right, so it is a good choice", "C", False, "A"),  # SkyThought quirk: "a" upper-cased counts
])
def test_grade_letter(response, letter, correct, extracted):
    grade = grade_letter(response, letter)
    assert (grade.correct, grade.extracted) == (correct, extracted)


# ---------------------------------------------------------------- countdown


@pytest.mark.parametrize("response, numbers, target, correct", [
    ("so the equation is (6 - 2) * 5 = 20", [6, 2, 5], 20, True),
    (r"\boxed{5 \times (6 - 2)}", [6, 2, 5], 20, True),
    (r"\boxed{20 = (6-2)*5}", [6, 2, 5], 20, True),
    ("<answer>(6 - 2) * 5</answer>", [2, 5, 6, 9], 20, True),       # subset allowed by default
    ("I would compute (6 - 2) * 5 here", [6, 2, 5], 20, True),       # bare expression fallback
    ("(8 / 3) * 3 = 8", [8, 3, 3], 8, True),                          # exact fractions
    ("5 * 5 - 5 = 20", [6, 2, 5], 20, False),                         # 5 used three times
    ("(7 - 2) * 4 = 20", [6, 2, 5], 20, False),                       # numbers not given
    ("(6 + 2) * 5 = 40", [6, 2, 5], 20, False),                       # wrong value
    ("6 / (2 - 2) = 20", [6, 2, 2], 20, False),                       # division by zero
    ("2 ** 5 = 32", [2, 5], 32, False),                               # power not allowed
    ("-2 + 6 * 5 = 28", [2, 6, 5], 28, False),                        # unary minus not allowed
    (r"\boxed{__import__('os').system('true')}", [1], 1, False),      # never eval()ed
    ("no idea", [1, 2], 3, False),
])
def test_grade_countdown(response, numbers, target, correct):
    assert grade_countdown(response, numbers, target).correct is correct


def test_grade_countdown_require_all():
    assert grade_countdown(r"\boxed{(6 - 2) * 5}", [2, 5, 6, 9], 20).correct
    assert not grade_countdown(r"\boxed{(6 - 2) * 5}", [2, 5, 6, 9], 20, require_all=True).correct
    assert grade_countdown(r"\boxed{(6 - 2) * 5 + 9 - 9}", [2, 5, 6, 9, 9], 20, require_all=True).correct


def test_extract_equation_prefers_tag_then_box_then_last_equals_line():
    assert extract_equation("<answer>1+2</answer> \\boxed{3+4}") == "1+2"
    assert extract_equation("x = 1 + 1\nso 3 * 4 = 12\nDone.") == "3 * 4"
    assert extract_equation("nothing") is None


@pytest.mark.parametrize("expr", ["x + 1", "abs(-3)", "2 ** 3", "1.5 + 1", "-1 + 2", "1 +", "0x10 + 1", "1 " * 150])
def test_evaluate_expression_rejects_anything_but_integer_arithmetic(expr):
    with pytest.raises(ExpressionError):
        evaluate_expression(expr)


def test_evaluate_expression_is_exact():
    value, used = evaluate_expression("(1 + 2) * 7 / 3 - 4")
    assert value == 3 and used == [1, 2, 7, 3, 4]
    assert evaluate_expression("10 / 4")[0] * 4 == 10


# ---------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("response, answer, correct", [
    ("The answer is \\boxed{52}.", "52", True),
    ("\\boxed{-17}", "-17", True),
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{52.0}", "52", True),
    ("\\boxed{\\frac{6}{8}}", "3/4", True),
    ("the answer is 52", "52", True),
    ("\\boxed{53}", "52", False),
    ("\\boxed{52.5}", "52", False),
    ("\\boxed{fifty-two}", "52", False),
    ("no number", "52", False),
])
def test_grade_arithmetic(response, answer, correct):
    assert grade_arithmetic(response, answer).correct is correct


def test_grade_arithmetic_rejects_a_non_numeric_reference():
    with pytest.raises(ValueError, match="not an exact number"):
        grade_arithmetic("\\boxed{1}", "one")
    assert parse_exact_number("1,234,567") == 1234567 and parse_exact_number("1,23") is None


# ---------------------------------------------------------------- registry


def test_registry_uniform_call_and_versions():
    assert set(GRADERS) == {"math", "letter", "countdown", "arithmetic"}
    calls = {
        "math": (r"\boxed{\frac{1}{2}}", "0.5", {}),
        "letter": ("I choose B", "B", {}),
        "countdown": (r"\boxed{(6-2)*5}", "20", {"numbers": [6, 2, 5]}),
        "arithmetic": (r"\boxed{7}", "7", {}),
    }
    for name, (response, reference, args) in calls.items():
        grader = get_grader(name)
        grade = grader(response, reference, **args)
        assert isinstance(grade, Grade) and grade.correct, name
        assert grade.grader == grader.version and "@" in grader.version
    assert not get_grader("countdown")(r"\boxed{(6-2)*5}", "21", numbers=[6, 2, 5]).correct
    with pytest.raises(KeyError, match="unknown grader"):
        get_grader("bleu")
