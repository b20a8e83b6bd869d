"""GRPO phase of the RLT teacher, with TRL's ``GRPOTrainer`` used as-is and the RLT reward as a reward function.

The teacher gets the raw prompt string (question + tagged solution, ending ``<|begin_of_explanation|>\\n\\n``,
rlt-method.md 1.4); ``GRPOTrainer`` tokenizes plain-string prompts without applying the chat template again and
generates only the explanation. The reward is :class:`rlt_core.reward.RLTReward` built with ``teacher=`` the very
model object handed to the trainer (the PEFT-wrapped one with LoRA), so its KL term reads the *current* policy's
log-probs at every step (rlt-method.md, "faithful reimplementation" 5); TRL trains that object in place.

Recipe mapping (rlt-method.md 3.2 -> TRL 1.16):

* G=64 completions for each of 16 prompts = 1024 completions per optimizer step: ``num_generations=64``,
  ``gradient_accumulation_steps = 1024 / per_device_batch_size`` and one generation batch per optimizer step
  (``steps_per_generation = gradient_accumulation_steps``, ``num_iterations=1``): fully on-policy;
* per-sequence token-mean loss averaged over sequences: ``loss_type="grpo"``;
* advantages ``(r - mean_group) / (std_group + 1e-4)``: ``scale_rewards="group"`` (TRL uses the same 1e-4);
* k3 KL to the reference with beta 0.04, as a plain penalty: ``use_bias_correction_kl=False`` (TRL's default
  multiplies it by the importance ratio, which TRL 0.14 did not do);
* policy and reference log-probs at logits / 0.7 (TRL divides by ``temperature``, the reference's
  ``unbias_log_probabilities``);
* TR-DPO reference soft sync every 32 steps with alpha 0.9: ``sync_ref_model`` (TRL's ``SyncRefModelCallback``).
  The synced reference weights are written into each checkpoint, so a resumed run continues with them.
* ``max_prompt_length`` has no TRL 1.16 counterpart: prompts are left-truncated here when the dataset is built.

The tokens a run processed (prompt, completion, model forward tokens) come back on the :class:`TrainResult`, from
TRL's own counters and the reward's (:func:`grpo_token_counts`).

Generation is transformers' ``generate`` unless ``TeacherGRPOConfig.vllm`` names TRL's vLLM modes (GPU only:
:class:`VLLMSettings`); ``per_sample_seeds`` makes the transformers samples independent of the number of ranks
(``rlt_core.training.sampling``). Under data parallelism (``rlt_core.training.launch``) the reward terms logged per
step cover every rank's completions.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from typing import Any, Callable, ContextManager, Iterable, Literal, Mapping, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator
from transformers import TrainerCallback

from rlt_core.method import TEMPERATURE
from rlt_core.prompts import PromptStyle, format_teacher_prompt
from rlt_core.reward import RewardConfig, RLTReward
from rlt_core.training.common import (
    LoraSettings,
    MetricLogger,
    MetricsCallback,
    RuntimeSettings,
    TextLogger,
    TrainResult,
    finish_run,
    gradient_accumulation,
    quiet_trainer,
    resume_checkpoint,
    train_from,
    trainer_kwargs,
)
from rlt_core.training.vllm_settings import VLLMSettings

log = logging.getLogger(__name__)

REWARD_TERMS = ("reward", "r_ss", "r_kl", "format_penalty", "answer_logprob_mean", "answer_logprob_min",
                "kl_mean", "kl_max", "n_explanation_tokens")
REFERENCE_FILE = "reference_model.safetensors"


# Fields added after recipes were pinned: left out of a dump while at their default, so the config (and the
# artifact key a stage derives from it) of a recipe that does not use them is what it was.
_QUIET_DEFAULTS = {"vllm": None, "per_sample_seeds": False}


class TeacherGRPOConfig(BaseModel):
    """Teacher GRPO. Defaults: the paper recipe (``cfgs/run_cfg/teacher_rlt.yaml``, rlt-method.md 3.2)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_generations: int = Field(default=64, ge=2, description="G, completions per prompt")
    prompts_per_step: int = Field(default=16, ge=1, description="distinct prompts per optimizer step")
    per_device_batch_size: int = Field(default=1, ge=1, description="completions per forward/backward")
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "constant"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = Field(default=0.04, ge=0.0, description="k3 KL coefficient to the reference")
    temperature: float = Field(default=TEMPERATURE, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_prompt_length: int = Field(default=16384, ge=8, description="longer prompts are left-truncated")
    max_completion_length: int = Field(default=16384, ge=1)
    max_steps: int = Field(default=125, ge=1)
    sync_ref_model: bool = True
    ref_model_mixup_alpha: float = Field(default=0.9, ge=0.0, le=1.0)
    ref_model_sync_steps: int = Field(default=32, ge=1)
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "grpo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    epsilon: float = Field(default=0.2, gt=0.0, description="PPO clip; inactive when fully on-policy")
    sample_every: int = Field(default=1, ge=1, description="log_text a few completions every N steps")
    samples_per_log: int = Field(default=2, ge=0)
    lora: Optional[LoraSettings] = None
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    vllm: Optional[VLLMSettings] = Field(default=None, description="None: generate with transformers (CPU: always)")
    per_sample_seeds: bool = Field(
        default=False, description="sample each completion from its own seed (runtime.seed, step, sample index): "
                                   "completions then do not depend on the number of ranks (transformers "
                                   "generation only; rlt_core.training.sampling)")

    @model_serializer(mode="wrap")
    def _leave_out_quiet_defaults(self, handler):
        data = handler(self)
        for name, default in _QUIET_DEFAULTS.items():
            if name in data and data[name] == default:
                del data[name]
        return data

    @model_validator(mode="after")
    def _reference_sync_possible(self) -> "TeacherGRPOConfig":
        if self.per_sample_seeds and self.vllm is not None:
            raise ValueError("per_sample_seeds works with transformers generation only; set vllm=None")
        if self.vllm is not None and self.runtime.use_cpu:
            raise ValueError("vllm needs GPUs: TRL's use_vllm fails on CPU at the first weight sync; set vllm=None")
        if self.sync_ref_model and self.beta == 0.0:
            raise ValueError("sync_ref_model=True needs beta > 0 (with beta=0 there is no reference model)")
        if self.sync_ref_model and self.lora is not None:
            raise ValueError("sync_ref_model is not supported with LoRA by TRL (the reference is the base model "
                             "with adapters off); set sync_ref_model=False")
        return self

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations


def build_grpo_dataset(tokenizer, rows: Iterable[Mapping[str, Any]], style: PromptStyle, max_prompt_length: int):
    """``datasets.Dataset`` with ``prompt`` (raw teacher prompt string), ``question`` and ``solution`` columns."""
    from datasets import Dataset

    records, cut = [], 0
    for i, row in enumerate(rows):
        question, solution = _text(row, "question", i), _text(row, "solution", i)
        prompt = format_teacher_prompt(tokenizer, question, solution, style)
        ids = tokenizer(text=prompt)["input_ids"]
        if len(ids) > max_prompt_length:  # the reference left-truncates (keeps the end, where generation starts)
            prompt, cut = tokenizer.decode(ids[-max_prompt_length:]), cut + 1
        records.append({"prompt": prompt, "question": question, "solution": solution})
    if not records:
        raise ValueError("GRPO needs at least one problem row")
    if cut:
        log.warning("%d of %d teacher prompts were left-truncated to %d tokens", cut, len(records), max_prompt_length)
    return Dataset.from_list(records)


class RewardTermsLogger(TrainerCallback):
    """The RLT reward function as TRL calls it, plus a callback that logs every reward term per optimizer step.

    Used as ``reward_funcs=[logger]`` and ``callbacks=[logger]``: each call scores the completions with the wrapped
    ``RLTReward`` function and keeps the breakdowns; at the end of each optimizer step, mean/min/max of every term
    go to ``log_metric("rlt/<term>/<stat>", value, step)``, then the reward's and the step's wall times
    (``rlt/reward_seconds``, ``rlt/step_seconds``, the latter last); every
    ``sample_every`` steps a few completions with their terms to ``log_text("rlt/samples", text, step)``.

    It also counts, over every call (this process's completions only): ``completion_tokens``, the generated tokens
    TRL hands to reward functions (``completion_ids``, cut after the first EOS, EOS included: what TRL counts as
    completion lengths), or None once a call came without them; ``reward_forward_tokens``, the tokens the
    reward's teacher and student forwards took (``RLTReward.last_forward_tokens``); ``completions``, the count.
    """

    def __init__(self, reward_func, log_metric: Optional[MetricLogger] = None, log_text: Optional[TextLogger] = None,
                 sample_every: int = 1, samples_per_log: int = 2):
        self.reward_func = reward_func
        self.__name__ = getattr(reward_func, "__name__", "rlt_reward")  # TRL names the reward column after it
        self.log_metric, self.log_text = log_metric, log_text
        self.sample_every, self.samples_per_log = sample_every, samples_per_log
        self.pending: list = []
        self.samples: list[tuple[str, str, Any]] = []
        self.history: list[dict[str, float]] = []  # one row of stats per optimizer step
        self._t0: Optional[float] = None
        self._reward_seconds = 0.0
        self.completions = 0
        self.completion_tokens: Optional[int] = 0
        self.reward_forward_tokens: Optional[int] = 0
        # entered around each scoring call (sharded training: the policy's full parameters, distributed.py)
        self.scoring_context: Callable[[], ContextManager] = contextlib.nullcontext

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        t0 = time.perf_counter()
        with self.scoring_context():
            rewards = self.reward_func(prompts=prompts, completions=completions, **kwargs)
        self._reward_seconds += time.perf_counter() - t0
        self.completions += len(completions)
        ids = kwargs.get("completion_ids")
        self.completion_tokens = (None if ids is None or self.completion_tokens is None
                                  else self.completion_tokens + sum(len(c) for c in ids))
        fwd = getattr(self.reward_func, "last_forward_tokens", None)
        self.reward_forward_tokens = (None if fwd is None or self.reward_forward_tokens is None
                                      else self.reward_forward_tokens + int(fwd))
        breakdowns = list(self.reward_func.last_breakdowns)
        self.pending.extend(breakdowns)
        self.samples = list(zip(kwargs["question"], completions, breakdowns))
        return rewards

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        step, now = int(state.global_step), time.perf_counter()
        stats: dict[str, float] = {"step": step}
        batch, self.pending = _gather_objects(self.pending), []   # every rank's completions of the step
        for term in REWARD_TERMS:
            values = [float(getattr(b, term)) for b in batch]
            values = [v for v in values if math.isfinite(v)]
            if values:
                stats.update({f"rlt/{term}/mean": sum(values) / len(values), f"rlt/{term}/min": min(values),
                              f"rlt/{term}/max": max(values)})
        stats["rlt/reward_seconds"], self._reward_seconds = self._reward_seconds, 0.0  # scoring share of the step
        stats["rlt/step_seconds"] = now - (self._t0 or now)  # logged last: marks the end of the step's metrics
        self._t0 = now
        self.history.append(stats)
        if self.log_metric is not None:
            for name, value in stats.items():
                if name != "step":
                    self.log_metric(name, float(value), step)
        if self.log_text is not None and self.samples_per_log and step % self.sample_every == 0 and self.samples:
            self.log_text("rlt/samples", _format_samples(self.samples[:self.samples_per_log]), step)


class ReferenceCheckpoint(TrainerCallback):
    """Writes the (soft-synced) reference weights into each checkpoint, so resuming keeps the synced reference."""

    def __init__(self, ref_model):
        self.ref_model = ref_model

    def on_save(self, args, state, control, **kwargs):
        from safetensors.torch import save_model

        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        # rank 0 alone; written aside, then renamed: a checkpoint never holds half a reference
        if state.is_world_process_zero and os.path.isdir(folder):
            path = os.path.join(folder, REFERENCE_FILE)
            save_model(self.ref_model, path + ".tmp")
            os.replace(path + ".tmp", path)


def make_teacher_grpo_trainer(policy, student, tokenizer, rows: Iterable[Mapping[str, Any]],
                              grpo_cfg: TeacherGRPOConfig, reward_cfg: RewardConfig, output_dir: str,
                              log_metric: Optional[MetricLogger] = None, log_text: Optional[TextLogger] = None,
                              callbacks: Sequence[TrainerCallback] = (),
                              launch_args: Optional[Mapping[str, Any]] = None):
    """Build the ``GRPOTrainer`` and the reward bound to its policy (``callbacks``: extra ``TrainerCallback``s, run
    after the trainer's own, so their ``on_save`` sees a checkpoint complete with its reference weights;
    ``launch_args``: extra ``TrainingArguments`` of a multi-rank launch, ``rlt_core.training.distributed``).

    Under data parallelism each rank builds its own trainer, reward, student and reference; TRL gathers the rewards
    of a step's completions over the ranks before the group advantages, so the G completions of a prompt may sit on
    different ranks. The reward's teacher is the bare policy module (DDP wraps it in ``trainer.model_wrapped``), so
    its no-grad forward is a plain local forward on each rank. With sharded parameters (FSDP2, ZeRO-3) each scoring
    call runs inside :func:`rlt_core.training.distributed.full_parameters`: one gather that every rank makes, then
    local forwards however many batches a rank scores.

    Returns:
        ``(trainer, reward, terms, metrics)``: ``reward.teacher is trainer.model``; ``terms`` is the
        :class:`RewardTermsLogger` (its ``history`` holds the per-step reward statistics).
    """
    from transformers import set_seed
    from trl import GRPOConfig, GRPOTrainer

    cfg, rt = grpo_cfg, grpo_cfg.runtime
    if not math.isclose(reward_cfg.teacher_temperature, cfg.temperature):
        log.warning("reward teacher_temperature %.3g != sampling temperature %.3g: the paper scores the teacher "
                    "at the sampling temperature", reward_cfg.teacher_temperature, cfg.temperature)
    ga = gradient_accumulation(cfg.completions_per_step, cfg.per_device_batch_size, "prompts_per_step*num_generations")
    args = GRPOConfig(
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=0,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_epsilon=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.per_device_batch_size, gradient_accumulation_steps=ga,
        steps_per_generation=ga, num_iterations=1, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
        beta=cfg.beta, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, epsilon=cfg.epsilon,
        use_bias_correction_kl=False, sync_ref_model=cfg.sync_ref_model,
        ref_model_mixup_alpha=cfg.ref_model_mixup_alpha, ref_model_sync_steps=cfg.ref_model_sync_steps,
        disable_dropout=True, remove_unused_columns=False, log_completions=False,
        **(cfg.vllm.grpo_args() if cfg.vllm is not None else {"use_vllm": False}),
        **trainer_kwargs(rt, output_dir, cfg.max_steps, launch_args),
    )
    dataset = build_grpo_dataset(tokenizer, rows, reward_cfg.prompt_style, cfg.max_prompt_length)
    if cfg.lora is not None:
        from peft import get_peft_model

        set_seed(rt.seed)  # LoRA init is random
        policy = get_peft_model(policy, cfg.lora.to_peft())  # wrap here so the reward sees the same object
    reward = RLTReward(teacher=policy, student=student, tokenizer=tokenizer, config=reward_cfg)
    terms = RewardTermsLogger(reward.as_trl_reward_func(), log_metric, log_text, cfg.sample_every,
                              cfg.samples_per_log)
    metrics = MetricsCallback(log_metric, prefix="grpo/")
    with _loadable_reference(policy, output_dir, needed=cfg.beta > 0 and cfg.lora is None):
        trainer = GRPOTrainer(model=policy, reward_funcs=[terms], args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[terms, metrics])
    if trainer.model is not policy:
        raise RuntimeError("GRPOTrainer replaced the policy object; the reward's KL would not see the live policy")
    if trainer.ref_model is not None:
        # TRL loads the reference from the policy's path; the initial policy is what is in memory now.
        trainer.ref_model.load_state_dict(policy.state_dict())
        if cfg.sync_ref_model:
            trainer.add_callback(ReferenceCheckpoint(trainer.ref_model))
    from rlt_core.training.distributed import full_parameters

    terms.scoring_context = lambda: full_parameters(trainer, policy)   # sharded policy: one gather per scoring call
    if cfg.per_sample_seeds:
        from rlt_core.training.sampling import PerSampleSeeds

        trainer.add_callback(PerSampleSeeds(trainer, policy, rt.seed))
    for cb in callbacks:
        trainer.add_callback(cb)
    return quiet_trainer(trainer), reward, terms, metrics


def train_teacher_grpo(policy, student, tokenizer, rows: Iterable[Mapping[str, Any]], grpo_cfg: TeacherGRPOConfig,
                       reward_cfg: RewardConfig, output_dir: str, log_metric: Optional[MetricLogger] = None,
                       log_text: Optional[TextLogger] = None, resume: bool = True,
                       callbacks: Sequence[TrainerCallback] = (),
                       launch_args: Optional[Mapping[str, Any]] = None) -> TrainResult:
    """GRPO-train the teacher ``policy`` (in place) with the RLT reward; save safetensors to ``output_dir/model``.

    Args:
        policy: the teacher causal LM (normally the SFT warm-up checkpoint), trained in place.
        student: the frozen student LM scoring the explanations (same tokenizer/vocabulary).
        tokenizer: shared tokenizer; left padding is used for generation.
        rows: problems with ``question`` and ``solution``.
        grpo_cfg: the GRPO recipe.
        reward_cfg: the RLT reward recipe; its ``prompt_style`` also builds the teacher prompts.
        output_dir: run folder; checkpoints go to ``output_dir/checkpoints`` while training.
        log_metric: ``log_metric(name, value, step)``: TRL's logs (``grpo/...``) and every reward term
            (``rlt/<term>/{mean,min,max}``) per optimizer step.
        log_text: ``log_text(name, text, step)``: samples of completions with their reward terms.
        resume: continue from the newest checkpoint in ``output_dir`` when there is one.
        callbacks: extra ``transformers.TrainerCallback``s (e.g. a time budget or a cancellation check).
        launch_args: extra ``TrainingArguments`` when this runs as one rank of a gang
            (:mod:`rlt_core.training.launch`); the completions per step stay ``prompts_per_step*num_generations``.
    """
    tokenizer.padding_side = "left"
    trainer, _, terms, metrics = make_teacher_grpo_trainer(policy, student, tokenizer, rows, grpo_cfg, reward_cfg,
                                                           output_dir, log_metric, log_text, callbacks, launch_args)
    synced = trainer.ref_model is not None and grpo_cfg.sync_ref_model
    ckpt = resume_checkpoint(output_dir, resume, needs=(REFERENCE_FILE,) if synced else ())
    if ckpt and trainer.ref_model is not None and os.path.exists(os.path.join(ckpt, REFERENCE_FILE)):
        from safetensors.torch import load_model

        load_model(trainer.ref_model, os.path.join(ckpt, REFERENCE_FILE))
    train_from(trainer, ckpt, metrics)
    result, _ = finish_run(trainer, tokenizer, output_dir, grpo_cfg.runtime, metrics, ckpt,
                           tokens=grpo_token_counts(trainer, terms, metrics))
    log.info("teacher GRPO done: %d steps, model in %s", result.steps, result.model_dir)
    return result


def grpo_token_counts(trainer, terms: RewardTermsLogger, metrics: MetricsCallback) -> dict[str, Optional[int]]:
    """Token counts of a ``GRPOTrainer.train()`` call (this call only: a resumed run counts from its checkpoint).

    ``S`` = what TRL adds to ``TrainerState.num_input_tokens_seen`` (logged as ``num_tokens``) at each training
    generation: the prompt tokens plus the completion tokens (up to and including the first EOS) of every
    generated sequence, without padding, summed over processes.

    - ``tokens_out``: the completion tokens, summed from the ``completion_ids`` TRL passes to the reward function
      (the lengths TRL logs as ``completions/*_length``).
    - ``tokens_in``: ``S - tokens_out``: the prompt tokens, once per generated sequence (a prompt shared by the
      G completions of a group counts G times, as TRL generates it G times).
    - ``forward_tokens``: ``S`` for each pass TRL runs over the prompt + completion sequences, plus the reward's:
      the policy's generation (nominal: prompt + completion, like the generate stage; KV caching not
      subtracted), the policy's training forward (``num_iterations`` times), the reference model's log-prob pass
      when ``beta > 0`` (with LoRA: the policy with its adapter off), the old-policy log-prob pass when TRL runs
      it (not in this recipe: one generation per optimizer step, ``num_iterations=1``, no vLLM), and the RLT
      reward's teacher (the live policy) and student forwards (:class:`rlt_core.reward.RLTReward`, nominal full
      lengths). Padding positions, the backward pass and activation-checkpointing recomputation are not counted.

    The training forward runs ``num_iterations`` times over each generated batch (exact when training stops at
    the end of a generation cycle, always so with ``num_iterations=1``). None for a figure that cannot be known:
    all three when the reward function was called without ``completion_ids``, ``forward_tokens`` when the reward
    function does not report its forward tokens.
    """
    seen = metrics.tokens_seen(trainer.state)
    if terms.completion_tokens is None:
        return {"tokens_in": None, "tokens_out": None, "forward_tokens": None}
    out = _sum_over_processes(trainer, terms.completion_tokens)
    args = trainer.args
    iterations = int(trainer.num_iterations)
    # TRL's own conditions (GRPOTrainer._generate_and_score_completions) for the old-policy and reference passes
    old_pass = (args.gradient_accumulation_steps % (args.steps_per_generation * iterations) != 0
                or (trainer.use_vllm and trainer.vllm_importance_sampling_correction))
    passes = 1 + iterations + int(trainer.beta != 0.0) + int(bool(old_pass))
    forward = None
    if terms.reward_forward_tokens is not None:
        forward = passes * seen + _sum_over_processes(trainer, terms.reward_forward_tokens)
    return {"tokens_in": seen - out, "tokens_out": out, "forward_tokens": forward}


def _sum_over_processes(trainer, value: int) -> int:
    """``value`` summed over the training processes (itself with one process)."""
    acc = trainer.accelerator
    if acc.num_processes <= 1:
        return int(value)
    import torch

    return int(acc.reduce(torch.tensor(int(value), device=acc.device), reduction="sum").item())


@contextlib.contextmanager
def _loadable_reference(policy, output_dir: str, needed: bool):
    """Let TRL build its reference model: it loads ``policy.config._name_or_path``, which must be a local folder.

    A policy built in memory (or named by a hub id, unreachable here) is saved once to a scratch folder that the
    name points to while the trainer is built; the name is restored and the folder removed afterwards.
    """
    config = getattr(policy, "config", None)
    name = getattr(config, "_name_or_path", "")
    if not needed or (name and os.path.isfile(os.path.join(name, "config.json"))):
        yield
        return
    rank = int(os.environ.get("RANK", "0"))   # each rank of a gang loads its own reference
    scratch = os.path.join(output_dir, "reference_init" if rank == 0 else f"reference_init-rank{rank}")
    policy.save_pretrained(scratch)
    config._name_or_path = scratch
    try:
        yield
    finally:
        config._name_or_path = name
        shutil.rmtree(scratch, ignore_errors=True)


def _gather_objects(items: list) -> list:
    """``items`` of every rank, concatenated in rank order (``items`` itself outside a gang). A collective: every
    rank calls it at the same point (the end of each optimizer step)."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return list(items)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in part]


def _format_samples(samples) -> str:
    blocks = []
    for question, completion, b in samples:
        blocks.append(f"### question\n{question}\n### completion\n{completion}\n### terms\n"
                      f"reward={b.reward:.4f} r_ss={b.r_ss:.4f} r_kl={b.r_kl:.4f} format={b.format_penalty:g} "
                      f"explanation_tokens={b.n_explanation_tokens}")
    return "\n\n".join(blocks)


def _text(row: Mapping[str, Any], field: str, index: int) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"row {index}: field '{field}' must be a non-empty string, got {value!r:.60}")
    return value


__all__ = ["REWARD_TERMS", "RewardTermsLogger", "TeacherGRPOConfig", "VLLMSettings", "build_grpo_dataset",
           "grpo_token_counts", "make_teacher_grpo_trainer", "train_teacher_grpo"]
