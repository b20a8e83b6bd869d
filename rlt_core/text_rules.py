"""Filter rules on an explanation's text, beyond its reward: what the RLT reward alone does not catch.

The reward scores how well an explanation teaches the student the reference solution; it can still be high for
text a dataset should not keep (rlt-factory's own rules, not part of rlt-method.md section 4):

- ``degenerate_repetition``: the text loops (a large share of its word n-grams repeat an earlier one) or one
  character runs on (``=====...``, ``!!!!...``);
- ``solution_copied``: the reference solution, pasted verbatim into the explanation (a student trained on it
  learns to copy, not to reason). Only for solutions long enough to be more than a final answer;
- ``truncated``: the teacher stopped at its token limit (``finish_reason == "length"``), so the explanation is cut;
- ``language_mixing``: letters in a writing system other than the problem's (the "switches to Chinese midway"
  failure of multilingual teachers). Greek and mathematical letters count as neither (they are notation);
- ``near_duplicate``: among the kept candidates of one problem (``top_k`` > 1), a candidate whose character
  5-shingles (decontam's, on its normalised text) overlap a better-ranked kept one by at least the Jaccard
  threshold adds no diversity.

Each rule is off when its threshold is None. Features are computed once per candidate (:func:`features`) and are
small (a bottom-k sketch of the shingle hashes for near-duplicates), so the filter holds no texts in memory.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from rlt_core.decontam import ngrams, normalise, shingles

SKETCH_SIZE = 256   # bottom-k sketch of the shingle hashes: Jaccard within a few points; exact below 256 shingles
# writing systems whose letters mark a language; any other letter (Greek, mathematical alphanumerics, symbols that
# are letters) is notation and counts for no language
LANGUAGE_SCRIPTS = frozenset({
    "LATIN", "CYRILLIC", "CJK", "HIRAGANA", "KATAKANA", "HANGUL", "ARABIC", "HEBREW", "DEVANAGARI", "BENGALI",
    "TAMIL", "TELUGU", "THAI", "ARMENIAN", "GEORGIAN", "ETHIOPIC", "GUJARATI", "KANNADA", "MALAYALAM", "GURMUKHI"})


class TextRules(BaseModel):
    """Thresholds of the text rules; None turns a rule off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_repeated_ngram_share: Optional[float] = Field(
        default=0.5, gt=0, le=1, description="degenerate_repetition: drop when more than this share of the "
        "explanation's word n-grams repeat an earlier n-gram")
    repeat_ngram: int = Field(default=4, ge=1, le=16, description="n of those n-grams")
    max_char_run: Optional[int] = Field(
        default=50, ge=2, description="degenerate_repetition: drop when one non-space character repeats more than "
        "this many times in a row")
    solution_copy_min_chars: Optional[int] = Field(
        default=40, ge=1, description="solution_copied: drop when the reference solution (whitespace collapsed), "
        "if at least this long, appears verbatim in the explanation")
    drop_truncated: bool = Field(default=True, description="truncated: drop explanations cut at the token limit")
    max_foreign_script_share: Optional[float] = Field(
        default=0.05, ge=0, lt=1, description="language_mixing: drop when more than this share of the "
        "explanation's letters are in a writing system other than the problem's")
    near_duplicate_jaccard: Optional[float] = Field(
        default=0.9, gt=0, le=1, description="near_duplicate: drop a candidate whose character 5-shingle Jaccard "
        "similarity with a better-ranked kept candidate of the same problem is at least this")


@dataclass(frozen=True)
class TextFeatures:
    """What the rules need of one explanation (no text kept)."""

    repeated_ngram_share: float
    max_char_run: int
    solution_copied: bool
    truncated: bool
    foreign_script_share: float
    sketch: tuple[int, ...]


def _collapse(text: str) -> str:
    return " ".join(text.split())


