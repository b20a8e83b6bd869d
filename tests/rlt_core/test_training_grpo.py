"""Teacher GRPO with TRL as-is: the reward is bound to the live policy, parameters move, reward terms are logged."""
from __future__ import annotations

import os

import pytest
import torch

from rlt_core.modeling import tiny_causal_lm
from rlt_core.prompts import PromptStyle
from rlt_core.reward import RewardConfig
from rlt_core.training.common import RuntimeSettings
from rlt_core.training.grpo import (
    REWARD_TERMS,
    TeacherGRPOConfig,
    build_grpo_dataset,
    grpo_token_counts,
    make_teacher_grpo_trainer,
    train_teacher_grpo,
)

ROWS = [{"question": "Using the numbers [3, 5, 7], create an equation that equals 22.", "solution": "3 * 5 + 7 = 22"},
        {"question": "What is 12 + 30?", "solution": "12 + 30 = 42"}]

# Short system prompts keep the tiny-model runs fast (the Stratos prompts are ~250 tokens each); the format is
# otherwise the paper's.
STYLE = PromptStyle(teacher_system_prompt="Explain the given solution.", student_system_prompt="Solve it.")


def _reward_cfg() -> RewardConfig:
    return RewardConfig(batch_size=4, prompt_style=STYLE)


def _cfg(**over) -> TeacherGRPOConfig:
    base = dict(num_generations=4, prompts_per_step=1, per_device_batch_size=4, max_completion_length=12,
                max_steps=2, learning_rate=1e-2, sync_ref_model=True, ref_model_sync_steps=1, sample_every=1,
                runtime=RuntimeSettings(use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0, save_steps=1))
    base.update(over)
    return TeacherGRPOConfig(**base)


def test_paper_defaults_and_validation():
    cfg = TeacherGRPOConfig()
    assert (cfg.num_generations, cfg.prompts_per_step, cfg.completions_per_step) == (64, 16, 1024)
    assert (cfg.learning_rate, cfg.lr_scheduler_type, cfg.beta, cfg.temperature) == (1e-6, "constant", 0.04, 0.7)
    assert (cfg.max_prompt_length, cfg.max_completion_length, cfg.max_steps) == (16384, 16384, 125)
    assert (cfg.sync_ref_model, cfg.ref_model_mixup_alpha, cfg.ref_model_sync_steps) == (True, 0.9, 32)
    assert (cfg.loss_type, cfg.scale_rewards) == ("grpo", "group")
    with pytest.raises(ValueError, match="beta > 0"):
        TeacherGRPOConfig(beta=0.0)
    with pytest.raises(ValueError):
        TeacherGRPOConfig(num_generation=8)  # typo


def test_dataset_prompts_are_raw_teacher_strings(smol_tokenizer):
    ds = build_grpo_dataset(smol_tokenizer, ROWS, RewardConfig().prompt_style, max_prompt_length=16384)
    assert ds.column_names == ["prompt", "question", "solution"]
    assert ds[0]["prompt"].startswith("<|im_start|>system\n")
    assert ds[0]["prompt"].endswith("<|end_of_solution|>\n\n<|begin_of_explanation|>\n\n")
    short = build_grpo_dataset(smol_tokenizer, ROWS, RewardConfig().prompt_style, max_prompt_length=20)
    assert short[0]["prompt"].endswith("<|begin_of_explanation|>\n\n")  # left-truncated: the end is kept
    assert len(smol_tokenizer(short[0]["prompt"])["input_ids"]) <= 21


