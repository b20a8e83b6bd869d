"""One-off import of a data root written before the catalog (append-only parquet relations in ``_manifest/``).

Every record and every tabular artifact's rows go into the catalog in ONE transaction (all or nothing); the old
parts lack the ``artifact_key`` column, so their rows are copied into the lake rather than registered. Keys are
kept, so a recipe whose keys did not change reuses the imported artifacts. Afterwards ``_manifest/IMPORTED``
marks the folder as done; the old files stay where they are (checkpoints are still read from them).
"""
from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa

from data_contracts import Contract, registry
from infra.catalog.lake import RELATIONS, Catalog, CatalogError
from infra.catalog.records import ARTIFACT_COL, LEGACY, LEGACY_MARKER, OutputCommit, legacy_state  # noqa: F401
from infra.catalog.store import Store

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)

MARKER = LEGACY_MARKER


def _relation(store: Store, name: str) -> list[dict[str, Any]]:
    files = [p for p in store.ls(store.path(LEGACY, name)) if p.endswith(".parquet")]
    if not files:
        return []
    table = pa.concat_tables([store.read_parquet(f) for f in files], promote_options="permissive")
    return cast(list[dict[str, Any]], table.to_pylist())


def import_manifest(store: Store, url: str | None = None) -> dict[str, Any]:
    """Copy ``_manifest/`` into the catalog; returns counts. Refuses to import twice."""
    state = legacy_state(store)
    if state == "none":
        raise CatalogError(f"{store.root}: no {LEGACY}/ folder, nothing to import")
    if state == "imported":
        raise CatalogError(f"{store.root}: {LEGACY}/ was imported already ({store.path(MARKER)})")
    t0 = time.time()
    cat = Catalog(store, url, allow_legacy=True)
    rel = {name: _relation(store, name) for name in ("runs", "artifacts", "lineage", "shards", "provenance",
                                                      "stage_runs")}
    arts: dict[str, dict[str, Any]] = {}
    for a in sorted(rel["artifacts"], key=lambda r: r["ts"]):
        arts.setdefault(a["key"], a)    # first commit wins, as the old artifacts_committed view said
    contracts = registry()
    counts = {k: len(v) for k, v in rel.items()}
    with cat.transaction("import legacy manifest") as con:
        existing = {r[0] for r in con.execute("SELECT key FROM lake.main.artifacts").fetchall()}
        rows_copied = 0
        for key, a in arts.items():
            if key in existing:
                continue
            stats = json.loads(a.get("stats_json") or "{}")
            ck = stats.get("checkpoint") or {}
            a = dict(a, label=stats.get("label") or "", digest=ck.get("digest") or stats.get("digest") or "")
            parts = [store.path(f) for f in a["files"] or [] if f.endswith(".parquet")]
            contract = contracts.get(a["name"])
            if contract is not None and parts:
                rows_copied += _copy_rows(cat, con, a, contract, parts)
            Catalog._insert(con, "artifacts", [{k: a.get(k) for k in _cols("artifacts")}])
        for name in ("runs", "lineage", "shards", "provenance", "stage_runs"):
            if rel[name]:
                Catalog._insert(con, name, [{k: r.get(k) for k in _cols(name)} for r in rel[name]])
    store.write_bytes(store.path(MARKER), json.dumps({"imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                      "counts": counts}).encode())
    out = {"artifacts": len(arts), "rows_copied": rows_copied, **{f"records.{k}": v for k, v in counts.items()},
           "seconds": round(time.time() - t0, 2)}
    log.info("imported %s: %s", store.path(LEGACY), out)
    return out


def _cols(relation: str) -> list[str]:
    return [c.strip().split(" ")[0] for c in RELATIONS[relation].split(", ")]


def _copy_rows(cat: Catalog, con: duckdb.DuckDBPyConnection, a: dict[str, Any], contract: Contract,
               parts: list[str]) -> int:

    schema = contract.schema.append(pa.field(ARTIFACT_COL, pa.string()))
    spec = OutputCommit(record=a, table=a["name"], parts=[], schema=schema)
    cat._ensure_table(con, spec)
    cols = ", ".join(f'"{n}"' for n in contract.schema.names if n)
    con.execute(f"INSERT INTO lake.data.{a['name']} ({cols}, {ARTIFACT_COL}) SELECT {cols}, ? "
                f"FROM read_parquet(?, union_by_name => true)", [a["key"], parts])
    return int(cast("tuple[Any, ...]", con.execute(   # an aggregate: always one row
        f"SELECT count(*) FROM lake.data.{a['name']} WHERE {ARTIFACT_COL} = ?", [a["key"]]).fetchone())[0])
