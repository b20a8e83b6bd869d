"""Content-addressed artifact keys, and the writer that stages an artifact's files before its catalog commit.

Key = sha256 over (stage, stage version, resolved config, input artifact keys, model digests): same key = same
bytes = nothing to recompute. A writer puts parquet parts (each carrying the artifact key as a column, so the
catalog can prune by it) and checkpoint files on the store; nothing is visible until the catalog commits the
artifact (infra.catalog.lake). Files a run writes outside shards go under a per-run prefix, so two runs never write
the same path and a record can only ever describe the bytes its own run wrote.
"""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pyarrow as pa

from data_contracts import ArtifactRef, Contract
from infra.catalog.records import ARTIFACT_COL, OutputCommit, layer_of, now
from infra.catalog.store import Store
from infra.settings import redact

log = logging.getLogger(__name__)




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
    inputs: dict[str, str] = field(default_factory=dict)   # role -> artifact key (or "model:<ref>")
    models: dict[str, str] = field(default_factory=dict)   # role -> model digest

    def key(self) -> str:
        return digest({"stage": self.stage, "version": self.stage_version, "config": self.config,
                       "inputs": self.inputs, "models": self.models}, 20)

    def config_hash(self) -> str:
        return digest(self.config)


def files_digest(file_digests: Mapping[str, str]) -> str:
    """One digest for a set of files, from each file's own digest (order-free)."""
    return digest(sorted(file_digests.items()), 20)


def secondary_key(primary: str, output: str) -> str:
    """Key of a stage's second (third, ...) output: derived from the primary key, one rule for every stage."""
    return digest({"of": primary, "output": output}, 20)


