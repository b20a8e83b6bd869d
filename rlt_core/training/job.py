"""The spec of one training stage's work for a gang of ranks (:class:`TrainJob`): its phases in order, where they
write, how they are launched. JSON round-trips; the owner writes it, every rank reads it (rlt_core/training/launch.py
runs it, rlt_core/training/gang.py launches it on one host).
"""
from __future__ import annotations

import os
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlt_core.reward import RewardConfig
from rlt_core.training.distill import DistillConfig
from rlt_core.training.distributed import Backend, BatchPlan, Strategy, derive_batch
from rlt_core.training.grpo import TeacherGRPOConfig
from rlt_core.training.sft_teacher import TeacherSFTConfig

TRAINED_FILE = "trained.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


class Launch(BaseModel):
    """How many ranks, how they share the model, and how a failure is bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ranks: int = Field(default=1, ge=1, description="processes in the gang (one per GPU, or per CPU slice)")
    strategy: Strategy = Field(default="ddp", description="ddp | fsdp (FSDP2 through accelerate) | deepspeed_zero3")
    backend: Backend = Field(default="auto", description="auto: gloo on CPU, nccl on GPU")
    threads_per_rank: Optional[int] = Field(default=None, ge=1, description="torch/OpenMP threads; None: torch's")
    collective_timeout_s: float = Field(default=600.0, gt=0, description="bound on any one collective")
    monitor_interval_s: float = Field(default=0.5, gt=0, description="torchrun's poll of its ranks")
    shutdown_timeout_s: float = Field(default=10.0, gt=0, description="torchrun: SIGTERM, then SIGKILL after this")
    fsdp_layer_cls: Optional[str] = Field(default=None, description="FSDP unit; None: the model's no-split modules")


class SFTPhase(BaseModel):
    """Teacher SFT warm-up (:func:`rlt_core.training.sft_teacher.train_teacher_sft`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sft"] = "sft"
    model: str = Field(description="local folder: config + safetensors + tokenizer")
    rows: str = Field(description="local .jsonl or .parquet: question, solution, reasoning_trace")
    config: TeacherSFTConfig = Field(default_factory=TeacherSFTConfig)


class GRPOPhase(BaseModel):
    """Teacher GRPO with the RLT reward (:func:`rlt_core.training.grpo.train_teacher_grpo`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["grpo"] = "grpo"
    model: Optional[str] = Field(default=None, description="the policy's folder; None: the SFT phase's output")
    student: str = Field(description="the frozen student's folder (same tokenizer)")
    rows: str = Field(description="local .jsonl or .parquet: question, solution")
    config: TeacherGRPOConfig = Field(default_factory=TeacherGRPOConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)


class DistillPhase(BaseModel):
    """Student distillation (:func:`rlt_core.training.distill.distill_student`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["distill"] = "distill"
    model: str = Field(description="the student's folder")
    rows: str = Field(description="local .jsonl or .parquet: system/question/assistant rows")
    config: DistillConfig = Field(default_factory=DistillConfig)


Phase = Annotated[Union[SFTPhase, GRPOPhase, DistillPhase], Field(discriminator="kind")]


class TrainJob(BaseModel):
    """One training stage's work for a gang: its phases in order, where they write, how they are launched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phases: list[Phase] = Field(min_length=1)
    output_dir: str = Field(description="the stage's work folder (local, or shared by every host)")
    launch: Launch = Field(default_factory=Launch)
    dtype: Literal["float32", "bfloat16"] = "float32"

    @model_validator(mode="after")
    def _coherent(self) -> "TrainJob":
        kinds = [p.kind for p in self.phases]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"each phase at most once; got {kinds}")
        for i, phase in enumerate(self.phases):
            if isinstance(phase, GRPOPhase) and phase.model is None and "sft" not in kinds[:i]:
                raise ValueError("phases[grpo].model is None but no sft phase comes before it to provide the policy")
            if phase.config.runtime.use_cpu and self.launch.strategy != "ddp":
                raise ValueError(f"phases[{phase.kind}]: strategy={self.launch.strategy} needs GPUs (accelerate "
                                 "shards only accelerator gangs: on CPU it would silently run DDP); use ddp")
            if phase.config.lora is not None and self.launch.strategy != "ddp":
                raise ValueError(f"phases[{phase.kind}]: LoRA with strategy={self.launch.strategy} is not supported "
                                 "(the adapter is merged into full weights at the end); use ddp")
        return self

    def phase_dir(self, kind: str) -> str:
        return os.path.join(self.output_dir, kind)

    def batch_plans(self, ranks: Optional[int] = None) -> dict[str, BatchPlan]:
        """Each phase's split of its global batch over ``ranks`` (default ``launch.ranks``).

        Raises:
            ValueError: naming the phase and its recipe fields when the global batch cannot stay fixed.
        """
        n = ranks or self.launch.ranks
        plans = {}
        for phase in self.phases:
            cfg = phase.config
            try:
                if isinstance(phase, GRPOPhase):
                    plans[phase.kind] = derive_batch(cfg.completions_per_step, n, cfg.per_device_batch_size,
                                                     what="prompts_per_step*num_generations")
                else:
                    plans[phase.kind] = derive_batch(cfg.batch_size, n, cfg.per_device_batch_size)
            except ValueError as err:
                raise ValueError(f"phases[{phase.kind}].config: {err}") from None
        return plans
