"""distill_set: student-format SFT rows (ShareGPT layout: system + user question + assistant)."""
from typing import Literal, Optional

from pydantic import Field

from data_contracts.base import RowModel, make_contract

SCHEMA_VERSION = 1


class DistillRow(RowModel):
    example_id: str = Field(min_length=8)
    problem_id: str = Field(min_length=8)
    explanation_id: Optional[str] = None
    origin: Literal["teacher", "reference"]
    system: str = Field(min_length=1)
    question: str = Field(min_length=1)
    assistant: str = Field(min_length=1,
                           description="<|begin_of_thought|>...<|end_of_thought|>\\n\\n<|begin_of_solution|>...")
    reward: Optional[float] = None


EXAMPLE = dict(example_id="d_0123456789abcdef", problem_id="p_0123456789abcdef",
               explanation_id="e_0123456789abcdef", origin="teacher", system="Your role as an assistant ...",
               question="Using the numbers [3, 5, 7], create an equation that equals 22.",
               assistant="<|begin_of_thought|>\n\n3*5+7=22\n\n<|end_of_thought|>\n\n"
                         "<|begin_of_solution|>\n\n3 * 5 + 7 = 22\n\n<|end_of_solution|>", reward=-1.2)
CONTRACT = make_contract("distill_set", SCHEMA_VERSION, DistillRow, EXAMPLE,
                         "student SFT rows",
                         layer="05_model_input", id_col="example_id", kind="distill_row",
                         parent=("explanation_id", "explanation"))
SCHEMA = CONTRACT.schema
validate = CONTRACT.validate
