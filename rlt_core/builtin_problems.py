"""Seeded offline problem generators: countdown, multi-step arithmetic and its easier variant (arithmetic-easy),
and three tasks with terse reference solutions (arithmetic-easy-terse, arithmetic-terse, addition-terse).

Countdown and arithmetic come with worked reference solutions, so the whole factory (teacher prompt with
question + solution, RLT reward, distillation, graded evaluation) can run without any hub. The terse tasks'
reference solution is the final answer alone: the regime the RLT method is for, where the explanation has to supply
the steps the reference leaves out (issue 24; an answer-only reference cannot teach them, an explanation can). A
terse problem keeps its worked derivation under ``worked_solution`` (not a field the factory ingests): the
experiments use it as the teacher's warm-up trace, as the paper warms its teacher up on traces of another model.

Every problem is built from a random expression tree, so it is solvable by construction:
countdown targets are the value of a tree over the given numbers, arithmetic answers are the value
of the rendered expression. Generation is deterministic given ``(kind, n, seed)``: the RNG is seeded
with a string (hashed with SHA-512 by :class:`random.Random`), which does not depend on
``PYTHONHASHSEED`` or the platform.

The problem space is split once and for all by a hash of each problem's canonical form (countdown: sorted
numbers + target; arithmetic: the expression): one eighth is the ``"eval"`` partition, used only by the
held-out benchmarks, the rest is ``"train"``. Training data can therefore never contain an evaluation
problem, whatever seeds the two sides use.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Optional

KINDS = ("countdown", "arithmetic", "arithmetic-easy", "arithmetic-easy-terse", "arithmetic-terse", "addition-terse")
PARTITIONS = ("train", "eval")
_EVAL_SHARE = 8  # 1 in 8 canonical problems belongs to the eval partition

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_APPLY: dict[str, Callable[[Fraction, Fraction], Fraction]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}
_ORDINALS = ("First", "Next", "Then", "After that", "Finally")


@dataclass(frozen=True)
class Node:
    """A binary expression tree: a leaf holds ``value``; an inner node holds ``op``, ``left``, ``right``."""

    value: Fraction
    op: Optional[str] = None
    left: Optional["Node"] = None
    right: Optional["Node"] = None

    @property
    def is_leaf(self) -> bool:
        return self.op is None


def render(node: Node) -> str:
    """The expression with only the parentheses precedence needs, e.g. ``(6 - 2) * 5``."""
    if node.is_leaf:
        return _fmt(node.value)
    prec = _PREC[node.op]
    left = render(node.left)
    if not node.left.is_leaf and _PREC[node.left.op] < prec:
        left = f"({left})"
    right = render(node.right)
    # a - (b + c) and a / (b * c) need brackets even at equal precedence (non-associative ops).
    if not node.right.is_leaf and (_PREC[node.right.op] < prec or
                                   (_PREC[node.right.op] == prec and node.op in "-/")):
        right = f"({right})"
    return f"{left} {node.op} {right}"


def steps(node: Node) -> list[tuple[str, str, str, str]]:
    """Post-order evaluation steps ``(a, op, b, result)`` as strings."""
    if node.is_leaf:
        return []
    out = steps(node.left) + steps(node.right)
    out.append((_fmt(node.left.value), node.op, _fmt(node.right.value), _fmt(node.value)))
    return out


def _fmt(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _random_tree(rng: random.Random, leaves: list[int], ops: str) -> Optional[Node]:
    """Combine the leaves pairwise at random; None when an intermediate is not a non-negative integer.

    Keeping intermediates integral and non-negative makes the worked solution read like a person's
    derivation and matches the usual Countdown convention.
    """
    pool = [Node(Fraction(v)) for v in leaves]
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        a, b = pool[i], pool[j]
        op = rng.choice(ops)
        if op == "/" and b.value == 0:
            return None
        value = _APPLY[op](a.value, b.value)
        if value.denominator != 1 or value < 0:
            return None
        pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [Node(value, op, a, b)]
    return pool[0]


def _worked_steps(tree: Node) -> list[str]:
    lines = []
    all_steps = steps(tree)
    for k, (a, op, b, r) in enumerate(all_steps):
        word = _ORDINALS[-1] if k == len(all_steps) - 1 and k > 0 else _ORDINALS[min(k, len(_ORDINALS) - 2)]
        lines.append(f"{word}, {a} {op} {b} = {r}.")
    return lines


def countdown_problem(rng: random.Random, max_tries: int = 1000) -> dict:
    """One countdown problem: 3-4 numbers in [1, 50] and a target in [10, 999] reachable with them."""
    for _ in range(max_tries):
        numbers = [rng.randint(1, 50) for _ in range(rng.choice((3, 4)))]
        tree = _random_tree(rng, numbers, "+-*/")
        if tree is None or not 10 <= tree.value <= 999 or int(tree.value) in numbers:
            continue
        target = int(tree.value)
        expr = render(tree)
        question = (f"Using the numbers {numbers}, create an equation that equals {target}. "
                    "You can use basic arithmetic operations (+, -, *, /) and each number can be used at most once.")
        solution = "\n".join([f"We need to reach {target} using the numbers {', '.join(map(str, numbers))}.",
                              *_worked_steps(tree),
                              f"This reaches the target {target}, so the equation is {expr} = {target}"])
        return dict(question=question, solution=solution, answer=expr, task="countdown",
                    meta={"numbers": numbers, "target": target})
    raise RuntimeError(f"no countdown problem found in {max_tries} tries")


def arithmetic_problem(rng: random.Random, max_tries: int = 1000, sizes: tuple[int, ...] = (3, 4), high: int = 50,
                       ops: str = "+-*", task: str = "arithmetic", low: int = 1) -> dict:
    """One multi-step integer arithmetic problem over 3-4 operands in [1, 50] with + - *."""
    for _ in range(max_tries):
        operands = [rng.randint(low, high) for _ in range(rng.choice(sizes))]
        tree = _random_tree(rng, operands, ops)
        if tree is None:
            continue
        expr = render(tree)
        value = _fmt(tree.value)
        solution = "\n".join([f"We evaluate {expr} step by step, innermost operations first.",
                              *_worked_steps(tree),
                              f"The answer is \\boxed{{{value}}}."])
        return dict(question=f"Compute {expr}.", solution=solution, answer=value, task=task,
                    meta={"expression": expr, "value": int(tree.value)})
    raise RuntimeError(f"no arithmetic problem found in {max_tries} tries")


def arithmetic_easy_problem(rng: random.Random, max_tries: int = 1000) -> dict:
    """The easier arithmetic: 3 operands in [1, 10] with + - * (two worked steps). A 135M model answers some of
    these (SmolLM2-135M-Instruct: see docs/results.md), so distillation can move its accuracy either way."""
    return arithmetic_problem(rng, max_tries, sizes=(3,), high=10, task="arithmetic-easy")


def _answer_only(problem: dict) -> dict:
    """The problem with its reference solution cut to the final answer; the worked derivation moves to
    ``worked_solution``."""
    return {**problem, "solution": f"The answer is \\boxed{{{problem['answer']}}}.",
            "worked_solution": problem["solution"]}


def arithmetic_easy_terse_problem(rng: random.Random, max_tries: int = 1000) -> dict:
    """arithmetic-easy's problems (3 operands in [1, 10] with + - *, two steps) with an answer-only reference: the
    base student answers some (inside the 5-60% band), the worked steps teach (docs/results.md, round 1)."""
    return _answer_only(arithmetic_problem(rng, max_tries, sizes=(3,), high=10, task="arithmetic-easy-terse"))


def arithmetic_terse_problem(rng: random.Random, max_tries: int = 1000) -> dict:
    """4 operands in [1, 10] with + - * (three steps), answer-only reference solution."""
    return _answer_only(arithmetic_problem(rng, max_tries, sizes=(4,), high=10, task="arithmetic-terse"))


def addition_terse_problem(rng: random.Random, max_tries: int = 1000) -> dict:
    """The sum of three 2-digit numbers (carries, laid out digit by digit when explained), answer-only reference
    solution."""
    return _answer_only(arithmetic_problem(rng, max_tries, sizes=(3,), high=99, ops="+", task="addition-terse",
                                           low=10))


_MAKERS: dict[str, Callable[[random.Random], dict]] = {"countdown": countdown_problem,
                                                        "arithmetic": arithmetic_problem,
                                                        "arithmetic-easy": arithmetic_easy_problem,
                                                        "arithmetic-easy-terse": arithmetic_easy_terse_problem,
                                                        "arithmetic-terse": arithmetic_terse_problem,
                                                        "addition-terse": addition_terse_problem}


def canonical_key(problem: dict) -> str:
    """The identity of a problem up to presentation (countdown numbers are a multiset)."""
    meta = problem["meta"]
    if problem["task"] == "countdown":
        return json.dumps({"numbers": sorted(meta["numbers"]), "target": meta["target"]})
    return json.dumps({"expression": meta["expression"]})


def partition_of(problem: dict) -> str:
    """``"eval"`` or ``"train"``, fixed by a hash of the problem's canonical form."""
    digest = hashlib.sha256(canonical_key(problem).encode("utf-8")).digest()
    return "eval" if int.from_bytes(digest[:4], "big") % _EVAL_SHARE == 0 else "train"


