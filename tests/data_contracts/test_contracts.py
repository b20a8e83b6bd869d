"""Every contract: the example row is valid, each kind of bad row is reported with row and field."""
import math

import pyarrow as pa
import pytest

from data_contracts import ArtifactRef, ContractError, registry

CONTRACTS = registry()


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_example_row_is_valid_and_round_trips(name):
    c = CONTRACTS[name]
    assert c.validate([c.example]) == []
    table = c.to_table([c.example])
    assert table.schema.equals(c.schema)
    assert c.validate(table) == []
    assert c.schema_version == f"{name}/v{c.version}"


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_missing_required_field_is_reported_with_row_and_field(name):
    c = CONTRACTS[name]
    required = [n for n, f in c.row_model.model_fields.items() if f.is_required()]
    assert required, name
    bad = dict(c.example)
    del bad[required[0]]
    errors = c.validate([c.example, bad])
    assert len(errors) == 1
    assert errors[0].row == 1 and errors[0].field == required[0]
    assert "required" in errors[0].expected.lower()


def test_wrong_type_and_constraint_errors_name_the_field():
    c = CONTRACTS["problems"]
    rows = [dict(c.example, source_row="seven"), dict(c.example, question="   "), dict(c.example, split="dev")]
    errors = c.validate(rows)
    assert [(e.row, e.field) for e in errors] == [(0, "source_row"), (1, "question"), (2, "split")]
    assert "non-blank" in errors[1].expected
    assert "'train'" in errors[2].expected and errors[2].got == "'dev'"
    assert "row 2: field 'split'" in str(errors[2])


def test_unknown_field_and_non_finite_reward_are_errors():
    c = CONTRACTS["scored_explanations"]
    errors = c.validate([dict(c.example, extra=1), dict(c.example, reward=math.nan)])
    assert {(e.row, e.field) for e in errors} == {(0, "extra"), (1, "reward")}


def test_missing_column_in_a_table_is_reported():
    c = CONTRACTS["explanations"]
    table = c.to_table([c.example]).drop_columns(["seed"])
    errors = c.validate(table)
    assert errors and errors[0].field == "seed" and errors[0].row == -1


def test_check_raises_with_a_readable_message():
    c = CONTRACTS["distill_set"]
    with pytest.raises(ContractError, match=r"row 0: field 'origin'"):
        c.check([dict(c.example, origin="gpt")])


def test_schema_types_follow_the_row_model():
    s = CONTRACTS["teacher_checkpoint"].schema
    assert s.field("files").type == pa.list_(pa.string())
    assert s.field("student_key").nullable and not s.field("digest").nullable
    assert CONTRACTS["filter_decisions"].schema.field("kept").type == pa.bool_()


def test_artifact_ref_is_frozen_and_strict():
    ref = ArtifactRef(name="problems", uri="/x", key="k" * 20, schema_version="problems/v1", producer="ingest@1",
                      config_hash="c" * 16, parents=("a",))
    with pytest.raises(Exception):
        ArtifactRef(**ref.model_dump(), bogus=1)
    with pytest.raises(Exception):
        ref.key = "other"  # type: ignore[misc]
