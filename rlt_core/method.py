"""Constants of the RLT method that several parts of it must agree on (rlt-method.md).

``TEMPERATURE``: the teacher samples its explanations at 0.7 (GRPO and mass generation, rlt-method.md 3.2), and the
RLT reward takes the teacher's log-probs at the temperature the explanations were sampled at (2.1, ``unbias_teacher_
log_probs``); the student's log-probs are taken at 0.7 too. A recipe sets it once at its top level
(``temperature``, flows/recipe.py) and every stage field it governs is derived from it; the score stage refuses
explanations sampled at another temperature than the one it scores at.
"""
from __future__ import annotations

TEMPERATURE = 0.7
