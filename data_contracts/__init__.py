"""Schemas of every artifact the factory writes. Imports only pydantic and pyarrow."""
from data_contracts.artifact import ArtifactRef
from data_contracts.base import Contract, ContractError, RowError


def registry() -> dict[str, Contract]:
    """Every artifact contract by name."""
    from data_contracts import (
        distill_set,
        eval_results,
        explanations,
        filter_decisions,
        problems,
        quarantine,
        scored_explanations,
        student_checkpoint,
        teacher_checkpoint,
    )

    mods = (problems, quarantine, teacher_checkpoint, explanations, scored_explanations, filter_decisions,
            distill_set, student_checkpoint, eval_results)
    return {m.CONTRACT.name: m.CONTRACT for m in mods}


__all__ = ["ArtifactRef", "Contract", "ContractError", "RowError", "registry"]
