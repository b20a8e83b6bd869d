"""Incremental nights at example level: a row that an earlier committed artifact holds is copied, not recomputed.

Output row ids are content addresses. An explanation id hashes the problem id (itself a hash of question and
solution), the sample index and the generation config digest (sampling, teacher artifact, prompt style, seed); a
score row is the reward of one explanation under one reward config, teacher and student.

A *donor* is a committed artifact of the same stage whose key parts equal ours in everything but the input whose
rows grow night after night (generate's problems, score's explanations): same stage version, same config, same
model digests, same other inputs (the teacher checkpoint). A row id that a donor holds is then the result of the
same computation, so the run copies that row (parts under ``<artifact uri>/runs/<run id>/reused/``), cuts the
input rows that still need work into full shards of their own (so the engine batches them as usual), and runs the
model only for the rows no donor has. The output artifact stays complete and immutable: it owns copies of the
reused rows, and each copied row's ``reused_from`` names the artifact that computed it (NULL: computed by this
artifact's own run); the artifact record's stats say how many rows came from where, and the ``lineage`` relation
has one ``reused`` edge per donor that gave rows.

Where an id does not pin a row's input down completely, the stage declares a fingerprint of its input row that is
compared with the donor's input row. score does: an explanation id does not cover generate's dtype or backend,
so two explanation artifacts can hold different texts under one id; a score row is reused only when the donor
scored the same text (md5 of the completion).

Bounded work: donors are the newest ``MAX_DONORS`` candidates; each shard asks for its own ids only (the lookups
prune files by ``artifact_key`` statistics), and memory holds one shard's rows.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import pyarrow.parquet as pq

from infra.catalog.artifacts import KeyParts
from infra.engine.shard_job import chunks

if TYPE_CHECKING:
    from infra.catalog.artifacts import ArtifactWriter
    from infra.catalog.lake import Catalog

log = logging.getLogger("rlt")
MAX_DONORS = 16
REUSED_DIR = "reused"   # copied rows: <artifact uri>/runs/<run id>/reused/part-*.parquet until the commit
LINEAGE_ROLE = "reused"


@dataclass(frozen=True)
class Selection:
    """The input rows a stage works on, said once: rows whose ``column`` equals ``value`` (no column: all), at most
    the first ``limit`` in id order. As SQL for rows in the catalog (``where``), as a predicate for rows not
    committed yet (``matches``: the plan previews a source ingest has not read)."""

    column: str | None = None
    value: Any = None
    limit: int | None = None

    @property
    def where(self) -> str:
        if self.column is None:
            return ""
        literal = str(self.value).replace("'", "''")
        return f"\"{self.column}\" = '{literal}'"

    def matches(self, row: Mapping[str, Any]) -> bool:
        return self.column is None or row.get(self.column) == self.value


@dataclass(frozen=True)
class Incremental:
    """How a sharded stage finds its rows in earlier artifacts. A stage declares ``input`` and the functions; the
    engine fills in the rest from the declaration (infra/engine/stage.py ``declare``): the input's name in the
    key, the output contract's id column, the input's table."""

    input: str                # the input whose rows drive the work (it may grow from night to night)
    # (cfg, key parts, input rows) -> id -> fingerprint
    ids: Callable[[Any, KeyParts, list[dict[str, Any]]], dict[str, str]]
    fingerprint_sql: str = ""   # the same fingerprint in SQL over the donor's input row ``i`` ("" = none)
    one_to_one: bool = False    # one output row per input row, with the input row's id (score)
    select: Callable[[Any], Selection] = lambda cfg: Selection()   # which input rows the stage works on
    columns: tuple[str, ...] = ()   # input columns ``ids`` reads, the input row id first
    role: str = ""            # filled in: the input's name in the key (donors differ from us only there)
    id_col: str = ""          # filled in: the output row id (a content address)
    input_table: str = ""     # filled in: the input's table, joined on id_col, when a fingerprint is compared


@dataclass(frozen=True)
class Donor:
    key: str
    input_key: str            # the donor's ``role`` input artifact
    run_id: str


def md5(text: str) -> str:
    """Fingerprint of a text, equal to DuckDB's md5() of the same string."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def find_donors(catalog: Catalog, stage_name: str, output: str, spec: Incremental, parts: KeyParts,
                own_key: str = "") -> list[Donor]:
    """Committed artifacts whose key parts equal ``parts`` except the ``spec.role`` input, newest first."""
    recs = catalog.rows("SELECT key, inputs_json, models_json, config_hash, stage_version, num_rows, run_id "
                        "FROM lake.main.artifacts WHERE list_contains(?, stage) AND list_contains(?, name) "
                        "ORDER BY ts DESC", [[stage_name], [output]])
    want_inputs = {k: v for k, v in parts.inputs.items() if k != spec.role}
    out: list[Donor] = []
    for r in recs:
        if r["key"] == own_key or not r["num_rows"] or r["stage_version"] != parts.stage_version:
            continue
        if r["config_hash"] != parts.config_hash() or json.loads(r["models_json"]) != parts.models:
            continue
        inputs = json.loads(r["inputs_json"])
        if {k: v for k, v in inputs.items() if k != spec.role} != want_inputs or spec.role not in inputs:
            continue
        out.append(Donor(r["key"], inputs[spec.role], r["run_id"]))
        if len(out) == MAX_DONORS:
            break
    return out


