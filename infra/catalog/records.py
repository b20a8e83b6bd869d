"""The vocabulary the artifact writers and the lake share, below both: where an artifact's files go (its layer), the
column that tags lake rows with their artifact, what one output's commit carries, and whether a data root still
holds a manifest from before the catalog."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from data_contracts import Contract, registry
from infra.catalog.store import Store

ARTIFACT_COL = "artifact_key"    # every row of lake.data.<artifact> says which artifact it belongs to
OTHER_LAYER = "09_other"         # artifacts without a contract or a layer of their own
REPORT_LAYER = "08_reporting"    # the run report (HTML and PNGs: no table, no contract)
LEGACY = "_manifest"             # the pre-catalog manifest folder (infra/catalog/legacy.py imports it)
LEGACY_MARKER = f"{LEGACY}/IMPORTED"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def layer_of(contract: Contract | None, layer: str | None = None) -> str:
    """The store folder of an artifact: its contract's layer, else the one given, else ``09_other``."""
    return contract.layer if contract is not None else (layer or OTHER_LAYER)


def data_folders() -> list[str]:
    """Every folder of a data root that holds artifact files (what a read-only query may read), sorted."""
    return sorted({c.layer for c in registry().values()} | {REPORT_LAYER, OTHER_LAYER})


def legacy_state(store: Store) -> str:
    """'none' (no old manifest), 'pending' (not imported yet) or 'imported'."""
    if not store.exists(store.path(LEGACY, "artifacts")):
        return "none"
    return "imported" if store.exists(store.path(LEGACY_MARKER)) else "pending"


@dataclass
class OutputCommit:
    """One artifact to commit: its record, the parquet parts of its data (if tabular) and its lineage."""

    record: dict[str, Any]
    table: str | None = None
    parts: list[str] = field(default_factory=list)
    schema: pa.Schema | None = None
    lineage: list[dict[str, Any]] = field(default_factory=list)
    provenance: tuple[str, str, str | None, str | None] | None = None   # id col, kind, parent col, parent kind
