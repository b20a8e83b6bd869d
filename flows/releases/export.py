"""`rlt export`: a committed distill set (and, if asked, its reward ledger) as a release folder that Hugging Face
``datasets`` loads, with a dataset card and a machine-readable manifest.

What a release is: a ``distill_set`` artifact, named by a REF that :func:`resolve_release` turns into a catalog
record: ``latest`` (the newest committed distill set), a full artifact key or a unique key prefix (>= 8 hex
characters). Named aliases (``current``, ...) come later; they plug into ``resolve_release(..., alias_lookup=)``.

Layouts under OUT (a local folder or ``s3://bucket/prefix``):

- ``hf``:      ``save_to_disk`` of a ``DatasetDict`` (split ``train``; ``scored`` with ``--with-ledger``)
               -> ``datasets.load_from_disk(OUT)``
- ``parquet``: ``data/train-00000-of-0000N.parquet`` (config ``default``), ``scored/train-*.parquet`` (config
               ``scored``) -> ``load_dataset("parquet", data_files=...)``, or ``load_dataset(OUT)`` (card configs)
- ``jsonl``:   ``data/train.jsonl`` (+ ``scored/train.jsonl``) -> ``load_dataset("json", data_files=...)``

Every layout adds ``README.md`` (a dataset card with YAML front matter: source, teacher and student digests,
recipe, row counts, filter and quarantine figures, the lineage keys) and ``rlt_export.json`` (the same facts and
the sha256 of every other file).

Rows are streamed from the catalog in record batches (``Catalog.scan``), never loaded whole. A release is never
visible half-written: a local one is built in a hidden sibling folder and renamed into place (``--overwrite``:
the old folder is renamed aside first, then removed); an S3 one is built locally, uploaded, and completed by a
``_SUCCESS`` object written last. Readers of S3 releases must treat a prefix without ``_SUCCESS`` as incomplete
(``--overwrite`` on S3 deletes ``_SUCCESS`` before anything else).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Optional

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from data_contracts import distill_set as distill_contract
from data_contracts import scored_explanations as scored_contract
from data_contracts.errors import ExpectedError
from infra.catalog.artifacts import secondary_key
from infra.catalog.lake import Catalog
from infra.catalog.store import Store

log = logging.getLogger(__name__)

FORMATS = ("hf", "parquet", "jsonl")
MANIFEST = "rlt_export.json"
CARD = "README.md"
SUCCESS = "_SUCCESS"
MIN_PREFIX = 8
STAGE_ORDER = ("ingest", "train_teacher", "generate", "score", "filter")
AUDIT_NOTE = ("this distill set was never published through an audited alias (flows/releases/audit.py); the filter "
              "stage's statistics (kept/dropped per reason) and the ingest quarantine counts stand in for audits.")
_HEX = re.compile(r"[0-9a-fA-F]+")

# alias -> artifact key, or None when ``ref`` is not an alias (issue 14 part 2 plugs its alias table in here)
AliasLookup = Callable[[Catalog, str], Optional[str]]


class ExportError(ExpectedError, ValueError):
    """An export that cannot be made as asked: an unknown or ambiguous ref, a ref to something that is not a
    distill set, a non-empty target without --overwrite."""


class ExportRequest(BaseModel):
    """What to export, where, how."""

    model_config = ConfigDict(extra="forbid")
    ref: str = Field(min_length=1, description="'latest', an artifact key or a unique key prefix (>= 8 hex)")
    format: Literal["hf", "parquet", "jsonl"] = "hf"
    out: str = Field(min_length=1, description="a local folder or s3://bucket/prefix")
    with_ledger: bool = False
    overwrite: bool = False
    batch_rows: int = Field(default=1024, ge=1, description="rows per record batch read from the catalog")
    shard_bytes: int = Field(default=256 << 20, ge=1, description="parquet: start a new shard past this many "
                                                                  "(uncompressed) bytes")


@dataclass(frozen=True)
class Release:
    """A resolved ref: the distill set's catalog record and how the ref was matched."""

    record: dict
    ref: str
    via: str        # alias | latest | key | prefix

    @property
    def key(self) -> str:
        return self.record["key"]


