"""distill: distill set -> student checkpoint (TRL SFT in the student format, loss on the assistant turn)."""
from __future__ import annotations

import os
import time
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from data_contracts import ArtifactRef, student_checkpoint
from infra.artifacts import ArtifactWriter, KeyParts
from infra.models import resolve_model
from rlt_core.training.distill import DistillConfig
from tasks.checkpoints import commit_checkpoint
from tasks.common import RunContext, cached, iter_rows, logger, stage_run
from tasks.models import fresh_model, model_and_tokenizer

STAGE = "distill"
STAGE_VERSION = "1"


class DistillStageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    student_model: str = "builtin:smollm2-135m-instruct"
    train: DistillConfig = Field(default_factory=DistillConfig)
    max_rows: Optional[int] = Field(default=None, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"


def key_parts(cfg: DistillStageConfig, distill_key: str, student_digest: str) -> KeyParts:
    return KeyParts(STAGE, STAGE_VERSION, cfg.model_dump(mode="json"), inputs={"distill_set": distill_key},
                    models={"student_base": student_digest})


def run(ctx: RunContext, cfg: DistillStageConfig, distill_set: ArtifactRef) -> ArtifactRef:
    from rlt_core.training.distill import distill_student
    from tasks.train_teacher import work_dir

    base = resolve_model(cfg.student_model)
    parts = key_parts(cfg, distill_set.key, base.digest)
    if (hit := cached(ctx, STAGE, parts.key())) is not None:
        return hit
    log, t0 = logger(), time.time()
    with stage_run(ctx, STAGE, parts) as mlrun:
        rows = list(iter_rows(ctx, distill_set))[: cfg.max_rows]
        if not rows:
            raise ValueError(f"distill: distill set {distill_set.key} is empty; nothing to train on")
        model = fresh_model(base.path, cfg.dtype)
        _, tok = model_and_tokenizer(base.path, cfg.dtype, padding_side="right")
        work = work_dir(ctx, parts.key()).replace("/train_teacher/", "/distill/")
        res = distill_student(model, tok, rows, cfg.train, os.path.join(work, "sft"),
                              log_metric=ctx.tracker.metric_logger(mlrun))
        writer = ArtifactWriter(ctx.store, ctx.manifest, "student_checkpoint", parts, ctx.run_id,
                                student_checkpoint.CONTRACT)
        ref = commit_checkpoint(ctx, writer, STAGE, t0, mlrun, role="student", model_dir=res.model_dir,
                                base_ref=cfg.student_model, base_digest=base.digest, phase="distill",
                                steps=res.steps, data_keys=[distill_set.key], student_key=None,
                                config=parts.config, metrics={"final_loss": res.final_loss, "rows": len(rows)})
        log.info("distill: %d steps on %d rows -> student %s", res.steps, len(rows), ref.key)
    return ref
