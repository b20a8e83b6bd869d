"""The `rlt` command line: factory, backfill, run, plan, lineage, manifest, catalog, tracking, releases, promote,
rollback, deploy, serve, report, stack, models, export."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("rlt")
STAGE_NAMES = ("ingest", "train_teacher", "generate", "score", "filter", "distill", "evaluate")


# Errors about input, recipes or the state of the data root: one `rlt: ...` line says all (their tracebacks only
# with --debug); anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = ("RecipeError", "SourceError", "StageFailed", "ContractError", "CatalogError", "QueryError",
                   "LockTimeout", "CheckpointCorrupt", "ExtensionError", "ExportError", "AuditFailed",
                   "ReleaseError", "AliasConflict", "BackfillError", "ModelUnavailable")


class _QuietExpected(logging.Filter):
    """Drop the traceback Prefect's run loggers attach to a failed task/flow when the error is an expected one
    (the message line stays, in the console and in the Prefect UI)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _expected(exc):
            record.exc_info, record.exc_text = None, None
        return True


def _expected(exc: BaseException) -> str | None:
    """The one line to print for an expected error (bad input, recipe, data-root state, an unreachable object
    store); None for anything else (a bug: its traceback stays)."""
    if type(exc).__name__ in EXPECTED_ERRORS:
        return str(exc)
    from infra.storage import outage_message

    return outage_message(exc)


