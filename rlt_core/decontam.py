"""Decontamination: find training problems that copy (or nearly copy) an evaluation benchmark item.

Three checks, run in this order against an index built once from the benchmark questions; the first that fires
is the hit:

- ``exact``: the normalised problem equals a normalised benchmark question.
- ``ngram``: word n-gram overlap, as open-r1's decontaminate script (and s1's) does with word 8-grams; ``n`` is
  configurable. ``shared`` = distinct n-grams the problem and one item have in common; ``overlap`` = shared / the
  n-gram count of the *shorter* of the two (containment either way: a problem that embeds a whole benchmark
  question scores 1.0, and so does a truncated copy). A hit needs ``shared >= min_ngrams`` and ``overlap >=
  min_fraction``. open-r1's practice is any shared 8-gram (``min_fraction: 0``); the default 0.2 keeps one
  stock phrase ("which of the following best explains why the", 1 of the 8 n-grams of a short question) from
  being a hit, while an embedded or truncated copy scores 1.0 and a copy with a word edited per ~15 words
  still scores > 0.3.
- ``near_duplicate``: Jaccard similarity of the two texts' character 5-shingle sets >= ``near_duplicate``
  (catches word edits that break every n-gram). Candidates come from MinHash LSH (64 permutations, 16 bands of
  4 rows: an item at Jaccard 0.8 is a candidate with probability > 0.999, at 0.6 with ~0.9) plus the items
  found through the n-gram index; the Jaccard of each candidate is then computed exactly.

The numbers must agree (``same_numbers``, on by default): in a maths problem the numbers and operators *are*
the problem, so an ngram hit also needs the multiset of number and operator tokens of one text to be contained
in the other's, and a near_duplicate hit needs them equal. "Compute (17 + 1) * 3" is not a near-duplicate of
"Compute (17 + 1) * 30", nor two countdown problems with the same target but other numbers (they share the
8-grams around the target), however alike the words; a copy with reworded text keeps its numbers and is caught.
A problem with re-chosen numbers ("perturbed" benchmark items) is not caught: that needs a semantic check.

Normalisation (:func:`normalise`): Unicode NFKC, case folding, a few maths signs mapped to ASCII (``−`` ``–``
-> ``-``, ``×`` ``·`` -> ``*``, ``÷`` -> ``/``), then the text is cut into tokens: runs of letters/digits, and
the maths symbols ``+ - * / = < > ^ ( )`` as tokens of their own (``16 + 33`` is not ``16 - 33``); all other
punctuation (``. , ; : ! ? ' " [ ] { } $ \\``) and whitespace runs only separate tokens. open-r1 lower-cases
and collapses whitespace only, so ``once.`` and ``once`` differ there; here they do not.

Template text: an n-gram or shingle found in more than ``common_items`` benchmark items (the countdown
instructions every countdown item repeats, "return your final response within", ...) is no evidence of a copy;
it counts for neither the n-gram nor the near-duplicate check (the exact check uses the whole text).

Short texts: a problem with fewer than ``n`` tokens has no n-grams, so only the exact and near-duplicate checks
apply to it; one shorter than 5 characters once normalised gets the exact check only. A benchmark item with
fewer than ``n`` tokens (and at least 4: "Compute 12 + 31 + 3.") is looked for whole: a problem containing its
token sequence, with the same numbers and operators, is an ngram hit with overlap 1.0 (``shared_<len>grams=1``).

Pure Python + numpy; deterministic (fixed hash seeds; nothing that decides a hit depends on ``hash()``).
"""
from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

HitKind = Literal["exact", "ngram", "near_duplicate"]
SHINGLE_CHARS = 5
SHORT_MIN_TOKENS = 4   # an item shorter than n tokens but at least this long is looked for whole
_NUM_PERM, _BANDS = 64, 16
_ROWS = _NUM_PERM // _BANDS
_TOKEN_RE = re.compile(r"[^\W_]+|[+\-*/=<>^()]")
_MATHS_RE = re.compile(r"[0-9]+|[+\-*/=<>^()]")
_MATH_SIGNS = str.maketrans({"−": "-", "–": "-", "×": "*", "·": "*", "÷": "/"})
_MIX = np.uint64(0x9E3779B97F4A7C15)
_rng = np.random.default_rng(20_250_621)
_PERM_A = _rng.integers(1, 2**63, size=_NUM_PERM, dtype=np.uint64) | np.uint64(1)   # odd multipliers
_PERM_B = _rng.integers(0, 2**63, size=_NUM_PERM, dtype=np.uint64)
_EMPTY = np.zeros(0, dtype=np.uint64)


