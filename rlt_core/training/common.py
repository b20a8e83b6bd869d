"""Pieces shared by the three TRL-based trainers: results, LoRA, metric callbacks, checkpoints, final save.

Layout of a training ``output_dir``::

    output_dir/checkpoints/checkpoint-<step>/   Trainer state for resuming (optimizer, scheduler, RNG: these
                                                are torch pickles, so they are removed after a successful run
                                                unless ``keep_checkpoints``)
    output_dir/model/                           the final weights: config + model.safetensors + tokenizer files
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

log = logging.getLogger(__name__)

MetricLogger = Callable[[str, float, int], None]
"""``log_metric(name, value, step)``: where scalar metrics go (e.g. an MLflow adapter in ``infra.tracking``)."""
TextLogger = Callable[[str, str, int], None]
"""``log_text(name, text, step)``: where text samples go."""

CHECKPOINTS_SUBDIR = "checkpoints"
MODEL_SUBDIR = "model"


@dataclass(frozen=True)
class TrainResult:
    """What a training call produced.

    Attributes:
        steps: optimizer steps done in total (``trainer.state.global_step``, counting steps before a resume).
        final_loss: the last logged training loss (None if nothing was logged).
        output_dir: the run folder (checkpoints while training, ``model/`` at the end).
        model_dir: the folder with the final safetensors weights, config and tokenizer.
        resumed_from: the checkpoint training resumed from, if any.
        tokens_in / tokens_out / forward_tokens: the tokens this ``train()`` call processed (a resumed run counts
            from its checkpoint on, not the steps before it), read from the trainer's own counters after
            training; None when the trainer did not count them. What each means per trainer is documented where
            it is computed: :func:`sft_token_counts` (teacher SFT, distillation) and
            ``rlt_core.training.grpo.grpo_token_counts``.
    """

    steps: int
    final_loss: Optional[float]
    output_dir: str
    model_dir: str
    resumed_from: Optional[str] = None
    tokens_in: Optional[int] = None
    tokens_out: Optional[int] = None
    forward_tokens: Optional[int] = None

    @property
    def tokens(self) -> dict[str, Optional[int]]:
        """``{"tokens_in": ..., "tokens_out": ..., "forward_tokens": ...}`` for a cost record; all three None when
        any is unknown (a cost record would read a missing count as 0)."""
        counts = {"tokens_in": self.tokens_in, "tokens_out": self.tokens_out, "forward_tokens": self.forward_tokens}
        return dict.fromkeys(counts) if any(v is None for v in counts.values()) else counts


class LoraSettings(BaseModel):
    """Optional LoRA adapter; the adapter is merged into the base weights before the final save."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def to_peft(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), task_type="CAUSAL_LM")


