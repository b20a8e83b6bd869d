"""Decontamination at scale: 100k training problems against 1k benchmark items (rlt_core/decontam.py).

    python bench/decontam.py                         # 100k problems, 1k items, 300 planted copies (~1 min)
    python bench/decontam.py --problems 20000 --naive 200   # smoke

Benchmark items (1k): the built-in held-out sets drawn larger (countdown + arithmetic eval partitions, 300 each)
and 400 synthetic prose problems of MATH/GPQA length (30-90 words from a 3k-word vocabulary, with numbers), which
stand in for the hub benchmarks. Problems (100k): built-in training problems (countdown + arithmetic, train
partition: disjoint from the items by construction), random prose of the same length distribution, and
``--planted`` near-copies of items: case/whitespace/punctuation changes, one or two words replaced, the item
embedded in a longer text, truncated to its first 70%, or one word in eight edited (no 8-gram left). Nothing but a planted copy should be a hit.

Prints the index build time, the check throughput, the total, recall on the planted copies and the false
positives; last, the ratio against the baseline measured in the same run: the same decision made by a nested
loop over every item (each item's n-grams and shingles precomputed once), timed on a ``--naive`` subsample and
extrapolated to all problems. Writes its record (bench/record.py) to ``bench/results/decontam.json``; fewer than
100k problems is a smoke run (a temp folder unless ``--results``).
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import re
import sys
import time
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rlt_core import decontam  # noqa: E402
from rlt_core.decontam import BenchmarkText, DecontamIndex, DecontamParams, Hit  # noqa: E402

log = logging.getLogger("bench.decontam")


class NaiveChecker:
    """The baseline: the same three checks and thresholds as :class:`DecontamIndex`, each a loop over every item
    (template n-grams/shingles taken from an index over the same items, so both decide alike)."""

    def __init__(self, items: Sequence[BenchmarkText], params: DecontamParams = DecontamParams()):
        self.ref = DecontamIndex(items, params)
        self.params = params
        self.norms = [decontam.normalise(it.text) for it in items]
        self.grams = [decontam.ngrams(norm.split(), params.n) - self.ref._common_grams for norm in self.norms]
        self.maths = [decontam.maths_tokens(norm.split()) for norm in self.norms]
        self.shingles = list(self.ref._shingles)

    def check(self, question: str) -> Optional[Hit]:
        norm = decontam.normalise(question)
        for i, other in enumerate(self.norms):
            if other == norm:
                return self.ref._hit(i, "exact", 1.0)
        tokens = norm.split()
        maths = decontam.maths_tokens(tokens) if self.params.same_numbers else None
        grams = decontam.ngrams(tokens, self.params.n) - self.ref._common_grams
        best = None
        for i, other in enumerate(self.grams):
            s = len(grams & other)
            overlap = s / max(1, min(len(grams), len(other)))
            if (s and s >= self.params.min_ngrams and overlap >= self.params.min_fraction
                    and (maths is None or decontam._contained(maths, self.maths[i]))
                    and (best is None or (overlap, s) > best[:2])):
                best = (overlap, s, i)
        for i, other in enumerate(self.norms):   # an item shorter than n tokens, found whole
            if (decontam.SHORT_MIN_TOKENS <= len(other.split()) < self.params.n and f" {other} " in f" {norm} "
                    and (maths is None or maths == self.maths[i])):
                return self.ref._hit(i, "ngram", 1.0, 1, len(other.split()))
        if best:
            return self.ref._hit(best[2], "ngram", best[0], best[1], self.params.n)
        if self.params.near_duplicate is None:
            return None
        sh = decontam._without(decontam.shingles(norm), self.ref._common_shingles)
        for i, other in enumerate(self.shingles):
            if not len(sh) or (maths is not None and maths != self.maths[i]):
                continue
            inter = len(np.intersect1d(sh, other, assume_unique=True))
            jaccard = inter / (len(sh) + len(other) - inter) if inter else 0.0
            if jaccard >= self.params.near_duplicate and (best is None or jaccard > best[0]):
                best = (jaccard, inter, i)
        return self.ref._hit(best[2], "near_duplicate", best[0], best[1]) if best else None


def _vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(size)]


def _prose(rng: random.Random, vocab: list[str]) -> str:
    words = []
    for _ in range(rng.randint(30, 90)):
        r = rng.random()
        words.append(str(rng.randint(0, 999)) if r < 0.08 else rng.choice(vocab))
        if rng.random() < 0.08:
            words[-1] += rng.choice(".,;?")
    return " ".join(words).capitalize()


def benchmark_items(rng: random.Random, vocab: list[str]) -> list[BenchmarkText]:
    from rlt_core.builtin_problems import generate

    items = [BenchmarkText(f"{kind}-heldout", f"{kind}-{i}", p["question"])
             for kind in ("countdown", "arithmetic")
             for i, p in enumerate(generate(kind, 300, seed=20_250_621, partition="eval"))]
    items += [BenchmarkText("prose", f"prose-{i}", _prose(rng, vocab)) for i in range(400)]
    return items


def _edit(rng: random.Random, text: str, vocab: list[str]) -> str:
    """A near-copy of a benchmark question (one of six kinds of edit)."""
    words = text.split()
    kind = rng.randrange(6)
    if kind == 0:
        return "  ".join(w.upper() if rng.random() < 0.3 else w for w in words).replace(",", " ,") + " "
    if kind == 1 and len(words) > 12:    # one or two non-number words replaced
        for _ in range(rng.choice((1, 2))):
            j = rng.choice([k for k, w in enumerate(words) if not any(c.isdigit() for c in w)])
            words[j] = rng.choice(vocab)
        return " ".join(words)
    if kind == 2:
        return "Solve the following problem carefully. " + text + " Show your work."
    if kind == 3 and len(words) > 20:
        return " ".join(words[: int(len(words) * 0.7)])
    if kind == 4 and len(words) > 20:   # one word in every 8 edited: no 8-gram survives (near_duplicate's case)
        return " ".join(w + "s" if k % 8 == 3 and w.isalpha() else w for k, w in enumerate(words))
    return text.replace(" ", "\n", 3).lower()


def _sub_problem(question: str, item: str) -> bool:
    """Countdown: same target and the problem's numbers a sub-multiset of the item's."""
    from collections import Counter

    nums = [re.findall(r"\d+", t) for t in (question, item)]
    if not all(t.startswith("Using the numbers") for t in (question, item)) or nums[0][-1] != nums[1][-1]:
        return False
    return not (Counter(nums[0][:-1]) - Counter(nums[1][:-1]))


def problems(rng: random.Random, n: int, planted: int, items: list[BenchmarkText],
             vocab: list[str]) -> list[tuple[str, Optional[str]]]:
    """(question, the planted item's id or None), shuffled."""
    from rlt_core.builtin_problems import generate

    n_builtin = (n - planted) // 2
    out: list[tuple[str, Optional[str]]] = [(p["question"], None) for kind in ("countdown", "arithmetic")
                                            for p in generate(kind, n_builtin // 2, seed=7)]
    out += [(_prose(rng, vocab), None) for _ in range(n - planted - len(out))]
    for item in rng.sample(items, planted):
        out.append((_edit(rng, item.text, vocab), item.item_id))
    rng.shuffle(out)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=100_000)
    ap.add_argument("--planted", type=int, default=300)
    ap.add_argument("--naive", type=int, default=500, help="problems timed with the nested-loop baseline")
    ap.add_argument("--seed", type=int, default=0)
    from bench import record

    record.add_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    session = record.start_from_args("decontam", ap, args, smoke=args.problems < 100_000, argv=argv)
    rng = random.Random(args.seed)
    vocab = _vocabulary(rng)
    items = benchmark_items(rng, vocab)
    t0 = time.perf_counter()
    data = problems(rng, args.problems, args.planted, items, vocab)
    log.info("data: %d problems (%d planted) against %d benchmark items, made in %.1fs",
             len(data), args.planted, len(items), time.perf_counter() - t0)

    t0 = time.perf_counter()
    index = DecontamIndex(items)
    build = time.perf_counter() - t0
    t1 = time.perf_counter()
    hits = [index.check(q) for q, _ in data]
    checks = time.perf_counter() - t1
    caught = sum(1 for (q, want), h in zip(data, hits) if want is not None and h is not None and h.item_id == want)
    false_pos = [(q, h) for (q, want), h in zip(data, hits) if want is None and h is not None]
    kinds: dict[str, int] = {}
    for (_, want), h in zip(data, hits):
        if want is not None and h is not None:
            kinds[h.kind] = kinds.get(h.kind, 0) + 1
    log.info("index build: %.3fs (%d items)", build, len(items))
    log.info("checks: %.1fs, %.0f problems/s", checks, len(data) / checks)
    log.info("total (build + checks): %.1fs", build + checks)
    log.info("recall on planted copies: %d/%d = %.3f (by kind: %s)", caught, args.planted,
             caught / max(1, args.planted), kinds)
    log.info("false positives: %d of %d unplanted problems", len(false_pos), len(data) - args.planted)
    by_id = {(it.benchmark, it.item_id): it for it in items}
    sub = sum(1 for q, h in false_pos if _sub_problem(q, by_id[(h.benchmark, h.item_id)].text))
    log.info("  of which countdown sub-problems (same target, numbers a subset of the item's: a real leak): %d", sub)
    for q, h in false_pos[:5]:
        log.info("  flagged: %r -> %s", q[:100], h.detail())

    sample = data[: args.naive]
    naive = NaiveChecker(items)
    t2 = time.perf_counter()
    naive_hits = [naive.check(q) for q, _ in sample]
    naive_s = time.perf_counter() - t2
    agree = sum(1 for a, b in zip(naive_hits, hits[: len(sample)]) if a == b)
    per_problem = naive_s / max(1, len(sample))
    log.info("naive nested loop: %.2fs for %d problems (%.2f ms each); same decisions as the index on %d/%d",
             naive_s, len(sample), 1000 * per_problem, agree, len(sample))
    log.info("naive extrapolated to %d problems: %.0fs", len(data), per_problem * len(data))
    ratio, with_build = per_problem * len(data) / checks, per_problem * len(data) / (checks + build)
    numbers = {"problems": len(data), "items": len(items), "planted": args.planted, "build_s": build,
               "checks_s": checks, "problems_per_s": len(data) / checks, "recall": {"caught": caught, "kinds": kinds},
               "flagged_unplanted": len(false_pos), "countdown_sub_problems": sub,
               "naive": {"problems": len(sample), "seconds": naive_s, "agree": agree,
                         "extrapolated_s": per_problem * len(data)},
               "naive_over_indexed": {"checks": ratio, "with_build": with_build}}
    record.finish(session, numbers, record.Ratio(
        "naive / indexed (checks only)", ratio, None,
        line=f"naive / indexed (checks only): {ratio:.1f}x; naive / indexed (with build): {with_build:.1f}x"))


if __name__ == "__main__":
    main()