def _ph(n: int) -> str:
    return ", ".join("?" * n)


def donor_rows(catalog: Catalog, table: str, spec: Incremental, donors: list[Donor], want: Mapping[str, str]
               ) -> list[dict[str, Any]]:
    """The newest donor's row for each wanted id (whose input fingerprint matches, where one is declared)."""
    if not donors or not want:
        return []
    ids, keys = sorted(want), [d.key for d in donors]
    col = f'o."{spec.id_col}"'
    if spec.fingerprint_sql:
        inputs = sorted({d.input_key for d in donors})
        sql = (f"SELECT o.*, {spec.fingerprint_sql} AS _fp, i.artifact_key AS _input FROM lake.data.{table} o "
               f"JOIN lake.data.{spec.input_table} i ON i.\"{spec.id_col}\" = {col} "
               f"WHERE o.artifact_key IN ({_ph(len(keys))}) AND {col} IN ({_ph(len(ids))}) "
               f"AND i.artifact_key IN ({_ph(len(inputs))}) AND i.\"{spec.id_col}\" IN ({_ph(len(ids))})")
        params = [*keys, *ids, *inputs, *ids]
    else:
        sql = (f"SELECT o.* FROM lake.data.{table} o WHERE o.artifact_key IN ({_ph(len(keys))}) "
               f"AND {col} IN ({_ph(len(ids))})")
        params = [*keys, *ids]
    rank = {d.key: n for n, d in enumerate(donors)}
    input_of = {d.key: d.input_key for d in donors}
    best: dict[str, dict[str, Any]] = {}
    for r in catalog.rows(sql, params):
        donor = r["artifact_key"]
        if spec.fingerprint_sql:
            given_input, fp = r.pop("_input"), r.pop("_fp")
            if given_input != input_of[donor] or fp != want[r[spec.id_col]]:
                continue
        have = best.get(r[spec.id_col])
        if have is None or rank[donor] < rank[have["artifact_key"]]:
            best[r[spec.id_col]] = r
    out = []
    for r in best.values():
        r["reused_from"] = r.get("reused_from") or r.pop("artifact_key")   # the artifact that computed it
        r.pop("artifact_key", None)
        out.append(r)
    return out


