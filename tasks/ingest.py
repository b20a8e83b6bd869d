"""ingest: a source (HF id, local file, builtin generator) -> problems + quarantine artifacts."""
from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from data_contracts import problems, quarantine
from data_contracts.artifact import ArtifactRef
from infra.artifacts import ArtifactWriter, KeyParts, digest
from rlt_core import sources
from tasks.common import RunContext, cached, finish, logger, stage_run, write_provenance

STAGE = "ingest"
STAGE_VERSION = "1"
PART_ROWS = 5000


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: sources.SourceSpec = sources.SourceSpec(uri="builtin:countdown", n=64)
    heldout_fraction: float = Field(default=0.1, ge=0, lt=1)
    split_seed: int = 0
    dedup: Literal["none", "exact", "normalised"] = "normalised"


def source_fingerprint(spec: sources.SourceSpec) -> str:
    """Content digest of a local source file (so an edited file is a new artifact); the uri otherwise."""
    path = os.path.expanduser(spec.uri)
    if os.path.isfile(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        return "sha256:" + h.hexdigest()[:16]
    return spec.uri


def key_parts(cfg: IngestConfig) -> KeyParts:
    return KeyParts(STAGE, STAGE_VERSION, cfg.model_dump(mode="json"),
                    inputs={}, models={"source": source_fingerprint(cfg.source)})


def _dedup_keys(rec: sources.ProblemRecord, mode: str) -> list[tuple[str, str]]:
    keys = [("duplicate_exact", rec.problem_id)] if mode != "none" else []
    if mode == "normalised":
        keys.append(("duplicate_normalised", "n:" + sources.dedup_key(rec.question)))
    return keys


def run(ctx: RunContext, cfg: IngestConfig) -> dict[str, ArtifactRef]:
    parts = key_parts(cfg)
    key = parts.key()
    qkey = digest({"quarantine_of": key}, 20)
    hit = cached(ctx, STAGE, key)
    if hit is not None:
        return {"problems": hit, "quarantine": cached(ctx, STAGE, qkey) or hit}
    log, t0 = logger(), time.time()
    with stage_run(ctx, STAGE, parts) as mlrun:
        good = ArtifactWriter(ctx.store, ctx.manifest, "problems", parts, ctx.run_id, problems.CONTRACT)
        bad = ArtifactWriter(ctx.store, ctx.manifest, "quarantine", parts, ctx.run_id, quarantine.CONTRACT, key=qkey)
        seen: dict[str, str] = {}
        buf, qbuf, reasons, splits = [], [], Counter(), Counter()

        def flush(force: bool = False) -> None:
            if buf and (force or len(buf) >= PART_ROWS):
                good.write_part(problems.CONTRACT.to_table(buf))
                write_provenance(ctx, good.key, "problem", buf, "problem_id", None, None)
                buf.clear()
            if qbuf and (force or len(qbuf) >= PART_ROWS):
                bad.write_part(quarantine.CONTRACT.to_table(qbuf))
                qbuf.clear()

        for source_row, raw in sources.iter_raw_rows(cfg.source):
            item = sources.normalise_row(raw, cfg.source, source_row)
            if isinstance(item, sources.Quarantine):
                qbuf.append(item.to_row(STAGE))
                reasons[item.reason] += 1
            else:
                dup = next(((r, seen[k]) for r, k in _dedup_keys(item, cfg.dedup) if k in seen), None)
                if dup is not None:
                    qbuf.append(dict(stage=STAGE, source=item.source, source_row=source_row, reason=dup[0],
                                     field="question", detail=f"duplicate of {dup[1]}", raw=item.question[:2000]))
                    reasons[dup[0]] += 1
                else:
                    for _, k in _dedup_keys(item, cfg.dedup):
                        seen[k] = item.problem_id
                    split = sources.assign_split(item.problem_id, cfg.heldout_fraction, cfg.split_seed)
                    row = item.to_row(split)
                    errors = problems.CONTRACT.validate_row(row, source_row)
                    if errors:
                        qbuf.append(dict(stage=STAGE, source=item.source, source_row=source_row,
                                         reason="contract", field=errors[0].field, detail=str(errors[0]),
                                         raw=item.question[:2000]))
                        reasons["contract"] += 1
                    else:
                        buf.append(row)
                        splits[split] += 1
            flush()
        flush(force=True)
        stats = {"rows_in": sum(splits.values()) + sum(reasons.values()), "problems": sum(splits.values()),
                 "train": splits["train"], "heldout": splits["heldout"], "quarantined": sum(reasons.values()),
                 "quarantine_key": qkey, **{f"quarantine.{r}": n for r, n in sorted(reasons.items())}}
        if not splits:
            raise sources.SourceError(f"{cfg.source.uri}: no usable rows ({dict(reasons)} quarantined)")
        qref = bad.commit({"of": key, **{r: n for r, n in reasons.items()}})
        ref = finish(ctx, good, STAGE, t0, stats, mlrun)
        log.info("ingest: %d problems (%d train / %d heldout), %d quarantined %s", stats["problems"],
                 splits["train"], splits["heldout"], stats["quarantined"], dict(reasons) or "")
    return {"problems": ref, "quarantine": qref}