def generate(kind: str, n: int, seed: int, partition: str = "train") -> list[dict]:
    """Generate ``n`` distinct problems of one kind, deterministically from ``seed``.

    Args:
        kind: one of :data:`KINDS`.
        n: number of problems (>= 0).
        seed: RNG seed; the same arguments always give the same list, and a longer list with the same
            seed starts with the shorter one.
        partition: ``"train"`` (default) or ``"eval"``; the two never share a problem.

    Returns:
        A list of dicts with keys ``question``, ``solution`` (worked derivation; the terse kinds: the answer, and
        their derivation in ``worked_solution``), ``answer``
        (countdown: the equation's expression; arithmetic: the integer as a string), ``task`` and
        ``meta`` (countdown: ``numbers``, ``target``; arithmetic: ``expression``, ``value``).
    """
    if kind not in _MAKERS:
        raise ValueError(f"unknown builtin problem kind {kind!r}; expected one of {list(KINDS)}")
    if partition not in PARTITIONS:
        raise ValueError(f"unknown partition {partition!r}; expected one of {list(PARTITIONS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"rlt-builtin:{kind}:{seed}")
    seen: set[str] = set()
    out: list[dict] = []
    # Duplicates (same canonical problem) are skipped so n problems are n distinct problems; the space
    # is large enough that this loop ends quickly for any realistic n.
    for _ in range((n + 10) * 40):
        if len(out) == n:
            break
        problem = _MAKERS[kind](rng)
        key = canonical_key(problem)
        if key not in seen and partition_of(problem) == partition:
            seen.add(key)
            out.append(problem)
    if len(out) < n:
        raise RuntimeError(f"could only generate {len(out)} distinct {kind} problems, asked for {n}")
    return out
