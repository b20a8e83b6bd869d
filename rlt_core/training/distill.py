"""Student distillation: SFT on student-format traces with TRL's ``SFTTrainer`` used as-is.

Each row becomes a conversational prompt/completion pair (rlt-method.md 1.6): prompt = [system, user question],
completion = [assistant: ``<|begin_of_thought|>…<|end_of_thought|>\\n\\n<|begin_of_solution|>…<|end_of_solution|>``].
TRL renders both with the chat template and masks everything before the completion (``completion_mask``), so
the loss is on the assistant turn only. This replaces ``assistant_only_loss``, which needs ``{% generation %}``
markers: SmolLM2's ChatML template lacks them and TRL ships a patched training template only for a list of
known families (Qwen2.5 among them), whereas the prompt/completion split works with any chat template.

Defaults are the SkyThought/Bespoke-Stratos recipe (rlt-method.md 5): full fine-tuning, lr 1e-5, global batch
96, 3 epochs, cosine with 10% warm-up, cutoff 16384, AdamW(0.9, 0.999, 1e-8), seed 42.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field
from transformers import TrainerCallback

from rlt_core.prompts import PromptStyle, student_messages
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


class DistillConfig(BaseModel):
    """Student SFT recipe (SkyThought ``qwen2_full_sft.yaml`` / Bespoke-Stratos model cards)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = 1e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = Field(default=96, ge=1, description="global batch, reached by gradient accumulation")
    per_device_batch_size: int = Field(default=1, ge=1)
    max_length: int = Field(default=16384, ge=8, description="cutoff_len: longer traces are cropped")
    num_train_epochs: float = Field(default=3, gt=0)
    max_steps: int = Field(default=-1, description="> 0 overrides num_train_epochs (CPU smoke runs)")
    style: PromptStyle = Field(default_factory=PromptStyle)
    lora: Optional[LoraSettings] = None
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)


def student_example(row: Mapping[str, Any], style: PromptStyle, index: int = 0) -> dict[str, list[dict]]:
    """One conversational prompt/completion pair.

    Accepts a ``distill_set`` row (``system``, ``question``, ``assistant``) or a raw row (``question``,
    ``solution``, ``explanation``) that is formatted with :func:`rlt_core.prompts.student_messages`.
    """
    if "assistant" in row:
        messages = [{"role": "system", "content": _text(row, "system", index)},
                    {"role": "user", "content": _text(row, "question", index)},
                    {"role": "assistant", "content": _text(row, "assistant", index)}]
    elif "explanation" in row:
        messages = student_messages(_text(row, "question", index), _text(row, "solution", index),
                                    _text(row, "explanation", index), style)
    else:
        raise ValueError(f"row {index}: expected fields system/question/assistant (a distill_set row) or "
                         f"question/solution/explanation; got {sorted(row)}")
    if [m["role"] for m in messages][-1] != "assistant":
        raise ValueError(f"row {index}: the last message must be the assistant turn")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def build_distill_dataset(rows: Iterable[Mapping[str, Any]], style: PromptStyle):
    """A ``datasets.Dataset`` with conversational ``prompt``/``completion`` columns."""
    from datasets import Dataset

    examples = [student_example(row, style, i) for i, row in enumerate(rows)]
    if not examples:
        raise ValueError("distillation needs at least one row")
    return Dataset.from_list(examples)


def make_distill_trainer(model, tokenizer, rows: Iterable[Mapping[str, Any]], cfg: DistillConfig, output_dir: str,
                         log_metric: Optional[MetricLogger] = None, callbacks: Sequence[TrainerCallback] = (),
                         launch_args: Optional[Mapping[str, Any]] = None):
    """Build the ``SFTTrainer`` (exposed so tests can inspect its collated batches). Returns (trainer, metrics).

    ``launch_args``: extra ``TrainingArguments`` of a multi-rank launch (``rlt_core.training.distributed``)."""
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        # transformers 5 dropped warmup_ratio: a warmup_steps float < 1 is a ratio of the total steps
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_ratio,
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_epsilon=cfg.adam_epsilon,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation(cfg.batch_size, cfg.per_device_batch_size),
        num_train_epochs=cfg.num_train_epochs, max_length=cfg.max_length, packing=False,
        include_num_input_tokens_seen=SFT_TOKEN_COUNTING,  # TrainResult's token counts (sft_token_counts)
        completion_only_loss=True, assistant_only_loss=False,
        **trainer_kwargs(cfg.runtime, output_dir, cfg.max_steps, launch_args),
    )
    metrics = MetricsCallback(log_metric, prefix="distill/")
    trainer = SFTTrainer(model=model, args=args, train_dataset=build_distill_dataset(rows, cfg.style),
                         processing_class=tokenizer, callbacks=[metrics, *callbacks],
                         peft_config=cfg.lora.to_peft() if cfg.lora else None)
    return quiet_trainer(trainer), metrics


def distill_student(model, tokenizer, rows: Iterable[Mapping[str, Any]], cfg: DistillConfig, output_dir: str,
                    log_metric: Optional[MetricLogger] = None, resume: bool = True,
                    callbacks: Sequence[TrainerCallback] = (),
                    launch_args: Optional[Mapping[str, Any]] = None) -> TrainResult:
    """SFT ``model`` (in place) on student-format rows; save safetensors to ``output_dir/model``.

    Args:
        model: the student causal LM; trained in place (LoRA is merged at the end).
        tokenizer: its tokenizer, with a chat template.
        rows: ``distill_set`` rows (system/question/assistant) or question/solution/explanation rows.
        cfg: the recipe.
        output_dir: run folder; checkpoints go to ``output_dir/checkpoints`` while training.
        log_metric: optional ``log_metric(name, value, step)`` sink.
        resume: continue from the newest checkpoint in ``output_dir`` when there is one.
        callbacks: extra ``transformers.TrainerCallback``s (e.g. progress or crash points).
        launch_args: extra ``TrainingArguments`` when this runs as one rank of a gang
            (:mod:`rlt_core.training.launch`); the global batch stays ``cfg.batch_size``.
    """
    trainer, metrics = make_distill_trainer(model, tokenizer, rows, cfg, output_dir, log_metric, callbacks,
                                            launch_args)
    ckpt = resume_checkpoint(output_dir, resume)
    train_from(trainer, ckpt, metrics)
    result, _ = finish_run(trainer, tokenizer, output_dir, cfg.runtime, metrics, ckpt,
                           tokens=sft_token_counts(trainer, metrics))
    log.info("distillation done: %d steps, final loss %s, model in %s", result.steps, result.final_loss,
             result.model_dir)
    return result


def _text(row: Mapping[str, Any], field: str, index: int) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"row {index}: field '{field}' must be a non-empty string, got {value!r:.60}")
    return value


__all__ = ["DistillConfig", "build_distill_dataset", "distill_student", "make_distill_trainer", "student_example"]