class ArtifactWriter:
    """Stages one artifact's files on the store and builds its catalog commit."""

    def __init__(self, store: Store, name: str, key: str, parts: KeyParts, run_id: str,
                 contract: Contract | None = None, label: str = "", layer: str | None = None):
        self.store, self.name, self.key, self.parts = store, name, key, parts
        self.run_id, self.contract, self.label = run_id, contract, label
        self.uri = store.path(layer_of(contract, layer), name, key)
        self.run_prefix = f"{self.uri}/runs/{run_id}"
        self.files: list[str] = []          # relative to the store root
        self.file_digests: dict[str, str] = {}   # relative path -> sha256 of its bytes
        self.num_rows = 0
        self.stats: dict[str, Any] = {}
        self.digest = ""

    @property
    def schema(self) -> pa.Schema | None:
        if self.contract is None:
            return None
        return self.contract.schema.append(pa.field(ARTIFACT_COL, pa.string()))

    def table(self, data: pa.Table | Iterable[Mapping[str, Any]]) -> pa.Table:
        """Rows (or a table) in the contract's schema, plus the artifact key column."""
        if self.contract is None:
            raise ValueError(f"{self.name}: no contract, so no tabular parts")
        t = data if isinstance(data, pa.Table) else self.contract.to_table(data)
        t = t.select(self.contract.schema.names).cast(self.contract.schema)
        return t.append_column(ARTIFACT_COL, pa.array([self.key] * t.num_rows, pa.string()))

    def write_part(self, data: pa.Table | Iterable[Mapping[str, Any]], folder: str | None = None) -> str:
        """Write one parquet part (atomically) and count it in this artifact."""
        t = self.table(data)
        path = f"{folder or self.run_prefix}/part-{uuid.uuid4().hex[:12]}.parquet"
        self.add_files([path], t.num_rows, [self.store.write_parquet(path, t)])
        return path

    def add_files(self, paths: Iterable[str], num_rows: int = 0, digests: Iterable[str] | None = None) -> None:
        rel = [self.store.rel(p) for p in paths]
        self.files.extend(rel)
        if digests is not None:
            self.file_digests.update(zip(rel, digests))
        self.num_rows += num_rows

    def content_digest(self) -> str:
        """What the record promises about its bytes: the weights digest of a checkpoint, else a sha256 over every
        tabular part's (path, sha256) pair. Empty when some file's digest is unknown."""
        if self.digest:
            return self.digest
        parts = [f for f in self.files if f.endswith(".parquet")]
        if (not parts and self.contract is None) or any(f not in self.file_digests for f in parts):
            return ""
        return files_digest({f: self.file_digests[f] for f in parts})

    def consolidate(self, max_rows: int = 250_000) -> list[str]:
        """Rewrite many small parts (shards, resumed attempts) into few files of up to ``max_rows`` rows under this
        run's prefix, before the commit: the lake then holds a few files per artifact instead of hundreds, so
        later queries open few files and the catalog's file metadata stays small. Streams part by part (bounded
        memory). Returns the replaced parts (staging files the caller may delete once the commit succeeded)."""
        import os
        import tempfile

        import pyarrow.parquet as pq

        old = self.parquet_parts()
        schema = self.schema
        if len(old) <= 1 or schema is None:
            return []
        new: dict[str, str] = {}
        out = rows = None

        def close() -> None:
            nonlocal out, rows
            if out is None:
                return
            writer, tmp = out
            writer.close()
            path = f"{self.run_prefix}/data-{len(new):05d}-{uuid.uuid4().hex[:8]}.parquet"
            h = hashlib.sha256()
            with open(tmp, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
            self.store.put_file(tmp, path)
            new[path] = h.hexdigest()[:16]
            out = rows = None

        for part in old:
            with self.store.fs.open(part, "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=8192):
                    if out is None:
                        fd, tmp = tempfile.mkstemp(suffix=".parquet", prefix="rlt-consolidate-")
                        os.close(fd)
                        out, rows = (pq.ParquetWriter(tmp, schema, compression="zstd"), tmp), 0
                    out[0].write_table(pa.Table.from_batches([batch]).select(schema.names).cast(schema))
                    rows += batch.num_rows
                    if rows >= max_rows:
                        close()
        close()
        old_rel = {self.store.rel(p) for p in old}
        self.files = [f for f in self.files if f not in old_rel]
        for f in old_rel:
            self.file_digests.pop(f, None)
        self.add_files(list(new), 0, list(new.values()))
        return old

    def parquet_parts(self) -> list[str]:
        return [self.store.path(f) for f in self.files if f.endswith(".parquet")]

    def record(self, stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
        schema_version = self.contract.schema_version if self.contract else f"{self.name}/v1"
        p = self.parts
        return dict(key=self.key, name=self.name, uri=self.uri, schema_version=schema_version,
                    producer=f"{p.stage}@{p.stage_version}", stage=p.stage, stage_version=p.stage_version,
                    label=self.label, config_hash=p.config_hash(), config_json=canonical_json(redact(p.config)),
                    inputs_json=canonical_json(p.inputs), models_json=canonical_json(p.models),
                    parents=sorted({k for k in p.inputs.values() if not k.startswith("model:")}),
                    files=list(self.files), num_rows=self.num_rows, digest=self.content_digest(),
                    stats_json=canonical_json(redact(dict(stats if stats is not None else self.stats))),
                    run_id=self.run_id, ts=now())

    def commit_spec(self, provenance: tuple[str, str, str | None, str | None] | None = None) -> OutputCommit:
        lineage = [dict(child_key=self.key, parent_key=k, role=role, run_id=self.run_id)
                   for role, k in sorted(self.parts.inputs.items()) if not k.startswith("model:")]
        parts = self.parquet_parts()
        return OutputCommit(record=self.record(), table=self.name if (self.contract and parts) else None,
                            parts=parts, schema=self.schema, lineage=lineage,
                            provenance=provenance if parts else None)


def ref_from_record(r: Mapping[str, Any]) -> ArtifactRef:
    return ArtifactRef(name=r["name"], uri=r["uri"], key=r["key"], schema_version=r["schema_version"],
                       producer=r["producer"], config_hash=r["config_hash"] or "", parents=tuple(r["parents"] or ()),
                       num_rows=int(r["num_rows"] or 0), run_id=r["run_id"] or "", created_at=str(r["ts"]),
                       label=r.get("label") or "", digest=r.get("digest") or "")


def verify(store: Store, record: Mapping[str, Any]) -> list[str]:
    """Re-hash a committed artifact's files from the store; problems found (empty = its bytes match its digest)."""
    want = record.get("digest") or ""
    if not want:
        return []
    files = list(record.get("files") or [])
    missing = [f for f in files if not store.exists(store.path(f))]
    if missing:
        return [f"{record['key']}: missing files {missing[:3]}"]
    weights = sorted(f for f in files if f.endswith(".safetensors"))
    if weights:   # a checkpoint: the same recipe as infra.models.weights_digest, read from the store
        folder = weights[0].rsplit("/", 1)[0]
        extra = [f for f in files if f.rsplit("/", 1)[-1] in ("tokenizer.json", "config.json")
                 and f.rsplit("/", 1)[0] == folder]
        h = hashlib.sha256()
        for f in sorted(weights + extra, key=lambda x: x.rsplit("/", 1)[-1]):
            h.update(f.rsplit("/", 1)[-1].encode())
            with store.fs.open(store.path(f), "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
        got = h.hexdigest()[:16]
    else:
        got = files_digest({f: store.file_digest(store.path(f)) for f in files if f.endswith(".parquet")})
    return [] if got == want else [f"{record['key']} ({record['name']}): files hash to {got}, record says {want}"]
