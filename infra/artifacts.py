"""Content-addressed artifact keys and the commit protocol.

Key = sha256 over (stage, stage version, resolved config, input artifact keys, model digests). Same key =
same bytes = nothing to recompute. Commit protocol: parts first, then one manifest record listing them;
a reader resolves an artifact through its manifest record only, so a crash never exposes half of one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from data_contracts import ArtifactRef, Contract
from infra.manifest import Manifest, now
from infra.settings import redact
from infra.storage import Store

log = logging.getLogger(__name__)

LAYERS = {
    "problems": "03_primary", "quarantine": "02_quarantine", "teacher_checkpoint": "06_models",
    "explanations": "07_model_output", "scored_explanations": "07_model_output",
    "filter_decisions": "07_model_output", "distill_set": "05_model_input", "student_checkpoint": "06_models",
    "eval_results": "08_reporting", "report": "08_reporting",
}


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


@dataclass(frozen=True)
class KeyParts:
    """Everything an artifact's identity depends on; ``rlt plan`` diffs these part by part."""

    stage: str
    stage_version: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)   # role -> artifact key
    models: dict[str, str] = field(default_factory=dict)   # role -> model digest

    def key(self) -> str:
        return digest({"stage": self.stage, "version": self.stage_version, "config": self.config,
                       "inputs": self.inputs, "models": self.models}, 20)

    def config_hash(self) -> str:
        return digest(self.config)


class ArtifactWriter:
    """Writes the parts of one artifact, then commits it with a single manifest record."""

    def __init__(self, store: Store, manifest: Manifest, name: str, parts: KeyParts, run_id: str = "",
                 contract: Contract | None = None, key: str | None = None):
        self.store, self.manifest, self.name, self.parts = store, manifest, name, parts
        self.key = key or parts.key()
        self.run_id = run_id
        self.contract = contract
        self.uri = store.path(LAYERS.get(name, "09_other"), name, self.key)
        self.files: list[str] = []
        self.num_rows = 0

    def write_part(self, table: pa.Table, shard: str = "0") -> str:
        """Write one parquet part (validated against the contract's schema) and remember it."""
        if self.contract is not None:
            table = table.select(self.contract.schema.names).cast(self.contract.schema)
        path = f"{self.uri}/part-{shard}-{uuid.uuid4().hex[:10]}.parquet"
        self.store.write_parquet(path, table)
        self.add_files([path], table.num_rows)
        return path

    def add_files(self, paths: list[str], num_rows: int = 0) -> None:
        self.files.extend(self.store.rel(p) for p in paths)
        self.num_rows += num_rows

    def commit(self, stats: dict[str, Any] | None = None) -> ArtifactRef:
        schema_version = self.contract.schema_version if self.contract else f"{self.name}/v1"
        record = dict(key=self.key, name=self.name, uri=self.uri, schema_version=schema_version,
                      producer=f"{self.parts.stage}@{self.parts.stage_version}", stage=self.parts.stage,
                      stage_version=self.parts.stage_version, config_hash=self.parts.config_hash(),
                      config_json=canonical_json(redact(self.parts.config)),
                      inputs_json=canonical_json(self.parts.inputs), models_json=canonical_json(self.parts.models),
                      parents=sorted(set(self.parts.inputs.values())), files=list(self.files),
                      num_rows=self.num_rows, stats_json=canonical_json(stats or {}), run_id=self.run_id, ts=now())
        # lineage edges first, the artifact record last: the record is the commit point
        self.manifest.append("lineage", [dict(child_key=self.key, parent_key=k, role=role, run_id=self.run_id)
                                         for role, k in sorted(self.parts.inputs.items())])
        self.manifest.append("artifacts", [record])
        log.info("committed %s %s (%d rows, %d files)", self.name, self.key, self.num_rows, len(self.files))
        return ref_from_record(record)


def ref_from_record(r: dict) -> ArtifactRef:
    return ArtifactRef(name=r["name"], uri=r["uri"], key=r["key"], schema_version=r["schema_version"],
                       producer=r["producer"], config_hash=r["config_hash"], parents=tuple(r["parents"] or ()),
                       num_rows=int(r["num_rows"] or 0), run_id=r["run_id"] or "", created_at=str(r["ts"]))


def find(manifest: Manifest, key: str) -> ArtifactRef | None:
    rec = manifest.artifact(key)
    return ref_from_record(rec) if rec else None


def part_paths(store: Store, manifest: Manifest, ref: ArtifactRef) -> list[str]:
    rec = manifest.artifact(ref.key)
    if rec is None:
        raise KeyError(f"artifact {ref.key} ({ref.name}) is not committed in {store.root}")
    return [store.path(f) for f in rec["files"] if f.endswith(".parquet")]


def load_table(store: Store, manifest: Manifest, ref: ArtifactRef, contract: Contract | None = None) -> pa.Table:
    table = store.read_parquets(part_paths(store, manifest, ref), contract.schema if contract else None)
    return table
