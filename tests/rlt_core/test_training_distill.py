"""Student distillation: assistant-only loss via prompt/completion pairs, weights change, safetensors, resume."""
from __future__ import annotations

import os

import pytest
import torch

from rlt_core.prompts import PromptStyle, student_assistant_content, student_messages
from rlt_core.training.common import RuntimeSettings
from rlt_core.training.distill import DistillConfig, distill_student, make_distill_trainer, student_example

STYLE = PromptStyle()
ROWS = [
    {"system": STYLE.student_system_prompt, "question": "What is 12 + 30?",
     "assistant": student_assistant_content("What is 12 + 30?", "42", "\n\n12 + 30 = 42.\n\n", STYLE)},
    {"question": "Compute 6 * 7.", "solution": "6 * 7 = 42", "explanation": "\n\nSix sevens are 42.\n\n"},
]


def _cfg(**over) -> DistillConfig:
    rt = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0, save_steps=1)
    rt.update(over.pop("runtime", {}))
    base = dict(batch_size=2, per_device_batch_size=2, max_steps=2, learning_rate=1e-3, warmup_ratio=0.0,
                runtime=RuntimeSettings(**rt))
    base.update(over)
    return DistillConfig(**base)


def test_recipe_defaults():
    cfg = DistillConfig()
    assert (cfg.learning_rate, cfg.batch_size, cfg.num_train_epochs, cfg.lr_scheduler_type) == (1e-5, 96, 3, "cosine")
    assert (cfg.warmup_ratio, cfg.max_length, cfg.runtime.seed, cfg.lora) == (0.1, 16384, 42, None)
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.adam_epsilon) == (0.9, 0.999, 1e-8)


def test_loss_only_on_the_assistant_turn(tiny_lm, smol_tokenizer, tmp_path):
    tok = smol_tokenizer
    trainer, _ = make_distill_trainer(tiny_lm, tok, ROWS, _cfg(), str(tmp_path))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    for i, row in enumerate(ROWS):
        messages = student_example(row, STYLE, i)["prompt"] + student_example(row, STYLE, i)["completion"]
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        n = int(batch["attention_mask"][i].sum())
        trained = (labels[:n] != -100).nonzero().flatten()
        first, last = int(trained[0]), int(trained[-1])
        assert last - first + 1 == len(trained) and last == n - 1  # one span, to the end
        assert tok.decode(ids[:first]) == tok.apply_chat_template(messages[:2], tokenize=False,
                                                                   add_generation_prompt=True)
        # Trained text: the assistant content and its end-of-turn (ChatML "<|im_end|>\n").
        assert tok.decode(labels[first:n]) == messages[2]["content"] + "<|im_end|>\n"
        assert messages[2]["content"].startswith("<|begin_of_thought|>")
    assert ROWS[1]["explanation"] in tok.decode(batch["labels"][1][batch["labels"][1] != -100])


def test_distill_changes_weights_saves_and_resumes(smol_tokenizer, tmp_path):
    from rlt_core.modeling import tiny_causal_lm

    tok = smol_tokenizer
    model = tiny_causal_lm(tok, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def crash_at_2(name, value, step):
        if step >= 2:
            raise RuntimeError("simulated crash")

    cfg = _cfg(runtime=dict(keep_checkpoints=False))
    with pytest.raises(RuntimeError, match="simulated crash"):
        distill_student(model, tok, ROWS, cfg, str(tmp_path), log_metric=crash_at_2)
    assert "checkpoint-1" in os.listdir(tmp_path / "checkpoints")
    steps = []
    result = distill_student(tiny_causal_lm(tok, seed=0), tok, ROWS, cfg, str(tmp_path),
                             log_metric=lambda n, v, s: steps.append(s) if n == "distill/loss" else None)
    assert result.resumed_from.endswith("checkpoint-1") and result.steps == 2 and steps == [2]
    # Tokens of this call only: step 2 = one batch of both rows; its non-padding tokens, once through the forward.
    probe, _ = make_distill_trainer(tiny_causal_lm(tok, seed=0), tok, ROWS, cfg, str(tmp_path / "probe"))
    batch = probe.data_collator([probe.train_dataset[i] for i in range(len(ROWS))])
    assert result.tokens_in == int(batch["attention_mask"].sum()) > 0
    assert (result.tokens_out, result.forward_tokens) == (0, result.tokens_in)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    files = os.listdir(result.model_dir)
    assert "model.safetensors" in files and not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
    assert not os.path.exists(tmp_path / "checkpoints")


def test_bad_rows_are_named(smol_tokenizer):
    with pytest.raises(ValueError, match="row 0: expected fields"):
        student_example({"question": "q"}, STYLE, 0)
    with pytest.raises(ValueError, match="row 3: field 'assistant'"):
        student_example({"system": "s", "question": "q", "assistant": ""}, STYLE, 3)
    assert student_example(ROWS[1], STYLE)["completion"] == student_messages(
        ROWS[1]["question"], ROWS[1]["solution"], ROWS[1]["explanation"], STYLE)[-1:]