@dataclass
class ExportResult:
    out: str
    format: str
    release: Release
    splits: dict[str, int]                       # split/config -> rows
    files: dict[str, dict[str, Any]]             # relative path -> {sha256, bytes}
    load: str                                    # one python line that loads it
    origin: dict[str, dict[str, int]] = field(default_factory=dict)   # split -> origin -> rows
    facts: dict[str, Any] = field(default_factory=dict)


# -- resolving a ref ------------------------------------------------------------------------------------
def resolve_release(catalog: Catalog, ref: str, alias_lookup: AliasLookup | None = None) -> Release:
    """The committed distill set ``ref`` names: an alias (when ``alias_lookup`` knows it), ``latest``, a full
    artifact key or a unique key prefix of at least 8 hex characters. Raises ExportError naming what was tried."""
    ref = ref.strip()
    tried = []
    if alias_lookup is not None:
        tried.append("an alias")
        key = alias_lookup(catalog, ref)
        if key:
            rec = catalog.artifact(key)
            if rec is None:
                raise ExportError(f"alias {ref!r} points to {key}, which is not a committed artifact in "
                                  f"{catalog.store.root}")
            return Release(_distill_only(rec, ref), ref, "alias")
    else:
        tried.append("an alias (none are defined yet)")
    if ref == "latest":
        # the night's distill set, not a baseline's (`filter[reference]`, labelled; evaluate.baselines)
        rows = catalog.rows("SELECT * FROM artifacts_committed WHERE name = 'distill_set' AND coalesce(label, '') = '' "
                            "ORDER BY ts DESC LIMIT 1")
        if not rows:
            raise ExportError(f"no committed distill_set in {catalog.store.root}: 'latest' needs one "
                              "(run the factory through the filter stage first)")
        return Release(rows[0], ref, "latest")
    tried.append("'latest'")
    if not _HEX.fullmatch(ref):
        tried.append("an artifact key or key prefix (those are hex)")
    else:
        rec = catalog.artifact(ref.lower())
        tried.append("a full artifact key")
        if rec is not None:
            return Release(_distill_only(rec, ref), ref, "key")
        if len(ref) >= MIN_PREFIX:
            tried.append(f"a key prefix (>= {MIN_PREFIX} hex)")
            rows = catalog.rows("SELECT key, name, ts FROM artifacts_committed WHERE starts_with(key, ?) "
                                "ORDER BY ts", [ref.lower()])
            if len(rows) > 1:
                listed = ", ".join(f"{r['key']} ({r['name']})" for r in rows[:5])
                raise ExportError(f"ref {ref!r} is ambiguous: {len(rows)} artifacts start with it ({listed}"
                                  f"{', ...' if len(rows) > 5 else ''}); give more characters")
            if rows:
                return Release(_distill_only(catalog.artifact(rows[0]["key"]), ref), ref, "prefix")
        else:
            tried.append(f"a key prefix (needs >= {MIN_PREFIX} hex characters, got {len(ref)})")
    raise ExportError(f"no release {ref!r} in {catalog.store.root}: tried {', '.join(tried)}. List distill sets "
                      "with: rlt catalog sql \"SELECT key, run_id, num_rows, ts FROM artifacts_committed WHERE "
                      "name = 'distill_set' ORDER BY ts DESC\"")


def _distill_only(rec: dict, ref: str) -> dict:
    if rec["name"] != "distill_set":
        raise ExportError(f"{ref!r} is a {rec['name']} artifact ({rec['key']}, from stage {rec['stage']}), not a "
                          "distill_set: export takes a distill set (the filter stage's output)")
    return rec


# -- facts for the card ---------------------------------------------------------------------------------
def _loads(text: str | None) -> dict:
    try:
        out = json.loads(text or "{}")
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _ancestors(catalog: Catalog, key: str) -> tuple[list[dict], list[str]]:
    """The artifact and every ancestor (through ``inputs_json``), level by level; also keys that were missing."""
    seen: dict[str, dict] = {}
    missing: list[str] = []
    level = [key]
    while level:
        found = catalog.artifacts(level)
        missing += [k for k in level if k not in found]
        seen.update(found)
        nxt = set()
        for rec in found.values():
            nxt.update(v for v in _loads(rec["inputs_json"]).values() if not str(v).startswith("model:"))
        level = sorted(nxt - set(seen) - set(missing))
    return list(seen.values()), missing


