"""Teacher SFT warm-up: loss mask on the explanation only, weights change, safetensors saved, resume after a crash."""
from __future__ import annotations

import os

import pytest
import torch

from rlt_core.prompts import PromptStyle, format_teacher_prompt
from rlt_core.training.common import RuntimeSettings
from rlt_core.training.sft_teacher import (
    TeacherSFTConfig,
    make_teacher_sft_trainer,
    teacher_sft_example,
    train_teacher_sft,
)

ROWS = [
    {"question": "Using the numbers [3, 5, 7], create an equation that equals 22.", "solution": "3 * 5 + 7 = 22",
     "reasoning_trace": "\n\nFirst multiply 3 by 5 to get 15.\n\nThen add 7: 15 + 7 = 22.\n\n"},
    {"question": "What is 12 + 30?", "solution": "12 + 30 = 42"},  # no trace: the solution is the explanation
    {"question": "Compute 6 * 7.", "solution": "6 * 7 = 42", "reasoning_trace": "Six sevens are 42."},
]


def _cfg(**over) -> TeacherSFTConfig:
    rt = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0, save_steps=1)
    rt.update(over.pop("runtime", {}))
    base = dict(batch_size=2, per_device_batch_size=2, max_steps=2, learning_rate=1e-3, warmup_ratio=0.0,
                runtime=RuntimeSettings(**rt))
    base.update(over)
    return TeacherSFTConfig(**base)


def test_paper_defaults():
    cfg = TeacherSFTConfig()
    assert (cfg.learning_rate, cfg.lr_scheduler_type, cfg.warmup_ratio) == (1e-5, "cosine", 0.05)
    assert (cfg.adam_beta1, cfg.adam_beta2, cfg.weight_decay, cfg.batch_size) == (0.9, 0.95, 1e-4, 16)
    assert (cfg.max_length, cfg.num_train_epochs) == (16384, 10)
    with pytest.raises(ValueError):
        TeacherSFTConfig(learnin_rate=1.0)  # typo -> error (extra="forbid")


def test_labels_cover_exactly_explanation_end_tag_and_eos(tiny_lm, smol_tokenizer, tmp_path):
    tok = smol_tokenizer
    trainer, _ = make_teacher_sft_trainer(tiny_lm, tok, ROWS, _cfg(), str(tmp_path))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(ROWS))])
    style = PromptStyle()
    end_tag = style.explanation_tags[1]
    for i, row in enumerate(ROWS):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        n = int(batch["attention_mask"][i].sum())
        trained = labels[:n] != -100
        assert (labels[n:] == -100).all()  # padding is never trained
        first = int(trained.nonzero()[0])
        assert trained[first:].all()  # one contiguous span up to the end of the sequence
        prompt = format_teacher_prompt(tok, row["question"], row["solution"], style)
        assert tok.decode(ids[:first]) == prompt  # everything before the span is the prompt (question + solution)
        explanation = row.get("reasoning_trace") or row["solution"]
        target = tok.decode(labels[first:n])
        assert target == explanation.removeprefix("\n\n") + end_tag + tok.eos_token
        assert int(labels[n - 1]) == tok.eos_token_id  # EOS is trained even though pad == eos here
        assert torch.equal(labels[first:n], ids[first:n])
        # The prompt ids are what GRPO conditions on: tokenizer(prompt) exactly, no re-merge at the boundary.
        assert ids[:first].tolist() == tok(text=prompt)["input_ids"]


def test_train_changes_weights_and_saves_safetensors(tiny_lm, smol_tokenizer, tmp_path):
    before = {k: v.clone() for k, v in tiny_lm.state_dict().items()}
    seen, values = [], {}
    result = train_teacher_sft(tiny_lm, smol_tokenizer, ROWS, _cfg(), str(tmp_path),
                               log_metric=lambda n, v, s: (seen.append((n, s)), values.__setitem__((n, s), v)))
    assert result.steps == 2 and result.final_loss is not None and result.resumed_from is None
    # Tokens: 2 steps of 2 over 3 rows = each example once; every non-padding token of it went through the model.
    assert result.tokens_in == _example_tokens(smol_tokenizer) > 0
    assert (result.tokens_out, result.forward_tokens) == (0, result.tokens_in)
    assert values[("sft/num_tokens", 2)] == result.tokens_in   # TRL's own count agrees with transformers'
    changed = [k for k, v in tiny_lm.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "training did not change any weight"
    files = sorted(os.listdir(result.model_dir))
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert not os.path.exists(tmp_path / "checkpoints")  # resume state removed after success
    assert ("sft/loss", 1) in seen and ("sft/loss", 2) in seen
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir)
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, tiny_lm.state_dict()[k]), k