def _setup_env(root_arg: str | None = None, debug: bool = False) -> None:
    """Environment defaults, set before prefect/mlflow are imported (they read settings at import)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    root = root_arg or os.environ.get("RLT_DATA_ROOT") or "./rlt-data"
    if "://" not in root and not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        # embedded default: the ephemeral Prefect database lives in the data root, beside the artifacts
        os.environ["PREFECT_HOME"] = os.path.join(os.path.abspath(root), "_prefect", "home")
        os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=os.environ.get("RLT_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # (aiobotocore logs "Found credentials in environment variables." at INFO on every S3 client it makes)
    for noisy in ("httpx", "urllib3", "botocore", "aiobotocore", "alembic", "mlflow", "filelock", "prefect.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not debug:
        for name in ("prefect.task_runs", "prefect.flow_runs"):
            logging.getLogger(name).addFilter(_QuietExpected())


def _console():
    from rich.console import Console

    # piped output (logs, CI, tests): wide enough that keys and ids are never folded
    return Console() if sys.stdout.isatty() else Console(width=200)


def _table(rows: list[dict], title: str = "") -> None:
    from rich.table import Table

    if not rows:
        _console().print(f"[dim]{title}: no rows[/dim]")
        return
    t = Table(title=title or None, show_lines=False)
    for c in rows[0]:
        t.add_column(str(c), overflow="fold")
    for r in rows:
        t.add_row(*[_short(v) for v in r.values()])
    _console().print(t)


def _short(v: Any, n: int = 80) -> str:
    s = str(v)
    return s if len(s) <= n else s[: n - 1] + "…"


def _ctx(args):
    from infra.settings import data_root
    from tasks.common import RunContext

    return RunContext(root=data_root(args.data_root))


def _recipe(args):
    from flows.recipe import load_recipe

    return load_recipe(args.recipe, args.set + _executor_overrides(args))


def _executor_overrides(args) -> list[str]:
    """--executor / --ray-address as recipe overrides (the executor is not part of any key)."""
    out = []
    if getattr(args, "executor", None):
        out.append(f"executor.kind={args.executor}")
    if getattr(args, "ray_address", None):
        out.append(f"executor.address={args.ray_address}")
    return out


# -- commands ----------------------------------------------------------------------------------------
def cmd_factory(args) -> int:
    from flows.factory import factory_flow
    from infra.settings import data_root

    recipe = _recipe(args)
    t0 = time.time()
    out = factory_flow(recipe=recipe.model_dump(mode="json"), root=data_root(args.data_root),
                       fail_shards=args.inject_failure or None, recipe_path=os.path.abspath(args.recipe))
    _summary(args, out, time.time() - t0)
    return 0


def cmd_backfill(args) -> int:
    """The factory over a range of nights (or source files), in order; committed nights are skipped."""
    from flows.backfill import BackfillError, BackfillRequest, failure_line, run_backfill, summary_rows
    from infra.settings import data_root

    req = BackfillRequest(recipe=args.recipe, root=data_root(args.data_root), overrides=args.set + _executor_overrides(args),
                          nights=args.nights, sources=args.sources, keep_going=args.keep_going,
                          dry_run=args.dry_run)
    t0 = time.time()
    results = run_backfill(req)
    counts = {s: sum(r.status == s for r in results) for s in dict.fromkeys(r.status for r in results)}
    title = (f"backfill {'plan' if args.dry_run else 'of'} {len(results)} night(s) in {time.time() - t0:.1f}s: "
             + ", ".join(f"{n} {s}" for s, n in counts.items()))
    _table(summary_rows(results, dry_run=args.dry_run), title)
    line = failure_line(results)
    if line is not None:
        raise BackfillError(line)
    return 0


def cmd_run(args) -> int:
    from flows.factory import STAGE_FLOWS
    from infra.settings import data_root

    recipe = _recipe(args)
    t0 = time.time()
    out = STAGE_FLOWS[args.stage](recipe=recipe.model_dump(mode="json"), root=data_root(args.data_root),
                                  fail_shards=args.inject_failure or None, recipe_path=os.path.abspath(args.recipe))
    _summary(args, out, time.time() - t0)
    return 0


def _summary(args, out: dict, seconds: float) -> None:
    from infra.tracking import Tracker

    con = _console()
    con.print(f"\n[bold green]done[/bold green] in {seconds:.1f}s, run {out['run_id']}")
    rows = [{"artifact": k, "key": v["key"], "rows": v["num_rows"], "uri": v["uri"]}
            for k, v in out.items() if isinstance(v, dict) and "key" in v]
    _table(rows, "artifacts")
    ctx = _ctx(args)
    if "report" in out:
        con.print(f"report:   {out['report']['uri']}/index.html")
    con.print(f"catalog:  {ctx.catalog.location.describe()}  (rlt manifest sql \"SELECT * FROM artifacts_committed\")")
    con.print(f"mlflow:   {Tracker(ctx.store.root).ui_hint()}")
    from infra.tracking import pending_run_ids

    if out["run_id"] in pending_run_ids(ctx.store):
        con.print(f"[bold yellow]tracking: incomplete[/bold yellow] (MLflow was unreachable): `rlt tracking status`, "
                  f"then `rlt tracking relog {out['run_id']}`")


def cmd_plan(args) -> int:
    from flows.plan import annotate, count_reuse, stage_keys

    ctx = _ctx(args)
    plans = count_reuse(ctx, annotate(ctx, stage_keys(_recipe(args), [args.stage] if args.stage else None)))
    _table([{"stage": p.node.id, "will": p.status, "key": p.key[:16], "why": p.reason} for p in plans], "plan")
    return 0


def cmd_lineage(args) -> int:
    from flows.lineage import artifact_chain, example_chain

    cat = _reader(args)
    steps = example_chain(cat, args.id)
    if not steps:
        steps = [{"step": f"artifact {a['name']}", **a} for a in artifact_chain(cat, args.id)]
    if not steps:
        print(f"rlt lineage: no example or artifact with id {args.id!r} in {cat.store.root}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(steps, indent=1, default=str))
        return 0
    con = _console()
    for i, s in enumerate(steps):
        con.print(f"[bold]{'  ' * min(i, 1)}{'└─ ' if i else ''}{s['step']}[/bold]")
        for k, v in s.items():
            if k != "step" and v not in (None, ""):
                con.print(f"      {k}: {_short(v, 120)}")
    return 0


def _reader(args, snapshot: int | None = None):
    from infra.catalog import open_reader
    from infra.settings import data_root
    from infra.storage import Store

    return open_reader(Store(data_root(args.data_root)), snapshot=snapshot)


def cmd_manifest(args) -> int:
    from infra.catalog import read_query

    cat = _reader(args, args.snapshot)
    if args.action == "snapshots":
        _table(cat.snapshots(args.limit), "snapshots (newest first; query one with --snapshot N)")
        return 0
    query = args.query
    if args.action == "ls":
        query = "SELECT name, label, key, producer, num_rows, run_id, ts FROM artifacts_committed ORDER BY ts"
    elif query is None:
        raise SystemExit("rlt manifest sql: give a query, e.g. rlt manifest sql \"SELECT * FROM artifacts_committed\"")
    cols, rows = read_query(cat, query)
    if args.json:
        sys.stdout.write("[")
        for i, r in enumerate(rows):
            sys.stdout.write(("," if i else "") + "\n " + json.dumps(dict(zip(cols, r)), default=str))
        sys.stdout.write("\n]\n")
        return 0
    shown = [dict(zip(cols, r)) for _, r in zip(range(args.limit), rows)]
    more = sum(1 for _ in rows)
    _table(shown, f"{len(shown) + more} row(s)" + (f", first {len(shown)} shown (--limit)" if more else ""))
    return 0


def cmd_catalog(args) -> int:
    from infra.catalog import Catalog
    from infra.settings import data_root
    from infra.storage import Store

    store = Store(data_root(args.data_root))
    if args.action == "import":
        from infra.catalog_import import import_manifest

        print(json.dumps(import_manifest(store), indent=1))
        return 0
    cat = Catalog(store)
    if args.action == "verify":
        from infra.artifacts import verify

        recs = cat.rows("SELECT * FROM artifacts_committed" + (" WHERE key = ?" if args.key else ""),
                        [args.key] if args.key else [])
        problems = [p for r in recs for p in verify(store, r)]
        for p in problems:
            print(f"MISMATCH {p}")
        print(f"verified {len(recs)} artifact(s): {len(problems)} problem(s)")
        return 1 if problems else 0
    if args.action == "maintain":
        print(json.dumps(cat.maintain(ledger_retention_s=args.retention_s), indent=1))
        return 0
    info = {"catalog": cat.location.describe(), "data_path": cat.location.data_path,
            **cat.rows("SELECT (SELECT count(*) FROM artifacts_committed) AS artifacts, (SELECT count(*) FROM "
                       "runs_latest) AS runs, (SELECT count(*) FROM lake.snapshots()) AS snapshots")[0],
            "tables": cat.refresh_data_views()}
    print(json.dumps(info, indent=1, default=str))
    return 0


def cmd_report(args) -> int:
    ctx = _ctx(args)
    cond = "" if args.run_id == "latest" else " AND run_id = ?"
    rows = ctx.catalog.rows(f"SELECT uri FROM artifacts_committed WHERE name = 'report'{cond} ORDER BY ts DESC "
                            "LIMIT 1", [] if args.run_id == "latest" else [args.run_id])
    if not rows:
        print(f"rlt report: no report for run {args.run_id!r}", file=sys.stderr)
        return 1
    a = rows[0]
    print(f"{a['uri']}/index.html")
    return 0


def cmd_tracking(args) -> int:
    """MLflow calls a run could not make (server down: the data work went on) and their replay."""
    from infra import tracking

    ctx = _ctx(args)
    pending = tracking.pending_run_ids(ctx.store)
    latest = {r["run_id"]: r for r in ctx.catalog.rows("SELECT * FROM runs_latest")}
    if args.action == "status":
        found = [tracking.summarize(ctx.store, rid) for rid in pending]
        lost = [{"run_id": k, "journal": tracking.journal_folder(ctx.store, k)} for k, r in latest.items()
                if r.get("tracking") == "incomplete" and k not in pending]
        if args.json:
            print(json.dumps({"pending": found, "journal_missing": lost}, indent=1, default=str))
            return 0
        if not found and not lost:
            print(f"no runs with pending tracking in {ctx.store.root}")
            return 0
        _table([{"run": s["run_id"], "state": (latest.get(s["run_id"]) or {}).get("status", "?"), "since": s["since"],
                 "mlflow runs to create": s["runs_to_create"], "to complete": s["runs_to_complete"],
                 "params": s["params"], "metrics": s["metrics"], "tags": s["tags"], "artifacts": s["artifacts"],
                 "ends": s["ends"]} for s in found], "runs with pending MLflow tracking")
        for s in found:
            print(f"{s['run_id']}: MLflow at {s['uri']} failed: {s['reason'][:300]}\n  journal: {s['journal']}")
            for r in s["runs"]:
                what = "to create" if r["create"] and not r["mlflow_run_id"] else f"MLflow run {r['mlflow_run_id']}"
                print(f"  - {r['name'] or '(started before the outage)'} ({what}): {r['params']} params, "
                      f"{r['metrics']} metric values, {r['tags']} tags, {r['artifacts']} artifacts"
                      + (f", end {r['end']}" if r["end"] else ""))
        for x in lost:
            print(f"{x['run_id']}: the catalog says it was tracked incompletely but its journal is gone ({x['journal']});"
                  " what it missed cannot be replayed")
        print("replay with: rlt tracking relog [RUN_ID]   (into $MLFLOW_TRACKING_URI or --tracking-uri)")
        return 0
    todo = [args.run_id] if args.run_id else pending
    if args.run_id and args.run_id not in pending:
        print(f"rlt tracking relog: no pending tracking for run {args.run_id!r} in {ctx.store.root}", file=sys.stderr)
        return 1
    if not todo:
        print(f"nothing to relog: no runs with pending tracking in {ctx.store.root}")
        return 0
    failed = 0
    for rid in todo:
        if (latest.get(rid) or {}).get("status") == "running" and not args.force:
            print(f"rlt tracking relog: run {rid} is still running (or crashed); its journal may still grow. "
                  "Wait for it, or pass --force if it crashed", file=sys.stderr)
            failed += 1
            continue
        from infra.locks import hold

        with hold(ctx.locks, f"tracking-relog:{rid}", ctx.owner(), timeout_s=600):
            try:
                res = tracking.relog(ctx.store, rid, uri=args.tracking_uri)
            except tracking.TrackingError as exc:
                print(f"rlt tracking relog: {exc}", file=sys.stderr)
                failed += 1
                continue
        if rid in latest:   # the catalog's run record: tracking now complete, with the real MLflow parent run id
            row = {k: v for k, v in latest[rid].items() if k != "ts"}
            row.update(tracking="relogged", mlflow_run_id=res["mapping"].get(row["mlflow_run_id"] or "",
                                                                            row["mlflow_run_id"]))
            ctx.catalog.append("runs", [row], message="run")
        done = ", ".join(f"{v} {k}" for k, v in res["replayed"].items()) or "nothing new"
        print(f"{rid}: replayed into {res['uri']} ({done}) in {res['seconds']}s; journal cleared")
    return 1 if failed else 0


def cmd_export(args) -> int:
    from flows.export import CARD, MANIFEST, ExportRequest, export_release
    from infra.catalog import Catalog
    from infra.settings import data_root
    from infra.storage import Store

    req = ExportRequest(ref=args.ref, format=args.format, out=args.out, with_ledger=args.with_ledger,
                        overwrite=args.overwrite)
    t0 = time.time()
    from flows.releases import alias_lookup

    res = export_release(Catalog(Store(data_root(args.data_root)), read_only=True), req, alias_lookup)
    rel = res.release
    print(f"exported distill_set {rel.key} ({args.ref!r}, matched as {rel.via}) as {res.format} to {res.out} "
          f"in {time.time() - t0:.1f}s")
    for name, rows in res.splits.items():
        what = "distill_set" if name == "train" else "scored_explanations (the reward ledger)"
        by = ", ".join(f"{n} {o}" for o, n in sorted(res.origin.get(name, {}).items()))
        print(f"  {name}: {rows} rows from {what}" + (f" ({by})" if by else ""))
    size = sum(f["bytes"] or 0 for f in res.files.values())
    print(f"  files: {len(res.files)} ({size / 1e6:.2f} MB): {', '.join(sorted(res.files))}")
    print(f"  card: {res.out}/{CARD}; sha256 of every file: {res.out}/{MANIFEST}"
          + ("; complete once _SUCCESS exists" if "://" in res.out else ""))
    print("load it with:")
    print(res.load)
    return 0


def cmd_releases(args) -> int:
    from flows import releases

    rows = releases.history(_reader(args), args.alias)
    if args.json:
        print(json.dumps(rows, default=str, indent=1))
        return 0
    shown = []
    for r in rows:
        figs = "; ".join(f"{a['name']}={'-' if a['figure'] is None else format(a['figure'], '.4g')}"
                         f"{'' if a['passed'] else ' FAIL'}" for a in r["audits"].get("results", []))
        shown.append({"when": str(r["ts"])[:19], "alias": r["alias"], "action": r["action"], "key": r["key"][:16],
                      "previous": (r["previous_key"] or "")[:16], "run": (r["run_id"] or "")[:12], "by": r["actor"],
                      "why": r["reason"], "audits": figs or "-"})
    _table(shown, f"releases{' of ' + args.alias if args.alias else ''} (newest first)")
    return 0


def cmd_promote(args) -> int:
    from flows import releases

    row = releases.promote(_ctx(args).catalog, args.ref, args.alias, args.reason)
    print(f"{row['alias']}: {row['previous_key'] or '(none)'} -> {row['key']} (promote by {row['actor']}: "
          f"{row['reason']})")
    return 0


def cmd_rollback(args) -> int:
    from flows import releases

    row = releases.rollback(_ctx(args).catalog, args.alias, args.reason)
    print(f"{row['alias']}: {row['previous_key']} -> {row['key']} (rollback by {row['actor']}: {row['reason']})")
    return 0


def cmd_deploy(args) -> int:
    from flows.deploy import deploy

    print(deploy(args.recipe, args.set + _executor_overrides(args), args.cron, args.name, args.pool, args.data_root))
    return 0


def cmd_serve(args) -> int:
    from flows.deploy import serve

    serve(args.recipe, args.set + _executor_overrides(args), args.cron, args.name, args.data_root)
    return 0


def _int_in(lo: int, hi: int):
    """argparse type: an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not in {lo}..{hi}")
        return value
    return parse


