"""scored_explanations: the reward ledger, every RLT reward term per explanation (output of score)."""
import math
from typing import Optional

from pydantic import Field, field_validator

from data_contracts.base import RowModel, make_contract

SCHEMA_VERSION = 2   # 2: reused_from (incremental nights, infra/engine/reuse.py)


class ScoredExplanation(RowModel):
    explanation_id: str = Field(min_length=8)
    problem_id: str = Field(min_length=8)
    sample_index: int = Field(ge=0)
    reward: float
    r_ss: float
    r_kl: float
    answer_logprob_mean: float
    answer_logprob_min: float
    kl_mean: float
    kl_max: float
    format_penalty: float = Field(le=0)
    n_explanation_tokens: int = Field(ge=0)
    n_solution_tokens: int = Field(ge=0)
    coef_answer_mean: float
    coef_answer_min: float
    coef_kl_mean: float
    coef_kl_max: float
    teacher_temperature: float = Field(gt=0)
    student_temperature: float = Field(gt=0)
    teacher_digest: str
    student_digest: str
    reward_config_digest: str
    reused_from: Optional[str] = Field(default=None, description="artifact key this row was computed in, when copied "
                                       "from an earlier night (infra/engine/reuse.py); None: computed by this "
                                       "artifact's run")

    @field_validator("reward", "r_ss", "r_kl")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("a finite number")
        return v


EXAMPLE = dict(explanation_id="e_0123456789abcdef", problem_id="p_0123456789abcdef", sample_index=0,
               reward=-1.2, r_ss=-0.5, r_kl=0.7, answer_logprob_mean=-0.45, answer_logprob_min=-5.0,
               kl_mean=0.2, kl_max=3.3, format_penalty=0.0, n_explanation_tokens=21, n_solution_tokens=9,
               coef_answer_mean=1.0, coef_answer_min=0.01, coef_kl_mean=3.0, coef_kl_max=0.03,
               teacher_temperature=0.7, student_temperature=0.7, teacher_digest="cd" * 8,
               student_digest="ab" * 8, reward_config_digest="12" * 8)
CONTRACT = make_contract("scored_explanations", SCHEMA_VERSION, ScoredExplanation, EXAMPLE,
                         "reward ledger: every RLT reward term per explanation",
                         layer="07_model_output", id_col="explanation_id", kind="reward_row",
                         parent=("explanation_id", "explanation"))
SCHEMA = CONTRACT.schema
validate = CONTRACT.validate
