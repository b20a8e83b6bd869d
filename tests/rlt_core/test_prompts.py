"""Golden-string tests of the RLT teacher/student formats (rlt-method.md 1.2-1.6)."""
from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from rlt_core import prompts as P

SMOL_TEACHER_HEAD = "<|im_start|>system\n" + P.STRATOS_STYLE_TEACHER_PROMPT + "<|im_end|>\n<|im_start|>user\n"
SMOL_STUDENT_HEAD = "<|im_start|>system\n" + P.STRATOS_SYSTEM_PROMPT + "<|im_end|>\n<|im_start|>user\n"


def test_system_prompts_are_byte_exact():
    # Lengths and sha256 pinned from rlt-method.md 1.2/1.3 (checked against the reference source).
    assert len(P.STRATOS_SYSTEM_PROMPT) == 1312 and len(P.STRATOS_STYLE_TEACHER_PROMPT) == 1284
    assert hashlib.sha256(P.STRATOS_SYSTEM_PROMPT.encode()).hexdigest() == (
        "6490a490932e93a0712ec83d53b79036a10059ccdbf786e088ac9c247aa19141")
    assert hashlib.sha256(P.STRATOS_STYLE_TEACHER_PROMPT.encode()).hexdigest() == (
        "2a6900e8cd23891f5b34a68c8b386045cd42c6c17ce0caa13f65005da0a49484")
    for text in (P.STRATOS_SYSTEM_PROMPT, P.STRATOS_STYLE_TEACHER_PROMPT):
        assert "'\\n\\n'" in text and "\n" not in text  # a literal backslash-n pair, no real newline
        assert "analisying" in text  # the original typo
    assert P.STRATOS_STYLE_TEACHER_PROMPT.endswith("previous steps. ")
    assert P.STRATOS_SYSTEM_PROMPT.endswith("the above guidelines:")


def test_style_tags_and_derived_strings():
    s = P.PromptStyle.stratos()
    assert s == P.PromptStyle()
    assert s.masked_prefix == "<|begin_of_explanation|>\n\n"
    assert s.completion_div == "<|end_of_solution|>\n\n<|begin_of_explanation|>\n\n"
    assert s.thought_tags == ("<|begin_of_thought|>", "<|end_of_thought|>")
    with pytest.raises(ValidationError):
        P.PromptStyle(thougt_tag="x")  # typo -> error (extra=forbid)
    with pytest.raises(ValidationError):
        P.PromptStyle(tag_format="xml")


def test_wrap_solution_strips_and_pads():
    assert P.wrap_solution("\n  3 * 5 + 7 = 22 \n") == "<|begin_of_solution|>\n\n3 * 5 + 7 = 22\n\n<|end_of_solution|>"


def test_teacher_prompt_golden(smol_tokenizer):
    prompt = P.format_teacher_prompt(smol_tokenizer, "What is 2+2?", " 4 ")
    assert prompt == (SMOL_TEACHER_HEAD + "What is 2+2?<|im_end|>\n<|im_start|>assistant\n"
                      "<|begin_of_solution|>\n\n4\n\n<|end_of_solution|>\n\n<|begin_of_explanation|>\n\n")


def test_teacher_sft_text_extends_the_prompt(smol_tokenizer):
    q, s, expl = "What is 2+2?", "4", "\n\nTwo and two make four.\n\n"
    text = P.format_teacher_sft_text(smol_tokenizer, q, s, expl)
    prompt = P.format_teacher_prompt(smol_tokenizer, q, s)
    assert text == prompt + "Two and two make four.\n\n<|end_of_explanation|><|im_end|>\n"
    # The SFT loss starts after the masked prefix: exactly where the RL prompt ends.
    assert text.index(P.PromptStyle().masked_prefix) + len(P.PromptStyle().masked_prefix) == len(prompt)


def test_explanation_without_leading_padding_does_not_crash(smol_tokenizer):
    # The reference's split crashes here (rlt-method.md 1.4); we prepend the padding.
    text = P.format_teacher_sft_text(smol_tokenizer, "q", "s", "no padding")
    assert text.endswith("<|begin_of_explanation|>\n\nno padding<|end_of_explanation|><|im_end|>\n")
    assert text.startswith(P.format_teacher_prompt(smol_tokenizer, "q", "s"))


