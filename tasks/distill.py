"""distill: distill set -> student checkpoint (TRL SFT in the student format, loss on the assistant turn)."""
from __future__ import annotations

import os
from typing import Annotated, Literal, Optional

from pydantic import Field

from data_contracts import student_checkpoint
from infra.engine.config import KeyModel, StageConfig
from infra.engine.models import fresh_model, model_and_tokenizer
from infra.engine.stage import Artifact, StageRun, declare
from infra.models import resolve_model
from rlt_core.training.distill import DistillConfig


class DistillStageConfig(StageConfig):
    student_model: Annotated[str, KeyModel("student_base")] = "builtin:smollm2-135m-instruct"
    train: DistillConfig = Field(default_factory=DistillConfig)
    max_rows: Optional[int] = Field(default=None, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"


def distill(run: StageRun, cfg: DistillStageConfig, distill_set: Artifact) -> dict:
    """Supervised fine-tuning of the student on the kept explanations (SkyThought recipe, TRL as-is)."""
    from rlt_core.training.distill import distill_student

    base = resolve_model(cfg.student_model)
    rows = list(distill_set.rows(["system", "question", "assistant"]))[: cfg.max_rows]
    if not rows:
        raise ValueError(f"distill: distill set {distill_set.key} is empty; nothing to train on")
    model = fresh_model(base.path, cfg.dtype)
    _, tok = model_and_tokenizer(base.path, cfg.dtype, padding_side="right")
    res = distill_student(model, tok, rows, cfg.train, os.path.join(run.work_dir(), "sft"),
                          log_metric=run.metric_logger())
    run.count_tokens(**res.tokens)   # what the trainer counted (TrainResult)
    run.save_checkpoint(res.model_dir, dict(
        role="student", base_model=cfg.student_model, base_digest=base.digest, phase="distill", steps=res.steps,
        data_keys=[distill_set.key], student_key=None, config_json=run.parts.config,
        metrics_json={"final_loss": res.final_loss, "rows": len(rows)}))
    run.log.info("distill: %d steps on %d rows", res.steps, len(rows))
    return {"steps": res.steps, "final_loss": res.final_loss, "rows": len(rows)}


# version 2: training rows are read in example_id order from the catalog (was: part order)
STAGE = declare(distill, version="2", outputs=(student_checkpoint.CONTRACT,))
