"""distill: distill set -> student checkpoint (TRL SFT in the student format, loss on the assistant turn)."""
from __future__ import annotations

import os
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from data_contracts import student_checkpoint
from infra.models import resolve_model
from rlt_core.training.distill import DistillConfig
from tasks.models import fresh_model, model_and_tokenizer
from tasks.stage import Output, Stage, StageRun


class DistillStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    student_model: str = "builtin:smollm2-135m-instruct"
    train: DistillConfig = Field(default_factory=DistillConfig)
    max_rows: Optional[int] = Field(default=None, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"


def distill(run: StageRun) -> dict:
    """Supervised fine-tuning of the student on the kept explanations (SkyThought recipe, TRL as-is)."""
    from rlt_core.training.distill import distill_student

    cfg: DistillStageConfig = run.cfg
    base = resolve_model(cfg.student_model)
    rows = list(run.rows("distill_set", ["system", "question", "assistant"]))[: cfg.max_rows]
    if not rows:
        raise ValueError(f"distill: distill set {run.ref('distill_set').key} is empty; nothing to train on")
    model = fresh_model(base.path, cfg.dtype)
    _, tok = model_and_tokenizer(base.path, cfg.dtype, padding_side="right")
    res = distill_student(model, tok, rows, cfg.train, os.path.join(run.work_dir(), "sft"),
                          log_metric=run.metric_logger())
    run.count_tokens(**res.tokens)   # what the trainer counted (TrainResult)
    run.save_checkpoint(res.model_dir, dict(
        role="student", base_model=cfg.student_model, base_digest=base.digest, phase="distill", steps=res.steps,
        data_keys=[run.ref("distill_set").key], student_key=None, config_json=run.parts.config,
        metrics_json={"final_loss": res.final_loss, "rows": len(rows)}))
    run.log.info("distill: %d steps on %d rows", res.steps, len(rows))
    return {"steps": res.steps, "final_loss": res.final_loss, "rows": len(rows)}


# version 2: training rows are read in example_id order from the catalog (was: part order)
STAGE = Stage(
    name="distill", version="2", config=DistillStageConfig, inputs=("distill_set",),
    outputs=(Output("student_checkpoint", student_checkpoint.CONTRACT),), body=distill,
    models=lambda cfg: {"student_base": cfg.student_model})


def run(ctx, cfg: DistillStageConfig, distill_set):
    """Run the stage outside a flow (tests, notebooks)."""
    from tasks.runner import execute

    return execute(STAGE, ctx, cfg, {"distill_set": distill_set})["student_checkpoint"]