def test_teacher_prompt_independent_of_tricky_questions(smol_tokenizer):
    # A question that contains the split marker must not confuse the prompt cut.
    q = "Why does <|end_of_solution|>\n\n<|begin_of_explanation|>\n\n appear?"
    prompt = P.format_teacher_prompt(smol_tokenizer, q, "x")
    assert prompt.endswith("<|begin_of_solution|>\n\nx\n\n<|end_of_solution|>\n\n<|begin_of_explanation|>\n\n")
    assert q in prompt


def test_teacher_prompt_rejects_a_rewriting_template():
    class Upper:  # a chat template that rewrites the assistant content
        def apply_chat_template(self, messages, tokenize=False):
            return "".join(m["content"].upper() for m in messages)

    with pytest.raises(ValueError, match="rewrote"):
        P.format_teacher_prompt(Upper(), "q", "s")


def test_parse_teacher_completion_cases():
    p = P.parse_teacher_completion("Because 2+2=4.\n\n<|end_of_explanation|><|im_end|> trailing")
    assert (p.explanation, p.has_end_tag) == ("\n\nBecause 2+2=4.\n\n", True)
    assert p.text == "<|begin_of_explanation|>\n\nBecause 2+2=4.\n\n<|end_of_explanation|><|im_end|> trailing"
    assert p.text[p.start:p.start + len(p.explanation)] == p.explanation
    cut = P.parse_teacher_completion("cut off mid sen")
    assert (cut.explanation, cut.has_end_tag) == ("\n\ncut off mid sen", False)
    assert cut.text.endswith("mid sen<|end_of_explanation|>")
    empty = P.parse_teacher_completion("<|end_of_explanation|>")
    assert (empty.explanation, empty.has_end_tag) == ("\n\n", True)
    # first end tag wins (non-greedy), as in the reference
    assert P.parse_teacher_completion("a<|end_of_explanation|>b<|end_of_explanation|>").explanation == "\n\na"


def test_student_chat_golden(smol_tokenizer):
    expl = P.parse_teacher_completion("3*5 = 15 and 15 + 7 = 22.\n\n<|end_of_explanation|>").explanation
    content = P.student_assistant_content("q", "3 * 5 + 7 = 22", expl)
    assert content == ("<|begin_of_thought|>\n\n3*5 = 15 and 15 + 7 = 22.\n\n<|end_of_thought|>\n\n"
                       "<|begin_of_solution|>\n\n3 * 5 + 7 = 22\n\n<|end_of_solution|>")
    chat = P.format_student_chat(smol_tokenizer, "Make 22.", "3 * 5 + 7 = 22", expl)
    assert chat == SMOL_STUDENT_HEAD + "Make 22.<|im_end|>\n<|im_start|>assistant\n" + content + "<|im_end|>\n"
    msgs = P.student_messages("Make 22.", "3 * 5 + 7 = 22", expl)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"] and msgs[2]["content"] == content


def test_teacher_messages_put_solution_first():
    msgs = P.teacher_messages("q", "sol", "\n\nexpl\n\n")
    assert msgs[0]["content"] == P.STRATOS_STYLE_TEACHER_PROMPT and msgs[1]["content"] == "q"
    assert msgs[2]["content"] == ("<|begin_of_solution|>\n\nsol\n\n<|end_of_solution|>\n\n"
                                  "<|begin_of_explanation|>\n\nexpl\n\n<|end_of_explanation|>")


def test_r1_style_is_configuration(smol_tokenizer):
    r1 = P.PromptStyle.r1()
    assert r1.thought_tags == ("<think>", "</think>") and r1.solution_tags == ("<answer>", "</answer>")
    assert r1.masked_prefix == "<explanation>\n\n"
    for text in (r1.student_system_prompt, r1.teacher_system_prompt):
        assert "<|" not in text
    assert "<think> {thought with steps" in r1.student_system_prompt
    prompt = P.format_teacher_prompt(smol_tokenizer, "q", "s", r1)
    assert prompt.endswith("<answer>\n\ns\n\n</answer>\n\n<explanation>\n\n")
    p = P.parse_teacher_completion("why.\n\n</explanation>", r1)
    assert p.has_end_tag and p.explanation == "\n\nwhy.\n\n"
    assert P.student_assistant_content("q", "s", p.explanation, r1) == (
        "<think>\n\nwhy.\n\n</think>\n\n<answer>\n\ns\n\n</answer>")