def test_two_grpo_steps_on_tiny_models(smol_tokenizer, tmp_path):
    tok = smol_tokenizer
    policy, student = tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1)
    metrics, texts = [], []
    trainer, reward, terms, callback = make_teacher_grpo_trainer(
        policy, student, tok, ROWS, _cfg(), _reward_cfg(), str(tmp_path),
        log_metric=lambda n, v, s: metrics.append((n, v, s)), log_text=lambda n, t, s: texts.append((n, t, s)))
    # The reward's teacher is the object TRL trains (not a copy), so its KL term uses the current policy.
    assert reward.teacher is trainer.model is policy
    assert trainer.ref_model is not None and trainer.ref_model is not policy

    probe = ["First multiply 3 by 5.\n\n<|end_of_explanation|>"]
    before_kl = reward.score([ROWS[0]["question"]], [ROWS[0]["solution"]], probe)[0]
    # The reward's forward tokens: the teacher sequence and the student chat, each in full.
    from rlt_core.spans import build_examples

    ex = build_examples(tok, [ROWS[0]["question"]], [ROWS[0]["solution"]], probe, STYLE, -1.0)[0]
    assert reward.last_forward_tokens == len(ex.teacher_ids) + len(ex.student_ids)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.train()
    assert trainer.state.global_step == 2
    assert any(not torch.equal(v, before[k]) for k, v in policy.state_dict().items()), "policy did not move"
    assert all(torch.equal(v, student_before[k]) for k, v in student.state_dict().items()), "student moved"
    # Same completion, new policy weights -> different teacher log-probs in the KL term (student is frozen,
    # so the answer term is unchanged).
    after_kl = reward.score([ROWS[0]["question"]], [ROWS[0]["solution"]], probe)[0]
    assert after_kl.kl_mean != before_kl.kl_mean
    assert after_kl.answer_logprob_mean == pytest.approx(before_kl.answer_logprob_mean, abs=1e-6)
    assert policy.training  # the reward hands the policy back in training mode

    # Every reward term was logged at both steps, with mean/min/max.
    logged = {(n, s) for n, _, s in metrics}
    for step in (1, 2):
        for term in REWARD_TERMS:
            for stat in ("mean", "min", "max"):
                assert (f"rlt/{term}/{stat}", step) in logged, (term, stat, step)
        assert ("grpo/loss", step) in logged or ("grpo/reward", step) in logged
    assert [s for n, _, s in texts] == [1, 2] and "### completion" in texts[0][1]
    assert len(terms.history) == 2
    # The logged mean reward is the mean of what TRL optimised (TRL logs its own batch mean as grpo/reward).
    trl_reward = {s: v for n, v, s in metrics if n == "grpo/reward"}
    ours = {s: v for n, v, s in metrics if n == "rlt/reward/mean"}
    for step, value in trl_reward.items():
        assert ours[step] == pytest.approx(value, rel=1e-4, abs=1e-4)

    # Tokens: 2 steps x 1 prompt x 4 generations; each row's prompt once (one epoch over the 2 rows).
    counts = grpo_token_counts(trainer, terms, callback)
    prompts = build_grpo_dataset(tok, ROWS, STYLE, 16384)["prompt"]
    assert counts["tokens_in"] == 4 * sum(len(tok(text=p)["input_ids"]) for p in prompts)
    mean_len = {s: v for n, v, s in metrics if n == "grpo/completions/mean_length"}
    assert counts["tokens_out"] == round(4 * (mean_len[1] + mean_len[2])) > 0   # TRL's completion lengths
    assert {s: v for n, v, s in metrics if n == "grpo/num_tokens"}[2] == counts["tokens_in"] + counts["tokens_out"]
    # generation + training forward + reference log-probs (beta > 0), then the reward's teacher and student
    assert terms.reward_forward_tokens > counts["tokens_out"]
    assert counts["forward_tokens"] == 3 * (counts["tokens_in"] + counts["tokens_out"]) + terms.reward_forward_tokens


