"""The catalog noun, `rlt catalog ACTION` (ls, sql, snapshots, info, verify, maintain, import), and `rlt lineage`.
`rlt manifest` is the deprecated name of the read-only actions: hidden, kept for one release."""
from __future__ import annotations

import argparse
import json
import sys

from flows.cli.common import _console, _reader, _short, _store, _table

READ_ACTIONS = ("ls", "sql", "snapshots")
WRITE_ACTIONS = ("info", "verify", "maintain", "import")
LS_QUERY = "SELECT name, label, key, producer, num_rows, run_id, ts FROM artifacts_committed ORDER BY ts"
EXAMPLE_QUERY = "SELECT * FROM artifacts_committed"
DEPRECATED = "rlt: 'rlt manifest' is now 'rlt catalog' (same arguments); 'manifest' will be removed"

CATALOG_HELP = ("the catalog (runs, artifacts, lineage, costs, releases, the data): `ls`, `sql \"SELECT ...\"` "
                "(read-only), `snapshots`, `info`, `verify`, `maintain`, `import`")
CATALOG_DESCRIPTION = (
    "The catalog: one DuckLake holding every record (runs, artifacts, lineage, shards, costs, releases) and every\n"
    "tabular artifact. Where it lives: $RLT_CATALOG_URL (postgresql://... for many machines, or sqlite:///path;\n"
    "default: the SQLite file <data root>/_catalog/catalog.sqlite); its data files are under <data root>/_lake/.\n"
    "The read-only actions (ls, sql, snapshots) connect as the reader role, $RLT_CATALOG_READER_URL where set (a\n"
    "PostgreSQL role that can only SELECT; see docs/catalog-roles.md); info, verify, maintain, import as the writer.")
CATALOG_EPILOG = (
    "actions:\n"
    "  ls           the committed artifacts (name, label, key, producer, rows, run, time)\n"
    "  sql QUERY    one read-only SELECT (or EXPLAIN/DESCRIBE/SHOW/SUMMARIZE of one), streamed from the lake,\n"
    "               never loaded whole; --json (every row), --limit (rows in the table), --snapshot N (time travel)\n"
    "  snapshots    the catalog's history, newest first: one snapshot per commit (--limit)\n"
    "  info         where the catalog is, row counts and the data_<artifact> views, as JSON\n"
    "  verify       re-hash committed artifacts' files against their digests (--key: one artifact); exit 1 on a\n"
    "               mismatch\n"
    "  maintain     expire bookkeeping snapshots older than --retention-s, merge relation files (data files are\n"
    "               never rewritten)\n"
    "  import       copy a data root written before the catalog (its _manifest/ folder) into it, once\n\n"
    "what sql sees: relations runs, artifacts, lineage, shards, provenance, stage_runs, stage_costs, releases;\n"
    "views runs_latest, artifacts_committed, shards_latest, aliases_current, costs_by_stage, costs_by_run; and one\n"
    "data_<artifact> view per artifact kind (data_problems, data_explanations, data_filter_decisions, ...).\n\n"
    "examples:\n"
    "  rlt catalog ls\n"
    "  rlt catalog sql \"SELECT stage, label, status, round(seconds,1) s FROM stage_runs ORDER BY ts\"\n"
    "  rlt catalog sql \"SELECT reason, count(*) FROM data_filter_decisions GROUP BY 1\" --json\n"
    "  rlt catalog snapshots; rlt catalog sql --snapshot 12 \"SELECT count(*) FROM data_explanations\"\n"
    "  rlt catalog verify --key <artifact key>")


def cmd_catalog(args) -> int:
    if args.action in READ_ACTIONS:
        return _read(args)
    if args.query is not None:
        print(f"rlt catalog {args.action}: unrecognized argument {args.query!r} (only `sql` takes a query)",
              file=sys.stderr)
        return 2
    return {"info": _info, "verify": _verify, "maintain": _maintain, "import": _import}[args.action](args)


def cmd_manifest_deprecated(args) -> int:
    """`rlt manifest ...`: the old name of the read-only actions, for one release."""
    print(DEPRECATED, file=sys.stderr)
    return cmd_catalog(args)


def _read(args) -> int:
    """ls, sql, snapshots: through the read-only reader."""
    from infra.catalog.lake import read_query

    query = LS_QUERY if args.action == "ls" else args.query
    if query is None and args.action == "sql":
        raise SystemExit(f"rlt catalog sql: give a query, e.g. rlt catalog sql \"{EXAMPLE_QUERY}\"")
    cat = _reader(args, args.snapshot)
    if args.action == "snapshots":
        _table(cat.snapshots(args.limit), "snapshots (newest first; query one with --snapshot N)")
        return 0
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


def _writer(args):
    from infra.catalog.lake import Catalog

    return Catalog(_store(args))


def _info(args) -> int:
    cat = _writer(args)
    info = {"catalog": cat.location.describe(), "data_path": cat.location.data_path,
            **cat.rows("SELECT (SELECT count(*) FROM artifacts_committed) AS artifacts, (SELECT count(*) FROM "
                       "runs_latest) AS runs, (SELECT count(*) FROM lake.snapshots()) AS snapshots")[0],
            "tables": cat.refresh_data_views()}
    print(json.dumps(info, indent=1, default=str))
    return 0


def _verify(args) -> int:
    from infra.catalog.artifacts import verify

    cat = _writer(args)
    recs = cat.rows("SELECT * FROM artifacts_committed" + (" WHERE key = ?" if args.key else ""),
                    [args.key] if args.key else [])
    problems = [p for r in recs for p in verify(cat.store, r)]
    for p in problems:
        print(f"MISMATCH {p}")
    print(f"verified {len(recs)} artifact(s): {len(problems)} problem(s)")
    return 1 if problems else 0


def _maintain(args) -> int:
    print(json.dumps(_writer(args).maintain(ledger_retention_s=args.retention_s), indent=1))
    return 0


def _import(args) -> int:
    from infra.catalog.legacy import import_manifest

    print(json.dumps(import_manifest(_store(args)), indent=1))
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


def _read_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("query", nargs="?", default=None, help="sql: the query (quote it)")
    sp.add_argument("--json", action="store_true", help="all rows as JSON (streamed)")
    sp.add_argument("--limit", type=int, default=200, help="rows shown in the table view")
    sp.add_argument("--snapshot", type=int, default=None, help="query the lake as of this snapshot id")


def add_commands(sub) -> None:
    sp = sub.add_parser("catalog", help=CATALOG_HELP, description=CATALOG_DESCRIPTION, epilog=CATALOG_EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter, intermixed=True)
    sp.add_argument("action", choices=READ_ACTIONS + WRITE_ACTIONS, metavar="ACTION",
                    help=f"one of {', '.join(READ_ACTIONS + WRITE_ACTIONS)} (below)")
    _read_args(sp)
    sp.add_argument("--key", help="verify: only this artifact")
    sp.add_argument("--retention-s", type=float, default=3600.0,
                    help="maintain: bookkeeping snapshots older than this expire")
    sp.set_defaults(func=cmd_catalog)
    # no help=: not listed by `rlt --help`
    sp = sub.add_parser("manifest", description="Deprecated: use `rlt catalog` (same arguments).", intermixed=True)
    sp.add_argument("action", choices=READ_ACTIONS)
    _read_args(sp)
    sp.set_defaults(func=cmd_manifest_deprecated)
    sp = sub.add_parser("lineage", help="trace an example (d_/e_/p_ id, eval item id) or artifact key to its source")
    sp.add_argument("id")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_lineage)
