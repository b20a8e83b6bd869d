"""quarantine: input rows a stage could not use, each with the reason."""
from pydantic import Field

from data_contracts.base import RowModel, make_contract

SCHEMA_VERSION = 1


class QuarantinedRow(RowModel):
    stage: str = Field(min_length=1)
    source: str
    source_row: int
    reason: str = Field(min_length=1, description="machine-readable reason code, e.g. missing_field")
    field: str = ""
    detail: str = ""
    raw: str = Field(default="", description="the offending row, JSON, truncated to 2000 chars")


EXAMPLE = dict(stage="ingest", source="data.jsonl", source_row=7, reason="empty_field",
               field="solution", detail="solution is empty", raw='{"question": "1+1?", "solution": ""}')
CONTRACT = make_contract("quarantine", SCHEMA_VERSION, QuarantinedRow, EXAMPLE,
                         "unusable rows with reasons",
                         layer="02_quarantine", order=("source_row", "reason"))
SCHEMA = CONTRACT.schema
validate = CONTRACT.validate