class DecontamParams(BaseModel):
    """How strict the checks are (module docstring: what each one means)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(default=8, ge=1, le=64, description="word n-gram size (open-r1 and s1 use 8)")
    min_ngrams: int = Field(default=1, ge=1, description="ngram hit: at least this many shared n-grams ...")
    min_fraction: float = Field(default=0.2, ge=0, le=1, description="... and at least this overlap (shared / "
                                "n-grams of the shorter text); 0 = any shared n-gram, as open-r1")
    near_duplicate: Optional[float] = Field(default=0.8, gt=0, le=1, description="near_duplicate hit: character "
                                            "5-shingle Jaccard at least this; null turns the check off")
    common_items: int = Field(default=10, ge=1, description="n-grams and shingles found in more than this many "
                              "benchmark items are template text and count for no check but exact")
    same_numbers: bool = Field(default=True, description="ngram: one text's numbers and operators are contained "
                               "in the other's; near_duplicate: they are equal")


@dataclass(frozen=True)
class BenchmarkText:
    """One benchmark item's question, as the index sees it."""

    benchmark: str
    item_id: str
    text: str


@dataclass(frozen=True)
class Hit:
    """A problem found in a benchmark. ``overlap``: 1.0 for exact, the n-gram containment for ngram, the shingle
    Jaccard for near_duplicate; ``shared``: shared n-grams (ngram), shared shingles (near_duplicate), 0 (exact)."""

    benchmark: str
    item_id: str
    kind: HitKind
    overlap: float
    shared: int = 0
    gram_len: int = 0

    def detail(self) -> str:
        """One line for a quarantine row, e.g. ``benchmark=math500 item=test/x.json kind=ngram overlap=0.875
        shared_8grams=7``."""
        extra = {"ngram": f" shared_{self.gram_len}grams={self.shared}",
                 "near_duplicate": f" shared_shingles={self.shared}"}
        return (f"benchmark={self.benchmark} item={self.item_id} kind={self.kind} overlap={self.overlap:.3f}"
                + extra.get(self.kind, ""))


