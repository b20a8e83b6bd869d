"""ingest: a source (HF id, local file, builtin generator) -> problems + quarantine artifacts."""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from typing import Iterator, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from data_contracts import problems, quarantine
from infra.engine.config import StageConfig
from infra.engine.stage import StageRun, declare
from rlt_core import benchmarks, decontam, sources

PART_ROWS = 5000


# The evaluate stage's default benchmarks; in a recipe, ingest.decontaminate.benchmarks follows evaluate.benchmarks
# unless it is set (flows/recipe.py).
DEFAULT_BENCHMARKS = ("countdown-heldout", "arithmetic-heldout")


class DecontaminateConfig(decontam.DecontamParams):
    """Check every problem against evaluation benchmarks (rlt_core/decontam.py); a hit is quarantined with reason
    ``contaminated``. ``local_files``: benchmark name -> a local copy in the benchmark's own schema (read instead
    of the hub, e.g. ``{math500: /data/math500.jsonl}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    benchmarks: list[str] = Field(default_factory=lambda: list(DEFAULT_BENCHMARKS))
    local_files: dict[str, str] = Field(default_factory=dict)

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [name for name in v if name not in benchmarks.BUILTIN_BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; expected names among "
                             f"{sorted(benchmarks.BUILTIN_BENCHMARKS)} (a local copy: local_files)")
        return v

    @model_validator(mode="after")
    def _local_files_listed(self) -> "DecontaminateConfig":
        extra = sorted(set(self.local_files) - set(self.benchmarks))
        if extra:
            raise ValueError(f"local_files: {extra} not in benchmarks {self.benchmarks}; expected a local copy of a "
                             "listed benchmark")
        return self


class IngestConfig(StageConfig):
    source: sources.SourceSpec = sources.SourceSpec(uri="builtin:countdown", n=64)
    heldout_fraction: float = Field(default=0.1, ge=0, lt=1)
    split_seed: int = 0
    dedup: Literal["none", "exact", "normalised"] = "normalised"
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)

    def key_config(self) -> dict:
        """The whole config, except the decontamination settings when it is off (they change nothing then)."""
        conf = self.model_dump(mode="json")
        if not self.decontaminate.enabled:
            conf["decontaminate"] = {"enabled": False}
        return conf

    def key_extra(self) -> dict[str, str]:
        """What the source and the benchmarks hold (an edited local file is a new artifact)."""
        extra = {"source": source_fingerprint(self.source)}
        if self.decontaminate.enabled and self.decontaminate.benchmarks:
            extra["benchmarks"] = decontam_fingerprint(self.decontaminate)
        return extra


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


def _benchmark_spec(cfg: DecontaminateConfig, name: str) -> benchmarks.BenchmarkSpec:
    spec = benchmarks.get_benchmark(name)
    local = cfg.local_files.get(name)
    return spec.model_copy(update={"dataset": os.path.expanduser(local)}) if local else spec


def benchmark_texts(cfg: DecontaminateConfig) -> list[decontam.BenchmarkText]:
    """Every question of every listed benchmark (all items, not evaluate's ``max_items``).

    Raises:
        SourceError: a benchmark cannot be loaded; one line naming it and the ways out.
    """
    texts = []
    for name in cfg.benchmarks:
        spec = _benchmark_spec(cfg, name)
        try:
            pairs = benchmarks.benchmark_questions(spec, benchmarks.load_benchmark_rows(spec))
        except benchmarks.BenchmarkError as exc:
            raise sources.SourceError(
                f"ingest.decontaminate: benchmark {name!r} cannot be loaded ({str(exc)[:300]}); ingest checks every "
                f"problem against it. Make {spec.dataset} reachable (network or HF cache), give a local copy in its "
                f"own schema with ingest.decontaminate.local_files.{name}=<path>, leave it out of "
                "ingest.decontaminate.benchmarks, or set ingest.decontaminate.enabled=false") from exc
        texts += [decontam.BenchmarkText(name, item_id, q) for item_id, q in pairs]
    return texts


def decontam_fingerprint(cfg: DecontaminateConfig) -> str:
    """What the benchmarks hold, for the key: a digest of the questions of built-in sets and local copies (so an
    edited copy is a new artifact), the dataset id/subset/split of hub sets (read only when ingest runs)."""
    h = hashlib.sha256()
    for name in cfg.benchmarks:
        spec = _benchmark_spec(cfg, name)
        if spec.dataset.startswith("builtin:"):
            pairs = benchmarks.benchmark_questions(spec, benchmarks.load_benchmark_rows(spec))
            ident = hashlib.sha256(repr(pairs).encode("utf-8")).hexdigest()
        elif os.path.isfile(spec.dataset):
            ident = source_fingerprint(sources.SourceSpec(uri=spec.dataset))
        else:
            ident = f"{spec.dataset}|{spec.subset}|{spec.split}|{spec.filter}"
        h.update(f"{name}={ident}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


def build_index(cfg: DecontaminateConfig) -> decontam.DecontamIndex | None:
    """The benchmarks' index (None when decontamination is off)."""
    if not cfg.enabled or not cfg.benchmarks:
        return None
    params = decontam.DecontamParams(**cfg.model_dump(include=set(decontam.DecontamParams.model_fields)))
    return decontam.DecontamIndex(benchmark_texts(cfg), params)


def _dedup_keys(rec: sources.ProblemRecord, mode: str) -> list[tuple[str, str]]:
    keys = [("duplicate_exact", rec.problem_id)] if mode != "none" else []
    if mode == "normalised":
        keys.append(("duplicate_normalised", "n:" + sources.dedup_key(rec.question)))
    return keys


def _classify(cfg: IngestConfig, seen: dict[str, str], source_row: int, raw,
              index: decontam.DecontamIndex | None = None) -> tuple[str, dict]:
    """One raw row -> ("problem", problems row) or (reason, quarantine row)."""
    item = sources.normalise_row(raw, cfg.source, source_row)
    if isinstance(item, sources.Quarantine):
        return item.reason, item.to_row(STAGE.name)
    dup = next(((r, seen[k]) for r, k in _dedup_keys(item, cfg.dedup) if k in seen), None)
    if dup is not None:
        return dup[0], dict(stage=STAGE.name, source=item.source, source_row=source_row, reason=dup[0],
                            field="question", detail=f"duplicate of {dup[1]}", raw=item.question[:2000])
    hit = index.check(item.question) if index is not None else None
    if hit is not None:
        return "contaminated", dict(stage=STAGE.name, source=item.source, source_row=source_row,
                                    reason="contaminated", field="question", detail=hit.detail(),
                                    raw=item.question[:2000])
    row = item.to_row(sources.assign_split(item.problem_id, cfg.heldout_fraction, cfg.split_seed))
    errors = problems.CONTRACT.validate_row(row, source_row)
    if errors:
        return "contract", dict(stage=STAGE.name, source=item.source, source_row=source_row, reason="contract",
                                field=errors[0].field, detail=str(errors[0]), raw=item.question[:2000])
    for _, k in _dedup_keys(item, cfg.dedup):
        seen[k] = item.problem_id
    return "problem", row


def classified(cfg: IngestConfig) -> Iterator[tuple[str, dict]]:
    """Every source row as ("problem", problems row) or (reason, quarantine row), in source order (streamed);
    decontamination included (the benchmarks' index is built first, once)."""
    seen: dict[str, str] = {}
    index = build_index(cfg.decontaminate)
    for source_row, raw in sources.iter_raw_rows(cfg.source):
        yield _classify(cfg, seen, source_row, raw, index)


def preview(cfg: IngestConfig) -> Iterator[dict]:
    """The problems rows the stage would commit, without writing anything (``rlt plan`` counts work with it)."""
    return (row for kind, row in classified(cfg) if kind == "problem")


def ingest(run: StageRun, cfg: IngestConfig) -> dict:
    """Stream the source; good rows become problems (deduplicated, split), bad rows go to quarantine with a reason."""
    good, bad = run.writer("problems"), run.writer("quarantine")
    buf: list[dict] = []
    qbuf: list[dict] = []
    reasons, splits = Counter(), Counter()
    first_bad: dict | None = None
    for kind, row in classified(cfg):
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


STAGE = declare(ingest, version="1", outputs=(problems.CONTRACT, quarantine.CONTRACT))
