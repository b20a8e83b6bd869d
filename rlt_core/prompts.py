"""Teacher and student text formats of RLT (rlt-method.md 1.2-1.6), as pure functions.

The teacher sees question + tagged solution and writes the explanation *after* the solution::

    <system: teacher prompt> <user: question>
    <assistant: <|begin_of_solution|>\\n\\n{solution}\\n\\n<|end_of_solution|>\\n\\n<|begin_of_explanation|>\\n\\n ...

The student sees the question only, then the explanation re-wrapped as a thought, then the solution::

    <system: student prompt> <user: question>
    <assistant: <|begin_of_thought|>{explanation}<|end_of_thought|>\\n\\n
                <|begin_of_solution|>\\n\\n{solution}\\n\\n<|end_of_solution|>>

Conventions used throughout:

* ``solution`` is the stored reference solution text without tags; it is stripped and wrapped as
  ``<|begin_of_solution|>\\n\\n{solution}\\n\\n<|end_of_solution|>`` (the Bespoke-Stratos layout).
* ``explanation`` is the text *between* the explanation (or thought) tags, exactly as
  :func:`parse_teacher_completion` returns it; a parsed explanation starts with the padding ``\\n\\n`` that
  ends the teacher prompt. It is inserted verbatim, so what the reward scores is byte-identical to what the
  distillation set trains on. One normalisation: a non-empty explanation that lacks the leading padding gets it
  prepended (the reference crashes on such traces, rlt-method.md 1.4 gotcha).

Another tag set or prompt (e.g. R1 ``<think>``) is a :class:`PromptStyle`, not a code change.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

# rlt-method.md 1.2: 1312 chars, one line. "\\n\\n" is a literal backslash-n pair and "analisying" is the
# original typo; both must stay byte-exact (the student was trained on this exact prompt).
STRATOS_SYSTEM_PROMPT = (
    "Your role as an assistant involves thoroughly exploring questions through a systematic long thinking process "
    "before providing the final precise and accurate solutions. This requires engaging in a comprehensive cycle of "
    "analysis, summarizing, exploration, reassessment, reflection, backtracing, and iteration to develop "
    "well-considered thinking process. Please structure your response into two main sections: Thought and Solution. "
    "In the Thought section, detail your reasoning process using the specified format: <|begin_of_thought|> "
    "{thought with steps separated with '\\n\\n'} <|end_of_thought|> Each step should include detailed "
    "considerations such as analisying questions, summarizing relevant findings, brainstorming new ideas, verifying "
    "the accuracy of the current steps, refining any errors, and revisiting previous steps. In the Solution section, "
    "based on various attempts, explorations, and reflections from the Thought section, systematically present the "
    "final solution that you deem correct. The solution should remain a logical, accurate, concise expression style "
    "and detail necessary step needed to reach the conclusion, formatted as follows: <|begin_of_solution|> {final "
    "formatted, precise, and clear solution} <|end_of_solution|> Now, try to solve the following question through "
    "the above guidelines:"
)

# rlt-method.md 1.3: 1284 chars, ends with a trailing space; same literal "\\n\\n" and typo.
STRATOS_STYLE_TEACHER_PROMPT = (
    "Your role as an assistant involves providing precise and accurate solutions before providing detailed "
    "explanations with your full work showing your systematic thinking process leading to each solution. Your "
    "explanations should show how you engaged in a comprehensive cycle of analysis, summarizing, exploration, "
    "reassessment, reflection, backtracing, and iteration to develop well-considered thinking process. Please "
    "structure your response into two main sections: Solution and Explanation. In the Solution section, present "
    "your well-thought solution that accurately answers the question. The solution should remain a logical, "
    "accurate, concise expression style and detail necessary step needed to reach the conclusion, formatted as "
    "follows: <|begin_of_solution|> {final formatted, precise, and clear solution} <|end_of_solution|>. In the "
    "Explanation section, comprehensively detail your reasoning process using the specified format: "
    "<|begin_of_explanation|> {explanation with steps separated with '\\n\\n'} <|end_of_explanation|> Each step "
    "should show detailed considerations leading to your solutions such as analisying questions, summarizing "
    "relevant findings, brainstorming new ideas, verifying the accuracy of the current steps, refining any errors, "
    "and revisiting previous steps. "
)

# Stands in for the explanation when rendering the chat template for a prompt-only string; it must not be
# something a template could rewrite or a question could contain.
_SENTINEL = "\u2063RLT-EXPLANATION-SENTINEL\u2063"


def make_tags(name: str, tag_format: Literal["bespoke", "r1"]) -> tuple[str, str]:
    """``("<|begin_of_x|>", "<|end_of_x|>")`` for the bespoke format, ``("<x>", "</x>")`` for r1.

    >>> make_tags("thought", "bespoke")
    ('<|begin_of_thought|>', '<|end_of_thought|>')
    >>> make_tags("think", "r1")
    ('<think>', '</think>')
    """
    if tag_format == "bespoke":
        return f"<|begin_of_{name}|>", f"<|end_of_{name}|>"
    if tag_format == "r1":
        return f"<{name}>", f"</{name}>"
    raise ValueError(f"tag_format must be 'bespoke' or 'r1', got {tag_format!r}")


class PromptStyle(BaseModel):
    """System prompts and tags of one teacher/student format.

    The reference spreads this over ``DATA_CONFIGS`` (student side) and ``TEACHER_SYSTEM_PROMPTS_AND_TAGS``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "stratos"
    student_system_prompt: str = STRATOS_SYSTEM_PROMPT
    teacher_system_prompt: str = STRATOS_STYLE_TEACHER_PROMPT
    tag_format: Literal["bespoke", "r1"] = "bespoke"
    thought_tag: str = "thought"
    explanation_tag: str = "explanation"
    solution_tag: str = "solution"
    think_prefix: str = ""  # text before the student's thought tag
    delimiter: str = "\n\n"  # between thought and solution (student), solution and explanation (teacher)
    padding: str = "\n\n"  # inside the tags, around the solution and before the explanation

    @classmethod
    def stratos(cls) -> "PromptStyle":
        """The paper/Bespoke-Stratos format (the default)."""
        return cls()

    @classmethod
    def r1(cls) -> "PromptStyle":
        """R1-style tags (``<think>``, ``<answer>``, ``<explanation>``) with the Stratos prompts re-tagged."""
        base = cls()
        style = cls(name="r1", tag_format="r1", thought_tag="think", solution_tag="answer")
        swaps = {}
        for old, new in ((base.thought_tags, style.thought_tags), (base.solution_tags, style.solution_tags),
                         (base.explanation_tags, style.explanation_tags)):
            swaps.update(zip(old, new))
        pattern = re.compile("|".join(re.escape(k) for k in swaps))
        return style.model_copy(update=dict(
            student_system_prompt=pattern.sub(lambda m: swaps[m.group(0)], base.student_system_prompt),
            teacher_system_prompt=pattern.sub(lambda m: swaps[m.group(0)], base.teacher_system_prompt)))

    @property
    def thought_tags(self) -> tuple[str, str]:
        return make_tags(self.thought_tag, self.tag_format)

    @property
    def explanation_tags(self) -> tuple[str, str]:
        return make_tags(self.explanation_tag, self.tag_format)

    @property
    def solution_tags(self) -> tuple[str, str]:
        return make_tags(self.solution_tag, self.tag_format)

    @property
    def masked_prefix(self) -> str:
        """What the teacher prompt ends with and generation continues from: ``<|begin_of_explanation|>\\n\\n``.

        Also the SFT warm-up response template: loss starts after it (rlt-method.md 1.4 step 6).
        """
        return self.explanation_tags[0] + self.padding

    @property
    def completion_div(self) -> str:
        """``<|end_of_solution|>\\n\\n<|begin_of_explanation|>\\n\\n``, where the reference splits the teacher text."""
        return self.solution_tags[1] + self.delimiter + self.masked_prefix


