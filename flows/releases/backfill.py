"""Backfills: the nightly factory over a range of nights, in order, in this process (``rlt backfill``).

A night is a label, an ISO date for ``--nights 2026-11-01..2026-11-07`` (or ``2026-11-01,2026-11-04``). The recipe
is a template: every string value may hold ``{night}``, replaced per night (after ``--set``) before validation, e.g.
``ingest: {source: {uri: "data/problems/{night}.jsonl"}}``. With ``--sources 'data/problems/*.jsonl'`` each file
(sorted) is one night instead: it becomes ``ingest.source.uri`` and its stem is the night's label.

Each night goes through the real factory flow (flows.factory.factory_flow, as ``rlt factory`` does). Before it
runs, its plan is computed: a night whose stages are all committed and whose factory run (same recipe) ended
``done`` (audited, published or not) is skipped, so re-running an interrupted backfill skips the finished nights and
the interrupted night resumes from what the catalog already holds. A failed night (a failed stage, a failed audit)
stops the backfill unless ``keep_going``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import glob
import logging
import os
import time
from collections import Counter
from typing import Any, Callable, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_contracts.errors import ExpectedError

log = logging.getLogger("rlt.backfill")

PLACEHOLDER = "{night}"
MAX_NIGHTS = 366
FILE_TYPES = (".parquet", ".jsonl", ".json", ".csv")   # local source files (rlt_core/sources.py reads these)


class BackfillError(ExpectedError, ValueError):
    """A backfill that cannot start (bad nights, recipe without {night}, missing sources) or a night that failed."""


class BackfillRequest(BaseModel):
    """What ``rlt backfill`` was asked for."""

    model_config = ConfigDict(extra="forbid")
    recipe: str = Field(description="recipe YAML path (a template: string values may hold {night})")
    root: str = Field(description="data root")
    overrides: list[str] = Field(default_factory=list, description="--set key.path=value, applied before {night}")
    nights: Optional[str] = Field(default=None, description="A..B (inclusive ISO dates) or a comma list")
    sources: Optional[str] = Field(default=None, description="glob: each file (sorted) is one night")
    keep_going: bool = False
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_selector(self) -> BackfillRequest:
        if (self.nights is None) == (self.sources is None):
            raise ValueError("give exactly one of --nights A..B (e.g. 2026-11-01..2026-11-07) or --sources GLOB")
        return self


class Night(BaseModel):
    """One night: its label, position and resolved recipe."""

    model_config = ConfigDict(extra="forbid")
    label: str
    index: int = Field(ge=1)
    total: int = Field(ge=1)
    recipe: Any   # flows.recipe.Recipe (validated per night)

    @property
    def where(self) -> str:
        return f"night {self.label} ({self.index}/{self.total})"


class NightResult(BaseModel):
    """What happened to one night (one row of the final table)."""

    model_config = ConfigDict(extra="forbid")
    night: str
    status: Literal["ran", "skipped", "failed", "not run", "would run", "would skip"]
    seconds: float = 0.0
    run_id: str = ""
    distill_key: str = ""
    alias: str = ""
    published: Optional[bool] = None
    plan: dict[str, int] = Field(default_factory=dict)
    message: str = ""


# -- nights --------------------------------------------------------------------------------------------
def _date(text: str, spec: str) -> dt.date:
    try:
        if len(text.strip()) != 10:
            raise ValueError
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise BackfillError(f"--nights {spec!r}: {text.strip()!r} is not a date; expected YYYY-MM-DD "
                            "(e.g. 2026-11-01..2026-11-07 or 2026-11-01,2026-11-03)") from None


def parse_nights(spec: str) -> list[str]:
    """``A..B`` (inclusive) or ``A,B,C`` (sorted) -> ISO dates; at most MAX_NIGHTS."""
    spec = spec.strip()
    if not spec:
        raise BackfillError("--nights is empty; expected A..B (e.g. 2026-11-01..2026-11-07) or a comma list")
    if ".." in spec:
        start_s, _, end_s = spec.partition("..")
        start, end = _date(start_s, spec), _date(end_s, spec)
        if end < start:
            raise BackfillError(f"--nights {spec!r}: the end {end} is before the start {start}")
        days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    else:
        days = [_date(part, spec) for part in spec.split(",") if part.strip()]
        dup = sorted({d for d in days if days.count(d) > 1})
        if dup:
            raise BackfillError(f"--nights {spec!r}: {dup[0]} is listed twice")
        days.sort()
    if len(days) > MAX_NIGHTS:
        raise BackfillError(f"--nights {spec!r}: {len(days)} nights, more than {MAX_NIGHTS}; split the backfill")
    return [d.isoformat() for d in days]


def source_nights(pattern: str) -> list[tuple[str, str]]:
    """``--sources GLOB`` -> [(label = file stem, path)], sorted by path; each file is one night."""
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
    if not paths:
        raise BackfillError(f"--sources {pattern!r} matches no file; expected a glob such as "
                            "'data/problems/*.jsonl' (quote it so the shell leaves it alone)")
    if len(paths) > MAX_NIGHTS:
        raise BackfillError(f"--sources {pattern!r}: {len(paths)} files, more than {MAX_NIGHTS} nights; split it")
    labels = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    dup = next((lab for lab in labels if labels.count(lab) > 1), None)
    if dup is not None:
        same = [p for p, lab in zip(paths, labels) if lab == dup]
        raise BackfillError(f"--sources {pattern!r}: two files would be night {dup!r} ({same[0]}, {same[1]}); "
                            "each night needs one file")
    return list(zip(labels, paths))


# -- the recipe template ---------------------------------------------------------------------------------
def placeholders(value: Any, path: str = "") -> list[str]:
    """Dotted paths of the string values holding {night}."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in placeholders(v, f"{path}{k}.")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in placeholders(v, f"{path}{i}.")]
    return [path.rstrip(".")] if isinstance(value, str) and PLACEHOLDER in value else []


