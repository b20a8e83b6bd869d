"""The `rlt` command line: factory, run, plan, lineage, manifest, deploy, serve, report, stack, models."""
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


def _setup_env(root_arg: str | None = None) -> None:
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
    for noisy in ("httpx", "urllib3", "botocore", "alembic", "mlflow", "filelock", "prefect.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _console():
    from rich.console import Console

    return Console()


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

    return load_recipe(args.recipe, args.set)


# -- commands ----------------------------------------------------------------------------------------
def cmd_factory(args, until: str | None = None) -> int:
    from flows.factory import factory_flow
    from infra.settings import data_root

    recipe = _recipe(args)
    root = data_root(args.data_root)
    t0 = time.time()
    out = factory_flow(recipe=recipe.model_dump(mode="json"), root=root, until=until,
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
    con.print(f"manifest: {ctx.store.root}/_manifest  (rlt manifest sql \"SELECT * FROM artifacts_committed\")")
    con.print(f"mlflow:   {Tracker(ctx.store.root).ui_hint()}")


def cmd_plan(args) -> int:
    from flows.plan import annotate, stage_keys

    plans = annotate(_ctx(args), stage_keys(_recipe(args)))
    _table([{"stage": p.stage + (f"[{p.label}]" if p.label else ""), "will": p.status, "key": p.key[:16],
             "why": p.reason} for p in plans], "plan")
    return 0


def cmd_lineage(args) -> int:
    from flows.lineage import artifact_chain, example_chain

    ctx = _ctx(args)
    steps = example_chain(ctx.manifest, args.id)
    if not steps:
        steps = [{"step": f"artifact {a['name']}", **a} for a in artifact_chain(ctx.manifest, args.id)]
    if not steps:
        print(f"rlt lineage: no example or artifact with id {args.id!r} in {ctx.store.root}", file=sys.stderr)
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


def cmd_manifest(args) -> int:
    ctx = _ctx(args)
    if args.action == "ls":
        t = ctx.manifest.sql("SELECT name, key, producer, num_rows, run_id, ts FROM artifacts_committed ORDER BY ts")
        _table(t.to_pylist(), "artifacts")
        return 0
    t = ctx.manifest.sql(args.query)
    if args.json:
        print(json.dumps(t.to_pylist(), default=str, indent=1))
    else:
        _table(t.to_pylist()[: args.limit], f"{t.num_rows} row(s)")
    return 0


def cmd_report(args) -> int:
    ctx = _ctx(args)
    rows = [a for a in ctx.manifest.table("artifacts").to_pylist() if a["name"] == "report" and
            (a["run_id"] == args.run_id or args.run_id == "latest")]
    if not rows:
        print(f"rlt report: no report for run {args.run_id!r}", file=sys.stderr)
        return 1
    a = max(rows, key=lambda r: r["ts"])
    print(f"{a['uri']}/index.html")
    return 0


def cmd_deploy(args) -> int:
    from flows.deploy import deploy

    print(deploy(args.recipe, args.set, args.cron, args.name, args.pool, args.data_root))
    return 0


def cmd_serve(args) -> int:
    from flows.deploy import serve

    serve(args.recipe, args.set, args.cron, args.name, args.data_root)
    return 0


def cmd_stack(args) -> int:
    from infra import stack
    from infra.settings import data_root

    root = data_root(args.data_root)
    if "://" in root:
        print("rlt stack: --data-root must be a local folder (it holds the services' data)", file=sys.stderr)
        return 2
    if args.action == "up":
        env = stack.up(root)
        print("# the stack is up; point the factory at it with:")
        print(stack.format_exports(env))
    elif args.action == "down":
        stack.down(root)
        print("stack stopped")
    else:
        _table([s.model_dump() if hasattr(s, "model_dump") else dict(s.__dict__) for s in stack.status(root)],
               "services")
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
               "  rlt plan --recipe flows/recipes/tiny.yaml --set generate.sampling.temperature=0.9\n"
               "  rlt manifest sql \"SELECT stage, status, seconds FROM stage_runs\"\n  rlt lineage d_0123abcd...")
    p.add_argument("--data-root", help="artifact store root (default: $RLT_DATA_ROOT or ./rlt-data)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def recipe_args(sp):
        sp.add_argument("--recipe", required=True, help="recipe YAML (see flows/recipes/)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field, e.g. generate.num_samples=2 (repeatable)")

    sp = sub.add_parser("factory", help="run the whole chain (cached stages are skipped)")
    recipe_args(sp)
    sp.add_argument("--inject-failure", action="append", metavar="STAGE:SHARD",
                    help="testing aid: make a shard fail, e.g. generate:00001")
    sp.set_defaults(func=cmd_factory)
    sp = sub.add_parser("run", help="run one stage (and whatever upstream it needs)")
    sp.add_argument("stage", choices=STAGE_NAMES)
    recipe_args(sp)
    sp.add_argument("--inject-failure", action="append", metavar="STAGE:SHARD", help=argparse.SUPPRESS)
    sp.set_defaults(func=lambda a: cmd_factory(a, until=a.stage))
    sp = sub.add_parser("plan", help="what each stage would do and why (which key part changed)")
    recipe_args(sp)
    sp.set_defaults(func=cmd_plan)
    sp = sub.add_parser("lineage", help="trace an example (d_/e_/p_ id, eval item id) or artifact key to its source")
    sp.add_argument("id")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_lineage)
    sp = sub.add_parser("manifest", help="query the manifest: `ls` or `sql \"SELECT ...\"`")
    sp.add_argument("action", choices=["ls", "sql"])
    sp.add_argument("query", nargs="?", default="SELECT * FROM artifacts_committed")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--limit", type=int, default=200)
    sp.set_defaults(func=cmd_manifest)
    sp = sub.add_parser("report", help="print the path of a run's HTML report (RUN_ID or 'latest')")
    sp.add_argument("run_id")
    sp.set_defaults(func=cmd_report)
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
    sp = sub.add_parser("stack", help="local real services: SeaweedFS S3, MLflow server, Prefect server")
    sp.add_argument("action", choices=["up", "down", "status"])
    sp.set_defaults(func=cmd_stack)
    sp = sub.add_parser("models", help="resolve a model reference (builtin:..., folder, hub id)")
    sp.add_argument("action", choices=["resolve"])
    sp.add_argument("ref", nargs="?", default="builtin:smollm2-135m-instruct")
    sp.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_env(args.data_root)
    try:
        return args.func(args)
    except Exception as exc:
        if type(exc).__name__ in ("RecipeError", "SourceError", "StageFailed", "ContractError"):
            print(f"rlt: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("rlt: interrupted; committed work is kept, re-run to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
