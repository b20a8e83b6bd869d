"""Which student the RLT reward reads with (train_teacher's GRPO reward and score's ledger): a model reference, or
the night's baseline student.

The paper's reward student (Bespoke-Stratos-7B) can follow the explanations it reads. The factory's default is
``student_model`` (a model reference: the untrained base student, on embedded defaults); ``reward_student:
baseline`` binds instead the night's ``distill[reference]`` checkpoint, the student distilled on the reference
solutions of the same problems with the night's distill recipe (flows/pipeline.py runs that branch first). Then
the checkpoint's artifact key, not ``student_model``'s digest, is in the stage's key (a new baseline student is a
new teacher and a new ledger), and lineage names it as the stage's ``reward_student`` input.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import Field

from data_contracts.errors import ExpectedError
from infra.engine.config import NOT_IN_KEY, KeyModel, StageConfig
from infra.engine.stage import Model
from infra.models import ModelSnapshot, resolve_model

RewardStudent = Literal["student_model", "baseline"]


class RewardStudentMismatch(ExpectedError, ValueError):
    """``reward_student: baseline`` without the baseline checkpoint bound, or a checkpoint bound without it."""


class RewardStudentConfig(StageConfig):
    """Base of the configs whose stage computes the RLT reward (their stage takes an ``Optional[Model]`` input named
    ``reward_student``). Key dicts are canonical (sorted), so fields declared here keep the keys they had."""

    student_model: Annotated[str, KeyModel("student")] = "builtin:smollm2-135m-instruct"
    # the choice is in the key through what it binds: the checkpoint's key (baseline) or student_model's digest
    reward_student: Annotated[RewardStudent, NOT_IN_KEY] = Field(
        default="student_model", description="the student the RLT reward reads with: `student_model` (a model "
        "reference), or `baseline`: the night's baseline student (distill[reference], distilled on the reference "
        "solutions with the night's distill recipe), a student that can follow worked steps; student_model is then "
        "unused")

    def key_models(self) -> dict[str, str]:
        models = super().key_models()
        if self.reward_student == "baseline":
            models.pop("student", None)   # the bound checkpoint's key stands in the key instead
        return models

    def key_config(self) -> dict[str, Any]:
        cfg = super().key_config()
        if self.reward_student == "baseline":
            cfg.pop("student_model", None)   # unused: changing it must not change the artifact
        return cfg

    def reward_student_snapshot(self, stage: str, bound: Optional[Model]) -> ModelSnapshot:
        """The reward's student as (ref, local path, digest): the bound baseline checkpoint, or ``student_model``."""
        if self.reward_student == "baseline":
            if bound is None:
                raise RewardStudentMismatch(
                    f"{stage}: reward_student is 'baseline' but no baseline student checkpoint is bound; in a recipe "
                    "the factory binds distill[reference]'s checkpoint, by hand pass it as the `reward_student` input")
            return ModelSnapshot(bound.ref, bound.path, bound.digest)
        if bound is not None:
            raise RewardStudentMismatch(f"{stage}: a reward_student checkpoint ({bound.ref}) is bound but "
                                        "reward_student is 'student_model'; set reward_student: baseline to use it")
        return resolve_model(self.student_model)