def fill(value: Any, night: str) -> Any:
    """Replace {night} in every string value (only that literal: other braces, e.g. in prompts, stay)."""
    if isinstance(value, dict):
        return {k: fill(v, night) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, night) for v in value]
    return value.replace(PLACEHOLDER, night) if isinstance(value, str) else value


def _with_source(data: dict, path: str) -> dict:
    ingest = dict(data.get("ingest") or {})
    source = ingest.get("source")
    ingest["source"] = {**(source if isinstance(source, dict) else {}), "uri": path}
    return {**data, "ingest": ingest}


def load_nights(req: BackfillRequest) -> list[Night]:
    """Every night's validated recipe, before anything runs (a bad recipe or night fails the backfill up front)."""
    from flows.recipe import load_recipe

    pairs = ([(n, None) for n in parse_nights(req.nights)] if req.nights is not None
             else source_nights(req.sources or ""))
    found: list[str] = []

    def template(label: str, source: str | None) -> Callable[[dict], dict]:
        def transform(data: dict) -> dict:
            found[:] = placeholders(data)
            return fill(_with_source(data, source) if source else data, label)
        return transform

    nights = []
    for i, (label, source) in enumerate(pairs, 1):
        recipe = load_recipe(req.recipe, req.overrides, transform=template(label, source))
        if req.nights is not None and not found:
            raise BackfillError(f"recipe {req.recipe}: no {PLACEHOLDER} in any value, so every night of --nights "
                                f"would be the same run; put it where the night's data comes from, e.g. "
                                f"ingest.source.uri: \"data/problems/{PLACEHOLDER}.jsonl\" (or use --sources GLOB)")
        nights.append(Night(label=label, index=i, total=len(pairs), recipe=recipe))
    check_sources(nights)
    return nights


def _local_file(uri: str) -> bool:
    """Would rlt_core.sources read this uri as a local file (not builtin:, a hub id or a remote URL)?"""
    if uri.startswith("builtin:") or "://" in uri:
        return False
    path = os.path.expanduser(uri)
    return os.path.splitext(path)[1].lower() in FILE_TYPES or os.path.lexists(path)


def check_sources(nights: list[Night]) -> None:
    """Every night whose source is a local file must have it now, before the first night runs."""
    missing = []
    for n in nights:
        uri = n.recipe.ingest.source.uri
        path = os.path.expanduser(uri)
        if _local_file(uri) and not os.path.isfile(path):
            what = "is a directory" if os.path.isdir(path) else "no such file"
            missing.append(f"night {n.label}: source {uri}: {what}")
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise BackfillError(f"{len(missing)} of {len(nights)} night(s) have no source file, nothing was run: "
                            + "; ".join(missing[:3]) + more)