class RuntimeSettings(BaseModel):
    """Machine-facing knobs shared by every stage config (not part of the paper recipe)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    use_cpu: bool = False
    bf16: bool = True
    gradient_checkpointing: bool = True
    seed: int = 42
    logging_steps: int = Field(default=1, ge=1)
    save_steps: Optional[int] = Field(default=None, ge=1, description="None: save once per epoch")
    save_total_limit: Optional[int] = Field(default=2, ge=1)
    keep_checkpoints: bool = Field(default=False, description="keep checkpoints/ after a successful run")


def trainer_kwargs(rt: RuntimeSettings, output_dir: str, max_steps: int) -> dict[str, Any]:
    """TrainingArguments keyword arguments every stage shares (saving, logging, device, precision)."""
    save = {"save_strategy": "steps", "save_steps": rt.save_steps} if rt.save_steps else {"save_strategy": "epoch"}
    if rt.save_steps is None and max_steps > 0:
        # With max_steps, "epoch" may never trigger: save at the end at least.
        save = {"save_strategy": "steps", "save_steps": max_steps}
    return dict(output_dir=os.path.join(output_dir, CHECKPOINTS_SUBDIR), use_cpu=rt.use_cpu, bf16=rt.bf16,
                activation_checkpointing=rt.gradient_checkpointing, seed=rt.seed, logging_steps=rt.logging_steps,
                save_total_limit=rt.save_total_limit, report_to="none", disable_tqdm=True,
                save_only_model=False, max_steps=max_steps, **save)


def quiet_trainer(trainer):
    """Drop the Trainer's stdout printer: logs reach ``log_metric`` through :class:`MetricsCallback` instead."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def gradient_accumulation(global_batch: int, per_device: int, what: str = "batch_size") -> int:
    """Grad-accumulation steps for one process, so that ``per_device * steps == global_batch``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if global_batch % (per_device * world):
        raise ValueError(f"{what}={global_batch} must be a multiple of per_device_batch_size*world_size "
                         f"= {per_device}*{world}")
    return global_batch // (per_device * world)


class MetricsCallback(TrainerCallback):
    """Forwards every numeric value of the Trainer's log dicts to ``log_metric(prefix + key, value, step)``.

    Also remembers the last training loss, and ``TrainerState.num_input_tokens_seen`` when this ``train()`` call
    began (after a checkpoint's state was loaded: the state's count is cumulative over resumes), for
    :class:`TrainResult`.
    """

    def __init__(self, log_metric: Optional[MetricLogger], prefix: str = ""):
        self.log_metric = log_metric
        self.prefix = prefix
        self.last_loss: Optional[float] = None
        self.tokens_seen_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_seen_at_start = int(state.num_input_tokens_seen or 0)

    def tokens_seen(self, state) -> int:
        """``num_input_tokens_seen`` gained since this ``train()`` call began."""
        return int(state.num_input_tokens_seen or 0) - self.tokens_seen_at_start

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, value in (logs or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if key == "loss":
                self.last_loss = float(value)
            if self.log_metric is not None:
                self.log_metric(f"{self.prefix}{key}", float(value), int(state.global_step))


SFT_TOKEN_COUNTING = "non_padding"
"""``TrainingArguments.include_num_input_tokens_seen`` for the SFT trainers (transformers 5 accepts "no", "all",
"non_padding", or a bool meaning "all"/"no"): count the attention-mask ones of every micro-batch trained on."""


def sft_token_counts(trainer, metrics: MetricsCallback) -> dict[str, Optional[int]]:
    """Token counts of an ``SFTTrainer.train()`` call built with ``include_num_input_tokens_seen="non_padding"``.

    - ``tokens_in``: the non-padding tokens (prompt + completion, after ``max_length`` truncation) of every
      micro-batch the trainer ran, as transformers counts them (``TrainerState.num_input_tokens_seen``: the
      ``attention_mask`` sum of each batch, gathered over processes; batches skipped when resuming are not run and
      not counted). Equal to what TRL logs as ``num_tokens`` for the same call. Prompt tokens count although the
      loss covers the completion only: they go through the model all the same.
    - ``tokens_out``: 0 (training generates nothing).
    - ``forward_tokens``: ``tokens_in``: each token goes through the model's forward once per micro-batch. The
      backward pass is not a forward and is not counted, nor is the forward that activation (gradient)
      checkpointing recomputes during the backward, nor padding positions of a padded batch.

    All None when the trainer did not count (``include_num_input_tokens_seen`` off).
    """
    if getattr(trainer.args, "include_num_input_tokens_seen", "no") in ("no", False, None):
        return {"tokens_in": None, "tokens_out": None, "forward_tokens": None}
    seen = metrics.tokens_seen(trainer.state)
    return {"tokens_in": seen, "tokens_out": 0, "forward_tokens": seen}


def resume_checkpoint(output_dir: str, resume: bool) -> Optional[str]:
    """The newest ``checkpoint-N`` under ``output_dir/checkpoints`` when resuming, else None."""
    ckpt_dir = os.path.join(output_dir, CHECKPOINTS_SUBDIR)
    if not resume or not os.path.isdir(ckpt_dir):
        return None
    last = get_last_checkpoint(ckpt_dir)
    if last:
        log.info("resuming from %s", last)
    return last


def unwrap_trained(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model: LoRA adapters merged into the base weights, wrappers removed."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional
        return model
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def save_final(model: torch.nn.Module, tokenizer, output_dir: str) -> str:
    """Save weights (safetensors), config and tokenizer into ``output_dir/model``; return that folder."""
    model_dir = os.path.join(output_dir, MODEL_SUBDIR)
    tmp = model_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # transformers 5 writes safetensors only
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)  # readers never see a half-written model folder
    return model_dir


def finish_run(trainer, tokenizer, output_dir: str, rt: RuntimeSettings, metrics: MetricsCallback,
               resumed_from: Optional[str], tokens: Optional[Mapping[str, Optional[int]]] = None
               ) -> tuple[TrainResult, torch.nn.Module]:
    """Merge LoRA, save the final model, drop the resume checkpoints; return the result and the plain model.

    ``tokens``: the call's token counts (``tokens_in``, ``tokens_out``, ``forward_tokens``) for the result.
    """
    model = unwrap_trained(trainer.model)
    model_dir = save_final(model, tokenizer, output_dir)
    if not rt.keep_checkpoints:
        shutil.rmtree(os.path.join(output_dir, CHECKPOINTS_SUBDIR), ignore_errors=True)
    result = TrainResult(steps=int(trainer.state.global_step), final_loss=metrics.last_loss,
                         output_dir=output_dir, model_dir=model_dir, resumed_from=resumed_from,
                         **{k: (None if v is None else int(v)) for k, v in (tokens or {}).items()})
    return result, model
