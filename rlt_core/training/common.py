"""Pieces shared by the three TRL-based trainers: results, LoRA, metric callbacks, checkpoints, final save.

Layout of a training ``output_dir``::

    output_dir/checkpoints/checkpoint-<step>/   Trainer state for resuming (optimizer, scheduler, RNG: these
                                                are torch pickles, so they are removed after a successful run
                                                unless ``keep_checkpoints``)
    output_dir/model/                           the final weights: config + model.safetensors + tokenizer files
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import TrainerCallback

log = logging.getLogger(__name__)

MetricLogger = Callable[[str, float, int], None]
"""``log_metric(name, value, step)``: where scalar metrics go (e.g. an MLflow adapter in ``infra.tracking``)."""
TextLogger = Callable[[str, str, int], None]
"""``log_text(name, text, step)``: where text samples go."""

CHECKPOINTS_SUBDIR = "checkpoints"
MODEL_SUBDIR = "model"
CHECKPOINT_RE = re.compile(r"checkpoint-[0-9]+")   # the Trainer's checkpoint folder names
TRAINER_STATE = "trainer_state.json"   # the last file the Trainer writes into a checkpoint


@dataclass(frozen=True)
class TrainResult:
    """What a training call produced.

    Attributes:
        steps: optimizer steps done in total (``trainer.state.global_step``, counting steps before a resume).
        final_loss: the last logged training loss, counting steps before a resume (None if nothing was logged).
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