def test_resume_after_crash(smol_tokenizer, tmp_path):
    from rlt_core.modeling import tiny_causal_lm

    cfg = _cfg(max_steps=4, runtime=dict(keep_checkpoints=True))

    def crash_at_3(name, value, step):
        if step >= 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_teacher_sft(tiny_causal_lm(smol_tokenizer, seed=0), smol_tokenizer, ROWS, cfg, str(tmp_path),
                          log_metric=crash_at_3)
    ckpts = sorted(d for d in os.listdir(tmp_path / "checkpoints") if d.startswith("checkpoint-"))
    assert ckpts == ["checkpoint-1", "checkpoint-2"]
    # a checkpoint cut short while it was saved (the trainer state, written last, is not all there): passed over
    (tmp_path / "checkpoints" / "checkpoint-3").mkdir()
    (tmp_path / "checkpoints" / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3, "log_hi')
    steps = []
    result = train_teacher_sft(tiny_causal_lm(smol_tokenizer, seed=0), smol_tokenizer, ROWS, cfg, str(tmp_path),
                               log_metric=lambda n, v, s: steps.append(s) if n == "sft/loss" else None)
    assert result.resumed_from.endswith("checkpoint-2")
    assert result.steps == 4 and steps == [3, 4]  # started from step 2, not from scratch
    # Tokens of this call only (steps 3-4: the second epoch, each example once), though the trainer state counts both
    import json

    with open(tmp_path / "checkpoints" / "checkpoint-4" / "trainer_state.json") as f:
        assert json.load(f)["num_input_tokens_seen"] == 2 * _example_tokens(smol_tokenizer)
    assert result.tokens_in == result.forward_tokens == _example_tokens(smol_tokenizer)


def test_resume_from_the_last_checkpoint_trains_nothing(smol_tokenizer, tmp_path):
    """A run killed after its last checkpoint, before its final save: the rerun loads that checkpoint and trains no
    step (transformers alone trains one more when max_steps ends inside an epoch: here 3 steps, 2 per epoch)."""
    from rlt_core.modeling import tiny_causal_lm

    cfg = _cfg(max_steps=3, runtime=dict(keep_checkpoints=True))
    first = train_teacher_sft(tiny_causal_lm(smol_tokenizer, seed=0), smol_tokenizer, ROWS, cfg, str(tmp_path))
    weights = (tmp_path / "model" / "model.safetensors").read_bytes()
    steps = []
    again = train_teacher_sft(tiny_causal_lm(smol_tokenizer, seed=0), smol_tokenizer, ROWS, cfg, str(tmp_path),
                              log_metric=lambda n, v, s: steps.append(s) if n == "sft/loss" else None)
    assert again.resumed_from.endswith("checkpoint-3") and again.steps == 3 and steps == []
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == weights
    assert again.final_loss == first.final_loss is not None   # from the checkpoint's log history
    assert again.tokens_in == again.forward_tokens == 0


def _example_tokens(tok) -> int:
    """All tokens of the three teacher examples (prompt + target), as they are trained on."""
    return sum(len(teacher_sft_example(tok, row, PromptStyle(), i)["input_ids"]) for i, row in enumerate(ROWS))


def test_bad_row_names_row_and_field(tiny_lm, smol_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="row 1: field 'solution'"):
        make_teacher_sft_trainer(tiny_lm, smol_tokenizer, [ROWS[0], {"question": "q", "solution": " "}], _cfg(),
                                 str(tmp_path))


def test_lora_trains_and_merges(tiny_lm, smol_tokenizer, tmp_path):
    from rlt_core.training.common import LoraSettings

    before = {k: v.clone() for k, v in tiny_lm.state_dict().items()}
    cfg = _cfg(lora=LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    result = train_teacher_sft(tiny_lm, smol_tokenizer, ROWS, cfg, str(tmp_path))
    from safetensors.torch import load_file

    saved = load_file(os.path.join(result.model_dir, "model.safetensors"))
    assert not [k for k in saved if "lora" in k]  # merged: a plain model, loadable without peft
    changed = [k for k in saved if k in before and not torch.equal(saved[k], before[k])]
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)
    assert result.tokens_in == result.forward_tokens == _example_tokens(smol_tokenizer)   # counted through PEFT too
