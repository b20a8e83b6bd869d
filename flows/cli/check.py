"""Checks a scheduler runs: `check freshness` (has a release alias moved recently enough?)."""
from __future__ import annotations

import argparse
import json
import textwrap

from flows.cli.common import _console, _reader, _store

CHECK_DESCRIPTION = "Checks for cron or a Prefect schedule: exit 0 when all is well, 2 when not."
FRESHNESS_DESCRIPTION = (
    "Is a release fresh? Prints one line: how long ago the alias last moved (publish, promote or rollback) against "
    "the maximum age. Exit 0: fresh; exit 2: stale, or the alias was never set. With --notify a stale alias sends "
    "one `stale_release` alert through the recipe's alert channels (its `alerts:` section: environment variables "
    "holding Apprise URLs), once per staleness episode: the move already alerted about is remembered in <data "
    "root>/_alerts/freshness-<alias>.json, so an hourly cron pages once, and again only after the alias moved and "
    "went stale anew. A failed send is one warning and is tried again on the next check.")
FRESHNESS_EPILOG = (
    "examples:\n"
    "  rlt check freshness --alias current --max-age 26h\n"
    "  rlt check freshness --max-age 2d --notify --recipe flows/recipes/nightly.yaml   # RLT_ALERT_URL=...\n"
    "  15 * * * * cd /srv/rlt && .venv/bin/rlt check freshness --max-age 26h --notify --recipe nightly.yaml\n\n"
    "--max-age: a number and a unit: s, m, h or d (26h, 90m, 2d); default: the recipe's alerts.max_release_age_h")


def cmd_freshness(args) -> int:
    from flows.recipe import load_recipe
    from flows.releases import freshness

    if args.notify and not args.recipe:
        raise freshness.FreshnessError("--notify needs --recipe: the alert channels are the recipe's "
                                       "`alerts.channels_env`")
    recipe = load_recipe(args.recipe) if args.recipe else None
    alias, max_age_s = freshness.settle(args.alias, args.max_age, recipe)
    result = freshness.run_check(_reader(args), _store(args), alias, max_age_s, recipe, args.notify)
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        _console().print(result.line(), markup=False, highlight=False, soft_wrap=True)
    return 0 if result.fresh else 2


def add_commands(sub) -> None:
    sp = sub.add_parser("check", help="checks for a scheduler (exit 2 when not well): freshness",
                        description=CHECK_DESCRIPTION)
    checks = sp.add_subparsers(dest="check", required=True, metavar="CHECK")
    fp = checks.add_parser("freshness", help="has the release alias moved within --max-age? (--notify: alert once)",
                           description=textwrap.fill(FRESHNESS_DESCRIPTION, 100), epilog=FRESHNESS_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    fp.add_argument("--alias", default=None,
                    help="the release alias (default: the recipe's audits.publish_alias, else current)")
    fp.add_argument("--max-age", default=None, metavar="AGE", help="stale when the alias moved longer ago than "
                                                                   "this: 26h, 90m, 2d")
    fp.add_argument("--notify", action="store_true", help="a stale alias sends one stale_release alert per "
                                                         "staleness episode through the recipe's channels")
    fp.add_argument("--recipe", default=None, help="recipe YAML whose `alerts:` section names the channels (and "
                                                   "may set max_release_age_h)")
    fp.add_argument("--json", action="store_true", help="the result as JSON (status, key, moved_at, age_h, alert)")
    fp.set_defaults(func=cmd_freshness)
