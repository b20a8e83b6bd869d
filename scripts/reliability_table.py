"""Turn the fault suite's report (.faults-report.jsonl, written by tests/faults) into the reliability table.

    python scripts/reliability_table.py --begin .faults-run.json          # before the suite: start time and load
    python scripts/reliability_table.py [.faults-report.jsonl]            # print the table
    python scripts/reliability_table.py .faults-report.jsonl --stamp .faults-run.json \\
        --record docs/results/reliability.json                            # and keep it as a committed record

``make test-faults`` runs all three steps, then ``scripts/render_docs.py --write docs/reliability.md`` renders the
table into the document from the record (bench/record.py format: command, commit, machine load, numbers = the
suite's rows). A kind recorded more than once (reruns) keeps its latest row. Rows that describe instead of try
(``bad_input:corpus``: the hostile-input corpus itself, one row naming its 58 kinds) are not trials: they are
listed under the table, and the totals count trials only.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DESCRIPTIONS = {"bad_input:corpus"}   # rows that describe the corpus; their "trials" field counts kinds, not trials
log = logging.getLogger("reliability_table")


def load(path: Path) -> list[dict]:
    latest: dict[str, dict] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}:{n}: not a JSON line ({exc})") from None
        latest[row["fault"]] = row
    # injected faults first, then the hostile-input kinds (many rows, one each)
    return sorted(latest.values(), key=lambda r: r["fault"].startswith("bad_input:"))


def is_trial(row: dict) -> bool:
    return row["fault"] not in DESCRIPTIONS


def totals(rows: list[dict]) -> dict:
    trials = [r for r in rows if is_trial(r)]
    return {"fault_kinds": len(trials), "trials": sum(int(r["trials"]) for r in trials),
            "described": {r["fault"]: int(r["trials"]) for r in rows if not is_trial(r)},
            "recorded_last": max((r["at"] for r in rows), default="-")}


def _cell(text: object, limit: int = 600) -> str:
    s = str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def table(rows: list[dict]) -> str:
    out = ["| fault | trials | outcome | seconds | detail |", "|---|---:|---|---:|---|"]
    for r in rows:
        if is_trial(r):
            seconds = r.get("seconds") if r.get("seconds") is not None else ""
            out.append(f"| {_cell(r['fault'])} | {r['trials']} | {_cell(r['outcome'])} | {_cell(seconds)} | "
                       f"{_cell(r.get('detail'))} |")
    t = totals(rows)
    out += ["", f"{t['fault_kinds']} fault kinds, {t['trials']} trials, recorded {t['recorded_last']}."]
    for r in rows:
        if not is_trial(r):
            out += ["", f"Not a trial: `{r['fault']}`: {_cell(r['outcome'])} ({_cell(r.get('detail'))})."]
    return "\n".join(out)


def write_record(rows: list[dict], out: Path, stamp: Path | None) -> Path | None:
    """The suite's rows as a record (bench/record.py), started when ``--begin`` wrote ``stamp``."""
    from bench import record

    session = record.Session(**json.loads(stamp.read_text())) if stamp and stamp.exists() else \
        record.start("reliability", folder=None)
    session.folder, session.name = str(out.parent), out.stem
    if not (stamp and stamp.exists()):
        log.warning("no start stamp (%s): the record's start time and load are the table step's", stamp)
    return record.write(session, {"rows": rows, **totals(rows)}, command="make test-faults")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", nargs="?", default=".faults-report.jsonl", type=Path)
    p.add_argument("--begin", type=Path, metavar="STAMP", help="write the run's start (time, load) here and stop")
    p.add_argument("--stamp", type=Path, help="the --begin file of this run")
    p.add_argument("--record", type=Path, help="also write the rows as a record (docs/results/reliability.json)")
    args = p.parse_args(argv)
    if args.begin:
        from bench import record

        args.begin.write_text(json.dumps(record.start("reliability", folder=None).to_json()))
        return 0
    if not args.report.exists():
        log.error("%s: no fault report (run `make test-faults` first)", args.report)
        return 2
    rows = load(args.report)
    sys.stdout.write(table(rows) + "\n")
    if args.record:
        write_record(rows, args.record, args.stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
