"""Verifiable graders: math (math-verify), multiple-choice letters, countdown equations, exact arithmetic.

Extraction follows SkyThought (``skythought/evals/util/math_parsing_util.py``, the harness RLT used):
the answer is the content of the **last** ``\\boxed{...}`` (brace-matched); with no box, the text after
"he answer is", then after "final answer is", then the last number in the response. Equivalence of math
answers is decided by math-verify (fractions, percentages, sets, intervals, symbolic forms), not by a
hand-rolled normaliser.

Every grader returns a :class:`Grade` carrying ``name@version``, so evaluation results are keyed by
the grader that produced them and a grader upgrade that moves scores is visible.
"""
from __future__ import annotations

import ast
import importlib.metadata
import re
import threading
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

# Bump when extraction or normalisation in this module changes behaviour.
_RLT_GRADER_REVISION = "1"

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_NUMBER_RE = re.compile(r"-?\d*\.?\d+")
_LETTER_RE = re.compile(r"\b(A|B|C|D)\b")
_MATH_TIMEOUT_S = 5


@dataclass(frozen=True)
class Grade:
    """The verdict on one response: correct or not, what was extracted, and ``grader`` = name@version."""

    correct: bool
    extracted: Optional[str]
    grader: str


# --------------------------------------------------------------------------------------------------
# extraction


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` with nested braces matched.

    ``\\boxed 5`` (no braces) yields the next token. Returns None if there is no box or the last box
    is never closed.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} and finally \\boxed{\\{1, 2\\}}")
    '\\\\{1, 2\\\\}'
    """
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():]
    if not rest.startswith("{"):
        token = rest.strip().split("$")[0].split()
        return token[0] if token else None
    depth = 0
    for i, ch in enumerate(rest):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[1:i].strip()
    return None


def _after_phrase(text: str, phrase: str) -> Optional[str]:
    if phrase not in text:
        return None
    # Only the rest of that line: models often keep talking after stating the answer.
    tail = text.rsplit(phrase, 1)[1].strip().lstrip(":").strip()
    tail = tail.split("\n", 1)[0].strip().rstrip(".").strip()
    if len(tail) >= 2 and tail[0] == tail[-1] == "$":
        tail = tail[1:-1].strip()
    return tail or None


def extract_answer(text: str) -> Optional[str]:
    """SkyThought-style answer extraction: last box, then "he answer is", "final answer is", last number."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    for phrase in ("he answer is", "final answer is"):
        found = _after_phrase(text, phrase)
        if found is not None:
            return found
    numbers = _NUMBER_RE.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


# --------------------------------------------------------------------------------------------------
# math


@lru_cache(maxsize=1)
def math_verify_version() -> str:
    return importlib.metadata.version("math-verify")


def math_grader_id() -> str:
    return f"math-verify@{math_verify_version()}+rlt{_RLT_GRADER_REVISION}"


def _timeouts() -> Optional[int]:
    # math-verify's timeout uses signal.alarm, which raises outside the main thread (Prefect runs
    # .submit()ted tasks in threads). There we disable it; in the main thread we keep the guard
    # against pathological sympy inputs.
    return _MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _plain(s: str) -> str:
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    return re.sub(r"\s+|\$", "", s).rstrip(".").lower()


def grade_math(response: str, reference: str) -> Grade:
    """Grade a free-form math answer against the reference answer with math-verify.

    Args:
        response: model output; the answer is found by :func:`extract_answer`.
        reference: the gold answer (``"\\frac{14}{3}"``); a reference that itself contains a box
            (a full solution) is reduced to its last boxed content first.

    Returns:
        Grade with ``extracted`` = the extracted answer string (None if nothing was found).
    """
    from math_verify import parse, verify  # lazy: pulls in sympy

    grader = math_grader_id()
    extracted = extract_answer(response)
    gold = extract_boxed(reference) if "boxed" in reference or "fbox" in reference else reference
    if extracted is None or gold is None:
        return Grade(False, extracted, grader)
    if _plain(extracted) == _plain(gold):  # SkyThought's first check; also covers unparseable text answers
        return Grade(True, extracted, grader)
    timeout = _timeouts()
    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=timeout)
    pred_parsed = parse("\\boxed{" + extracted + "}", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return Grade(False, extracted, grader)
    return Grade(bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout)), extracted, grader)


# --------------------------------------------------------------------------------------------------
# multiple choice


def grade_letter(response: str, correct_letter: str) -> Grade:
    """SkyThought GPQA grading: uppercase the response, take the last standalone A-D letter.

    Faithful to the harness, including its weakness: an English "a" late in the text counts as "A".
    """
    letters = _LETTER_RE.findall(response.upper())
    extracted = letters[-1] if letters else None
    return Grade(extracted == correct_letter.strip().upper(), extracted, f"letter@{_RLT_GRADER_REVISION}")


# --------------------------------------------------------------------------------------------------
# countdown

_EXPR_CHARS = r"[\d\s+\-*/()]"
_TRAILING_EXPR = re.compile(rf"{_EXPR_CHARS}*$")
_LEADING_EXPR = re.compile(rf"^{_EXPR_CHARS}*")
_ANY_EXPR = re.compile(r"\(*\s*\d+(?:\s*[+\-*/()]\s*\(*\s*\d+\s*\)*)+\)*")
_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_MAX_EXPR_CHARS = 200


class ExpressionError(ValueError):
    """An equation is not a plain arithmetic expression over integer literals."""


def _normalise_ops(text: str) -> str:
    for src, dst in (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("·", "*"), ("÷", "/"),
                     ("−", "-"), ("\\left", ""), ("\\right", ""), ("\\(", ""), ("\\)", ""), ("$", "")):
        text = text.replace(src, dst)
    return text


def evaluate_expression(expr: str) -> tuple[Fraction, list[int]]:
    """Exactly evaluate ``+ - * /`` over integer literals with an AST walk (never ``eval``).

    Returns:
        (value as a Fraction, the integer literals used, in order).

    Raises:
        ExpressionError: syntax error, any other node (names, calls, powers, unary minus, floats),
            division by zero, or an expression longer than 200 characters.
    """
    expr = expr.strip()
    if not expr or len(expr) > _MAX_EXPR_CHARS:
        raise ExpressionError(f"expression empty or longer than {_MAX_EXPR_CHARS} chars")
    if re.search(r"[^\d\s+\-*/()]", expr):
        raise ExpressionError(f"only digits, + - * / and parentheses are allowed: {expr!r}")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not an arithmetic expression: {expr!r}") from exc
    used: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, _OPS):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if right == 0:
                raise ExpressionError("division by zero")
            return left / right
        raise ExpressionError(f"unsupported element {type(node).__name__} in {expr!r}")

    return walk(tree.body), used


def extract_equation(response: str) -> Optional[str]:
    """The candidate countdown expression: ``<answer>`` tag, else last box, else last line with '=',
    else the last arithmetic expression anywhere. A trailing ``= target`` is removed."""
    tagged = re.findall(r"<answer>(.*?)</answer>", response, flags=re.DOTALL)
    candidate = tagged[-1] if tagged else extract_boxed(response)
    if candidate is None:
        lines = [ln for ln in response.splitlines() if "=" in ln]
        candidate = lines[-1] if lines else None
    if candidate is None:
        found = _ANY_EXPR.findall(_normalise_ops(response))
        return found[-1].strip() if found else None
    candidate = _normalise_ops(candidate)
    if "=" not in candidate:
        return candidate.strip().rstrip(".").strip() or None
    lhs, rhs = candidate.rsplit("=", 1)[0], candidate.split("=", 1)[1]
    left = _TRAILING_EXPR.search(lhs).group(0).strip()
    if re.search(r"\d\s*[+\-*/]", left):
        return left
    right = _LEADING_EXPR.search(rhs).group(0).strip().rstrip(".").strip()  # "20 = (6 - 2) * 5"
    return right if re.search(r"\d\s*[+\-*/]", right) else (left or None)


def grade_countdown(response: str, numbers: Sequence[int], target: int, require_all: bool = False) -> Grade:
    """Check a countdown equation: built from the given numbers, each used at most once, equal to target.

    Rule choice: the prompt (TinyZero's) says "each number can be used at most once", so by default a
    subset of the numbers is accepted; ``require_all=True`` applies TinyZero's stricter checker, which
    demands every number exactly once. Only ``+ - * /`` and parentheses are allowed; evaluation is exact
    (fractions), so ``7 / 2 * 2`` is 7.
    """
    grader = f"countdown@{_RLT_GRADER_REVISION}"
    expr = extract_equation(response)
    if expr is None:
        return Grade(False, None, grader)
    try:
        value, used = evaluate_expression(expr)
    except ExpressionError:
        return Grade(False, expr, grader)
    available, counted = Counter(int(x) for x in numbers), Counter(used)
    fits = counted == available if require_all else not (counted - available)
    return Grade(bool(fits and value == target), expr, grader)


# --------------------------------------------------------------------------------------------------
# arithmetic


def parse_exact_number(text: str) -> Optional[Fraction]:
    """An exact number from ``"52"``, ``"-3"``, ``"1,000"``, ``"2.50"``, ``"3/4"``, ``"\\frac{3}{4}"``."""
    s = re.sub(r"\s+|\$|\\!|\\,", "", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.rstrip(".")
    frac = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if frac:
        s = f"{frac.group(1)}{frac.group(2)}/{frac.group(3)}"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def grade_arithmetic(response: str, answer: str) -> Grade:
    """Exact check of an integer/fraction answer (boxed, or SkyThought fallbacks)."""
    grader = f"arithmetic@{_RLT_GRADER_REVISION}"
    extracted = extract_answer(response)
    want = parse_exact_number(str(answer))
    if want is None:
        raise ValueError(f"arithmetic reference answer {answer!r} is not an exact number")
    got = parse_exact_number(extracted) if extracted is not None else None
    return Grade(got is not None and got == want, extracted, grader)


# --------------------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class Grader:
    """A named grader with a uniform call ``grader(response, reference, **grader_args) -> Grade``."""

    name: str
    fn: Callable[..., Grade]
    version_fn: Callable[[], str]

    @property
    def version(self) -> str:
        return self.version_fn()

    def __call__(self, response: str, reference: str, **kwargs: Any) -> Grade:
        return self.fn(response, reference, **kwargs)


def _countdown_uniform(response: str, reference: str, numbers: Sequence[int], target: Optional[int] = None,
                       require_all: bool = False) -> Grade:
    return grade_countdown(response, numbers, int(reference) if target is None else int(target), require_all)


GRADERS: dict[str, Grader] = {
    "math": Grader("math", grade_math, math_grader_id),
    "letter": Grader("letter", grade_letter, lambda: f"letter@{_RLT_GRADER_REVISION}"),
    "countdown": Grader("countdown", _countdown_uniform, lambda: f"countdown@{_RLT_GRADER_REVISION}"),
    "arithmetic": Grader("arithmetic", grade_arithmetic, lambda: f"arithmetic@{_RLT_GRADER_REVISION}"),
}


def get_grader(name: str) -> Grader:
    try:
        return GRADERS[name]
    except KeyError:
        raise KeyError(f"unknown grader {name!r}; expected one of {sorted(GRADERS)}") from None