def trainer_kwargs(rt: RuntimeSettings, output_dir: str, max_steps: int,
                   launch_args: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """TrainingArguments keyword arguments every stage shares (saving, logging, device, precision).

    ``launch_args``: what a multi-rank launch adds (``ddp_backend``, ``ddp_timeout``, ``fsdp``/``fsdp_config``,
    ``deepspeed``: :func:`rlt_core.training.distributed.trainer_args`); they may not override the recipe's own.
    """
    save = {"save_strategy": "steps", "save_steps": rt.save_steps} if rt.save_steps else {"save_strategy": "epoch"}
    if rt.save_steps is None and max_steps > 0:
        # With max_steps, "epoch" may never trigger: save at the end at least.
        save = {"save_strategy": "steps", "save_steps": max_steps}
    kwargs = dict(output_dir=os.path.join(output_dir, CHECKPOINTS_SUBDIR), use_cpu=rt.use_cpu, bf16=rt.bf16,
                  activation_checkpointing=rt.gradient_checkpointing, seed=rt.seed, logging_steps=rt.logging_steps,
                  save_total_limit=rt.save_total_limit, report_to="none", disable_tqdm=True,
                  save_only_model=False, max_steps=max_steps, **save)
    clash = sorted(set(launch_args or {}) & set(kwargs))
    if clash:
        raise ValueError(f"launch arguments may not override the recipe's trainer arguments: {clash}")
    return {**kwargs, **(launch_args or {})}


def quiet_trainer(trainer):
    """Drop the Trainer's stdout printer: logs reach ``log_metric`` through :class:`MetricsCallback` instead."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def gradient_accumulation(global_batch: int, per_device: int, what: str = "batch_size") -> int:
    """Grad-accumulation steps for one process, so that ``per_device * steps * WORLD_SIZE == global_batch``
    (:func:`rlt_core.training.distributed.derive_batch` with the launcher's ``WORLD_SIZE``)."""
    from rlt_core.training.distributed import derive_batch

    return derive_batch(global_batch, int(os.environ.get("WORLD_SIZE", "1")), per_device, what=what).grad_accum


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


def resume_checkpoint(output_dir: str, resume: bool, needs: Sequence[str] = ()) -> Optional[str]:
    """The newest complete ``checkpoint-N`` under ``output_dir/checkpoints`` when resuming, else None.

    The Trainer writes a checkpoint in place, its ``trainer_state.json`` last: a process killed while saving leaves
    a folder without it (or with it cut short), from which ``train()`` cannot resume. Such a folder is passed
    over for the one before it (the Trainer saves the new checkpoint before it deletes older ones), and so is one
    missing any of the files in ``needs`` (written into the checkpoint by a callback's ``on_save``).
    """
    ckpt_dir = os.path.join(output_dir, CHECKPOINTS_SUBDIR)
    if not resume or not os.path.isdir(ckpt_dir):
        return None
    found = [name for name in os.listdir(ckpt_dir) if CHECKPOINT_RE.fullmatch(name)]
    for name in sorted(found, key=lambda n: int(n.rsplit("-", 1)[1]), reverse=True):
        path = os.path.join(ckpt_dir, name)
        if _complete(path, needs):
            log.info("resuming from %s", path)
            return path
        log.warning("checkpoint %s is incomplete (the run was stopped while saving it); not resuming from it", path)
    return None


def _complete(path: str, needs: Sequence[str]) -> bool:
    try:
        with open(os.path.join(path, TRAINER_STATE), encoding="utf-8") as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return all(os.path.exists(os.path.join(path, n)) for n in needs)


def train_from(trainer, ckpt: Optional[str], metrics: MetricsCallback) -> None:
    """``trainer.train(resume_from_checkpoint=ckpt)``, unless ``ckpt`` already holds the run's last step
    (``global_step >= max_steps``): then the trainer loads its weights and state, as ``train()`` would, and trains
    nothing. transformers checks ``max_steps`` only after a step, so from such a checkpoint it trains one step
    too many whenever ``max_steps`` ends inside an epoch: a run killed between its last checkpoint and its final
    save would otherwise come out one optimizer step past an uninterrupted run."""
    if ckpt is not None and trainer.args.max_steps > 0:
        from transformers import TrainerState

        state = TrainerState.load_from_json(os.path.join(ckpt, TRAINER_STATE))
        if state.global_step >= trainer.args.max_steps:
            trainer._load_from_checkpoint(ckpt)   # what train() loads first (LoRA adapters included)
            trainer.state = state
            metrics.tokens_seen_at_start = int(state.num_input_tokens_seen or 0)   # this call sees no token
            log.info("%s holds the last step (%d): nothing left to train", ckpt, state.global_step)
            return
    trainer.train(resume_from_checkpoint=ckpt)


def last_logged_loss(state, default: Optional[float] = None) -> Optional[float]:
    """The last training loss in ``TrainerState.log_history`` (which a resumed run loads from its checkpoint, so a
    run resumed after its last logged step still knows it), else ``default``."""
    for entry in reversed(state.log_history or []):
        value = entry.get("loss")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return default


def unwrap_trained(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model: LoRA adapters merged into the base weights, wrappers removed."""
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional
        return model
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def save_final(model: torch.nn.Module, tokenizer, output_dir: str, state_dict: Optional[dict] = None) -> str:
    """Save weights (safetensors), config and tokenizer into ``output_dir/model``; return that folder.

    ``state_dict``: the full weights when the model's own parameters are shards (FSDP, ZeRO-3)."""
    model_dir = os.path.join(output_dir, MODEL_SUBDIR)
    tmp = model_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict)  # transformers 5 writes safetensors only
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)  # readers never see a half-written model folder
    return model_dir


def finish_run(trainer, tokenizer, output_dir: str, rt: RuntimeSettings, metrics: MetricsCallback,
               resumed_from: Optional[str], tokens: Optional[Mapping[str, Optional[int]]] = None
               ) -> tuple[TrainResult, torch.nn.Module]:
    """Merge LoRA, save the final model, drop the resume checkpoints; return the result and the plain model.

    ``tokens``: the call's token counts (``tokens_in``, ``tokens_out``, ``forward_tokens``) for the result.

    Under a multi-rank launch every rank calls this; rank 0 alone writes ``model/`` and removes the checkpoints,
    after every rank is past training. With sharded parameters (FSDP, ZeRO-3) the full state dict is gathered
    first, a collective every rank takes part in.
    """
    from rlt_core.training.distributed import barrier, is_sharded

    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped) if is_sharded(trainer) else None
    model = unwrap_trained(trainer.model)
    main = trainer.args.process_index == 0
    model_dir = os.path.join(output_dir, MODEL_SUBDIR)
    barrier()   # every rank is done with the checkpoints before rank 0 removes them
    if main:
        save_final(model, tokenizer, output_dir, state_dict)
        if not rt.keep_checkpoints:
            shutil.rmtree(os.path.join(output_dir, CHECKPOINTS_SUBDIR), ignore_errors=True)
    barrier()   # model/ is in place before any rank returns
    result = TrainResult(steps=int(trainer.state.global_step),
                         final_loss=last_logged_loss(trainer.state, metrics.last_loss),
                         output_dir=output_dir, model_dir=model_dir, resumed_from=resumed_from,
                         **{k: (None if v is None else int(v)) for k, v in (tokens or {}).items()})
    return result, model
