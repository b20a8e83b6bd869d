"""Decontamination index: exact, n-gram, near-duplicate hits; short texts; templates; thresholds; no false hits."""
import random

import pytest
from pydantic import ValidationError

from rlt_core.benchmarks import benchmark_questions, get_benchmark, load_benchmark_rows
from rlt_core.builtin_problems import generate
from rlt_core.decontam import BenchmarkText, DecontamIndex, DecontamParams, normalise
from rlt_core.grading import GRADERS

MATH = ("Let $f(x) = 3x^2 - 5x + 7$ and let $g$ be the reflection of $f$ across the line $y = x$. "
        "Find the sum of all real numbers $a$ such that the tangent line to the graph of $f$ at $x = a$ "
        "passes through the origin, and express your answer as a common fraction.")
PROSE = ("Which of the following best explains why the proposed reaction mechanism is inconsistent with the "
         "observed stereochemistry of the product when the reaction is carried out in a polar aprotic solvent "
         "such as dimethyl sulfoxide under thermodynamic control?")
ITEMS = [BenchmarkText("mathy", "m-1", MATH), BenchmarkText("gpqa_like", "g-7", PROSE),
         BenchmarkText("arith", "a-3", "Compute (17 + 1) * 3."),
         BenchmarkText("arith", "a-4", "Compute 35 + 17 * 1.")]


@pytest.fixture(scope="module")
def index():
    return DecontamIndex(ITEMS)


@pytest.fixture(scope="module")
def heldout():
    texts = []
    for name in ("countdown-heldout", "arithmetic-heldout"):
        spec = get_benchmark(name)
        texts += [BenchmarkText(name, i, q) for i, q in benchmark_questions(spec, load_benchmark_rows(spec))]
    return texts


def test_normalise_folds_case_space_punctuation_and_unicode_but_keeps_maths():
    assert normalise("  What IS\t2+3 ,  exactly?!\n") == "what is 2 + 3 exactly"
    assert normalise("ｆｕｌｌ－width ＡＢＣ") == normalise("full-width abc")       # NFKC
    assert normalise("3 × 4 − 1 ÷ 2") == "3 * 4 - 1 / 2"
    assert normalise("16 + 33") != normalise("16 - 33")
    assert normalise("(16 + 33) * 2") != normalise("16 + 33 * 2")


def test_exact_despite_whitespace_case_and_punctuation(index):
    edited = "  " + MATH.upper().replace(" ", "  \n").replace(",", " ;") + " "
    hit = index.check(edited)
    assert (hit.benchmark, hit.item_id, hit.kind, hit.overlap) == ("mathy", "m-1", "exact", 1.0)
    assert index.check("compute (17+1)*3").item_id == "a-3"


