"""train_teacher: problems -> teacher checkpoint (SFT warm-up in the teacher format, then GRPO with the RLT reward).

Training state lives in a work folder keyed by the artifact key, so a crashed run resumes from its last
checkpoint instead of starting over (rlt_core.training resumes from ``<work>/checkpoints``).
"""
from __future__ import annotations

import os
import time
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from data_contracts import ArtifactRef, teacher_checkpoint
from infra.artifacts import ArtifactWriter, KeyParts
from infra.models import resolve_model
from rlt_core.reward import RewardConfig
from rlt_core.training.grpo import TeacherGRPOConfig
from rlt_core.training.sft_teacher import TeacherSFTConfig
from tasks.checkpoints import commit_checkpoint
from tasks.common import RunContext, cached, iter_rows, logger, stage_run
from tasks.models import fresh_model, model_and_tokenizer

STAGE = "train_teacher"
STAGE_VERSION = "1"


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


def key_parts(cfg: TrainTeacherConfig, problems_key: str, base_digest: str, student_digest: str) -> KeyParts:
    conf = cfg.model_dump(mode="json") if cfg.phases else {"phases": [], "base_model": cfg.base_model}
    return KeyParts(STAGE, STAGE_VERSION, conf, inputs={"problems": problems_key},
                    models={"base": base_digest, "student": student_digest})


def work_dir(ctx: RunContext, key: str) -> str:
    base = ctx.store.root if ctx.store.local else os.path.join(os.path.expanduser("~"), ".cache", "rlt-factory")
    return os.path.join(base, "_work", STAGE, key)


def run(ctx: RunContext, cfg: TrainTeacherConfig, problems: ArtifactRef) -> ArtifactRef:
    base, student = resolve_model(cfg.base_model), resolve_model(cfg.student_model)
    parts = key_parts(cfg, problems.key, base.digest, student.digest)
    if (hit := cached(ctx, STAGE, parts.key())) is not None:
        return hit
    log, t0 = logger(), time.time()
    with stage_run(ctx, STAGE, parts) as mlrun:
        writer = ArtifactWriter(ctx.store, ctx.manifest, "teacher_checkpoint", parts, ctx.run_id,
                                teacher_checkpoint.CONTRACT)
        common = dict(role="teacher", base_ref=cfg.base_model, base_digest=base.digest, data_keys=[problems.key],
                      student_key=cfg.student_model, config=parts.config)
        if not cfg.phases:
            log.info("train_teacher: no phases configured; the base model is the teacher")
            return commit_checkpoint(ctx, writer, STAGE, t0, mlrun, model_dir=None, phase="base", steps=0,
                                     metrics={}, **common)
        rows = [r for r in iter_rows(ctx, problems) if r["split"] == "train"][: cfg.max_problems]
        work = work_dir(ctx, parts.key())
        model_dir, steps, metrics = _train(ctx, cfg, rows, base.path, student.path, work, mlrun)
        ref = commit_checkpoint(ctx, writer, STAGE, t0, mlrun, model_dir=model_dir, phase="+".join(cfg.phases),
                                steps=steps, metrics=metrics, **common)
        log.info("train_teacher: %d steps -> checkpoint %s", steps, ref.key)
    return ref


def _train(ctx: RunContext, cfg: TrainTeacherConfig, rows: list[dict], base_path: str, student_path: str,
           work: str, mlrun: str) -> tuple[str, int, dict]:
    from rlt_core.training.grpo import train_teacher_grpo
    from rlt_core.training.sft_teacher import train_teacher_sft

    log_metric = ctx.tracker.metric_logger(mlrun)
    model_path, steps, metrics = base_path, 0, {}
    if "sft" in cfg.phases:
        model = fresh_model(model_path, cfg.dtype)
        _, tok = model_and_tokenizer(model_path, cfg.dtype, padding_side="right")
        res = train_teacher_sft(model, tok, rows, cfg.sft, os.path.join(work, "sft"), log_metric=log_metric)
        model_path, steps = res.model_dir, steps + res.steps
        metrics["sft_final_loss"] = res.final_loss
        del model
    if "grpo" in cfg.phases:
        policy = fresh_model(model_path, cfg.dtype)
        student, tok = model_and_tokenizer(student_path, cfg.dtype)
        res = train_teacher_grpo(policy, student, tok, rows, cfg.grpo, cfg.reward, os.path.join(work, "grpo"),
                                 log_metric=log_metric, log_text=ctx.tracker.text_logger(mlrun))
        model_path, steps = res.model_dir, steps + res.steps
        metrics["grpo_final_loss"] = res.final_loss
    return model_path, steps, metrics
