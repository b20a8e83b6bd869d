"""filter_decisions: kept or dropped, with the reason, for every scored explanation."""
from typing import Optional

from pydantic import Field

from data_contracts.base import RowModel, make_contract

SCHEMA_VERSION = 1


class FilterDecision(RowModel):
    problem_id: str = Field(min_length=8)
    explanation_id: Optional[str] = Field(default=None, description="None for a reference-trace fallback row")
    sample_index: int = Field(ge=-1, description="-1 for the reference trace")
    kept: bool
    rank: int = Field(ge=0, description="rank of this candidate by reward within its problem (0 = best)")
    reason: str = Field(min_length=1)
    reward: Optional[float] = None
    rules_digest: str


EXAMPLE = dict(problem_id="p_0123456789abcdef", explanation_id="e_0123456789abcdef", sample_index=0,
               kept=True, rank=0, reason="best_of_k", reward=-1.2, rules_digest="34" * 8)
CONTRACT = make_contract("filter_decisions", SCHEMA_VERSION, FilterDecision, EXAMPLE,
                         "every kept and dropped candidate with its reason",
                         layer="07_model_output", order=("problem_id", "rank", "explanation_id"))
SCHEMA = CONTRACT.schema
validate = CONTRACT.validate
