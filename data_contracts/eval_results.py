"""eval_results: one row per (benchmark problem, sample), keyed by the evaluation contract."""
from typing import Optional

from pydantic import Field

from data_contracts.base import RowModel, make_contract

SCHEMA_VERSION = 1


class EvalSample(RowModel):
    eval_key: str = Field(min_length=8, description="hash of the evaluation contract")
    benchmark: str
    item_id: str
    sample_index: int = Field(ge=0)
    seed: int
    prompt: str
    response: str
    extracted: Optional[str] = None
    reference: str
    correct: bool
    grader: str = Field(description="grader name@version")
    completion_tokens: int = Field(ge=0)


EXAMPLE = dict(eval_key="ee" * 8, benchmark="countdown-heldout", item_id="p_0123456789abcdef", sample_index=0,
               seed=41, prompt="Return your final response within \\boxed{}. ...", response="... \\boxed{3*5+7}",
               extracted="3*5+7", reference="22", correct=True, grader="countdown@1", completion_tokens=40)
CONTRACT = make_contract("eval_results", SCHEMA_VERSION, EvalSample, EXAMPLE,
                         "per-sample evaluation results",
                         layer="08_reporting", order=("benchmark", "item_id", "sample_index"))
SCHEMA = CONTRACT.schema
validate = CONTRACT.validate
