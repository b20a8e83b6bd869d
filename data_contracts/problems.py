"""problems: questions with reference solutions (output of ingest)."""
from typing import Literal, Optional

from pydantic import Field, field_validator

from data_contracts.base import RowModel, make_contract

SCHEMA_VERSION = 1


class Problem(RowModel):
    problem_id: str = Field(min_length=8, description="content hash of the normalised question+solution")
    source: str = Field(min_length=1, description="dataset id, file path or generator name")
    source_row: int = Field(ge=0, description="row index in the source")
    question: str = Field(min_length=1)
    solution: str = Field(min_length=1, description="reference solution text, untagged")
    reasoning_trace: Optional[str] = None
    answer: Optional[str] = Field(default=None, description="final answer for grading, if known")
    split: Literal["train", "heldout"]
    task: str = Field(default="generic", description="problem family: math, countdown, arithmetic, ...")
    meta_json: str = "{}"

    @field_validator("question", "solution")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("non-blank text")
        return v


EXAMPLE = dict(problem_id="p_0123456789abcdef", source="builtin:countdown", source_row=0,
               question="Using the numbers [3, 5, 7], create an equation that equals 22.",
               solution="3 * 5 + 7 = 22", reasoning_trace=None, answer="3 * 5 + 7", split="train",
               task="countdown", meta_json='{"numbers": [3, 5, 7], "target": 22}')
CONTRACT = make_contract("problems", SCHEMA_VERSION, Problem, EXAMPLE,
                         "questions with reference solutions",
                         layer="03_primary", id_col="problem_id", kind="problem")
SCHEMA = CONTRACT.schema
validate = CONTRACT.validate
