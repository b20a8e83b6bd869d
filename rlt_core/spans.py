"""Locating the explanation and solution tokens of one scored example (rlt-method.md 2.4).

The reward needs three token spans:

* the explanation in the teacher sequence ``prompt + masked_prefix + completion`` (teacher log-probs, q+s context),
* the same explanation tokens in the student chat (student log-probs, q-only context),
* the solution content in the student chat (the last occurrence, so a solution the teacher repeated inside
  its explanation is not the one scored).

As in the reference, the explanation is tokenised on its own and matched against the tokenisation of the
completion, dropping a first/last token that BPE merges with the neighbouring tag (``find_valid_subsequence``).
Both spans therefore hold the *same* token ids, so the teacher and student terms line up token for token.

Departures from the reference (all in cases where it crashes, mis-aligns or cannot occur with its tokenizer):

* tokenisation uses ``add_special_tokens=False`` (the chat template already holds BOS-like tokens);
  identical for Qwen2.5 and SmolLM2, whose tokenizers add none;
* when the explanation cannot be found even after boundary trimming, trailing tokens are dropped as in the
  reference, but the teacher text is *not* rebuilt from regex-escaped tags (its backslash bug);
* the explanation is searched in the student chat from the start of the assistant turn, not from position 0,
  so a short explanation that also occurs in the system prompt or question is not mis-located;
* spans that cannot be found (reference: ``NotImplementedError``) and over-long sequences become empty spans;
  empty spans turn into the ``not_matched_penalty`` fills downstream, and are logged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

from rlt_core.prompts import (
    PromptStyle,
    format_student_chat,
    format_teacher_prompt,
    parse_teacher_completion,
    student_assistant_content,
)

log = logging.getLogger(__name__)

Span = tuple[int, int]  # [start, end) token positions in a sequence


def find_sublist(seq: Sequence[int], sub: Sequence[int], start: int = 0, last: bool = False) -> Optional[int]:
    """Index of the first (or ``last``) occurrence of ``sub`` in ``seq[start:]``, or None.

    An empty ``sub`` occurs at ``start`` (first) or at ``len(seq)`` (last), as in the reference.

    >>> find_sublist([1, 2, 3, 1, 2], [1, 2]), find_sublist([1, 2, 3, 1, 2], [1, 2], last=True)
    (0, 3)
    """
    n, k = len(seq), len(sub)
    positions = range(n - k, start - 1, -1) if last else range(start, n - k + 1)
    if k == 0:
        return next(iter(positions), None)
    first, sub = sub[0], list(sub)
    for i in positions:
        if seq[i] == first and list(seq[i:i + k]) == sub:
            return i
    return None


def find_valid_subsequence(sub: Sequence[int], seq: Sequence[int], start: int = 0) -> Optional[list[int]]:
    """The first of ``sub``, ``sub[1:]``, ``sub[:-1]``, ``sub[1:-1]`` that occurs in ``seq[start:]``.

    Dropping a boundary token absorbs BPE merges with the neighbouring tags (reference ``find_valid_subsequence``).
    """
    sub = list(sub)
    candidates = [sub]
    if len(sub) > 1:
        candidates += [sub[1:], sub[:-1]]
    if len(sub) > 2:
        candidates.append(sub[1:-1])
    for cand in candidates:
        if find_sublist(seq, cand, start) is not None:
            return cand
    return None


@dataclass(frozen=True)
class ScoringExample:
    """Token ids and spans of one (question, solution, completion) triple.

    Attributes:
        teacher_ids: tokens of ``prompt + masked_prefix + completion`` (+ end tag if it was missing).
        teacher_span: the explanation tokens in ``teacher_ids``.
        student_ids: tokens of the student chat.
        student_thought_span: the same explanation tokens in ``student_ids`` (same length as ``teacher_span``).
        solution_span: the solution-content tokens in ``student_ids``.
        format_penalty: 0, or ``not_matched_penalty`` when the end tag was missing.
        explanation: the explanation text as put in the student chat.
        student_chat: the student chat text.
    """

    teacher_ids: list[int]
    teacher_span: Span
    student_ids: list[int]
    student_thought_span: Span
    solution_span: Span
    format_penalty: float
    explanation: str
    student_chat: str


def _encode(tokenizer, texts: list[str], offsets: bool = False):
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets)
    return (enc["input_ids"], enc["offset_mapping"]) if offsets else enc["input_ids"]


def _locate_explanation(tokenizer, thought_ids: list[int], completion_ids: list[int],
                        explanation: str) -> tuple[list[int], int, str]:
    """(explanation tokens, their start in ``completion_ids``, explanation text for the student)."""
    orig = list(thought_ids)
    tokens = find_valid_subsequence(orig, completion_ids)
    trimmed = False
    while tokens is None:  # interior tokenisation differs too: drop trailing tokens until it matches
        orig, trimmed = orig[:-1], True
        tokens = find_valid_subsequence(orig, completion_ids)
    if trimmed:  # as the reference: the student sees the decoded, trimmed text ("" for an empty explanation)
        explanation = tokenizer.decode(orig)
    return tokens, find_sublist(completion_ids, tokens), explanation


def _token_at_char(offsets: Sequence[tuple[int, int]], char: int) -> int:
    """Index of the first token that ends after ``char`` (the token holding that character)."""
    for i, (_, end) in enumerate(offsets):
        if end > char:
            return i
    return len(offsets)


def _student_thought_span(student_ids: list[int], tokens: list[int], search_from: int,
                          teacher_span: Span) -> tuple[Span, Span]:
    """Find the explanation tokens in the student chat; trim both spans alike if a boundary merges differently."""
    n = len(tokens)
    for lo, hi in ((0, n), (1, n), (0, n - 1), (1, n - 1)):
        if hi < lo:
            continue
        at = find_sublist(student_ids, tokens[lo:hi], search_from)
        if at is not None:
            return (at, at + hi - lo), (teacher_span[0] + lo, teacher_span[0] + hi)
    return (0, 0), (0, 0)


def build_examples(tokenizer, questions: Sequence[str], solutions: Sequence[str], completions: Sequence[str],
                   style: PromptStyle, not_matched_penalty: float = -1.0,
                   prompts: Optional[Sequence[str]] = None, max_length: Optional[int] = None) -> list[ScoringExample]:
    """Tokenise and locate every span for a batch of examples (all tokenizer calls are batched).

    Args:
        tokenizer: the tokenizer shared by teacher and student.
        questions, solutions, completions: per example; ``solutions`` untagged, ``completions`` = text generated
            after the teacher prompt.
        style: the prompt format.
        not_matched_penalty: the format penalty for a missing end tag.
        prompts: the teacher prompts the completions were generated from (default: rebuilt from q + s).
        max_length: sequences longer than this get empty spans (not scored, penalised).
    Returns:
        one :class:`ScoringExample` per input, in order.
    """
    parsed = [parse_teacher_completion(c, style) for c in completions]
    if prompts is None:
        prompts = [format_teacher_prompt(tokenizer, q, s, style) for q, s in zip(questions, solutions)]
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.endswith(style.masked_prefix):
            raise ValueError(f"row {i}: the teacher prompt must be a string ending with {style.masked_prefix!r}")
    teacher_texts = [p.removesuffix(style.masked_prefix) + pc.text for p, pc in zip(prompts, parsed)]
    completion_ids = _encode(tokenizer, [pc.text for pc in parsed])
    thought_ids = _encode(tokenizer, [pc.explanation for pc in parsed])
    teacher_ids = _encode(tokenizer, teacher_texts)

    located = [_locate_explanation(tokenizer, t, c, pc.explanation)
               for t, c, pc in zip(thought_ids, completion_ids, parsed)]
    chats = [format_student_chat(tokenizer, q, s, expl, style)
             for q, s, (_, _, expl) in zip(questions, solutions, located)]
    contents = [student_assistant_content(q, s, expl, style)
                for q, s, (_, _, expl) in zip(questions, solutions, located)]
    student_ids, student_offsets = _encode(tokenizer, chats, offsets=True)
    sol_ids = _encode(tokenizer, [style.padding + s.strip() + style.padding for s in solutions])

    out = []
    for i, (tokens, c_start, expl) in enumerate(located):
        t_ids, s_ids = teacher_ids[i], student_ids[i]
        t_span = _teacher_span(t_ids, len(completion_ids[i]), c_start, tokens, i)
        # The system prompt names the thought tag itself: search from the assistant turn on.
        s_from = _token_at_char(student_offsets[i], max(chats[i].rfind(contents[i]), 0))
        s_span, t_span = _student_thought_span(s_ids, tokens, s_from, t_span) if t_span else ((0, 0), (0, 0))
        if s_span == (0, 0) and tokens:
            log.warning("row %d: explanation tokens not found in the student chat; KL terms get the penalty", i)
        sol_span = _solution_span(s_ids, sol_ids[i], i)
        if max_length is not None and max(len(t_ids), len(s_ids)) > max_length:
            log.warning("row %d: %d/%d tokens exceed max_length=%d; not scored", i, len(t_ids), len(s_ids), max_length)
            t_span = s_span = sol_span = (0, 0)
        penalty = 0.0 if parsed[i].has_end_tag else float(not_matched_penalty)
        out.append(ScoringExample(t_ids, t_span, s_ids, s_span, sol_span, penalty, expl, chats[i]))
    return out


def _teacher_span(t_ids: list[int], completion_len: int, c_start: int, tokens: list[int], row: int) -> Optional[Span]:
    """The explanation tokens in the full teacher sequence, or None."""
    # The completion is a suffix of the teacher text, so offsets counted from the end carry over (the
    # reference's negative offsets); check it, as the prompt/completion junction could tokenise differently.
    a = len(t_ids) - completion_len + c_start
    if t_ids[a:a + len(tokens)] != tokens:
        log.warning("row %d: explanation tokens shifted in the full teacher sequence; searching for them", row)
        a = find_sublist(t_ids, tokens, max(0, len(t_ids) - completion_len - 1))
    return (a, a + len(tokens)) if a is not None else None


def _solution_span(s_ids: list[int], sol_ids: list[int], row: int) -> Span:
    """The last occurrence of the solution-content tokens (boundary-trimmed) in the student chat."""
    sol = find_valid_subsequence(sol_ids, s_ids)
    at = find_sublist(s_ids, sol, last=True) if sol is not None else None
    if at is None:
        log.warning("row %d: solution tokens not found in the student chat; answer terms get the penalty", row)
        return (0, 0)
    return (at, at + len(sol))