def wrap_solution(solution: str, style: PromptStyle | None = None) -> str:
    """Tag a stored solution: ``<|begin_of_solution|>\\n\\n{solution.strip()}\\n\\n<|end_of_solution|>``.

    >>> wrap_solution("  x = 2 ")
    '<|begin_of_solution|>\\n\\nx = 2\\n\\n<|end_of_solution|>'
    """
    style = style or PromptStyle()
    start, end = style.solution_tags
    return f"{start}{style.padding}{solution.strip()}{style.padding}{end}"


def _padded_explanation(explanation: str, style: PromptStyle) -> str:
    # Departure from the reference: it requires the leading padding and crashes without it (rlt-method.md 1.4).
    # Parsed explanations always have it, so this is the identity on them; "" stays "" as in the reference's
    # empty-explanation path (it decodes an empty token list).
    if explanation and not explanation.startswith(style.padding):
        return style.padding + explanation
    return explanation


def teacher_assistant_content(solution: str, explanation: str, style: PromptStyle | None = None) -> str:
    """``{tagged solution}\\n\\n<|begin_of_explanation|>{explanation}<|end_of_explanation|>``: solution first."""
    style = style or PromptStyle()
    start, end = style.explanation_tags
    return wrap_solution(solution, style) + style.delimiter + start + _padded_explanation(explanation, style) + end


def teacher_messages(question: str, solution: str, explanation: str, style: PromptStyle | None = None) -> list[dict]:
    """[system: teacher prompt, user: question, assistant: solution then explanation]."""
    style = style or PromptStyle()
    return [{"role": "system", "content": style.teacher_system_prompt},
            {"role": "user", "content": question},
            {"role": "assistant", "content": teacher_assistant_content(solution, explanation, style)}]


