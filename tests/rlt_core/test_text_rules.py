"""Text rules beyond reward (rlt_core/text_rules.py): each rule on a text that breaks it and one that does not."""
from __future__ import annotations

import pytest

from rlt_core import text_rules as tr
from rlt_core.filtering import FilterRules, decide_problem, rules_digest
from rlt_core.text_rules import TextRules

GOOD = ("We need 22 from 3, 5 and 7. Multiplying the two smaller numbers gives 3 * 5 = 15, and adding the "
        "last one gives 15 + 7 = 22, which is the target.")
SOLUTION = "First compute 3 * 5 = 15. Then add 7 to get 15 + 7 = 22. So the answer is 22."
QUESTION = "Using the numbers [3, 5, 7], create an equation that equals 22."


def feats(text: str, finish: str = "stop", rules: TextRules = TextRules()) -> tr.TextFeatures:
    return tr.features(text, QUESTION, SOLUTION, finish, rules)


def test_a_good_explanation_breaks_no_rule():
    assert tr.violation(feats(GOOD), TextRules()) is None


def test_each_rule_names_its_reason():
    rules = TextRules()
    assert tr.violation(feats(GOOD, finish="length"), rules) == "truncated"
    assert tr.violation(feats("so 3 * 5 = 15 " * 20), rules) == "degenerate_repetition"
    assert tr.violation(feats(GOOD + " " + "=" * 80), rules) == "degenerate_repetition"
    assert tr.violation(feats("Here it is:  " + SOLUTION.replace(" ", "\n  ")), rules) == "solution_copied"
    assert tr.violation(feats(GOOD + " 所以答案是二十二，因为三乘五等于十五再加七。"), rules) == "language_mixing"


def test_rules_off_when_none_and_thresholds_bite_where_said():
    off = TextRules(max_repeated_ngram_share=None, max_char_run=None, solution_copy_min_chars=None,
                    drop_truncated=False, max_foreign_script_share=None, near_duplicate_jaccard=None)
    for text, finish in [(GOOD, "length"), ("so 3 * 5 = 15 " * 20, "stop"), (SOLUTION, "stop"),
                         (GOOD + " 所以答案是二十二", "stop")]:
        assert tr.violation(feats(text, finish, off), off) is None
    # a terse solution (a final answer) may appear in an explanation: below solution_copy_min_chars
    short = tr.features("... so the answer is 22.", QUESTION, "22", "stop", TextRules())
    assert not short.solution_copied
    assert tr.max_char_run("ab" + "x" * 51 + "  " * 90) == 51
    assert tr.repeated_ngram_share("a b c d a b c d".split(), 4) == pytest.approx(1 - 4 / 5)


def test_greek_and_math_letters_are_notation_not_another_language():
    text = GOOD + " Let θ = π/2 and α, β in ℝ; 𝑥 is the unknown, Ω the set."
    assert tr.foreign_script_share(text, QUESTION) == 0.0
    assert tr.foreign_script_share("Это ответ 22", QUESTION) == 1.0
    assert tr.foreign_script_share("Это ответ 22", "Сколько будет 3 * 5 + 7?") == 0.0   # the problem's own script


def test_jaccard_sketch_is_exact_for_small_sets_and_close_for_large():
    from rlt_core.decontam import normalise, shingles

    def exact(a: str, b: str) -> float:
        sa, sb = set(shingles(normalise(a)).tolist()), set(shingles(normalise(b)).tolist())
        return len(sa & sb) / len(sa | sb)

    b = GOOD + " That is all."
    assert tr.jaccard(tr.sketch(GOOD), tr.sketch(b)) == pytest.approx(exact(GOOD, b))
    assert tr.jaccard(tr.sketch(GOOD), tr.sketch(GOOD)) == 1.0
    long_a = " ".join(f"w{i}" for i in range(2000))
    long_b = " ".join(long_a.split()[:1000] + [f"v{i}" for i in range(1000)])
    assert tr.jaccard(tr.sketch(long_a), tr.sketch(long_b)) == pytest.approx(exact(long_a, long_b), abs=0.08)


def _cand(i: int, reward: float, text: str, finish: str = "stop") -> tuple[dict, tr.TextFeatures]:
    row = dict(explanation_id=f"e{i}", sample_index=i, reward=reward, format_penalty=0.0, n_explanation_tokens=50,
               answer_logprob_mean=reward, answer_logprob_min=reward, kl_mean=0.0, kl_max=0.0)
    return row, feats(text, finish)


def test_decide_problem_applies_text_rules_in_rank_order_and_near_duplicates_among_kept():
    other = ("Start from the target 22: 22 - 7 = 15 and 15 = 3 * 5, so reading it backwards "
             "gives 3 * 5 + 7, which uses every number once.")
    cands = [_cand(0, -0.1, GOOD, "length"), _cand(1, -0.2, "so 3 * 5 = 15 " * 20), _cand(2, -0.3, SOLUTION),
             _cand(3, -0.4, GOOD + " 所以答案是二十二，因为三乘五等于十五再加七。"), _cand(4, -0.5, GOOD),
             _cand(5, -0.6, GOOD + " Done."), _cand(6, -0.7, other), _cand(7, -0.8, other + " Yes.")]
    rows, fs = [c[0] for c in cands], {c[0]["explanation_id"]: c[1] for c in cands}
    rules = FilterRules(top_k=2)
    got = {d.explanation_id: (d.kept, d.reason) for d in decide_problem("p_0", rows, rules, TextRules(), fs)}
    assert got == {"e0": (False, "truncated"), "e1": (False, "degenerate_repetition"),
                   "e2": (False, "solution_copied"), "e3": (False, "language_mixing"), "e4": (True, "top_k"),
                   "e5": (False, "near_duplicate"), "e6": (True, "top_k"), "e7": (False, "not_top_k")}
    # without text rules: the reward alone keeps the truncated and the looping candidates
    plain = [d for d in decide_problem("p_0", rows, rules) if d.kept]
    assert [d.explanation_id for d in plain] == ["e0", "e1"]
    # every candidate broken by a text rule: the problem falls back to its reference
    broken = decide_problem("p_0", rows[:4], rules, TextRules(), fs)
    assert broken[-1].reason == "reference_fallback" and broken[-1].kept
    with pytest.raises(ValueError, match="text features"):
        decide_problem("p_0", rows, rules, TextRules())


def test_rules_digest_unchanged_without_text_rules_and_changed_with_them():
    rules = FilterRules()
    assert rules_digest(rules) == rules.digest()
    assert rules_digest(rules, TextRules()) != rules.digest()
    assert rules_digest(rules, TextRules()) != rules_digest(rules, TextRules(max_char_run=10))