def test_ngram_embedded_and_truncated_copies(index):
    hit = index.check("Solve this and show your work. " + PROSE + " Explain each step in two sentences.")
    assert (hit.item_id, hit.kind, hit.overlap) == ("g-7", "ngram", 1.0)
    words = MATH.split()
    hit = index.check(" ".join(words[: len(words) * 2 // 3]))
    assert (hit.item_id, hit.kind, hit.overlap) == ("m-1", "ngram", 1.0) and hit.shared >= 20
    assert "benchmark=mathy item=m-1 kind=ngram overlap=1.000 shared_8grams=" in hit.detail()


def test_near_duplicate_survives_word_edits_that_break_every_ngram(index):
    words = PROSE.split()
    for j in range(3, len(words), 6):          # a word changed every 6 words: no 8-gram left intact
        words[j] = words[j] + "s"
    edited = " ".join(words)
    assert index.check(edited) is not None
    assert DecontamIndex(ITEMS).check(edited).kind == "near_duplicate"
    hit = index.check(edited)
    assert hit.item_id == "g-7" and 0.8 <= hit.overlap < 1.0 and "kind=near_duplicate" in hit.detail()
    assert DecontamIndex(ITEMS, DecontamParams(near_duplicate=None)).check(edited) is None   # check off


def test_short_problems_and_short_items(index):
    assert index.check("Compute  17+1*3") is None                         # other operators: another problem
    assert index.check("Compute (17 + 1) * 30.") is None                  # other numbers
    hit = index.check("Solve the following problem carefully. Compute 35 + 17 * 1. Show your work.")
    assert (hit.item_id, hit.kind, hit.overlap, hit.gram_len) == ("a-4", "ngram", 1.0, 6)
    assert index.check("Compute 35 + 17 * 1 + 2.") is None                # contains the item, but more operands
    assert index.check("What is x?") is None                              # shorter than n: no n-grams, no crash
    assert index.check("") is None and index.check("?!") is None


def test_unrelated_problems_are_not_hits(index, heldout):
    unrelated = ["Find the sum of all real numbers $x$ such that $x^2 = 9$.",                # shares a phrase
                 "Let $f(x) = 2x + 1$. Find $f(4)$ and express your answer as an integer.",
                 "Which of the following best explains why the sky is blue on a clear day?",
                 "Compute 17 + 1 * 3.", "Compute (35 + 17) * 1."]
    assert [index.check(q) for q in unrelated] == [None] * len(unrelated)
    rng = random.Random(0)
    vocab = (MATH + " " + PROSE).split()
    for _ in range(200):   # the items' own words in random order
        assert index.check(" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 60)))) is None
    # The built-in training partitions never hold a held-out item (builtin_problems.partition_of). The only
    # hits are countdown sub-problems: same target, numbers a subset of the item's, so the training solution
    # solves the held-out item too (a real leak).
    big = DecontamIndex(heldout)
    rows = {(name, i): r for name in ("countdown-heldout", "arithmetic-heldout")
            for i, r in zip([i for i, _ in benchmark_questions(get_benchmark(name), load_benchmark_rows(
                get_benchmark(name)))], load_benchmark_rows(get_benchmark(name)))}
    for kind in ("countdown", "arithmetic"):
        for p in generate(kind, 2000, seed=3):
            hit = big.check(p["question"])
            if hit is not None:
                item = rows[(hit.benchmark, hit.item_id)]["meta"]
                assert kind == "countdown" and hit.kind == "ngram", (p["question"], hit)
                assert GRADERS["countdown"](f"\\boxed{{{p['answer']}}}", str(item["target"]), **item).correct


def test_template_ngrams_count_for_nothing_but_numbers_decide():
    template = "Using the numbers {}, create an equation that equals {}. You can use each number at most once."
    items = [BenchmarkText("cd", str(i), template.format([i, i + 1, i + 2], 100 + i)) for i in range(12)]
    same_target = template.format([40, 41, 42], 105)               # shares the 8-grams around "105" with item 5
    assert DecontamIndex(items).check(same_target) is None
    loose = DecontamParams(same_numbers=False)
    assert DecontamIndex(items, loose).check(same_target).item_id == "5"
    # without the template rule (common_items above the item count) every item shares the instructions
    other = template.format([90, 91, 92], 999)
    assert DecontamIndex(items, DecontamParams(same_numbers=False, common_items=50, min_fraction=0)).check(other)
    assert DecontamIndex(items, DecontamParams(same_numbers=False, min_fraction=0)).check(other) is None
    assert DecontamIndex(items).check(template.format([5, 6, 7], 105).upper()).kind == "exact"


def test_thresholds_are_honoured():
    words = MATH.split()
    half = "Unrelated preamble about nothing in particular goes here first. " + " ".join(words[:14])
    assert DecontamIndex(ITEMS).check(half).kind == "ngram"
    shared = DecontamIndex(ITEMS).check(half).shared
    assert DecontamIndex(ITEMS, DecontamParams(min_ngrams=shared + 1)).check(half) is None
    assert DecontamIndex(ITEMS, DecontamParams(min_ngrams=shared)).check(half) is not None
    overlap = DecontamIndex(ITEMS).check(half).overlap
    assert overlap < 1.0
    assert DecontamIndex(ITEMS, DecontamParams(min_fraction=min(1.0, overlap + 0.01))).check(half) is None
    six = "Completely different words then " + " ".join(PROSE.split()[5:11]) + " and nothing else here"
    assert DecontamIndex(ITEMS, DecontamParams(min_fraction=0)).check(six) is None      # 6 shared words < 8
    assert DecontamIndex(ITEMS, DecontamParams(n=5, min_fraction=0)).check(six).kind == "ngram"
    stock = "Which of the following best explains why the sky is blue on a clear day?"   # one stock phrase
    assert DecontamIndex(ITEMS).check(stock) is None
    hit = DecontamIndex(ITEMS, DecontamParams(min_fraction=0)).check(stock)       # open-r1: any shared 8-gram
    assert (hit.item_id, hit.shared, hit.overlap) == ("g-7", 1, 0.125)
    with pytest.raises(ValidationError):
        DecontamParams(n=0)
    with pytest.raises(ValidationError):
        DecontamParams(min_fraction=1.5, typo=1)


def test_index_agrees_with_the_nested_loop_baseline(heldout):
    from bench.decontam import NaiveChecker, _edit, _vocabulary

    rng = random.Random(1)
    vocab = _vocabulary(rng, 200)
    items = heldout[::4] + ITEMS
    index, naive = DecontamIndex(items), NaiveChecker(items)
    probes = [p["question"] for p in generate("countdown", 40, seed=9) + generate("arithmetic", 40, seed=9)]
    probes += [_edit(rng, it.text, vocab) for it in rng.sample(items, 40)]
    for q in probes:
        assert index.check(q) == naive.check(q), q
