"""teacher_checkpoint / student_checkpoint: a model snapshot stored as safetensors.

The artifact folder holds the HF model files (``model.safetensors``, config, tokenizer); its
single manifest row describes them.
"""
from typing import Literal, Optional

from pydantic import Field

from data_contracts.base import RowModel, make_contract

SCHEMA_VERSION = 1


class Checkpoint(RowModel):
    role: Literal["teacher", "student"]
    base_model: str = Field(min_length=1, description="model reference it was trained from")
    base_digest: str
    digest: str = Field(min_length=8, description="sha256 over the weight files")
    files: list[str] = Field(default_factory=list,
                             description="weight files; empty for phase 'base' (base model as-is)")
    phase: str = Field(description="sft, grpo, sft+grpo, distill or base")
    steps: int = Field(ge=0)
    data_keys: list[str] = Field(default_factory=list, description="artifact keys of the training data")
    student_key: Optional[str] = Field(default=None, description="reward student (teacher checkpoints)")
    config_json: str = "{}"
    metrics_json: str = "{}"


TEACHER_EXAMPLE = dict(role="teacher", base_model="builtin:smollm2-135m-instruct", base_digest="ab" * 8,
                       digest="cd" * 8, files=["model.safetensors", "config.json"], phase="sft+grpo",
                       steps=4, data_keys=["k" * 16], student_key="builtin:smollm2-135m-instruct",
                       config_json="{}", metrics_json="{}")
STUDENT_EXAMPLE = dict(TEACHER_EXAMPLE, role="student", phase="distill", student_key=None)
TEACHER_CONTRACT = make_contract("teacher_checkpoint", SCHEMA_VERSION, Checkpoint, TEACHER_EXAMPLE,
                                 "RL-trained teacher weights", layer="06_models")
STUDENT_CONTRACT = make_contract("student_checkpoint", SCHEMA_VERSION, Checkpoint, STUDENT_EXAMPLE,
                                 "distilled student weights", layer="06_models")
