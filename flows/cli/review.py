"""Human spot-checks: `review status` (what is sampled, reviewed, rejected) and `review pull` (verdicts into the
catalog's `reviews`, then held releases audited again)."""
from __future__ import annotations

import argparse
import json

from flows.cli.common import _console, _ctx, _table

REVIEW_DESCRIPTION = (
    "A night whose recipe sets `review:` logs a stratified sample of its kept examples as MLflow traces into a review "
    "queue named '<prefix> <recipe> <run id>' (MLflow UI: the experiment rlt-factory, Review). Reviewers answer "
    "rlt_verdict (pass/fail), rlt_reason and rlt_comment, and mark each item complete (or decline it).")
EPILOG = ("examples:\n  rlt review status latest\n  rlt review status run-20261206-0200 --json\n"
          "  rlt review pull latest      # verdicts -> catalog `reviews`; publishes a night held for review\n\n"
          "RUN: 'latest' (the newest night that logged a sample), a run id or a unique prefix of one. MLflow: "
          "--tracking-uri, else $MLFLOW_TRACKING_URI, else the data root's sqlite store.")


def _uri(args) -> str:
    from infra.tracking import default_tracking_uri

    return args.tracking_uri or default_tracking_uri(_ctx(args).store.root)


def cmd_status(args) -> int:
    from flows.releases import review

    st = review.status(_ctx(args).catalog, _uri(args), args.run)
    if args.json:
        print(json.dumps(st.as_dict(), indent=1, default=str))
        return 0
    con = _console()
    con.print(f"run {st.run_id}: queue {st.queue!r} ({st.queue_id}) on distill set {st.distill_key[:16]}",
              markup=False, highlight=False)
    con.print(f"sampled {st.sampled}, reviewed {st.reviewed} ({st.declined} declined), passed {st.passed}, "
              f"rejected {st.rejected}" + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(st.by_reason.items()))
                                           + ")" if st.by_reason else ""), markup=False, highlight=False)
    _table([{"stratum": k, **v} for k, v in st.by_stratum.items()], "by stratum")
    return 0


def cmd_pull(args) -> int:
    from flows.releases import review

    out = review.pull(_ctx(args).catalog, _uri(args), args.run)
    con = _console()
    con.print(f"run {out['run_id']}: {out['pulled']} new or changed verdict(s) into `reviews` ({out['reviewed']} of "
              f"{out['sampled']} sampled reviewed)", markup=False, highlight=False)
    for h in out["releases"]:
        con.print(f"release {h['alias']} held by run {h['run_id']}: {h['state']} ({h['detail']})", markup=False,
                  highlight=False)
    return 0


def add_commands(sub) -> None:
    sp = sub.add_parser("review", help="human spot-checks of a night's sample on MLflow: status, pull",
                        description=REVIEW_DESCRIPTION, epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = sp.add_subparsers(dest="review", required=True, metavar="ACTION")
    for name, func, text in (("status", cmd_status, "sampled, reviewed, rejected (by reason and stratum), live "
                                                    "from MLflow"),
                             ("pull", cmd_pull, "read the verdicts into the catalog relation `reviews`; audit held "
                                                "nights again and publish those that pass")):
        p = cmds.add_parser(name, help=text, description=text)
        p.add_argument("run", nargs="?", default="latest", metavar="RUN", help="'latest', a run id or its prefix")
        p.add_argument("--tracking-uri", default=None, help="the MLflow server the sample is on (default: "
                                                             "$MLFLOW_TRACKING_URI, else the data root's store)")
        if name == "status":
            p.add_argument("--json", action="store_true", help="the counts as JSON")
        p.set_defaults(func=func)