def repeated_ngram_share(words: list[str], n: int) -> float:
    """Share of the word n-grams that repeat an earlier one (0: all distinct; near 1: a loop)."""
    total = len(words) - n + 1
    return 1.0 - len(ngrams(words, n)) / total if total > 0 else 0.0


def max_char_run(text: str) -> int:
    """The longest run of one repeated non-space character."""
    runs = [len(m.group(0)) for m in re.finditer(r"(\S)\1*", text)]
    return max(runs, default=0)


def _script(ch: str) -> Optional[str]:
    try:
        word = unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:   # unnamed code point
        return None
    return word if word in LANGUAGE_SCRIPTS else None


def script_counts(text: str) -> Counter[str]:
    """Letters per writing system (only the scripts in ``LANGUAGE_SCRIPTS``)."""
    return Counter(s for s in (_script(ch) for ch in text if ch.isalpha()) if s is not None)


def foreign_script_share(text: str, reference_text: str) -> float:
    """Share of ``text``'s language letters outside the dominant script of ``reference_text`` (Latin if it has
    none)."""
    ref = script_counts(reference_text)
    home = ref.most_common(1)[0][0] if ref else "LATIN"
    counts = script_counts(text)
    total = sum(counts.values())
    return (total - counts.get(home, 0)) / total if total else 0.0


def sketch(text: str, size: int = SKETCH_SIZE) -> tuple[int, ...]:
    """Bottom-``size`` sketch of a text's character 5-shingles (rlt_core/decontam.py ``shingles`` of its
    normalised form): the smallest hashes, ascending."""
    return tuple(int(h) for h in shingles(normalise(text))[:size])


def jaccard(a: tuple[int, ...], b: tuple[int, ...], size: int = SKETCH_SIZE) -> float:
    """Jaccard similarity of two sets estimated from their bottom-k sketches (exact when both sets are smaller
    than ``size``)."""
    if not a and not b:
        return 1.0
    union = sorted(set(a) | set(b))[:size]
    sa, sb = set(a), set(b)
    return sum(1 for h in union if h in sa and h in sb) / len(union)


def features(explanation: str, question: str, solution: str, finish_reason: str, rules: TextRules) -> TextFeatures:
    """The features of one candidate's explanation that ``rules`` read."""
    words = explanation.split()
    sol = _collapse(solution)
    copied = (rules.solution_copy_min_chars is not None and len(sol) >= rules.solution_copy_min_chars
              and sol in _collapse(explanation))
    return TextFeatures(repeated_ngram_share=repeated_ngram_share(words, rules.repeat_ngram),
                        max_char_run=max_char_run(explanation), solution_copied=copied,
                        truncated=finish_reason == "length",
                        foreign_script_share=foreign_script_share(explanation, question + "\n" + solution),
                        sketch=sketch(explanation) if rules.near_duplicate_jaccard is not None else ())


def violation(f: TextFeatures, rules: TextRules) -> Optional[str]:
    """The first text rule a candidate breaks on its own (near_duplicate needs the others: :func:`near_duplicate`),
    or None."""
    if rules.drop_truncated and f.truncated:
        return "truncated"
    if rules.max_repeated_ngram_share is not None and f.repeated_ngram_share > rules.max_repeated_ngram_share:
        return "degenerate_repetition"
    if rules.max_char_run is not None and f.max_char_run > rules.max_char_run:
        return "degenerate_repetition"
    if f.solution_copied:
        return "solution_copied"
    if rules.max_foreign_script_share is not None and f.foreign_script_share > rules.max_foreign_script_share:
        return "language_mixing"
    return None


def near_duplicate(f: TextFeatures, kept: list[TextFeatures], rules: TextRules) -> bool:
    """Whether ``f`` is a near-duplicate of one of the better-ranked candidates already kept."""
    if rules.near_duplicate_jaccard is None:
        return False
    return any(jaccard(f.sketch, k.sketch) >= rules.near_duplicate_jaccard for k in kept)
