"""Sampled-evaluation metrics with CIs: avg@k, pass@k and majority@k beside greedy pass@1.

With k samples per item (temperature > 0):

- ``avg@k``: the mean over items of the share of an item's samples that are correct (= pass@1 estimated from k
  samples; what ``benchmarks.pass_at_1`` reports);
- ``pass@k``: the share of items with at least one correct sample among k, by the unbiased estimator
  ``1 - C(n-c, k) / C(n, k)`` of Chen et al. 2021 (n samples, c correct; with k = n it is "any correct");
- ``maj@k``: the share of items whose most frequent extracted answer (ties: the one seen first) is correct
  (self-consistency; a sample with no extracted answer casts no vote);
- the paired difference of two models on the same items (:func:`paired_difference`: a student against a baseline
  student).

Every CI is a 95% percentile bootstrap over items (the unit a benchmark samples), seeded, so reproducible.
"""
from __future__ import annotations

from collections import Counter
from math import comb
from typing import Mapping, Optional, Sequence

SMALL_BENCHMARK_ITEMS = 100   # below this, one item moves a one-sample score by more than a point


def bootstrap_ci(scores: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile) of the mean of per-item ``scores``, resampling items ``n_boot`` times."""
    import numpy as np

    arr = np.asarray(scores, dtype=float)
    if arr.size == 0:
        raise ValueError("a CI needs at least one item")
    rng = np.random.default_rng(seed)
    boot = arr[rng.integers(0, len(arr), size=(n_boot, len(arr)))].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return float(arr.mean()), float(low), float(high)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one item from ``n`` samples of which ``c`` are correct (``k <= n``)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    return 1.0 - comb(n - c, k) / comb(n, k)


def majority_correct(extracted: Sequence[Optional[str]], correct: Sequence[bool]) -> bool:
    """Whether the most frequent extracted answer of one item's samples is a correct one."""
    votes = Counter(e for e in extracted if e is not None and e.strip())
    if not votes:
        return False
    top = max(votes.values())
    winner = next(e for e in extracted if e is not None and votes.get(e) == top)
    return any(ok for e, ok in zip(extracted, correct) if e == winner)


def sampled_metrics(correct: list[list[bool]], extracted: list[list[Optional[str]]], k: Optional[int] = None,
                    n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{"avg@k"|"pass@k"|"maj@k": {"value", "ci_low", "ci_high"}}`` over items; ``k`` defaults to the fewest
    samples any item has (pass@k is estimated from all n >= k samples)."""
    if len(correct) != len(extracted) or any(len(c) != len(e) for c, e in zip(correct, extracted)):
        raise ValueError("correct and extracted must have one entry per sample of every item")
    if not correct or any(not c for c in correct):
        raise ValueError("every item needs at least one sample")
    k = k or min(len(c) for c in correct)
    per_item = {"avg@k": [sum(c) / len(c) for c in correct],
                "pass@k": [pass_at_k(len(c), sum(c), k) for c in correct],
                "maj@k": [float(majority_correct(e, c)) for c, e in zip(correct, extracted)]}
    out = {}
    for name, scores in per_item.items():
        value, low, high = bootstrap_ci(scores, n_boot, seed)
        out[name] = {"value": value, "ci_low": low, "ci_high": high}
    return out


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], n_boot: int = 2000,
                      seed: int = 0) -> dict[str, float]:
    """Mean over the items both evaluations graded of ``a[item] - b[item]`` (each a per-item score, e.g. the share
    of its samples that are correct), with a 95% percentile bootstrap CI over those items: the gain of one model
    over another on the same items, which varies far less than the difference of two independent CIs suggests."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise ValueError("a paired difference needs items graded in both evaluations; none are shared")
    value, low, high = bootstrap_ci([a[i] - b[i] for i in shared], n_boot, seed)
    return {"value": value, "ci_low": low, "ci_high": high, "items": len(shared)}


def small_benchmark_warning(items: int, k: int) -> Optional[str]:
    """A warning for a score that one item moves by more than a point (fewer than 100 items, one sample)."""
    if items >= SMALL_BENCHMARK_ITEMS or k > 1 or items == 0:
        return None
    return (f"{items} items x 1 sample: one item is {100 / items:.1f} points; sample k > 1 (avg@k) or read the CI, "
            f"not the point estimate")