class Reuser:
    """One stage run's donors, fixed when the run starts (donor artifacts are immutable, so every pass over the
    input gives the same answer); splits the input into rows to copy and rows that need the engine."""

    spec: Incremental

    def __init__(self, run: Any):   # a StageRun (not imported here: that would close an import cycle)
        self.run, self.spec = run, run.stage.incremental
        self.table = run.stage.primary
        self.donors = find_donors(run.ctx.catalog, run.stage.name, self.table, self.spec, run.parts, run.key)
        self.copied = 0
        if self.donors:
            log.info("%s: looking for rows in %d earlier artifact(s) with the same config (newest %s, run %s)",
                     run.stage.name, len(self.donors), self.donors[0].key[:12], self.donors[0].run_id)

    def need(self, rows: Iterable[dict[str, Any]], copy: bool, progress: Callable[[int], Any] = lambda n: None,
             lookup: int = 512) -> Iterator[dict[str, Any]]:
        """The input rows some of whose output rows no donor holds, in input order. An input row is reused whole
        or not at all (all K explanations of a problem), so the rows that need work can be cut into full shards
        and batched together. With ``copy`` (the first pass only), the donors' rows for the others are written as
        parts of this run's artifact (under its run prefix: nothing is shared with another run)."""
        cfg, parts, writer = self.run.cfg, self.run.parts, self.run.writer()
        buf: list[dict[str, Any]] = []
        for chunk in chunks(rows, lookup):
            per_row = [self.spec.ids(cfg, parts, [r]) for r in chunk]
            want = {i: fp for ids in per_row for i, fp in ids.items()}
            found = {r[self.spec.id_col]: r for r in donor_rows(self.run.ctx.catalog, self.table, self.spec,
                                                                self.donors, want)}
            for r, ids in zip(chunk, per_row):
                if ids and all(i in found for i in ids):
                    buf.extend(found[i] for i in ids)
                else:
                    yield r
            if len(buf) >= 5000 or not copy:
                self._flush(writer, buf, copy, progress)
        self._flush(writer, buf, copy, progress)

    def _flush(self, writer: ArtifactWriter, buf: list[dict[str, Any]], copy: bool, progress: Callable[[int], Any]
               ) -> None:
        if buf and copy:
            writer.write_part(buf, folder=f"{writer.run_prefix}/{REUSED_DIR}")
            self.copied += len(buf)
            progress(len(buf))
        buf.clear()

    def shard_id(self, index: int, rows: list[dict[str, Any]]) -> str:
        """With donors, the rows that need work depend on what they hold: name each shard by its rows' ids (a
        resumed run with the same donors finds its finished shards; other donors mean other shards)."""
        from infra.catalog.artifacts import digest

        return "c" + digest([r[self.spec.columns[0]] for r in rows], 12)


def reuse_stats(writer: ArtifactWriter) -> dict[str, Any]:
    """From the artifact's own parts: rows computed vs copied, and from which artifacts."""
    origins: Counter[str] = Counter()
    total = 0
    for path in writer.parquet_parts():
        with writer.store.fs.open(path, "rb") as f:
            col = pq.read_table(f, columns=["reused_from"]).column(0).to_pylist()
        total += len(col)
        origins.update(v for v in col if v)
    reused = sum(origins.values())
    return {"rows_reused": reused, "rows_computed": total - reused, "reused_from": dict(origins)}


def reuse_lineage(writer: ArtifactWriter, stats: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One ``reused`` lineage edge per artifact that gave rows."""
    return [dict(child_key=writer.key, parent_key=k, role=LINEAGE_ROLE, run_id=writer.run_id)
            for k in sorted(stats.get("reused_from") or {})]


def count_reusable(catalog: Catalog, table: str, id_col: str, donors: list[Donor], ids: list[str]) -> int:
    """How many of ``ids`` some donor holds (by id: the plan's count; fingerprints are compared when it runs)."""
    if not donors or not ids:
        return 0
    keys = [d.key for d in donors]
    return int(catalog.rows(f'SELECT count(DISTINCT "{id_col}") AS n FROM lake.data.{table} WHERE artifact_key IN '
                            f'({_ph(len(keys))}) AND "{id_col}" IN (SELECT unnest(?::VARCHAR[]))',
                            [*keys, ids])[0]["n"])
