"""avg@k, pass@k, maj@k with CIs and the small-benchmark warning (rlt_core/eval_metrics.py), hand-computed."""
from __future__ import annotations

import pytest

from rlt_core.benchmarks import pass_at_1
from rlt_core.eval_metrics import bootstrap_ci, majority_correct, pass_at_k, sampled_metrics, small_benchmark_warning


def test_pass_at_k_unbiased_estimator_by_hand():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)            # = c / n
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)     # 1 - C(3,3)/C(5,3)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)      # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(3, 1, 3) == 1.0
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(2, 1, 3)


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_first_seen():
    assert majority_correct(["4", "5", "4"], [True, False, True])
    assert not majority_correct(["4", "5", "5"], [True, False, False])
    assert majority_correct([None, None, "3"], [False, False, True])
    assert not majority_correct(["5", "4"], [False, True])      # tie: "5" came first
    assert not majority_correct([None, ""], [False, False])


def test_sampled_metrics_by_hand_and_avg_at_k_is_pass_at_1():
    correct = [[True, False, True], [False, False, False], [False, True, False], [True, True, True]]
    extracted = [["4", "5", "4"], ["1", None, "2"], ["7", "8", "7"], ["9", "9", "9"]]
    m = sampled_metrics(correct, extracted)
    assert m["avg@k"]["value"] == pytest.approx((2 / 3 + 0 + 1 / 3 + 1) / 4)
    assert m["avg@k"]["value"] == pytest.approx(pass_at_1(correct)[0])
    assert (m["avg@k"]["ci_low"], m["avg@k"]["ci_high"]) == pytest.approx(pass_at_1(correct)[1:])
    assert m["pass@k"]["value"] == pytest.approx(3 / 4)         # k = 3 = n: any correct
    assert m["maj@k"]["value"] == pytest.approx(2 / 4)          # items 0 and 3; item 2's majority "7" is wrong
    for v in m.values():
        assert 0 <= v["ci_low"] <= v["value"] <= v["ci_high"] <= 1
    assert sampled_metrics(correct, extracted, k=1)["pass@k"]["value"] == pytest.approx(m["avg@k"]["value"])
    with pytest.raises(ValueError, match="one entry per sample"):
        sampled_metrics(correct, extracted[:3])


def test_bootstrap_ci_is_seeded_and_collapses_on_constant_scores():
    scores = [0.0, 1.0] * 20
    assert bootstrap_ci(scores) == bootstrap_ci(scores)
    mean, low, high = bootstrap_ci(scores)
    assert mean == 0.5 and 0.3 < low < 0.5 < high < 0.7
    assert bootstrap_ci([1.0] * 7) == (1.0, 1.0, 1.0)


def test_small_benchmark_warning():
    assert "one item is 3.3 points" in small_benchmark_warning(30, 1)
    assert small_benchmark_warning(100, 1) is None and small_benchmark_warning(30, 8) is None


def test_paired_difference_is_over_shared_items_only():
    from rlt_core.eval_metrics import paired_difference

    a = {"i1": 1.0, "i2": 0.5, "i3": 1.0, "only_a": 1.0}
    b = {"i1": 0.0, "i2": 0.5, "i3": 1.0, "only_b": 0.0}
    d = paired_difference(a, b)
    assert d["items"] == 3 and d["value"] == pytest.approx(1 / 3)
    assert d["ci_low"] == pytest.approx(0.0) and d["ci_high"] == pytest.approx(1.0)
    same = paired_difference(a, a)
    assert (same["value"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="none are shared"):
        paired_difference({"x": 1.0}, {"y": 1.0})
