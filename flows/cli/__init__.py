"""The `rlt` command line. Each module owns its commands and their options (`add_commands`):

- flows/cli/run.py: factory, backfill, run, plan, deploy, serve
- flows/cli/catalog.py: catalog (ls, sql, snapshots, info, verify, maintain, import), lineage
- flows/cli/releases.py: releases, promote, rollback, export, report
- flows/cli/ops.py: tracking, stack, models
- flows/cli/check.py: check (freshness)
- flows/cli/review.py: review (status, pull): human spot-checks on MLflow
- flows/cli/common.py: what they share (environment, console tables, run context, recipe, catalog reader)
"""
from __future__ import annotations

import argparse
import sys

from flows.cli import catalog, check, ops, releases, review, run
from flows.cli.common import Parser, _setup_env
from flows.errors import expected_message

DESCRIPTION = (
    "rlt-factory: reasoning-distillation data with Reinforcement-Learned Teachers. Artifacts go to --data-root / "
    "$RLT_DATA_ROOT (default ./rlt-data; s3://bucket/prefix works with AWS_* variables), runs to MLflow "
    "($MLFLOW_TRACKING_URI, default sqlite in the data root), flows to Prefect.")
EPILOG = (
    "examples:\n  rlt factory --recipe flows/recipes/tiny.yaml\n"
    "  rlt backfill --recipe nightly.yaml --nights 2026-11-01..2026-11-07   # {night} in the recipe\n"
    "  rlt plan --recipe flows/recipes/tiny.yaml --set temperature=0.9\n"
    "  rlt run generate --recipe flows/recipes/tiny.yaml\n"
    "  rlt catalog ls                                  # the committed artifacts\n"
    "  rlt catalog sql \"SELECT stage, label, status, seconds FROM stage_runs\"\n"
    "  rlt catalog snapshots; rlt catalog sql --snapshot 12 \"SELECT count(*) FROM data_explanations\"\n"
    "  rlt lineage d_0123abcd...\n"
    "  rlt export latest --format hf --out ./release   # the newest distill set, with a dataset card\n"
    "  rlt check freshness --alias current --max-age 26h   # exit 2 when the release is stale (docs/alerts.md)\n\n"
    "catalog: $RLT_CATALOG_URL (postgresql://... for many machines; default: a SQLite file in the data root);\n"
    "         read-only queries connect as $RLT_CATALOG_READER_URL where set (docs/catalog-roles.md);\n"
    "         `rlt catalog --help` lists its actions and the tables a query sees")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="rlt", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", help="artifact store root (default: $RLT_DATA_ROOT or ./rlt-data)")
    p.add_argument("--debug", action="store_true",
                   help="show tracebacks of expected errors (bad input, recipe errors, failed shards) too")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")   # each a Parser too
    for module in (run, catalog, releases, review, check, ops):
        module.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_env(args.data_root, args.debug)
    try:
        return args.func(args)
    except Exception as exc:
        line = None if args.debug else expected_message(exc)
        if line is not None:
            print(f"rlt: {line}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("rlt: interrupted; committed work is kept, re-run to resume", file=sys.stderr)
        return 130
