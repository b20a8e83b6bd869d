"""train_teacher: problems -> teacher checkpoint (SFT warm-up in the teacher format, then GRPO with the RLT reward).

Training state lives in a work folder keyed by the artifact key, so a crashed run resumes from its last
checkpoint instead of starting over (rlt_core.training resumes from ``<work>/checkpoints``); the stage lock makes
sure only one run trains a key at a time.
"""
from __future__ import annotations

import os
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from data_contracts import teacher_checkpoint
from infra.models import resolve_model
from rlt_core.reward import RewardConfig
from rlt_core.training.grpo import TeacherGRPOConfig
from rlt_core.training.sft_teacher import TeacherSFTConfig
from tasks.models import fresh_model, model_and_tokenizer
from tasks.stage import Output, Stage, StageRun


class TrainTeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_model: str = "builtin:smollm2-135m-instruct"
    student_model: str = "builtin:smollm2-135m-instruct"
    phases: list[Literal["sft", "grpo"]] = Field(default_factory=lambda: ["sft", "grpo"],
                                                description="[] = use the base model as the teacher")
    sft: TeacherSFTConfig = Field(default_factory=TeacherSFTConfig)
    grpo: TeacherGRPOConfig = Field(default_factory=TeacherGRPOConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    max_problems: Optional[int] = Field(default=None, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"


def train_teacher(run: StageRun) -> dict:
    """SFT warm-up then GRPO with the RLT reward; the result is registered as a safetensors checkpoint."""
    cfg: TrainTeacherConfig = run.cfg
    base = resolve_model(cfg.base_model)
    row = dict(role="teacher", base_model=cfg.base_model, base_digest=base.digest, data_keys=[run.ref("problems").key],
               student_key=cfg.student_model, config_json=run.parts.config)
    if not cfg.phases:
        run.log.info("train_teacher: no phases configured; the base model is the teacher")
        run.count_tokens(tokens_in=0, tokens_out=0, forward_tokens=0)   # no model ran: 0, not unknown
        run.save_checkpoint(None, dict(row, phase="base", steps=0, metrics_json={}))
        return {"steps": 0}
    rows = list(run.rows("problems", ["question", "solution", "reasoning_trace"], where="split = 'train'"))
    rows = rows[: cfg.max_problems]
    model_dir, steps, metrics = _train(run, cfg, rows, base.path, resolve_model(cfg.student_model).path)
    run.save_checkpoint(model_dir, dict(row, phase="+".join(cfg.phases), steps=steps, metrics_json=metrics))
    run.log.info("train_teacher: %d steps on %d problems", steps, len(rows))
    return {"steps": steps, **metrics}


def _train(run: StageRun, cfg: TrainTeacherConfig, rows: list[dict], base_path: str,
           student_path: str) -> tuple[str, int, dict]:
    from rlt_core.training.grpo import train_teacher_grpo
    from rlt_core.training.sft_teacher import train_teacher_sft

    log_metric, work = run.metric_logger(), run.work_dir()
    model_path, steps, metrics = base_path, 0, {}
    if "sft" in cfg.phases:
        model = fresh_model(model_path, cfg.dtype)
        _, tok = model_and_tokenizer(model_path, cfg.dtype, padding_side="right")
        res = train_teacher_sft(model, tok, rows, cfg.sft, os.path.join(work, "sft"), log_metric=log_metric)
        run.count_tokens(**res.tokens)   # None (unknown) counts add nothing
        model_path, steps = res.model_dir, steps + res.steps
        metrics["sft_final_loss"] = res.final_loss
        del model
    if "grpo" in cfg.phases:
        policy = fresh_model(model_path, cfg.dtype)
        student, tok = model_and_tokenizer(student_path, cfg.dtype)
        res = train_teacher_grpo(policy, student, tok, rows, cfg.grpo, cfg.reward, os.path.join(work, "grpo"),
                                 log_metric=log_metric, log_text=run.text_logger())
        run.count_tokens(**res.tokens)
        model_path, steps = res.model_dir, steps + res.steps
        metrics["grpo_final_loss"] = res.final_loss
    return model_path, steps, metrics


def _key_config(cfg: TrainTeacherConfig) -> dict:
    """With no training phase the checkpoint is the base model: training settings do not change it."""
    return cfg.model_dump(mode="json") if cfg.phases else {"phases": [], "base_model": cfg.base_model}


# version 2: training rows are read in problem_id order from the catalog (was: part order)
STAGE = Stage(
    name="train_teacher", version="2", config=TrainTeacherConfig, inputs=("problems",),
    outputs=(Output("teacher_checkpoint", teacher_checkpoint.CONTRACT),), body=train_teacher,
    models=lambda cfg: {"base": cfg.base_model, "student": cfg.student_model}, key_config=_key_config,
    # no training phase: the base model is the teacher whatever the problems, so a night whose source grew keeps
    # the same teacher key, and generate/score reuse earlier rows (tasks/reuse.py)
    key_inputs=lambda cfg: ("problems",) if cfg.phases else ())


def run(ctx, cfg: TrainTeacherConfig, problems):
    """Run the stage outside a flow (tests, notebooks)."""
    from tasks.runner import execute

    return execute(STAGE, ctx, cfg, {"problems": problems})["teacher_checkpoint"]
