"""Operating the factory: `stack` (local services), `tracking` (MLflow calls an outage left pending), `models`."""
from __future__ import annotations

import argparse
import json
import sys
import time

from flows.cli.common import _ctx, _table

TRACKING_DESCRIPTION = (
    "When MLflow is unreachable a run goes on: its data is committed and its tracking calls are journaled in <data "
    "root>/_tracking/pending/<run id>/. `status` says what each run is missing; `relog [RUN_ID]` replays it into "
    "MLflow (idempotent) and clears the journal.")
STACK_HELP = ("local real services: PostgreSQL, SeaweedFS S3, MLflow server, Prefect server, optionally a local Ray "
              "cluster (all password-protected; `env` prints the client settings and credentials)")
STACK_DESCRIPTION = ("up: start (or reuse) the services; env: print their settings and credentials for eval; status: "
                     "running/healthy per service (no secret); down: stop them all (data, secrets and ports are kept).")
RAY_NODES_HELP = (
    "with `up`: also start a local Ray cluster, a head (GCS, no CPUs) and N worker nodes (ray-node-a, -b, ...; custom "
    "resources node_a, node_b, ...), each node running with the stack's env and RLT_RAY_NODE; token auth on. `rlt "
    "stack env` then adds RLT_RAY_ADDRESS, RAY_AUTH_MODE and RAY_AUTH_TOKEN. Without it `up` starts no Ray, and "
    "refuses while this stack's Ray cluster runs (repeat its --ray-nodes, or `down` first). N: 0..26")


# -- tracking ------------------------------------------------------------------------------------------
def cmd_tracking(args) -> int:
    """MLflow calls a run could not make (server down: the data work went on) and their replay."""
    from infra import tracking

    ctx = _ctx(args)
    pending = tracking.pending_run_ids(ctx.store)
    latest = {r["run_id"]: r for r in ctx.catalog.rows("SELECT * FROM runs_latest")}
    if args.action == "status":
        return _tracking_status(args, ctx, pending, latest)
    return _tracking_relog(args, ctx, pending, latest)


def _tracking_status(args, ctx, pending: list[str], latest: dict) -> int:
    from infra import tracking

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


def _tracking_relog(args, ctx, pending: list[str], latest: dict) -> int:
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
        failed += not _relog_one(args, ctx, rid, latest)
    return 1 if failed else 0


def _relog_one(args, ctx, rid: str, latest: dict) -> bool:
    from infra import tracking
    from infra.catalog.locks import hold

    with hold(ctx.locks, f"tracking-relog:{rid}", ctx.owner(), timeout_s=600):
        try:
            res = tracking.relog(ctx.store, rid, uri=args.tracking_uri)
        except tracking.TrackingError as exc:
            print(f"rlt tracking relog: {exc}", file=sys.stderr)
            return False
    if rid in latest:   # the catalog's run record: tracking now complete, with the real MLflow parent run id
        row = {k: v for k, v in latest[rid].items() if k != "ts"}
        row.update(tracking="relogged", mlflow_run_id=res["mapping"].get(row["mlflow_run_id"] or "",
                                                                        row["mlflow_run_id"]))
        ctx.catalog.append("runs", [row], message="run")
    done = ", ".join(f"{v} {k}" for k, v in res["replayed"].items()) or "nothing new"
    print(f"{rid}: replayed into {res['uri']} ({done}) in {res['seconds']}s; journal cleared")
    return True


# -- stack ---------------------------------------------------------------------------------------------
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
    from infra.devstack import stack
    from infra.settings import data_root

    root = data_root(args.data_root)
    if "://" in root:
        print("rlt stack: --data-root must be a local folder (it holds the services' data)", file=sys.stderr)
        return 2
    if args.action != "up" and (args.ray_nodes is not None or args.ray_cpus_per_node is not None):
        print("rlt stack: --ray-nodes/--ray-cpus-per-node go with `rlt stack up`", file=sys.stderr)
        return 2
    try:
        if args.action == "up":
            env = stack.up(root, stack.StackConfig(ray_nodes=args.ray_nodes or 0,
                                                   ray_cpus_per_node=args.ray_cpus_per_node or 1))
            print("# the stack is up; point the factory at it with (holds its credentials; again: rlt stack env):")
            print(stack.format_exports(env))
        elif args.action == "env":   # the credentials, for `eval "$(rlt stack env)"`
            print(stack.format_exports(stack.current_env(root)))
    except stack.StackError as exc:
        print(f"rlt stack {args.action}: {exc}", file=sys.stderr)
        return 2
    if args.action == "down":
        stack.down(root)
        print("stack stopped")
    elif args.action == "status":   # no credentials here
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


def add_commands(sub) -> None:
    sp = sub.add_parser("tracking", help="MLflow calls a run could not make (server down): `status`, `relog`",
                        description=TRACKING_DESCRIPTION)
    sp.add_argument("action", choices=["status", "relog"])
    sp.add_argument("run_id", nargs="?", default=None, help="relog: only this run (default: every pending run)")
    sp.add_argument("--tracking-uri", default=None,
                    help="relog: MLflow to replay into (default: $MLFLOW_TRACKING_URI, else the data root's sqlite)")
    sp.add_argument("--force", action="store_true", help="relog: also runs the catalog still calls running")
    sp.add_argument("--json", action="store_true", help="status: as JSON")
    sp.set_defaults(func=cmd_tracking)
    sp = sub.add_parser("stack", help=STACK_HELP, description=STACK_DESCRIPTION)
    sp.add_argument("action", choices=["up", "down", "status", "env"])
    sp.add_argument("--ray-nodes", type=_int_in(0, 26), default=None, metavar="N", help=RAY_NODES_HELP)
    sp.add_argument("--ray-cpus-per-node", type=_int_in(1, 256), default=None, metavar="C",
                    help="with `up --ray-nodes`: Ray CPUs each node offers, i.e. tasks at once per node (default 1)")
    sp.set_defaults(func=cmd_stack)
    sp = sub.add_parser("models", help="resolve a model reference (builtin:..., folder, hub id)")
    sp.add_argument("action", choices=["resolve"])
    sp.add_argument("ref", nargs="?", default="builtin:smollm2-135m-instruct")
    sp.set_defaults(func=cmd_models)
