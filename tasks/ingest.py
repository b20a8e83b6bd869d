"""ingest: a source (HF id, local file, builtin generator) -> problems + quarantine artifacts."""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from data_contracts import problems, quarantine
from rlt_core import sources
from tasks.stage import Output, Stage, StageRun

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
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
        except OSError:   # unreadable: the reader says so, as one clear SourceError
            return spec.uri
        return "sha256:" + h.hexdigest()[:16]
    return spec.uri


def _dedup_keys(rec: sources.ProblemRecord, mode: str) -> list[tuple[str, str]]:
    keys = [("duplicate_exact", rec.problem_id)] if mode != "none" else []
    if mode == "normalised":
        keys.append(("duplicate_normalised", "n:" + sources.dedup_key(rec.question)))
    return keys


def _classify(cfg: IngestConfig, seen: dict[str, str], source_row: int, raw) -> tuple[str, dict]:
    """One raw row -> ("problem", problems row) or (reason, quarantine row)."""
    item = sources.normalise_row(raw, cfg.source, source_row)
    if isinstance(item, sources.Quarantine):
        return item.reason, item.to_row(STAGE.name)
    dup = next(((r, seen[k]) for r, k in _dedup_keys(item, cfg.dedup) if k in seen), None)
    if dup is not None:
        return dup[0], dict(stage=STAGE.name, source=item.source, source_row=source_row, reason=dup[0],
                            field="question", detail=f"duplicate of {dup[1]}", raw=item.question[:2000])
    row = item.to_row(sources.assign_split(item.problem_id, cfg.heldout_fraction, cfg.split_seed))
    errors = problems.CONTRACT.validate_row(row, source_row)
    if errors:
        return "contract", dict(stage=STAGE.name, source=item.source, source_row=source_row, reason="contract",
                                field=errors[0].field, detail=str(errors[0]), raw=item.question[:2000])
    for _, k in _dedup_keys(item, cfg.dedup):
        seen[k] = item.problem_id
    return "problem", row


def ingest(run: StageRun) -> dict:
    """Stream the source; good rows become problems (deduplicated, split), bad rows go to quarantine with a reason."""
    cfg: IngestConfig = run.cfg
    good, bad = run.writer("problems"), run.writer("quarantine")
    seen: dict[str, str] = {}
    buf: list[dict] = []
    qbuf: list[dict] = []
    reasons, splits = Counter(), Counter()
    first_bad: dict | None = None
    for source_row, raw in sources.iter_raw_rows(cfg.source):
        kind, row = _classify(cfg, seen, source_row, raw)
        if kind == "problem":
            buf.append(row)
            splits[row["split"]] += 1
        else:
            qbuf.append(row)
            reasons[kind] += 1
            first_bad = first_bad or row
        for b, w in ((buf, good), (qbuf, bad)):
            if len(b) >= PART_ROWS:
                w.write_part(b)
                b.clear()
    if not splits:   # before the last parts are written: a refused source leaves (almost) nothing behind
        raise sources.SourceError(_no_usable_rows(cfg.source.uri, reasons, first_bad))
    for b, w in ((buf, good), (qbuf, bad)):
        if b:
            w.write_part(b)
    bad.stats.update({"of": run.key, **reasons})
    run.log.info("ingest: %d problems (%d train / %d heldout), %d quarantined %s", sum(splits.values()),
                 splits["train"], splits["heldout"], sum(reasons.values()), dict(reasons) or "")
    return {"rows_in": sum(splits.values()) + sum(reasons.values()), "problems": sum(splits.values()),
            "train": splits["train"], "heldout": splits["heldout"], "quarantined": sum(reasons.values()),
            **{f"quarantine.{r}": n for r, n in sorted(reasons.items())}}


def _no_usable_rows(uri: str, reasons: Counter, first: dict | None) -> str:
    """One line: the source, how its rows failed, and the first failure (row, field, what was expected)."""
    if first is None:
        return f"{uri}: holds no rows; expected at least one problem"
    counts = ", ".join(f"{r} {n}" for r, n in reasons.most_common())
    where = f"row {first['source_row']}" + (f" field {first['field']!r}" if first["field"] else "")
    return (f"{uri}: no usable rows, all {sum(reasons.values())} quarantined ({counts}); first: {where}: "
            f"{first['reason']}: {first['detail'][:300]}")


STAGE = Stage(
    name="ingest", version="1", config=IngestConfig, inputs=(),
    outputs=(Output("problems", problems.CONTRACT, ("problem_id", "problem", None, None)),
             Output("quarantine", quarantine.CONTRACT)),
    body=ingest, extra_key=lambda cfg: {"source": source_fingerprint(cfg.source)})


def run(ctx, cfg: IngestConfig) -> dict:
    """Run the stage outside a flow (tests, notebooks): {'problems': ref, 'quarantine': ref}."""
    from tasks.runner import execute

    return execute(STAGE, ctx, cfg, {})