def _code_version() -> str:
    """The exporting checkout's git revision, else the installed package version."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        if rev:
            return rev
    except Exception:   # no git: fall back to the package version
        pass
    try:
        from importlib.metadata import version

        return "rlt-factory " + version("rlt-factory")
    except Exception:
        return ""


def _brief(rec: dict | None) -> dict | None:
    if rec is None:
        return None
    return {"name": rec["name"], "stage": rec["stage"], "key": rec["key"], "digest": rec.get("digest") or "",
            "num_rows": int(rec.get("num_rows") or 0), "run_id": rec.get("run_id") or "",
            "producer": rec.get("producer") or "", "created_at": str(rec.get("ts"))}


def _audit_facts(catalog: Catalog, key: str) -> dict[str, Any]:
    """The audits of every alias move (publish, promote, rollback) that pointed an alias at ``key``."""
    from flows.releases.aliases import history

    moves = [r for r in history(catalog) if r["key"] == key]
    if not moves:
        return {"available": False, "note": AUDIT_NOTE}
    return {"available": True, "releases": [
        {"alias": m["alias"], "action": m["action"], "actor": m.get("actor"), "reason": m.get("reason"),
         "run_id": m.get("run_id"), "ts": str(m.get("ts")), "audits": (m.get("audits") or {}).get("results", [])}
        for m in moves]}


def _reward_student(catalog, rec: dict) -> dict[str, Any] | None:
    """The night's baseline student checkpoint a stage's reward read with (``reward_student: baseline``), if any."""
    key = _loads(rec["inputs_json"]).get("reward_student")
    ckpt = catalog.artifact(key) if key else None
    return None if ckpt is None else {"model": f"artifact:{key}", "key": key, "digest": ckpt.get("digest") or "",
                                      "reward_student": "baseline"}


def release_facts(catalog: Catalog, release: Release) -> dict[str, Any]:
    """Everything the card says about a release, from the catalog (small queries; no data rows are read but a
    GROUP BY over the filter decisions)."""
    rec = release.record
    chain, missing = _ancestors(catalog, rec["key"])
    by_stage: dict[str, list[dict]] = {}
    for a in sorted(chain, key=lambda a: str(a["ts"])):
        by_stage.setdefault(a["stage"], []).append(a)
    inputs = _loads(rec["inputs_json"])
    byk = {a["key"]: a for a in chain}
    scored = byk.get(inputs.get("scored", ""))
    problems = byk.get(inputs.get("problems", ""))
    explanations = byk.get(inputs.get("explanations", ""))
    teacher = byk.get(_loads(explanations["inputs_json"]).get("teacher", "")) if explanations else None

    source: dict[str, Any] = {}
    quarantine: dict[str, Any] = {}
    if problems is not None:
        icfg = _loads(problems["config_json"])
        src = icfg.get("source") or {}
        pstats = _loads(problems["stats_json"])
        source = {"uri": src.get("uri"), "fingerprint": _loads(problems["models_json"]).get("source"),
                  "config": src, "problems_key": problems["key"], "problems": int(problems["num_rows"] or 0),
                  "train": pstats.get("train"), "heldout": pstats.get("heldout"), "rows_in": pstats.get("rows_in")}
        qkey = secondary_key(problems["key"], "quarantine")
        q = catalog.artifact(qkey)
        quarantine = {"key": qkey, "committed": q is not None,
                      "rows": int(q["num_rows"] or 0) if q else pstats.get("quarantined"),
                      "reasons": {k: v for k, v in _loads(q["stats_json"] if q else "{}").items() if k != "of"}
                      or {k.removeprefix("quarantine."): v for k, v in pstats.items()
                          if k.startswith("quarantine.")}}

    teacher_facts: dict[str, Any] = {}
    students: dict[str, Any] = {}
    if teacher is not None:
        tm, tcfg = _loads(teacher["models_json"]), _loads(teacher["config_json"])
        teacher_facts = {"key": teacher["key"], "digest": teacher.get("digest") or "",
                         "base_model": tcfg.get("base_model"), "base_digest": tm.get("base"),
                         "phases": tcfg.get("phases"), "run_id": teacher.get("run_id")}
        if tm.get("student"):
            students["train_teacher.student"] = {"model": tcfg.get("student_model"), "digest": tm["student"]}
        elif baseline := _reward_student(catalog, teacher):
            students["train_teacher.student"] = baseline
    if scored is not None:
        sm = _loads(scored["models_json"])
        if sm.get("student"):
            students["score.student"] = {"model": _loads(scored["config_json"]).get("student_model"),
                                         "digest": sm["student"]}
        elif baseline := _reward_student(catalog, scored):
            students["score.student"] = baseline
    trained = catalog.rows("SELECT DISTINCT child_key FROM lineage WHERE list_contains(?, parent_key)",
                           [[rec["key"]]])
    for r in catalog.artifacts([t["child_key"] for t in trained]).values():
        if r["name"] == "student_checkpoint":
            students.setdefault("distilled", []).append(
                {"key": r["key"], "digest": r.get("digest") or "",
                 "base_digest": _loads(r["models_json"]).get("student_base"), "run_id": r.get("run_id")})

    run = catalog.rows("SELECT * FROM runs_latest WHERE list_contains(?, run_id)", [[rec["run_id"]]])
    run = run[0] if run else {}
    stats = _loads(rec["stats_json"])
    if not stats:
        sr = catalog.rows("SELECT detail FROM stage_runs WHERE list_contains(?, artifact_key) AND status = 'done' "
                          "ORDER BY ts DESC LIMIT 1", [[rec["key"]]])
        stats = _loads(sr[0]["detail"]) if sr else {}
    fkey = secondary_key(rec["key"], "filter_decisions")
    decisions = []
    if catalog.artifact(fkey) is not None and "filter_decisions" in catalog.refresh_data_views():
        decisions = catalog.rows("SELECT kept, reason, count(*)::BIGINT AS n FROM lake.data.filter_decisions "
                                 "WHERE artifact_key = ? GROUP BY ALL ORDER BY kept DESC, reason", [fkey])
    fcfg = _loads(rec["config_json"])
    lineage = [_brief(a) for s in STAGE_ORDER for a in by_stage.get(s, [])]
    return {
        "distill_set": _brief(rec) | {"schema_version": rec.get("schema_version"), "uri": rec.get("uri")},
        "source": source, "quarantine": quarantine, "teacher": teacher_facts, "students": students,
        "recipe": {"name": run.get("recipe"), "hash": run.get("recipe_hash"), "run_id": rec.get("run_id"),
                   "flow": run.get("flow"), "run_status": run.get("status"), "code_version": run.get("code_version")},
        "filter": {"decisions_key": fkey, "rules": fcfg.get("rules"), "stats": stats,
                   "decisions": [{"kept": bool(d["kept"]), "reason": d["reason"], "rows": int(d["n"])}
                                 for d in decisions]},
        "audit": _audit_facts(catalog, rec["key"]),
        "lineage": lineage, "lineage_missing": missing,
        "ledger_key": scored["key"] if scored else inputs.get("scored"),
    }


# -- streaming rows out -----------------------------------------------------------------------------------
def _batches(catalog: Catalog, name: str, key: str, schema: pa.Schema, order_by: str, batch_rows: int
             ) -> Iterator[pa.RecordBatch]:
    for b in catalog.scan(name, key, schema.names, order_by=order_by, batch_size=batch_rows):
        if b.num_rows:
            yield pa.Table.from_batches([b]).cast(schema).to_batches()[0]


class _ParquetShards:
    """Record batches -> ``{split}-0000i-of-0000N.parquet`` files of at most ~``max_bytes`` uncompressed each."""

    def __init__(self, folder: str, split: str, schema: pa.Schema, max_bytes: int):
        self.folder, self.split, self.schema, self.max_bytes = folder, split, schema, max_bytes
        self.parts: list[str] = []
        self._writer = None
        self._bytes = 0
        os.makedirs(folder, exist_ok=True)

    def write(self, batch: pa.RecordBatch) -> None:
        import pyarrow.parquet as pq

        if self._writer is None:
            path = os.path.join(self.folder, f".{self.split}-{len(self.parts):05d}.tmp")
            self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
            self.parts.append(path)
        self._writer.write_batch(batch)
        self._bytes += batch.nbytes
        if self._bytes >= self.max_bytes:
            self._writer.close()
            self._writer, self._bytes = None, 0

    def close(self) -> list[str]:
        import pyarrow.parquet as pq

        if self._writer is not None:
            self._writer.close()
        elif not self.parts:   # no rows: one empty shard, so the split still loads (with its schema)
            path = os.path.join(self.folder, f".{self.split}-00000.tmp")
            pq.write_table(self.schema.empty_table(), path, compression="zstd")
            self.parts.append(path)
        n = len(self.parts)
        final = []
        for i, tmp in enumerate(self.parts):
            path = os.path.join(self.folder, f"{self.split}-{i:05d}-of-{n:05d}.parquet")
            os.replace(tmp, path)
            final.append(path)
        return final


def _write_jsonl(path: str, batches: Iterator[pa.RecordBatch]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for b in batches:
            fh.writelines(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in b.to_pylist())


@dataclass
class _Split:
    """One table of the release: where it comes from in the catalog and how it is laid out."""

    name: str           # hf split name (train | scored)
    config: str         # card config name (default | scored)
    folder: str         # parquet/jsonl folder (data | scored)
    table: str          # lake table
    key: str
    schema: pa.Schema
    order_by: str
    expect_rows: int
    rows: int = 0
    nbytes: int = 0
    origin: dict[str, int] = field(default_factory=dict)
    local_files: list[str] = field(default_factory=list)


def _counting(split: _Split, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    import pyarrow.compute as pc

    for b in batches:
        split.rows += b.num_rows
        split.nbytes += b.nbytes
        if "origin" in b.schema.names:
            for item in pc.value_counts(b.column("origin")).to_pylist():
                split.origin[item["values"]] = split.origin.get(item["values"], 0) + item["counts"]
        yield b


def _write_split(catalog: Catalog, split: _Split, fmt: str, stage: str, req: ExportRequest) -> None:
    rows = _counting(split, _batches(catalog, split.table, split.key, split.schema, split.order_by, req.batch_rows))
    if fmt == "jsonl":
        path = os.path.join(stage, split.folder, "train.jsonl")
        _write_jsonl(path, rows)
        split.local_files = [path]
    else:
        shards = _ParquetShards(os.path.join(stage, split.folder), "train", split.schema, req.shard_bytes)
        for b in rows:
            shards.write(b)
        split.local_files = shards.close()
    if split.rows != split.expect_rows:
        raise ExportError(f"{split.table} {split.key}: the catalog record says {split.expect_rows} rows but its data "
                          f"holds {split.rows}; not exporting an inconsistent release (rlt catalog verify --key "
                          f"{split.key})")


def _save_hf(splits: list[_Split], stage: str, build: str) -> None:
    """Parquet shards (already in ``build``) -> a DatasetDict saved with ``save_to_disk`` into ``stage``."""
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()   # the CLI reports what was written; restored for the rest of the process
    try:
        parts = {}
        for s in splits:
            parts[s.name] = datasets.Dataset.from_parquet(s.local_files, split="train",
                                                          cache_dir=os.path.join(build, "cache"))
        datasets.DatasetDict(parts).save_to_disk(stage)
        del parts
    finally:
        if bars:
            datasets.enable_progress_bars()


# -- the card -------------------------------------------------------------------------------------------
def _audit_section(audit: dict) -> str:
    if not audit.get("available"):
        return f"{audit.get('note', AUDIT_NOTE)}\n"
    out = []
    for m in audit["releases"]:
        out.append(f"`{m['alias']}` {m['action']} by {m['actor']} ({m['ts']}, run `{m['run_id']}`)"
                   + (f": {m['reason']}" if m.get("reason") else "") + "\n")
        if m["audits"]:
            out.append(_md_table(["audit", "figure", "bound", "passed", "detail"],
                                 [[a.get("name"), a.get("figure"), a.get("bound"), a.get("passed"), a.get("detail")]
                                  for a in m["audits"]]) + "\n")
    return "\n".join(out)


_YAML_DTYPES = {"string": "string", "large_string": "large_string", "double": "float64", "float": "float32",
                "int64": "int64", "int32": "int32", "bool": "bool"}


def _features(schema: pa.Schema) -> list[dict] | None:
    out = []
    for f in schema:
        dtype = _YAML_DTYPES.get(str(f.type))
        if dtype is None:
            return None
        out.append({"name": f.name, "dtype": dtype})
    return out


def _front_matter(facts: dict, splits: list[_Split], fmt: str) -> str:
    import yaml

    short = facts["distill_set"]["key"][:12]
    meta: dict[str, Any] = {
        "license": "other",
        "pretty_name": f"rlt-factory distill set {short}",
        "tags": ["rlt-factory", "reasoning", "distillation", "synthetic", "reinforcement-learned-teachers"],
        "task_categories": ["text-generation"],
        "language": ["en"],
    }
    if fmt in ("parquet", "jsonl"):
        pattern = "train-*.parquet" if fmt == "parquet" else "train.jsonl"
        meta["configs"] = [{"config_name": s.config,
                            "data_files": [{"split": "train", "path": f"{s.folder}/{pattern}"}]} for s in splits]
        infos = []
        for s in splits:
            feats = _features(s.schema)
            if feats is None:
                infos = []
                break
            infos.append({"config_name": s.config, "features": feats,
                          "splits": [{"name": "train", "num_bytes": s.nbytes, "num_examples": s.rows}]})
        if infos:
            meta["dataset_info"] = infos
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return str("" if v is None else v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def render_card(facts: dict, splits: list[_Split], fmt: str, load: str, exported: dict) -> str:
    """The dataset card: YAML front matter (HF style) and a body a person can audit the release from."""
    d, src, q, t = facts["distill_set"], facts["source"], facts["quarantine"], facts["teacher"]
    rec, flt, students = facts["recipe"], facts["filter"], facts["students"]
    train = splits[0]
    origin = ", ".join(f"{n} {o}" for o, n in sorted(train.origin.items())) or "none"
    out = [_front_matter(facts, splits, fmt),
           f"# rlt-factory distill set `{d['key']}`\n",
           "Student-format SFT rows (ShareGPT layout: `system`, `question`, `assistant` with "
           "`<|begin_of_thought|>...<|end_of_thought|>` and `<|begin_of_solution|>...<|end_of_solution|>`), "
           "selected by rlt-factory's filter stage from explanations written by a Reinforcement-Learned Teacher "
           "and scored by a student model. Each row carries its `example_id`, `problem_id` and `explanation_id` "
           "(null for a reference-trace fallback), its `origin` (`teacher` | `reference`) and its RLT `reward`.\n",
           "## Load\n", "```python\n" + load + "\n```\n",
           "## Contents\n",
           _md_table(["table", "load as", "rows", "columns"],
                     [[s.table, f'split "{s.name}"' if fmt == "hf" else f'config "{s.config}", split "train"', s.rows,
                       ", ".join(s.schema.names)] for s in splits]),
           f"\nRows by origin: {origin}. Format: `{fmt}`. Exported {exported['at']} by rlt-factory "
           f"{exported['code_version'] or '(unknown version)'} from `{exported['ref']}` "
           f"(matched as {exported['via']}).\n",
           "## Provenance\n",
           _md_table(["what", "value"], [
               ["distill set", f"`{d['key']}` (digest `{d['digest']}`, {d['num_rows']} rows, run `{d['run_id']}`)"],
               ["source", f"`{src.get('uri')}` (fingerprint `{src.get('fingerprint')}`; "
                          f"n={(src.get('config') or {}).get('n')}, seed={(src.get('config') or {}).get('seed')}, "
                          f"split={(src.get('config') or {}).get('split')})"],
               ["problems", f"`{src.get('problems_key')}`: {src.get('problems')} problems "
                            f"({src.get('train')} train / {src.get('heldout')} heldout) of {src.get('rows_in')} rows"],
               ["quarantine", f"{q.get('rows')} rows quarantined at ingest (artifact `{q.get('key')}`)"
                              + (f": {json.dumps(q.get('reasons'), sort_keys=True)}" if q.get("reasons") else "")],
               ["teacher checkpoint", f"`{t.get('key')}` weights digest `{t.get('digest')}` (base "
                                      f"`{t.get('base_model')}` digest `{t.get('base_digest')}`, phases "
                                      f"{t.get('phases')})"],
               *[[f"student ({role})", f"digest `{s['digest']}` (`{s['model']}`)"]
                 for role, s in students.items() if role != "distilled"],
               *[["student trained on this set", f"`{s['key']}` digest `{s['digest']}` (base `{s['base_digest']}`, "
                                                 f"run `{s['run_id']}`)"] for s in students.get("distilled", [])],
               ["recipe", f"`{rec.get('name')}` hash `{rec.get('hash')}`, run `{rec.get('run_id')}` "
                          f"({rec.get('flow')}, {rec.get('run_status')})"],
               ["code version", f"produced by `{rec.get('code_version') or '?'}`, exported by "
                                f"`{exported['code_version'] or '?'}`"],
           ]),
           "\n## Audits\n",
           _audit_section(facts["audit"]),
           "\n## Filter and quarantine figures\n",
           f"Filter rules: `{json.dumps(flt.get('rules'), sort_keys=True)}`\n",
           _md_table(["statistic", "value"], [[k, v] for k, v in sorted((flt.get("stats") or {}).items())]),
           "",
           (_md_table(["kept", "reason", "rows"], [[x["kept"], x["reason"], x["rows"]] for x in flt["decisions"]])
            + f"\n\n(from filter decisions `{flt['decisions_key']}`)\n") if flt.get("decisions") else "",
           "## Lineage\n",
           _md_table(["stage", "artifact", "key", "digest", "rows", "run"],
                     [[a["stage"], a["name"], f"`{a['key']}`", f"`{a['digest']}`", a["num_rows"], a["run_id"]]
                      for a in facts["lineage"]]),
           (f"\nMissing from the catalog: {', '.join(facts['lineage_missing'])}\n" if facts["lineage_missing"]
            else ""),
           "\nTrace any row back to its raw problem with `rlt lineage <example_id>` on the data root.\n",
           "## Files\n",
           f"`{MANIFEST}` lists every file of this release with its sha256, and the facts above as JSON."
           + (f" On S3 the release is complete only once `{SUCCESS}` exists (written last)." if exported["remote"]
              else "") + "\n",
           "## License\n",
           "`other`: the rows derive from the source dataset and from model outputs; their terms follow the "
           "source's and the models' licenses. Check them before redistributing.\n"]
    return "\n".join(out)


# -- the export -----------------------------------------------------------------------------------------
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _local_files(folder: str) -> list[str]:
    out = []
    for base, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(base, n), folder) for n in names]
    return sorted(p.replace(os.sep, "/") for p in out)


def _load_line(fmt: str, out: str, splits: list[_Split]) -> str:
    q = json.dumps
    if fmt == "hf":
        return f"from datasets import load_from_disk; ds = load_from_disk({q(out)})  # " + ", ".join(
            f'ds[{q(s.name)}]' for s in splits)
    kind, pattern = ("parquet", "train-*.parquet") if fmt == "parquet" else ("json", "train.jsonl")
    loads = [f"{'ds' if s.config == 'default' else s.config} = load_dataset({q(kind)}, data_files="
             f"{q(out.rstrip('/') + '/' + s.folder + '/' + pattern)}, split=\"train\")" for s in splits]
    return "from datasets import load_dataset; " + "; ".join(loads)


def _check_target(out: str, remote: bool, overwrite: bool) -> Store | None:
    if remote:
        store = Store(out)
        if store.fs.find(out) and not overwrite:
            raise ExportError(f"{out} is not empty; pass --overwrite to replace it")
        return store
    if os.path.isfile(out):
        raise ExportError(f"{out} is a file; give a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ExportError(f"{out} is not empty; pass --overwrite to replace it")
    return None


def _publish_local(stage: str, out: str, overwrite: bool) -> None:
    """Rename the finished folder into place; the old one (--overwrite) is renamed aside first, then removed."""
    old = None
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:   # appeared while we were writing
            raise ExportError(f"{out} is not empty (someone wrote there during the export); pass --overwrite")
        old = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.rlt-old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(stage, out)   # an empty folder there is replaced too
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _publish_remote(store: Store, stage: str, out: str, overwrite: bool, files: list[str], marker: dict) -> None:
    """Upload ``files``, then write ``_SUCCESS`` last: a prefix without it is an incomplete release."""
    out = out.rstrip("/")
    if store.fs.find(out):
        if not overwrite:
            raise ExportError(f"{out} is not empty (someone wrote there during the export); pass --overwrite")
        store.rm(f"{out}/{SUCCESS}")   # first: from now on readers see an incomplete release
        store.rm(out, recursive=True)
    for rel in files:
        store.put_file(os.path.join(stage, rel), f"{out}/{rel}", keep=True)
    store.write_json(f"{out}/{SUCCESS}", marker)


def export_release(catalog: Catalog, req: ExportRequest, alias_lookup: AliasLookup | None = None) -> ExportResult:
    """Write the release ``req.ref`` names to ``req.out`` in ``req.format``; see the module docstring."""
    release = resolve_release(catalog, req.ref, alias_lookup)
    remote = "://" in req.out and not req.out.startswith("file://")
    out = req.out.rstrip("/") if remote else os.path.abspath(os.path.expanduser(req.out.removeprefix("file://")))
    store = _check_target(out, remote, req.overwrite)
    facts = release_facts(catalog, release)
    rec = release.record
    splits = [_Split("train", "default", "data", "distill_set", rec["key"], distill_contract.SCHEMA, "example_id",
                     int(rec["num_rows"] or 0))]
    if req.with_ledger:
        lkey = facts["ledger_key"]
        led = catalog.artifact(lkey) if lkey else None
        if led is None or led["name"] != "scored_explanations":
            raise ExportError(f"distill set {rec['key']} names no committed scored_explanations ledger "
                              f"(inputs {rec['inputs_json']}); export it without --with-ledger")
        splits.append(_Split("scored", "scored", "scored", "scored_explanations", led["key"],
                             scored_contract.SCHEMA, "explanation_id", int(led["num_rows"] or 0)))

    parent = os.path.dirname(out) if not remote else None
    if parent:
        os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.rlt-export-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)   # mkdtemp's 0700 would outlive the rename
    build = tempfile.mkdtemp(prefix=".rlt-export-build-", dir=parent) if req.format == "hf" else None
    try:
        for s in splits:
            _write_split(catalog, s, "parquet" if req.format == "hf" else req.format, build or stage, req)
            log.info("export: %s %s: %d rows", s.table, s.key, s.rows)
        if build:
            _save_hf(splits, stage, build)
        load = _load_line(req.format, out, splits)
        exported = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "code_version": _code_version(), "ref": req.ref, "via": release.via, "remote": remote}
        with open(os.path.join(stage, CARD), "w", encoding="utf-8") as fh:
            fh.write(render_card(facts, splits, req.format, load, exported))
        files = {rel: {"sha256": _sha256(os.path.join(stage, rel)), "bytes": os.path.getsize(os.path.join(stage, rel))}
                 for rel in _local_files(stage)}
        manifest = {"format": req.format, "key": rec["key"], "ref": req.ref, "resolved_via": release.via,
                    "exported_at": exported["at"], "exporter_code_version": exported["code_version"],
                    "splits": {s.name: {"config": s.config, "artifact": s.table, "key": s.key, "rows": s.rows,
                                        **({"origin": s.origin} if s.origin else {})} for s in splits},
                    "load": load, "files": files, "facts": facts}
        with open(os.path.join(stage, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=1, sort_keys=True, default=str)
        written = _local_files(stage)
        all_files = {rel: files.get(rel) or {"sha256": _sha256(os.path.join(stage, rel)),
                                             "bytes": os.path.getsize(os.path.join(stage, rel))} for rel in written}
        if remote:
            _publish_remote(store, stage, out, req.overwrite, written,
                            {"key": rec["key"], "format": req.format, "files": len(written),
                             "manifest_sha256": all_files[MANIFEST]["sha256"], "at": exported["at"]})
        else:
            _publish_local(stage, out, req.overwrite)
    finally:
        for folder in (stage, build):
            if folder and os.path.isdir(folder):
                shutil.rmtree(folder, ignore_errors=True)
    log.info("export: %s %s -> %s (%s, %d files)", rec["name"], rec["key"], out, req.format, len(all_files))
    return ExportResult(out=out, format=req.format, release=release, splits={s.name: s.rows for s in splits},
                        files=all_files, load=load, facts=facts,
                        origin={s.name: dict(s.origin) for s in splits if s.origin})
