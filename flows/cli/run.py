"""Commands that run recipes: `factory`, `backfill`, `run`, `plan`, `deploy`, `serve`."""
from __future__ import annotations

import argparse
import os
import time

from flows.cli.common import _console, _ctx, _executor_overrides, _recipe, _table, recipe_args
from flows.ephemeral import own_ephemeral_server
from tasks import STAGE_NAMES

BACKFILL_DESCRIPTION = (
    "Run the nightly factory for each night in order, in this process. The recipe is a template: any string value "
    "may hold {night} (the night's ISO date), e.g. ingest.source.uri: \"data/problems/{night}.jsonl\". With "
    "--sources each file (sorted) is one night: it becomes ingest.source.uri and its stem the night's label. A night "
    "whose stages are all committed and whose factory run finished is skipped, so re-running the same command after "
    "an interruption resumes. A failed night (a stage, an audit) stops the backfill with exit 2 unless --keep-going.")
BACKFILL_EPILOG = (
    "examples:\n"
    "  rlt backfill --recipe nightly.yaml --nights 2026-11-01..2026-11-07\n"
    "  rlt backfill --recipe nightly.yaml --nights 2026-11-01,2026-11-04 --dry-run\n"
    "  rlt backfill --recipe flows/recipes/tiny.yaml --sources 'data/problems/*.jsonl' --keep-going\n\n"
    "nightly.yaml holds e.g.  ingest: {source: {uri: \"data/problems/{night}.jsonl\"}}")


def cmd_factory(args) -> int:
    from flows.factory import factory_flow
    from infra.settings import data_root

    recipe = _recipe(args)
    own_ephemeral_server()
    t0 = time.time()
    out = factory_flow(recipe=recipe.model_dump(mode="json"), root=data_root(args.data_root),
                       fail_shards=args.inject_failure or None, recipe_path=os.path.abspath(args.recipe))
    _summary(args, out, time.time() - t0)
    return 0


def cmd_backfill(args) -> int:
    """The factory over a range of nights (or source files), in order; committed nights are skipped."""
    from flows.releases.backfill import BackfillError, BackfillRequest, failure_line, run_backfill, summary_rows
    from infra.settings import data_root

    req = BackfillRequest(recipe=args.recipe, root=data_root(args.data_root),
                          overrides=args.set + _executor_overrides(args), nights=args.nights, sources=args.sources,
                          keep_going=args.keep_going, dry_run=args.dry_run)
    if not args.dry_run:
        own_ephemeral_server()
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
    own_ephemeral_server()
    t0 = time.time()
    out = STAGE_FLOWS[args.stage](recipe=recipe.model_dump(mode="json"), root=data_root(args.data_root),
                                  fail_shards=args.inject_failure or None, recipe_path=os.path.abspath(args.recipe))
    _summary(args, out, time.time() - t0)
    return 0


def _summary(args, out: dict, seconds: float) -> None:
    from infra.tracking import Tracker, pending_run_ids

    con = _console()
    con.print(f"\n[bold green]done[/bold green] in {seconds:.1f}s, run {out['run_id']}")
    rows = [{"artifact": k, "key": v["key"], "rows": v["num_rows"], "uri": v["uri"]}
            for k, v in out.items() if isinstance(v, dict) and "key" in v]
    _table(rows, "artifacts")
    ctx = _ctx(args)
    if "report" in out:
        con.print(f"report:   {out['report']['uri']}/index.html")
    con.print(f"catalog:  {ctx.catalog.location.describe()}  (rlt catalog sql \"SELECT * FROM artifacts_committed\")")
    con.print(f"mlflow:   {Tracker(ctx.store.root).ui_hint()}")
    if out["run_id"] in pending_run_ids(ctx.store):
        con.print(f"[bold yellow]tracking: incomplete[/bold yellow] (MLflow was unreachable): `rlt tracking status`, "
                  f"then `rlt tracking relog {out['run_id']}`")


def cmd_plan(args) -> int:
    from flows.plan import annotate, count_reuse, stage_keys
    from flows.releases.review import with_rejections

    ctx = _ctx(args)
    recipe = with_rejections(ctx.catalog, _recipe(args))   # filter.reject_reviewed: the rejected ids join its key
    plans = count_reuse(ctx, annotate(ctx, stage_keys(recipe, [args.stage] if args.stage else None)))
    _table([{"stage": p.node.id, "will": p.status, "key": p.key[:16], "why": p.reason} for p in plans], "plan")
    return 0


def cmd_deploy(args) -> int:
    from flows.deploy import deploy

    print(deploy(args.recipe, args.set + _executor_overrides(args), args.cron, args.name, args.pool, args.data_root))
    return 0


def cmd_serve(args) -> int:
    from flows.deploy import serve

    serve(args.recipe, args.set + _executor_overrides(args), args.cron, args.name, args.data_root)
    return 0


def add_commands(sub) -> None:
    sp = sub.add_parser("factory", help="run the whole chain (cached stages are skipped)")
    recipe_args(sp)
    sp.add_argument("--inject-failure", action="append", metavar="STAGE:SHARD",
                    help="testing aid: make a shard fail, e.g. generate:00001")
    sp.set_defaults(func=cmd_factory)
    _add_backfill(sub)
    sp = sub.add_parser("run", help="run one stage as its own flow (and whatever upstream of it is not committed)")
    sp.add_argument("stage", choices=STAGE_NAMES)
    recipe_args(sp)
    sp.add_argument("--inject-failure", action="append", metavar="STAGE:SHARD", help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_run)
    sp = sub.add_parser("plan", help="what each stage would do and why (which key part changed, who runs it now)")
    recipe_args(sp)
    sp.add_argument("--stage", choices=STAGE_NAMES, help="only this stage and what it needs")
    sp.set_defaults(func=cmd_plan)
    _add_schedules(sub)


def _add_backfill(sub) -> None:
    sp = sub.add_parser("backfill", help="run the factory night by night over a date range (or source files), "
                                         "skipping committed nights; resumable",
                        formatter_class=argparse.RawDescriptionHelpFormatter, description=BACKFILL_DESCRIPTION,
                        epilog=BACKFILL_EPILOG)
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


def _add_schedules(sub) -> None:
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