def test_train_saves_safetensors_and_resumes_reference(smol_tokenizer, tmp_path, monkeypatch):
    import safetensors.torch as st

    tok = smol_tokenizer
    cfg = _cfg(max_steps=1, runtime=RuntimeSettings(use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0,
                                                     save_steps=1, keep_checkpoints=True))
    init = {k: v.clone() for k, v in tiny_causal_lm(tok, seed=0).state_dict().items()}
    result = train_teacher_grpo(tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1), tok, ROWS, cfg,
                                _reward_cfg(), str(tmp_path))
    assert result.steps == 1
    assert "model.safetensors" in os.listdir(result.model_dir)
    prompt_tokens = [len(tok(text=p)["input_ids"]) for p in build_grpo_dataset(tok, ROWS, STYLE, 16384)["prompt"]]
    assert result.tokens_in in {4 * n for n in prompt_tokens} and result.tokens_out > 0
    assert result.forward_tokens > 3 * (result.tokens_in + result.tokens_out)   # + the reward's forwards
    ref_file = tmp_path / "checkpoints" / "checkpoint-1" / "reference_model.safetensors"
    trained = st.load_file(os.path.join(result.model_dir, "model.safetensors"))
    ref = st.load_file(str(ref_file))
    name = "model.layers.0.self_attn.q_proj.weight"
    # Synced at step 1 (sync_steps=1): ref = 0.9 * policy + 0.1 * init.
    torch.testing.assert_close(ref[name], 0.9 * trained[name] + 0.1 * init[name])
    assert not os.path.exists(tmp_path / "reference_init")  # scratch copy for TRL's reference loader removed
    # Resume to 2 steps: starts from checkpoint-1 and reloads the synced reference saved with it.
    loaded, real_load = [], st.load_model
    monkeypatch.setattr(st, "load_model",
                        lambda model, path, **kw: (loaded.append(path), real_load(model, path, **kw)))
    steps = []
    again = train_teacher_grpo(tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1), tok, ROWS,
                               cfg.model_copy(update={"max_steps": 2}), _reward_cfg(), str(tmp_path),
                               log_metric=lambda n, v, s: steps.append(s) if n == "rlt/reward/mean" else None)
    assert again.resumed_from.endswith("checkpoint-1") and again.steps == 2 and steps == [2]
    assert loaded == [str(ref_file)]
    # Tokens of the resumed call only: step 2 (the trainer state also holds step 1's)
    import json

    def seen(step):
        with open(tmp_path / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json") as f:
            return json.load(f)["num_input_tokens_seen"]

    assert again.tokens_in + again.tokens_out == seen(2) - seen(1) > 0
    assert again.tokens_in in {4 * n for n in prompt_tokens}


def _lora_trainer(tok, tmp_path):
    from rlt_core.training.common import LoraSettings

    cfg = _cfg(max_steps=1, sync_ref_model=False, lora=LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    return make_teacher_grpo_trainer(tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1), tok, ROWS, cfg,
                                     _reward_cfg(), str(tmp_path))


def test_lora_policy_is_the_rewarded_object(smol_tokenizer, tmp_path):
    from peft import PeftModel

    from rlt_core.training.common import LoraSettings

    trainer, reward, _, _ = _lora_trainer(smol_tokenizer, tmp_path)
    assert isinstance(trainer.model, PeftModel) and reward.teacher is trainer.model
    assert trainer.ref_model is None  # TRL's reference with LoRA: the adapter switched off
    with pytest.raises(ValueError, match="LoRA"):
        _cfg(lora=LoraSettings(r=4))  # sync_ref_model=True cannot be honoured with LoRA


@pytest.mark.slow
def test_lora_grpo_step_moves_the_adapter(smol_tokenizer, tmp_path):
    trainer, _, _, _ = _lora_trainer(smol_tokenizer, tmp_path)
    lora_before = {k: v.clone() for k, v in trainer.model.named_parameters() if "lora_B" in k and ".default." in k}
    base_before = {k: v.clone() for k, v in trainer.model.named_parameters() if "lora" not in k}
    trainer.train()
    params = dict(trainer.model.named_parameters())
    assert any(not torch.equal(params[k], v) for k, v in lora_before.items())
    assert all(torch.equal(params[k], v) for k, v in base_before.items())  # base weights frozen
