"""distill: distill set -> student checkpoint (TRL SFT in the student format, loss on the assistant turn)."""
from __future__ import annotations

import os
from typing import Annotated, Literal, Optional

import torch
from pydantic import Field, model_validator

from data_contracts import student_checkpoint
from infra.engine import gang
from infra.engine.config import NOT_IN_KEY, KeyModel, StageConfig
from infra.engine.gang import LaunchConfig, check_batch
from infra.engine.models import fresh_model, model_and_tokenizer
from infra.engine.stage import Artifact, StageRun, declare
from infra.models import resolve_model
from rlt_core.training.distill import DistillConfig


class DistillStageConfig(StageConfig):
    student_model: Annotated[str, KeyModel("student_base")] = "builtin:smollm2-135m-instruct"
    train: DistillConfig = Field(default_factory=DistillConfig)
    max_rows: Optional[int] = Field(default=None, ge=1)
    dtype: Literal["float32", "bfloat16"] = "float32"
    launch: Annotated[LaunchConfig, NOT_IN_KEY] = Field(
        default_factory=LaunchConfig, description="train as a gang of ranks (infra/engine/gang.py); where and how "
        "wide the training runs, never part of the key: the global batch is")

    @model_validator(mode="after")
    def _batch_fits_the_gang(self) -> "DistillStageConfig":
        check_batch(self.launch, [("distill.train.batch_size", self.train.batch_size,
                                   self.train.per_device_batch_size)])
        return self


def distill(run: StageRun, cfg: DistillStageConfig, distill_set: Artifact) -> dict:
    """Supervised fine-tuning of the student on the kept explanations (SkyThought recipe, TRL as-is)."""
    from rlt_core.training.distill import distill_student

    base = resolve_model(cfg.student_model)
    rows = list(distill_set.rows(["system", "question", "assistant"]))[: cfg.max_rows]
    if not rows:
        raise ValueError(f"distill: distill set {distill_set.key} is empty; nothing to train on")
    if cfg.launch.gang:   # ranks of the training body only (infra/engine/gang.py); the runner stays the owner
        from rlt_core.training.job import DistillPhase

        data = gang.write_rows(os.path.join(run.work_dir(), "rows.jsonl"), rows)
        result = gang.train(run, cfg.launch, [DistillPhase(model=base.path, rows=data, config=cfg.train)], cfg.dtype)
        model_dir, steps, final_loss = result["model_dir"], result["steps"], result["phases"]["distill"]["final_loss"]
        threads, ranks = result["threads_per_rank"], result["ranks"]
    else:
        model = fresh_model(base.path, cfg.dtype)
        _, tok = model_and_tokenizer(base.path, cfg.dtype, padding_side="right")
        res = distill_student(model, tok, rows, cfg.train, os.path.join(run.work_dir(), "sft"),
                              log_metric=run.metric_logger())
        run.count_tokens(**res.tokens)   # what the trainer counted (TrainResult)
        model_dir, steps, final_loss = res.model_dir, res.steps, res.final_loss
        threads, ranks = torch.get_num_threads(), 1   # a checkpoint's bits depend on both (float sums' order)
    run.save_checkpoint(model_dir, dict(
        role="student", base_model=cfg.student_model, base_digest=base.digest, phase="distill", steps=steps,
        data_keys=[distill_set.key], student_key=None, config_json=run.parts.config,
        metrics_json={"final_loss": final_loss, "rows": len(rows), "torch_threads": threads,
                      "ranks": ranks}))
    run.log.info("distill: %d steps on %d rows", steps, len(rows))
    return {"steps": steps, "final_loss": final_loss, "rows": len(rows), "torch_threads": threads, "ranks": ranks}


# version 2: training rows are read in example_id order from the catalog (was: part order)
STAGE = declare(distill, version="2", outputs=(student_checkpoint.CONTRACT,))