# -- one night -------------------------------------------------------------------------------------------
def _plan(ctx, night: Night) -> list:
    from flows.plan import annotate, stage_keys
    from flows.releases.review import with_rejections

    return annotate(ctx, stage_keys(with_rejections(ctx.catalog, night.recipe)))


def _recipe_dict(night: Night) -> dict:
    return night.recipe.model_dump(mode="json")


def finished_run(ctx, night: Night) -> Optional[str]:
    """The newest factory run of exactly this night's recipe that ended done (audits passed or publish off)."""
    from flows.recipe import recipe_digest

    rows = ctx.catalog.rows("SELECT run_id, status FROM runs_latest WHERE flow = 'rlt-factory' AND recipe_hash = ? "
                            "ORDER BY ts DESC LIMIT 1", [recipe_digest(_recipe_dict(night))])
    return rows[0]["run_id"] if rows and rows[0]["status"] == "done" else None


def _counts(plans: list) -> dict[str, int]:
    return dict(Counter(p.status for p in plans))


def _distill_key(plans: list) -> str:
    return next((p.keys["distill_set"] for p in plans if "distill_set" in p.keys), "")


def _factory(night: Night, req: BackfillRequest) -> dict:
    """Run one night through the nightly factory flow (the call `rlt factory` makes)."""
    from flows.factory import factory_flow

    flow = factory_flow.with_options(flow_run_name=f"backfill-{night.label}")
    return flow(recipe=_recipe_dict(night), root=req.root, recipe_path=os.path.abspath(req.recipe))


def _failure(exc: BaseException) -> str:
    from flows.errors import expected_message

    line = expected_message(exc)
    if line is None:   # a bug, not bad input: keep its traceback in the log
        log.error("night failed with an unexpected error", exc_info=exc)
        line = f"{type(exc).__name__}: {exc}"
    return " ".join(line.split())[:500]


def run_night(ctx, night: Night, req: BackfillRequest, runner: Callable[[Night, BackfillRequest], dict]) -> NightResult:
    """Plan the night; skip it when committed, else run it (dry run: only say what would happen)."""
    plans = _plan(ctx, night)
    counts = _counts(plans)
    done_run = finished_run(ctx, night) if set(counts) == {"cached"} else None
    base = dict(night=night.label, plan=counts, distill_key=_distill_key(plans))
    if set(counts) == {"cached"} and not done_run:
        base["message"] = "stages committed, but no factory run of this recipe finished (audits, release) yet"
    if req.dry_run:
        return NightResult(status="would skip" if done_run else "would run", run_id=done_run or "", **base)
    if done_run:
        return NightResult(status="skipped", run_id=done_run, **base)
    t0 = time.time()
    try:
        out = runner(night, req)
    except Exception as exc:
        base["distill_key"] = ""   # planned, not committed
        return NightResult(status="failed", seconds=round(time.time() - t0, 1), message=_failure(exc), **base)
    audits = out.get("audits") or {}
    base["distill_key"] = (out.get("distill_set") or {}).get("key", base["distill_key"])
    return NightResult(status="ran", seconds=round(time.time() - t0, 1), run_id=out.get("run_id", ""),
                       alias=audits.get("alias") or "", published=audits.get("published"), **base)


def describe(night: Night, r: NightResult) -> str:
    """The night's one log line."""
    head = f"{night.where}: "
    if r.status == "ran":
        pub = (f"published {r.alias}" if r.published else f"{r.alias or 'alias'} not moved") \
            if r.published is not None else "no release step"
        return (f"{head}ran in {r.seconds:.1f}s, run {r.run_id}, distill {r.distill_key[:12] or '-'}, {pub}")
    if r.status == "skipped":
        return f"{head}skipped (committed by run {r.run_id})"
    if r.status == "failed":
        return f"{head}FAILED: {r.message}"
    if r.status in ("would run", "would skip"):
        todo = sum(v for k, v in r.plan.items() if k != "cached")
        return (f"{head}{r.status}" + (" (committed)" if r.status == "would skip" else "")
                + f": {todo} stage(s) to run, {r.plan.get('cached', 0)} cached "
                + "(" + ", ".join(f"{k} {v}" for k, v in sorted(r.plan.items())) + ")"
                + (f"; {r.message}" if r.message else ""))
    return f"{head}{r.status}"


