"""The explanation audit's step check (experiments/explanation_audit.py): right and wrong arithmetic, what it must
not read as arithmetic, and the generator's worked derivations (every step right) against corrupted copies."""
from __future__ import annotations

import re

import pytest

from experiments.explanation_audit import audit_set, check_steps, flags
from rlt_core.builtin_problems import generate


@pytest.mark.parametrize("text, expected", [
    ("6 * 5 * 9 = 270", (1, 0)),
    ("6 * 5 * 9 = 185", (1, 1)),
    ("1 + 2 * 7 = 7 + 12 = 18", (2, 2)),        # a chain: one equality per '=' (15 vs 19, 19 vs 18)
    ("2 * 8 - 3 = 16 - 3 = 13.", (2, 0)),       # a sentence's full stop is not a decimal point
    ("1. 5 + 3 = 6\n2. 5 * 3 = 15", (2, 1)),    # list numbering is not part of the arithmetic
    ("Step 2: 2 + 2 = 4", (1, 0)),
    ("5 - 8 = -3", (1, 0)),
    ("-3 = 5 - 8", (1, 0)),
    ("2 \\times 3 = 6", (1, 0)),
    ("6 + 4 = 10, so 10 - 1 = 9.", (2, 0)),
    ("9 / 3 = 3", (1, 0)),
    ("x = 5", (0, 0)),                          # nothing computed
    ("10 = 10", (0, 0)),
    ("2x3=6", (0, 0)),                          # not read as 3 = 6
    ("10^3 = 1000", (0, 0)),                    # not read as 3 = 1000
    ("3.5 + 1 = 4.5", (0, 0)),                  # integer arithmetic only
    ("1 / 0 = 5", (0, 0)),
    ("The answer is \\boxed{10}.", (0, 0)),
])
def test_check_steps(text, expected):
    assert check_steps(text) == expected


def test_flags_need_right_steps_and_the_answer_for_a_derivation():
    assert flags("3 - 2 = 1", "0") == {"states_answer": 0.0, "has_equation": 1.0, "steps_right": 1.0,
                                       "right_to_answer": 0.0}
    assert flags("5 - 2 = 3, then 3 - 3 = 0", "0")["right_to_answer"] == 1.0
    assert flags("3 - 3 = 1, so 0", "0") == {"states_answer": 1.0, "has_equation": 1.0, "steps_right": 0.0,
                                             "right_to_answer": 0.0}
    assert flags("The answer is 13.", "3")["states_answer"] == 0.0     # 3 is not in 13


@pytest.mark.parametrize("task", ["arithmetic-easy-terse", "arithmetic-terse", "addition-terse"])
def test_the_generators_derivations_are_right_and_a_changed_result_is_caught(task):
    problems = generate(task, 200, 3)
    worked = [p["worked_solution"] for p in problems]
    stats = audit_set(worked, [p["answer"] for p in problems])
    assert stats["n"] == 200
    for flag in ("states_answer", "has_equation", "steps_right", "right_to_answer"):
        assert stats[flag]["mean"] == 1.0, flag
    # the first intermediate result off by one: that step is wrong (and the next step, which reads it, stays right)
    for text in worked:
        broken = re.sub(r"= (-?\d+)\.", lambda m: f"= {int(m.group(1)) + 1}.", text, count=1)
        checked, wrong = check_steps(broken)
        assert wrong >= 1 and checked == check_steps(text)[0], broken
