"""Per-night source files for trying backfills and incremental nights: night i holds the first base + i * growth
built-in countdown problems (each night's file is a superset of the night before, as a growing nightly export is).

    python scripts/make_nights.py --out rlt-nights --start 2026-11-01 --nights 30 --base 24 --growth 2
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger("make_nights")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="rlt-nights", help="folder for <date>.jsonl files")
    ap.add_argument("--start", default="2026-11-01", type=dt.date.fromisoformat, help="first night (ISO date)")
    ap.add_argument("--nights", type=int, default=30)
    ap.add_argument("--base", type=int, default=24, help="problems on the first night")
    ap.add_argument("--growth", type=int, default=2, help="new problems per night")
    ap.add_argument("--kind", default="countdown", choices=["countdown", "arithmetic"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rlt_core.builtin_problems import generate

    os.makedirs(args.out, exist_ok=True)
    problems = generate(args.kind, args.base + args.growth * (args.nights - 1), seed=0)
    for i in range(args.nights):
        night = args.start + dt.timedelta(days=i)
        path = os.path.join(args.out, f"{night.isoformat()}.jsonl")
        with open(path + ".tmp", "w") as f:
            for p in problems[: args.base + args.growth * i]:
                f.write(json.dumps({"question": p["question"], "solution": p["solution"]}) + "\n")
        os.replace(path + ".tmp", path)
    log.info("%d night(s) in %s/: %s .. %s, %d -> %d problems", args.nights, args.out, args.start,
             args.start + dt.timedelta(days=args.nights - 1), args.base, args.base + args.growth * (args.nights - 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
