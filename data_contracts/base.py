"""Shared machinery for artifact contracts.

A contract is: a name, a schema version, a pyarrow schema, a frozen pydantic row model and an
example row; and what the rest of the factory needs to know about its rows, said once here: the id column, the
order rows are streamed in (shards are cut from it), the provenance kind of a row and its parent (the lineage of
one example: problem -> explanation -> reward row -> distill row) and the storage layer. ``Contract.validate``
returns row-level errors (row index, field, what was expected) instead of raising, so a stage can quarantine bad
rows and keep the good ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, cast

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError

from data_contracts.errors import ExpectedError


class RowModel(BaseModel):
    """Base of every row model: immutable, unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


@dataclass(frozen=True)
class RowError:
    """One problem with one row: which row, which field, what was expected, what was found."""

    row: int
    field: str
    expected: str
    got: str = ""

    def __str__(self) -> str:
        got = f" (got {self.got})" if self.got else ""
        return f"row {self.row}: field '{self.field}': expected {self.expected}{got}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Contract:
    """The schema of one artifact kind."""

    name: str
    version: int
    schema: pa.Schema
    row_model: type[RowModel]
    example: Mapping[str, Any]
    description: str = ""
    layer: str = "09_other"                 # the store folder (Kedro-style layers: 03_primary, 07_model_output...)
    id_col: str | None = None               # one id per row (a content address), None: rows have no id of their own
    order: tuple[str, ...] = ()             # the deterministic order rows are streamed in (default: id_col)
    kind: str | None = None                 # provenance kind of a row ("problem", "explanation"...); None: not traced
    parent: tuple[str, str] | None = None   # (column holding the parent row's id, the parent's kind)

    @property
    def schema_version(self) -> str:
        return f"{self.name}/v{self.version}"

    @property
    def order_by(self) -> str | None:
        """The ORDER BY clause rows are streamed in (``None``: no defined order)."""
        cols = self.order or ((self.id_col,) if self.id_col else ())
        return ", ".join(cols) or None

    @property
    def provenance(self) -> tuple[str, str, str | None, str | None] | None:
        """(id column, kind, parent id column, parent kind) of the rows the catalog traces, else None."""
        if not (self.kind and self.id_col):
            return None
        parent_col, parent_kind = self.parent or (None, None)
        return self.id_col, self.kind, parent_col, parent_kind

    def rows(self, data: pa.Table | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(data, pa.Table):
            return cast(list[dict[str, Any]], data.to_pylist())

        return [dict(r) for r in data]

    def validate(self, data: pa.Table | Iterable[Mapping[str, Any]]) -> list[RowError]:
        """Check every row; return all errors (empty list = valid)."""
        errors: list[RowError] = []
        if isinstance(data, pa.Table):
            missing = [f.name for f in self.schema if f.name not in data.column_names]
            for name in missing:
                errors.append(RowError(-1, name, f"column of type {self.schema.field(name).type}", "missing column"))
            if missing:
                return errors
        for i, row in enumerate(self.rows(data)):
            errors.extend(self.validate_row(row, i))
        return errors

    def validate_row(self, row: Mapping[str, Any], index: int = 0) -> list[RowError]:
        try:
            self.row_model.model_validate(dict(row))
        except ValidationError as exc:
            out = []
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "<row>"
                got = "" if err["type"] == "missing" else _short(err.get("input"))
                out.append(RowError(index, field, err["msg"].removeprefix("Value error, "), got))
            return out
        return []

    def to_table(self, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
        """Build a table in the contract's schema (column order and types enforced)."""
        rows = list(rows)
        cols = {f.name: [r.get(f.name) for r in rows] for f in self.schema}
        return pa.Table.from_pydict(cols, schema=self.schema)

    def check(self, data: pa.Table | Iterable[Mapping[str, Any]]) -> None:
        """Raise ContractError listing the first errors if anything is invalid."""
        errors = self.validate(data)
        if errors:
            raise ContractError(self.schema_version, errors)


class ContractError(ExpectedError, ValueError):
    def __init__(self, contract: str, errors: list[RowError]):
        self.errors = errors
        head = "; ".join(str(e) for e in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{contract}: {len(errors)} invalid value(s): {head}{more}")


_ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """Map a row-model annotation to (arrow type, nullable)."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner, _ = _arrow_type(args[0])
        return inner, True
    if origin is typing.Literal:
        return _ARROW_TYPES[type(typing.get_args(annotation)[0])], False
    if origin in (list, tuple):
        inner, _ = _arrow_type(typing.get_args(annotation)[0])
        return pa.list_(inner), False
    if annotation in _ARROW_TYPES:
        return _ARROW_TYPES[annotation], False
    raise TypeError(f"no arrow type for {annotation!r}")


def schema_from_model(model: type[RowModel]) -> pa.Schema:
    """The pyarrow schema of a row model (one source of truth for both)."""
    fields = []
    for name, info in model.model_fields.items():
        typ, nullable = _arrow_type(info.annotation)
        fields.append(pa.field(name, typ, nullable=nullable))
    return pa.schema(fields)


def make_contract(name: str, version: int, row_model: type[RowModel], example: Mapping[str, Any],
                  description: str = "", **facts: Any) -> Contract:
    """A contract whose schema is derived from ``row_model``; ``facts``: layer, id_col, order, kind, parent."""
    contract = Contract(name, version, schema_from_model(row_model), row_model, example, description, **facts)
    for col in (*contract.order, *([contract.id_col] if contract.id_col else []),
                *([contract.parent[0]] if contract.parent else [])):
        if col not in contract.schema.names:
            raise ValueError(f"contract {name}: {col!r} is not a column of its schema")
    return contract
