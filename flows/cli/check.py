"""Checks a scheduler runs: `check freshness` (has a release alias moved recently enough?) and `check reviews`
(has a night waited for human review too long?)."""
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


def _recipe_for(args):
    """The recipe of a check (its alert channels, its default limits); --notify needs one."""
    from flows.recipe import load_recipe
    from flows.releases.freshness import FreshnessError

    if args.notify and not args.recipe:
        raise FreshnessError("--notify needs --recipe: the alert channels are the recipe's `alerts.channels_env`")
    return load_recipe(args.recipe) if args.recipe else None


def _report(args, result, ok: bool) -> int:
    """One line (or --json) of a check's result; exit 0 when well, 2 when not."""
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        _console().print(result.line(), markup=False, highlight=False, soft_wrap=True)
    return 0 if ok else 2


def cmd_freshness(args) -> int:
    from flows.releases import freshness

    recipe = _recipe_for(args)
    alias, max_age_s = freshness.settle(args.alias, args.max_age, recipe)
    result = freshness.run_check(_reader(args), _store(args), alias, max_age_s, recipe, args.notify)
    return _report(args, result, result.fresh)


REVIEWS_DESCRIPTION = (
    "Has a night waited too long for people? Nights held for human review (audits.human_review.wait: hold) do not "
    "publish until `rlt review pull` finds their sample reviewed. Prints one line; exit 0: no held night is older "
    "than --max-wait; exit 2: at least one is. With --notify, one `review_pending` alert names the nights that went "
    "overdue since the last alert (remembered in <data root>/_alerts/reviews-pending.json): an hourly cron pages "
    "once per overdue night.")
REVIEWS_EPILOG = (
    "examples:\n"
    "  rlt check reviews --max-wait 24h\n"
    "  rlt check reviews --notify --recipe flows/recipes/nightly.yaml   # alerts.max_review_wait_h, RLT_ALERT_URL\n\n"
    "--max-wait: a number and a unit: s, m, h or d (24h, 90m, 2d); default: the recipe's alerts.max_review_wait_h")


def cmd_reviews(args) -> int:
    from flows.releases import review_wait

    recipe = _recipe_for(args)
    result = review_wait.run_check(_reader(args), _store(args), review_wait.settle(args.max_wait, recipe), recipe,
                                   args.notify)
    return _report(args, result, result.ok)


def add_commands(sub) -> None:
    sp = sub.add_parser("check", help="checks for a scheduler (exit 2 when not well): freshness, reviews",
                        description=CHECK_DESCRIPTION)
    checks = sp.add_subparsers(dest="check", required=True, metavar="CHECK")
    fp = checks.add_parser("freshness", help="has the release alias moved within --max-age? (--notify: alert once)",
                           description=textwrap.fill(FRESHNESS_DESCRIPTION, 100), epilog=FRESHNESS_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    fp.add_argument("--alias", default=None,
                    help="the release alias (default: the recipe's audits.publish_alias, else current)")
    fp.add_argument("--max-age", default=None, metavar="AGE", help="stale when the alias moved longer ago than "
                                                                   "this: 26h, 90m, 2d")
    _common_args(fp, "a stale alias sends one stale_release alert per staleness episode through the recipe's "
                 "channels", "max_release_age_h", "status, key, moved_at, age_h, alert")
    fp.set_defaults(func=cmd_freshness)
    rp = checks.add_parser("reviews", help="has a night held for human review waited longer than --max-wait? "
                                          "(--notify: alert once per night)",
                           description=textwrap.fill(REVIEWS_DESCRIPTION, 100), epilog=REVIEWS_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("--max-wait", default=None, metavar="AGE", help="overdue when held longer than this: 24h, 2d")
    _common_args(rp, "one review_pending alert for the nights newly overdue, through the recipe's channels",
                 "max_review_wait_h", "pending, overdue nights, alert")
    rp.set_defaults(func=cmd_reviews)


def _common_args(p: argparse.ArgumentParser, notify_help: str, limit_field: str, json_fields: str) -> None:
    p.add_argument("--notify", action="store_true", help=notify_help)
    p.add_argument("--recipe", default=None, help=f"recipe YAML whose `alerts:` section names the channels (and may "
                                                  f"set {limit_field})")
    p.add_argument("--json", action="store_true", help=f"the result as JSON ({json_fields})")
