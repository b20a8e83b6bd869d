"""explanations: teacher completions, K per problem (output of generate)."""
from typing import Literal, Optional

from pydantic import Field

from data_contracts.base import RowModel, make_contract

SCHEMA_VERSION = 2   # 2: reused_from (incremental nights, infra/engine/reuse.py)


class Explanation(RowModel):
    explanation_id: str = Field(min_length=8, description="hash of (problem_id, sample_index, gen_config_digest)")
    problem_id: str = Field(min_length=8)
    sample_index: int = Field(ge=0)
    question: str
    solution: str
    completion: str = Field(description="raw teacher text after '<|begin_of_explanation|>\\n\\n'")
    teacher_digest: str
    gen_config_digest: str
    seed: int
    temperature: float = Field(ge=0)
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(gt=0)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    finish_reason: Literal["stop", "length"]
    latency_s: float = Field(ge=0)
    backend: str
    reused_from: Optional[str] = Field(default=None, description="artifact key this row was computed in, when copied "
                                       "from an earlier night (infra/engine/reuse.py); None: computed by this "
                                       "artifact's run")


EXAMPLE = dict(explanation_id="e_0123456789abcdef", problem_id="p_0123456789abcdef", sample_index=0,
               question="Using the numbers [3, 5, 7], create an equation that equals 22.",
               solution="3 * 5 + 7 = 22",
               completion="We need 22. 3*5 = 15 and 15 + 7 = 22.\n\n<|end_of_explanation|>",
               teacher_digest="cd" * 8, gen_config_digest="ef" * 8, seed=1234, temperature=0.7, top_p=1.0,
               max_new_tokens=256, prompt_tokens=420, completion_tokens=21, finish_reason="stop",
               latency_s=0.8, backend="hf")
CONTRACT = make_contract("explanations", SCHEMA_VERSION, Explanation, EXAMPLE,
                         "teacher explanations",
                         layer="07_model_output", id_col="explanation_id", kind="explanation",
                         parent=("problem_id", "problem"))
SCHEMA = CONTRACT.schema
validate = CONTRACT.validate