def normalise(text: str) -> str:
    """NFKC, case-folded, maths signs to ASCII, tokens (letter/digit runs and ``+-*/=<>^()``) joined by one
    space; every other character is a separator."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_MATH_SIGNS)
    return " ".join(_TOKEN_RE.findall(text))


def ngrams(tokens: Sequence[str], n: int) -> set[str]:
    """The distinct word n-grams of a token list (empty when it has fewer than ``n`` tokens)."""
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def maths_tokens(tokens: Sequence[str]) -> Counter:
    """The multiset of number and operator tokens (what makes one maths problem another)."""
    return Counter(t for t in tokens if _MATHS_RE.fullmatch(t))


def _contained(a: Counter, b: Counter) -> bool:
    return not (a - b) or not (b - a)


def shingles(norm: str) -> np.ndarray:
    """Sorted distinct 64-bit hashes of the character 5-shingles of a normalised text (a polynomial rolling hash
    over code points, then a multiply-xorshift mix; deterministic across processes)."""
    codes = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    count = len(codes) - SHINGLE_CHARS + 1
    if count <= 0:
        return _EMPTY
    h = np.zeros(count, dtype=np.uint64)
    for j in range(SHINGLE_CHARS):
        h = h * np.uint64(1_000_003) + codes[j:j + count]
    h ^= h >> np.uint64(29)
    h *= _MIX
    h ^= h >> np.uint64(32)
    return np.unique(h)


def _minhash_bands(sh: np.ndarray) -> list[bytes]:
    """The LSH band keys of a non-empty shingle set (multiply-shift MinHash)."""
    sig = ((_PERM_A[:, None] * sh[None, :] + _PERM_B[:, None]) >> np.uint64(32)).min(axis=1).astype(np.uint32)
    return [sig[b * _ROWS:(b + 1) * _ROWS].tobytes() for b in range(_BANDS)]


def _without(values: np.ndarray, common: np.ndarray) -> np.ndarray:
    """``values`` minus the (sorted) ``common`` hashes."""
    if not len(common) or not len(values):
        return values
    idx = np.minimum(np.searchsorted(common, values), len(common) - 1)
    return values[common[idx] != values]


class DecontamIndex:
    """An index over benchmark questions; :meth:`check` one problem at a time (no loop over the items)."""

    def __init__(self, items: Iterable[BenchmarkText], params: DecontamParams = DecontamParams()):
        self.params = params
        self.items: list[BenchmarkText] = list(items)
        norms = [normalise(it.text) for it in self.items]
        self._exact: dict[str, int] = {}
        for i, norm in enumerate(norms):
            self._exact.setdefault(norm, i)
        token_lists = [norm.split() for norm in norms]
        self._maths = [maths_tokens(tokens) for tokens in token_lists]
        self._build_ngrams(token_lists)
        self._short: dict[int, dict[str, list[int]]] = {}
        for i, tokens in enumerate(token_lists):
            if SHORT_MIN_TOKENS <= len(tokens) < self.params.n:
                self._short.setdefault(len(tokens), {}).setdefault(" ".join(tokens), []).append(i)
        self._build_shingles([shingles(norm) for norm in norms])
        log.debug("decontamination index: %d items, %d n-grams (%d template), %d template shingles",
                  len(self.items), len(self._grams), len(self._common_grams), len(self._common_shingles))

    def _build_ngrams(self, token_lists: list[list[str]]) -> None:
        postings: dict[str, list[int]] = {}
        for i, tokens in enumerate(token_lists):
            for g in ngrams(tokens, self.params.n):
                postings.setdefault(g, []).append(i)
        limit = self.params.common_items
        self._common_grams = {g for g, ids in postings.items() if len(ids) > limit}
        self._grams = {g: tuple(ids) for g, ids in postings.items() if len(ids) <= limit}
        self._gram_count = [0] * len(token_lists)
        for ids in self._grams.values():
            for i in ids:
                self._gram_count[i] += 1

    def _build_shingles(self, per_item: list[np.ndarray]) -> None:
        if per_item and any(len(s) for s in per_item):
            values, counts = np.unique(np.concatenate(per_item), return_counts=True)
            self._common_shingles = values[counts > self.params.common_items]
        else:
            self._common_shingles = _EMPTY
        self._shingles = [_without(s, self._common_shingles) for s in per_item]
        self._bands: list[dict[bytes, list[int]]] = [{} for _ in range(_BANDS)]
        if self.params.near_duplicate is None:
            return
        for i, sh in enumerate(self._shingles):
            if len(sh):
                for band, key in zip(self._bands, _minhash_bands(sh)):
                    band.setdefault(key, []).append(i)

    def __len__(self) -> int:
        return len(self.items)

    def check(self, question: str) -> Optional[Hit]:
        """The first check that fires for ``question`` (exact, then ngram, then near_duplicate), or None."""
        norm = normalise(question)
        i = self._exact.get(norm)
        if i is not None:
            return self._hit(i, "exact", 1.0)
        tokens = norm.split()
        maths = maths_tokens(tokens) if self.params.same_numbers else None
        hit = self._check_short_items(tokens, maths)
        if hit is not None:
            return hit
        hit, candidates = self._check_ngrams(tokens, maths)
        if hit is not None or self.params.near_duplicate is None:
            return hit
        return self._check_near_duplicate(norm, maths, candidates)

    def _hit(self, i: int, kind: HitKind, overlap: float, shared: int = 0, gram_len: int = 0) -> Hit:
        item = self.items[i]
        return Hit(item.benchmark, item.item_id, kind, round(float(overlap), 6), shared, gram_len)

    def _check_short_items(self, tokens: list[str], maths: Optional[Counter]) -> Optional[Hit]:
        """An item shorter than n tokens found whole in the problem (numbers/operators equal)."""
        for length in sorted(self._short):
            table = self._short[length]
            for start in range(len(tokens) - length + 1):
                for i in table.get(" ".join(tokens[start:start + length]), ()):
                    if maths is None or maths == self._maths[i]:
                        return self._hit(i, "ngram", 1.0, 1, length)
        return None

    def _check_ngrams(self, tokens: list[str], maths: Optional[Counter]) -> tuple[Optional[Hit], set[int]]:
        grams = ngrams(tokens, self.params.n)
        shared: Counter[int] = Counter()
        informative = 0
        for g in grams:
            ids = self._grams.get(g)
            if ids is not None:
                shared.update(ids)
            if g not in self._common_grams:
                informative += 1
        best: Optional[tuple[float, int, int]] = None
        for i, s in shared.items():
            overlap = s / max(1, min(informative, self._gram_count[i]))
            if s >= self.params.min_ngrams and overlap >= self.params.min_fraction and (
                    maths is None or _contained(maths, self._maths[i])):
                if best is None or (overlap, s, -i) > (best[0], best[1], -best[2]):
                    best = (overlap, s, i)
        hit = self._hit(best[2], "ngram", best[0], best[1], self.params.n) if best else None
        return hit, set(shared)

    def _check_near_duplicate(self, norm: str, maths: Optional[Counter], candidates: set[int]) -> Optional[Hit]:
        sh = _without(shingles(norm), self._common_shingles)
        if not len(sh):
            return None
        for band, key in zip(self._bands, _minhash_bands(sh)):
            candidates.update(band.get(key, ()))
        best: Optional[tuple[float, int, int]] = None
        for i in sorted(candidates):
            if maths is not None and maths != self._maths[i]:
                continue
            other = self._shingles[i]
            inter = len(np.intersect1d(sh, other, assume_unique=True))
            jaccard = inter / (len(sh) + len(other) - inter) if inter else 0.0
            if jaccard >= self.params.near_duplicate and (best is None or jaccard > best[0]):
                best = (jaccard, inter, i)
        return self._hit(best[2], "near_duplicate", best[0], best[1]) if best else None