def cmd_stack(args) -> int:
    from infra import stack
    from infra.settings import data_root

    root = data_root(args.data_root)
    if "://" in root:
        print("rlt stack: --data-root must be a local folder (it holds the services' data)", file=sys.stderr)
        return 2
    if args.action != "up" and (args.ray_nodes is not None or args.ray_cpus_per_node is not None):
        print("rlt stack: --ray-nodes/--ray-cpus-per-node go with `rlt stack up`", file=sys.stderr)
        return 2
    if args.action == "up":
        cfg = stack.StackConfig(ray_nodes=args.ray_nodes or 0, ray_cpus_per_node=args.ray_cpus_per_node or 1)
        try:
            env = stack.up(root, cfg)
        except stack.StackError as exc:
            print(f"rlt stack up: {exc}", file=sys.stderr)
            return 2
        print("# the stack is up; point the factory at it with (holds its credentials; again: rlt stack env):")
        print(stack.format_exports(env))
    elif args.action == "env":   # the credentials, for `eval "$(rlt stack env)"`
        try:
            print(stack.format_exports(stack.current_env(root)))
        except stack.StackError as exc:
            print(f"rlt stack env: {exc}", file=sys.stderr)
            return 2
    elif args.action == "down":
        stack.down(root)
        print("stack stopped")
    else:   # status: no credentials here
        _table([s.model_dump() if hasattr(s, "model_dump") else dict(s.__dict__) for s in stack.status(root)],
               "services")
        print('every service wants credentials: eval "$(rlt stack env)" (prints them)', file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from infra.models import resolve_model

    t0 = time.time()
    snap = resolve_model(args.ref)
    print(json.dumps({"ref": snap.ref, "path": snap.path, "digest": snap.digest,
                      "seconds": round(time.time() - t0, 3)}, indent=1))
    return 0


# -- parser ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlt", description=(
        "rlt-factory: reasoning-distillation data with Reinforcement-Learned Teachers. Artifacts go to "
        "--data-root / $RLT_DATA_ROOT (default ./rlt-data; s3://bucket/prefix works with AWS_* variables), "
        "runs to MLflow ($MLFLOW_TRACKING_URI, default sqlite in the data root), flows to Prefect."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  rlt factory --recipe flows/recipes/tiny.yaml\n"
               "  rlt backfill --recipe nightly.yaml --nights 2026-11-01..2026-11-07   # {night} in the recipe\n"
               "  rlt plan --recipe flows/recipes/tiny.yaml --set temperature=0.9\n"
               "  rlt run generate --recipe flows/recipes/tiny.yaml\n"
               "  rlt manifest sql \"SELECT stage, label, status, seconds FROM stage_runs\"\n"
               "  rlt manifest snapshots; rlt manifest sql --snapshot 12 \"SELECT count(*) FROM data_explanations\"\n"
               "  rlt lineage d_0123abcd...\n"
               "  rlt export latest --format hf --out ./release   # the newest distill set, with a dataset card\n\n"
               "catalog: $RLT_CATALOG_URL (postgresql://... for many machines; default: a SQLite file in the "
               "data root)")
    p.add_argument("--data-root", help="artifact store root (default: $RLT_DATA_ROOT or ./rlt-data)")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks of expected errors (bad input, recipe errors, failed shards) too")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def recipe_args(sp):
        sp.add_argument("--recipe", required=True, help="recipe YAML (see flows/recipes/)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, e.g. generate.num_samples=2 (repeatable)")
        sp.add_argument("--executor", choices=["local", "ray"], default=None,
                        help="where shards of generate and score run: here (local, the default) or on a Ray cluster "
                             "(ray; see docs/scale-out.md). Overrides the recipe's executor.kind; never changes a key")
        sp.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                        help="the Ray cluster (default: executor.address, else $RLT_RAY_ADDRESS from `rlt stack env`)")

    sp = sub.add_parser("factory", help="run the whole chain (cached stages are skipped)")
    recipe_args(sp)
    sp.add_argument("--inject-failure", action="append", metavar="STAGE:SHARD",
                    help="testing aid: make a shard fail, e.g. generate:00001")
    sp.set_defaults(func=cmd_factory)
    sp = sub.add_parser(
        "backfill", help="run the factory night by night over a date range (or source files), skipping committed "
                         "nights; resumable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the nightly factory for each night in order, in this process. The recipe is a template: "
                    "any string value may hold {night} (the night's ISO date), e.g. ingest.source.uri: "
                    "\"data/problems/{night}.jsonl\". With --sources each file (sorted) is one night: it becomes "
                    "ingest.source.uri and its stem the night's label. A night whose stages are all committed and "
                    "whose factory run finished is skipped, so re-running the same command after an interruption "
                    "resumes. A failed night (a stage, an audit) stops the backfill with exit 2 unless "
                    "--keep-going.",
        epilog="examples:\n"
               "  rlt backfill --recipe nightly.yaml --nights 2026-11-01..2026-11-07\n"
               "  rlt backfill --recipe nightly.yaml --nights 2026-11-01,2026-11-04 --dry-run\n"
               "  rlt backfill --recipe flows/recipes/tiny.yaml --sources 'data/problems/*.jsonl' --keep-going\n\n"
               "nightly.yaml holds e.g.  ingest: {source: {uri: \"data/problems/{night}.jsonl\"}}")
    recipe_args(sp)
    which = sp.add_mutually_exclusive_group(required=True)
    which.add_argument("--nights", metavar="A..B", help="inclusive ISO date range, e.g. 2026-11-01..2026-11-07, or a "
                                                        "comma list (at most 366 nights); needs {night} in the recipe")
    which.add_argument("--sources", metavar="GLOB", help="one night per matching file (sorted), e.g. "
                                                         "'data/problems/*.jsonl' (quote it)")
    sp.add_argument("--keep-going", action="store_true", help="run the later nights after a failed one (exit 2 at "
                                                              "the end all the same)")
    sp.add_argument("--dry-run", action="store_true", help="print each night's plan (stages to run vs cached); "
                                                           "run nothing")
    sp.set_defaults(func=cmd_backfill)
    sp = sub.add_parser("run", help="run one stage as its own flow (and whatever upstream of it is not committed)")
    sp.add_argument("stage", choices=STAGE_NAMES)
    recipe_args(sp)
    sp.add_argument("--inject-failure", action="append", metavar="STAGE:SHARD", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_run)
    sp = sub.add_parser("plan", help="what each stage would do and why (which key part changed, who runs it now)")
    recipe_args(sp)
    sp.add_argument("--stage", choices=STAGE_NAMES, help="only this stage and what it needs")
    sp.set_defaults(func=cmd_plan)
    sp = sub.add_parser("lineage", help="trace an example (d_/e_/p_ id, eval item id) or artifact key to its source")
    sp.add_argument("id")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_lineage)
    sp = sub.add_parser("manifest", help="query the catalog read-only: `ls`, `sql \"SELECT ...\"`, `snapshots`",
                        description="Read-only SQL over the catalog: relations runs, artifacts, lineage, shards, "
                                    "provenance, stage_runs, stage_costs, releases (+ views runs_latest, "
                                    "artifacts_committed, shards_latest, aliases_current, costs_by_stage, "
                                    "costs_by_run) and one "
                                    "data_<artifact> view per artifact kind. Data is streamed from the lake, never "
                                    "loaded whole. Exactly one SELECT/EXPLAIN.")
    sp.add_argument("action", choices=["ls", "sql", "snapshots"])
    sp.add_argument("query", nargs="?", default=None)
    sp.add_argument("--json", action="store_true", help="all rows as JSON (streamed)")
    sp.add_argument("--limit", type=int, default=200, help="rows shown in the table view")
    sp.add_argument("--snapshot", type=int, default=None, help="query the lake as of this snapshot id")
    sp.set_defaults(func=cmd_manifest)
    sp = sub.add_parser("catalog", help="the catalog itself: `info`, `verify` (re-hash committed files), `maintain`, "
                                        "`import` (a pre-catalog data root)")
    sp.add_argument("action", choices=["info", "verify", "maintain", "import"])
    sp.add_argument("--key", help="verify: only this artifact")
    sp.add_argument("--retention-s", type=float, default=3600.0,
                    help="maintain: bookkeeping snapshots older than this expire")
    sp.set_defaults(func=cmd_catalog)
    sp = sub.add_parser("report", help="print the path of a run's HTML report (RUN_ID or 'latest')")
    sp.add_argument("run_id")
    sp.set_defaults(func=cmd_report)
    sp = sub.add_parser("tracking", help="MLflow calls a run could not make (server down): `status`, `relog`",
                        description="When MLflow is unreachable a run goes on: its data is committed and its "
                                    "tracking calls are journaled in <data root>/_tracking/pending/<run id>/. "
                                    "`status` says what each run is missing; `relog [RUN_ID]` replays it into "
                                    "MLflow (idempotent) and clears the journal.")
    sp.add_argument("action", choices=["status", "relog"])
    sp.add_argument("run_id", nargs="?", default=None, help="relog: only this run (default: every pending run)")
    sp.add_argument("--tracking-uri", default=None,
                    help="relog: MLflow to replay into (default: $MLFLOW_TRACKING_URI, else the data root's sqlite)")
    sp.add_argument("--force", action="store_true", help="relog: also runs the catalog still calls running")
    sp.add_argument("--json", action="store_true", help="status: as JSON")
    sp.set_defaults(func=cmd_tracking)
    sp = sub.add_parser(
        "export", help="write a distill set (a release) as a Hugging Face datasets folder, parquet or jsonl, "
                       "with a dataset card",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Export a committed distill set with a dataset card (README.md: source, teacher and student "
                    "digests, recipe, row counts, filter and quarantine figures, lineage keys) and rlt_export.json "
                    "(the same facts and every file's sha256). Rows stream from the catalog; the release appears "
                    "under OUT only when complete (local: renamed into place; S3: _SUCCESS is written last).",
        epilog="layouts:\n"
               "  hf       OUT/dataset_dict.json, OUT/train/ (+ OUT/scored/)   datasets.load_from_disk(OUT)\n"
               "  parquet  OUT/data/train-0000i-of-0000N.parquet (+ OUT/scored/) "
               "load_dataset(\"parquet\", data_files=\"OUT/data/*.parquet\")\n"
               "  jsonl    OUT/data/train.jsonl (+ OUT/scored/train.jsonl)     "
               "load_dataset(\"json\", data_files=\"OUT/data/train.jsonl\")\n\n"
               "examples:\n  rlt export latest --format hf --out ./release\n"
               "  rlt export cd203f3f --format parquet --out s3://bucket/releases/night-12 --with-ledger")
    sp.add_argument("ref", metavar="REF",
                    help="'latest' (the newest committed distill set), an artifact key, or a unique key prefix "
                         "(>= 8 hex characters), or an alias (`rlt releases`, e.g. current)")
    sp.add_argument("--format", choices=["hf", "parquet", "jsonl"], default="hf",
                    help="hf: a datasets save_to_disk folder; parquet: sharded parquet files; jsonl: one JSON "
                         "object a line (default: hf)")
    sp.add_argument("--out", required=True, metavar="DIR_OR_S3", help="target folder or s3://bucket/prefix; must "
                                                                       "be empty or absent unless --overwrite")
    sp.add_argument("--with-ledger", action="store_true",
                    help="also the reward ledger the set was filtered from (scored_explanations): split 'scored' "
                         "(hf) or config 'scored' (parquet, jsonl)")
    sp.add_argument("--overwrite", action="store_true", help="replace a non-empty target (local: swapped in "
                                                             "whole once written)")
    sp.set_defaults(func=cmd_export)
    sp = sub.add_parser("releases", help="alias history (publish/promote/rollback) with each audit's figures",
                        description="Write-audit-publish: a night whose audits (recipe `audits:`) all pass moves an "
                                    "alias (default `current`) to its distill set; `promote`/`rollback` move it by "
                                    "hand. `rlt export current ...` exports what an alias points to.")
    sp.add_argument("alias", nargs="?", default=None, help="only this alias (default: every alias)")
    sp.add_argument("--json", action="store_true", help="every row as JSON, audits decoded")
    sp.set_defaults(func=cmd_releases)
    sp = sub.add_parser("promote", help="point an alias at a committed distill set by hand (recorded with who/why)")
    sp.add_argument("ref", metavar="KEY_OR_PREFIX", help="a distill_set key or unique prefix (>= 8 characters)")
    sp.add_argument("--alias", default="current")
    sp.add_argument("--reason", required=True, help="why (recorded in the alias history)")
    sp.set_defaults(func=cmd_promote)
    sp = sub.add_parser("rollback", help="move an alias back to its previous distill set (recorded with who/why)")
    sp.add_argument("--alias", default="current")
    sp.add_argument("--reason", required=True, help="why (recorded in the alias history)")
    sp.set_defaults(func=cmd_rollback)
    for name, fn, helptext in (("deploy", cmd_deploy, "create a Prefect deployment with a cron schedule "
                                                     "(needs PREFECT_API_URL and a worker)"),
                               ("serve", cmd_serve, "serve the factory on a cron schedule from this process")):
        sp = sub.add_parser(name, help=helptext)
        recipe_args(sp)
        sp.add_argument("--cron", default="0 2 * * *")
        sp.add_argument("--name", default="rlt-nightly")
        if name == "deploy":
            sp.add_argument("--pool", default="rlt-process", help="work pool (created as a process pool if missing)")
        sp.set_defaults(func=fn)
    sp = sub.add_parser("stack", help="local real services: PostgreSQL, SeaweedFS S3, MLflow server, Prefect server, "
                                      "optionally a local Ray cluster (all password-protected; `env` prints the "
                                      "client settings and credentials)",
                        description="up: start (or reuse) the services; env: print their settings and credentials "
                                    "for eval; status: running/healthy per service (no secret); down: stop them "
                                    "all (data, secrets and ports are kept).")
    sp.add_argument("action", choices=["up", "down", "status", "env"])
    sp.add_argument("--ray-nodes", type=_int_in(0, 26), default=None, metavar="N",
                    help="with `up`: also start a local Ray cluster, a head (GCS, no CPUs) and N worker nodes "
                         "(ray-node-a, -b, ...; custom resources node_a, node_b, ...), each node running with the "
                         "stack's env and RLT_RAY_NODE; token auth on. `rlt stack env` then adds RLT_RAY_ADDRESS, "
                         "RAY_AUTH_MODE and RAY_AUTH_TOKEN. Without it `up` starts no Ray, and refuses while this "
                         "stack's Ray cluster runs (repeat its --ray-nodes, or `down` first). N: 0..26")
    sp.add_argument("--ray-cpus-per-node", type=_int_in(1, 256), default=None, metavar="C",
                    help="with `up --ray-nodes`: Ray CPUs each node offers, i.e. tasks at once per node (default 1)")
    sp.set_defaults(func=cmd_stack)
    sp = sub.add_parser("models", help="resolve a model reference (builtin:..., folder, hub id)")
    sp.add_argument("action", choices=["resolve"])
    sp.add_argument("ref", nargs="?", default="builtin:smollm2-135m-instruct")
    sp.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_env(args.data_root, args.debug)
    try:
        return args.func(args)
    except Exception as exc:
        line = None if args.debug else _expected(exc)
        if line is not None:
            print(f"rlt: {line}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("rlt: interrupted; committed work is kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
