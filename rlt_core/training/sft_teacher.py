"""SFT warm-up of the teacher in the RLT teacher format, with TRL's ``SFTTrainer`` used as-is.

Each problem becomes one example (rlt-method.md 1.4): the prompt is the chat text with the question and the
tagged solution, ending ``<|end_of_solution|>\\n\\n<|begin_of_explanation|>\\n\\n``; the target is the explanation,
``<|end_of_explanation|>`` and the EOS token. The loss covers the target only (1.4 step 6), through TRL's
``completion_mask``.

Why the examples are pre-tokenized (``input_ids`` + ``completion_mask``) rather than given to TRL as
prompt/completion text: TRL tokenizes ``prompt + completion`` as one string. With byte-level BPE tokenizers of
the GPT-2 family (SmolLM2) the ``\\n\\n`` that ends the prompt is one token at the end of a string but two tokens
before text, so the SFT context would differ from the prompt tokens the teacher is conditioned on in GRPO and
generation (``tokenizer(prompt)`` followed by generated ids). Tokenizing prompt and completion separately and
concatenating the ids trains on exactly the sequence the teacher later sees.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field
from transformers import TrainerCallback

from rlt_core.prompts import PromptStyle, format_teacher_prompt, format_teacher_sft_text
from rlt_core.training.common import (
    SFT_TOKEN_COUNTING,
    LoraSettings,
    MetricLogger,
    MetricsCallback,
    RuntimeSettings,
    TrainResult,
    finish_run,
    gradient_accumulation,
    quiet_trainer,
    resume_checkpoint,
    sft_token_counts,
    train_from,
    trainer_kwargs,
)

log = logging.getLogger(__name__)


class TeacherSFTConfig(BaseModel):
    """Teacher SFT warm-up. Defaults: the paper recipe (rlt-method.md 3.1, ``cfgs/run_cfg/teacher_sft.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = 1e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(default=0.05, ge=0.0, lt=1.0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    batch_size: int = Field(default=16, ge=1, description="global batch, reached by gradient accumulation")
    per_device_batch_size: int = Field(default=1, ge=1)
    max_length: int = Field(default=16384, ge=8)
    num_train_epochs: float = Field(default=10, gt=0)
    max_steps: int = Field(default=-1, description="> 0 overrides num_train_epochs (CPU smoke runs)")
    style: PromptStyle = Field(default_factory=PromptStyle)
    lora: Optional[LoraSettings] = None
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)


def teacher_sft_example(tokenizer, row: Mapping[str, Any], style: PromptStyle, index: int = 0) -> dict[str, list]:
    """One pre-tokenized teacher example.

    The explanation is ``row["reasoning_trace"]``; when it is missing or empty the solution doubles as the
    explanation, as in the reference (``line.get("reasoning_trace", solution)``, rlt-method.md 1.1).

    Returns:
        ``{"input_ids": prompt_ids + completion_ids, "completion_mask": [0]*len(prompt) + [1]*len(completion)}``
        where the completion is explanation + ``<|end_of_explanation|>`` + EOS.
    """
    question, solution = _text(row, "question", index), _text(row, "solution", index)
    explanation = row.get("reasoning_trace") or solution
    prompt = format_teacher_prompt(tokenizer, question, solution, style)
    full = format_teacher_sft_text(tokenizer, question, solution, explanation, style)
    if not full.startswith(prompt):
        raise ValueError(f"row {index}: the teacher SFT text does not start with the teacher prompt")
    completion = full[len(prompt):]
    eos = tokenizer.eos_token
    cut = completion.find(eos)
    # The chat template may add text after EOS (ChatML adds "\n"); the teacher stops at EOS, so the target does too.
    completion = completion[:cut + len(eos)] if cut >= 0 else completion + eos
    prompt_ids = tokenizer(text=prompt)["input_ids"]  # as GRPOTrainer tokenizes a raw-text prompt
    completion_ids = tokenizer(text=completion, add_special_tokens=False)["input_ids"]
    return {"input_ids": prompt_ids + completion_ids,
            "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids)}


def build_teacher_sft_dataset(tokenizer, rows: Iterable[Mapping[str, Any]], style: PromptStyle):
    """A ``datasets.Dataset`` of pre-tokenized teacher examples (see :func:`teacher_sft_example`)."""
    from datasets import Dataset

    examples = [teacher_sft_example(tokenizer, row, style, i) for i, row in enumerate(rows)]
    if not examples:
        raise ValueError("teacher SFT needs at least one problem row")
    return Dataset.from_list(examples)


def make_teacher_sft_trainer(model, tokenizer, rows: Iterable[Mapping[str, Any]], cfg: TeacherSFTConfig,
                             output_dir: str, log_metric: Optional[MetricLogger] = None,
                             callbacks: Sequence[TrainerCallback] = (),
                             launch_args: Optional[Mapping[str, Any]] = None):
    """Build the ``SFTTrainer`` (exposed so tests can inspect its collated batches). Returns (trainer, metrics).

    ``launch_args``: extra ``TrainingArguments`` of a multi-rank launch (``rlt_core.training.distributed``)."""
    from trl import SFTConfig, SFTTrainer

    rt = cfg.runtime
    args = SFTConfig(
        # transformers 5 dropped warmup_ratio: a warmup_steps float < 1 is a ratio of the total steps
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_epsilon=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation(cfg.batch_size, cfg.per_device_batch_size),
        num_train_epochs=cfg.num_train_epochs, max_length=cfg.max_length, packing=False,
        include_num_input_tokens_seen=SFT_TOKEN_COUNTING,  # TrainResult's token counts (sft_token_counts)
        completion_only_loss=True,  # labels = -100 wherever completion_mask == 0
        **trainer_kwargs(rt, output_dir, cfg.max_steps, launch_args),
    )
    metrics = MetricsCallback(log_metric, prefix="sft/")
    trainer = SFTTrainer(model=model, args=args, train_dataset=build_teacher_sft_dataset(tokenizer, rows, cfg.style),
                         processing_class=tokenizer, callbacks=[metrics, *callbacks],
                         peft_config=cfg.lora.to_peft() if cfg.lora else None)
    return quiet_trainer(trainer), metrics


def train_teacher_sft(model, tokenizer, rows: Iterable[Mapping[str, Any]], cfg: TeacherSFTConfig, output_dir: str,
                      log_metric: Optional[MetricLogger] = None, resume: bool = True,
                      callbacks: Sequence[TrainerCallback] = (),
                      launch_args: Optional[Mapping[str, Any]] = None) -> TrainResult:
    """SFT-train ``model`` (in place) on problems in the teacher format; save safetensors to ``output_dir/model``.

    Args:
        model: a causal LM (``transformers.PreTrainedModel``); trained in place (LoRA is merged at the end).
        tokenizer: its tokenizer (must have an EOS token).
        rows: problems with ``question``, ``solution`` and optionally ``reasoning_trace``.
        cfg: the recipe.
        output_dir: run folder; checkpoints go to ``output_dir/checkpoints`` while training.
        log_metric: optional ``log_metric(name, value, step)`` sink (loss, grad_norm, learning_rate, ...).
        resume: continue from the newest checkpoint in ``output_dir`` when there is one.
        callbacks: extra ``transformers.TrainerCallback``s (e.g. progress or crash points).
        launch_args: extra ``TrainingArguments`` when this runs as one rank of a gang
            (:mod:`rlt_core.training.launch`); the global batch stays ``cfg.batch_size``.
    """
    trainer, metrics = make_teacher_sft_trainer(model, tokenizer, rows, cfg, output_dir, log_metric, callbacks,
                                                launch_args)
    ckpt = resume_checkpoint(output_dir, resume)
    train_from(trainer, ckpt, metrics)
    result, _ = finish_run(trainer, tokenizer, output_dir, cfg.runtime, metrics, ckpt,
                           tokens=sft_token_counts(trainer, metrics))
    log.info("teacher SFT done: %d steps, final loss %s, model in %s", result.steps, result.final_loss,
             result.model_dir)
    return result


def _text(row: Mapping[str, Any], field: str, index: int) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"row {index}: field '{field}' must be a non-empty string, got {value!r:.60}")
    return value


__all__ = ["TeacherSFTConfig", "build_teacher_sft_dataset", "make_teacher_sft_trainer", "teacher_sft_example",
           "train_teacher_sft"]