# -- the backfill ----------------------------------------------------------------------------------------
def run_backfill(req: BackfillRequest, runner: Callable[[Night, BackfillRequest], dict] = _factory,
                 console=None) -> list[NightResult]:
    """Every night in order (see the module docstring); one NightResult per night, unrun ones as 'not run'."""
    from infra.engine.context import RunContext

    nights = load_nights(req)
    ctx = RunContext(root=req.root, tracking=False)   # planning only; each night's flow has its own context
    log.info("backfill of %d night(s) %s .. %s with recipe %s%s", len(nights), nights[0].label, nights[-1].label,
             req.recipe, " (dry run)" if req.dry_run else "")
    results: list[NightResult] = []
    with _progress(console, len(nights), req.dry_run) as advance:
        for night in nights:
            advance(night, None)
            r = run_night(ctx, night, req, runner)
            results.append(r)
            (log.error if r.status == "failed" else log.info)("%s", describe(night, r))
            advance(night, r)
            if r.status == "failed" and not req.keep_going:
                break
    results += [NightResult(night=n.label, status="not run") for n in nights[len(results):]]
    return results


def summary_rows(results: list[NightResult], dry_run: bool = False) -> list[dict]:
    """The final table's rows (a dry run: the plan of each night instead of what ran)."""
    if dry_run:
        return [{"night": r.night, "would": r.status.removeprefix("would "),
                 "stages to run": sum(v for k, v in r.plan.items() if k != "cached"),
                 "cached": r.plan.get("cached", 0), "plan": ", ".join(f"{k} {v}" for k, v in sorted(r.plan.items())),
                 "run": r.run_id or "-", "distill set": r.distill_key[:16] or "-"} for r in results]

    def published(r: NightResult) -> str:
        if r.published is None:
            return "-"
        return f"{r.alias} moved" if r.published else f"{r.alias or 'alias'} not moved"

    return [{"night": r.night, "status": r.status, "seconds": f"{r.seconds:.1f}" if r.status == "ran" or
             r.status == "failed" else "-", "run": r.run_id or "-", "distill set": r.distill_key[:16] or "-",
             "release": published(r)} for r in results]


def failure_line(results: list[NightResult]) -> Optional[str]:
    """The one `rlt: ...` line for a backfill with failed nights (None when none failed)."""
    failed = [r for r in results if r.status == "failed"]
    if not failed:
        return None
    first = failed[0]
    skipped = sum(r.status == "not run" for r in results)
    later = f"; {skipped} later night(s) not run" if skipped else ""
    others = f" (and {len(failed) - 1} more failed night(s): {', '.join(r.night for r in failed[1:4])})" \
        if len(failed) > 1 else ""
    return (f"backfill: night {first.night} failed: {first.message}{others}{later}; fix it and re-run the same "
            "command to resume (committed nights are skipped)")


@contextlib.contextmanager
def _progress(console, total: int, dry_run: bool) -> Iterator[Callable[[Night, Optional[NightResult]], None]]:
    """A rich progress bar over the nights (on a terminal; log lines print above it)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    progress = Progress(TextColumn("[bold]backfill[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=not console.is_terminal)
    task = progress.add_task("", total=total)

    def advance(night: Night, result: Optional[NightResult]) -> None:
        if result is None:
            progress.update(task, description=f"{'planning' if dry_run else 'running'} night {night.label}")
        else:
            progress.update(task, advance=1, description=f"night {night.label}: {result.status}")

    with progress, _logs_above(progress):
        yield advance


class _Through:
    """A plain text stream over rich's stderr proxy (Prefect's rich Console would unwrap the proxy and write
    under the live bar)."""

    def __init__(self, target) -> None:
        self._target = target

    def write(self, text: str) -> int:
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _logs_above(progress) -> Iterator[None]:
    """While the bar is live, send the console log handlers through rich's stderr proxy so lines print above it."""
    import sys

    from rich.console import Console

    if progress.disable or sys.stderr is sys.__stderr__:
        yield
        return
    proxy, swapped = sys.stderr, []
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                        if isinstance(lg, logging.Logger)]
    for h in {h for lg in loggers for h in lg.handlers}:
        if isinstance(h, logging.StreamHandler) and h.stream is sys.__stderr__:
            swapped.append((h, h.stream, getattr(h, "console", None)))
            h.stream = proxy
            if hasattr(h, "console"):   # Prefect's console handler prints through its own rich Console
                h.console = Console(file=_Through(proxy), markup=False, highlight=False, soft_wrap=True)
    try:
        yield
    finally:
        for h, stream, console in swapped:
            h.stream = stream
            if console is not None:
                h.console = console
