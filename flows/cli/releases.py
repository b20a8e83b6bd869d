"""What a night publishes: `releases` (alias history), `promote`, `rollback`, `export`, `report`."""
from __future__ import annotations

import argparse
import json
import sys
import time

from flows.cli.common import _ctx, _reader, _store, _table

EXPORT_DESCRIPTION = (
    "Export a committed distill set with a dataset card (README.md: source, teacher and student digests, recipe, row "
    "counts, filter and quarantine figures, lineage keys) and rlt_export.json (the same facts and every file's "
    "sha256). Rows stream from the catalog; the release appears under OUT only when complete (local: renamed into "
    "place; S3: _SUCCESS is written last).")
EXPORT_EPILOG = (
    "layouts:\n"
    "  hf       OUT/dataset_dict.json, OUT/train/ (+ OUT/scored/)   datasets.load_from_disk(OUT)\n"
    "  parquet  OUT/data/train-0000i-of-0000N.parquet (+ OUT/scored/) "
    "load_dataset(\"parquet\", data_files=\"OUT/data/*.parquet\")\n"
    "  jsonl    OUT/data/train.jsonl (+ OUT/scored/train.jsonl)     "
    "load_dataset(\"json\", data_files=\"OUT/data/train.jsonl\")\n\n"
    "examples:\n  rlt export latest --format hf --out ./release\n"
    "  rlt export cd203f3f --format parquet --out s3://bucket/releases/night-12 --with-ledger")
RELEASES_DESCRIPTION = (
    "Write-audit-publish: a night whose audits (recipe `audits:`) all pass moves an alias (default `current`) to its "
    "distill set; `promote`/`rollback` move it by hand. `rlt export current ...` exports what an alias points to.")
REASON_HELP = "why (recorded in the alias history)"


def cmd_releases(args) -> int:
    from flows.releases import aliases as releases

    reader = _reader(args)
    rows = releases.history(reader, args.alias)
    held = releases.holds(reader, "pending", args.alias)
    if args.json:
        print(json.dumps(rows + [{"pending": True, **h} for h in held], default=str, indent=1))
        return 0
    if held:   # nights committed and audited, waiting for human review (audits.human_review.wait: hold)
        _table([{"since": str(h["ts"])[:19], "alias": h["alias"], "action": "pending", "key": h["key"][:16],
                 "run": h["run_id"], "waiting for": h["detail"]} for h in held],
               "pending: held for human review (`rlt review status`, then `rlt review pull`)")
    _table([_release_row(r) for r in rows], f"releases{' of ' + args.alias if args.alias else ''} (newest first)")
    return 0


def _release_row(r: dict) -> dict:
    figs = "; ".join(f"{a['name']}={'-' if a['figure'] is None else format(a['figure'], '.4g')}"
                     f"{'' if a['passed'] else ' FAIL'}" for a in r["audits"].get("results", []))
    return {"when": str(r["ts"])[:19], "alias": r["alias"], "action": r["action"], "key": r["key"][:16],
            "previous": (r["previous_key"] or "")[:16], "run": (r["run_id"] or "")[:12], "by": r["actor"],
            "why": r["reason"], "audits": figs or "-"}


def cmd_promote(args) -> int:
    from flows.releases import aliases as releases

    row = releases.promote(_ctx(args).catalog, args.ref, args.alias, args.reason)
    print(f"{row['alias']}: {row['previous_key'] or '(none)'} -> {row['key']} (promote by {row['actor']}: "
          f"{row['reason']})")
    return 0


def cmd_rollback(args) -> int:
    from flows.releases import aliases as releases

    row = releases.rollback(_ctx(args).catalog, args.alias, args.reason)
    print(f"{row['alias']}: {row['previous_key']} -> {row['key']} (rollback by {row['actor']}: {row['reason']})")
    return 0


def cmd_export(args) -> int:
    from flows.releases.aliases import alias_lookup
    from flows.releases.export import CARD, MANIFEST, ExportRequest, export_release
    from infra.catalog.lake import Catalog

    req = ExportRequest(ref=args.ref, format=args.format, out=args.out, with_ledger=args.with_ledger,
                        overwrite=args.overwrite)
    t0 = time.time()
    res = export_release(Catalog(_store(args), read_only=True), req, alias_lookup)
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


def cmd_report(args) -> int:
    ctx = _ctx(args)
    cond = "" if args.run_id == "latest" else " AND run_id = ?"
    rows = ctx.catalog.rows(f"SELECT uri FROM artifacts_committed WHERE name = 'report'{cond} ORDER BY ts DESC "
                            "LIMIT 1", [] if args.run_id == "latest" else [args.run_id])
    if not rows:
        print(f"rlt report: no report for run {args.run_id!r}", file=sys.stderr)
        return 1
    print(f"{rows[0]['uri']}/index.html")
    return 0


def add_commands(sub) -> None:
    sp = sub.add_parser("releases", help="alias history (publish/promote/rollback) with each audit's figures",
                        description=RELEASES_DESCRIPTION)
    sp.add_argument("alias", nargs="?", default=None, help="only this alias (default: every alias)")
    sp.add_argument("--json", action="store_true", help="every row as JSON, audits decoded")
    sp.set_defaults(func=cmd_releases)
    sp = sub.add_parser("promote", help="point an alias at a committed distill set by hand (recorded with who/why)")
    sp.add_argument("ref", metavar="KEY_OR_PREFIX", help="a distill_set key or unique prefix (>= 8 characters)")
    sp.add_argument("--alias", default="current")
    sp.add_argument("--reason", required=True, help=REASON_HELP)
    sp.set_defaults(func=cmd_promote)
    sp = sub.add_parser("rollback", help="move an alias back to its previous distill set (recorded with who/why)")
    sp.add_argument("--alias", default="current")
    sp.add_argument("--reason", required=True, help=REASON_HELP)
    sp.set_defaults(func=cmd_rollback)
    _add_export(sub)
    sp = sub.add_parser("report", help="print the path of a run's HTML report (RUN_ID or 'latest')")
    sp.add_argument("run_id")
    sp.set_defaults(func=cmd_report)


def _add_export(sub) -> None:
    sp = sub.add_parser("export", help="write a distill set (a release) as a Hugging Face datasets folder, parquet "
                                       "or jsonl, with a dataset card",
                        formatter_class=argparse.RawDescriptionHelpFormatter, description=EXPORT_DESCRIPTION,
                        epilog=EXPORT_EPILOG)
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