def format_teacher_sft_text(tokenizer, question: str, solution: str, explanation: str,
                            style: PromptStyle | None = None) -> str:
    """The full teacher chat (SFT warm-up ``text``); the loss belongs after ``style.masked_prefix``."""
    return tokenizer.apply_chat_template(teacher_messages(question, solution, explanation, style), tokenize=False)


def format_teacher_prompt(tokenizer, question: str, solution: str, style: PromptStyle | None = None) -> str:
    """The RL/generation prompt: the teacher chat text cut right after ``<|begin_of_explanation|>\\n\\n``.

    As the reference (rlt-method.md 1.4 step 4) it is the chat-template text split at ``style.completion_div``,
    but it is rendered with a sentinel explanation, so it does not depend on (or crash on) any explanation text.
    It is a raw string that ends mid-assistant-turn; the teacher generates the explanation and the end tag.
    """
    style = style or PromptStyle()
    text = format_teacher_sft_text(tokenizer, question, solution, style.padding + _SENTINEL, style)
    marker = style.completion_div + _SENTINEL
    if text.count(marker) != 1:
        raise ValueError("the chat template rewrote the teacher's assistant content: expected exactly one "
                         f"{style.completion_div!r} before the explanation in the rendered text")
    return text[: text.index(marker) + len(style.completion_div)]


@dataclass(frozen=True)
class ParsedCompletion:
    """A teacher completion read like the reference reward does (rlt-method.md 1.6 and 2.4 step 2).

    Attributes:
        explanation: the text between the explanation tags of ``text`` (starts with the padding).
        has_end_tag: whether the teacher wrote ``<|end_of_explanation|>``; if not, the format penalty applies.
        text: ``masked_prefix + completion``, with the end tag appended when it was missing.
        start: char offset of ``explanation`` in ``text``.
    """

    explanation: str
    has_end_tag: bool
    text: str
    start: int


def parse_teacher_completion(completion: str, style: PromptStyle | None = None) -> ParsedCompletion:
    """Extract the explanation from the teacher's generated text (the text after the teacher prompt).

    Text after the first end tag is discarded; a missing end tag means "everything is explanation".

    >>> p = parse_teacher_completion("Because 2+2=4.\\n\\n<|end_of_explanation|><|im_end|>")
    >>> p.explanation, p.has_end_tag
    ('\\n\\nBecause 2+2=4.\\n\\n', True)
    >>> parse_teacher_completion("cut off mid sen").has_end_tag
    False
    """
    style = style or PromptStyle()
    start_tag, end_tag = style.explanation_tags
    pattern = re.compile(re.escape(start_tag) + r"(.*?)" + re.escape(end_tag), flags=re.DOTALL)
    text = style.masked_prefix + completion
    match = pattern.search(text)
    has_end = match is not None
    if not has_end:  # truncated generation: close it and score it anyway (with the penalty)
        text = text + end_tag
        match = pattern.search(text)
    return ParsedCompletion(explanation=match.group(1), has_end_tag=has_end, text=text, start=match.start(1))


def student_assistant_content(question: str, solution: str, explanation: str, style: PromptStyle | None = None) -> str:
    """``<|begin_of_thought|>{explanation}<|end_of_thought|>\\n\\n{tagged solution}`` (Bespoke-Stratos layout).

    ``question`` does not enter the assistant turn; it is accepted so this has the same call shape as
    :func:`student_messages`.

    >>> student_assistant_content("q", "4", "\\n\\n2+2=4\\n\\n").split("<|end_of_thought|>")
    ['<|begin_of_thought|>\\n\\n2+2=4\\n\\n', '\\n\\n<|begin_of_solution|>\\n\\n4\\n\\n<|end_of_solution|>']
    """
    style = style or PromptStyle()
    start, end = style.thought_tags
    return (style.think_prefix + start + _padded_explanation(explanation, style) + end + style.delimiter
            + wrap_solution(solution, style))


def student_messages(question: str, solution: str, explanation: str, style: PromptStyle | None = None) -> list[dict]:
    """[system: student (Stratos) prompt, user: question, assistant: thought + solution]."""
    style = style or PromptStyle()
    return [{"role": "system", "content": style.student_system_prompt},
            {"role": "user", "content": question},
            {"role": "assistant", "content": student_assistant_content(question, solution, explanation, style)}]


def format_student_chat(tokenizer, question: str, solution: str, explanation: str,
                        style: PromptStyle | None = None) -> str:
    """The student chat text the reward scores and the distillation set trains on."""
    return tokenizer.apply_chat_template(student_messages(question, solution, explanation, style), tokenize=False)
