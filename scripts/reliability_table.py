"""Turn the fault suite's record (.faults-report.jsonl, written by tests/faults) into the reliability table.

    python scripts/reliability_table.py [.faults-report.jsonl] [--write docs/reliability.md]

Prints a Markdown table (fault, trials, outcome, seconds, detail) built only from what the suite recorded; with
``--write`` the table replaces the block between the ``<!-- faults:begin -->`` / ``<!-- faults:end -->`` markers
of that file. A kind recorded more than once (reruns) keeps its latest record.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
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


def _cell(text: object, limit: int = 600) -> str:
    s = str(text if text is not None else "").replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def table(rows: list[dict]) -> str:
    out = ["| fault | trials | outcome | seconds | detail |", "|---|---:|---|---:|---|"]
    for r in rows:
        out.append(f"| {_cell(r['fault'])} | {r['trials']} | {_cell(r['outcome'])} | "
                   f"{_cell(r.get('seconds') if r.get('seconds') is not None else '')} | {_cell(r.get('detail'))} |")
    trials = sum(int(r["trials"]) for r in rows)
    out.append("")
    out.append(f"{len(rows)} fault kinds, {trials} trials, recorded {max((r['at'] for r in rows), default='-')}.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", nargs="?", default=".faults-report.jsonl", type=Path)
    p.add_argument("--write", type=Path, help="replace the marked block of this Markdown file with the table")
    args = p.parse_args(argv)
    if not args.report.exists():
        log.error("%s: no fault report (run `make test-faults` first)", args.report)
        return 2
    text = table(load(args.report))
    sys.stdout.write(text + "\n")
    if args.write:
        doc = args.write.read_text(encoding="utf-8")
        if BEGIN not in doc or END not in doc:
            log.error("%s: no %s ... %s block to replace", args.write, BEGIN, END)
            return 2
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        args.write.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")
        log.info("wrote the table into %s", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
