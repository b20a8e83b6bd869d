"""Render the documents' measured figures from the committed records, and check that they agree.

    python scripts/render_docs.py --check            # exit 1, listing every block that differs from its records
    python scripts/render_docs.py --write            # rewrite the blocks from the records
    python scripts/render_docs.py --write docs/reliability.md                     # one document only

A block is a Markdown region between two HTML comments (invisible on the rendered page)::

    <!-- render: bench-reward -->
    ...generated: a table, then the record files it came from, their commit and the machine's load...
    <!-- /render -->

``bench-reward`` names a template in ``scripts/doc_templates.py``: a function of the record files
(``bench/results/*.json``, ``docs/results/**.json``; format in ``bench/record.py``) that returns the block's text,
or says "Not yet measured at this commit: run <command>" when a record is missing. A block written on one line
(``<!-- render: x -->text<!-- /render -->``) stays inline. ``--check`` regenerates every block and fails on any
difference, so a number typed by hand into a block, or a record changed without re-rendering, fails
``make check-docs``.

Figures measured before records were kept stay visible only inside an explicit section::

    <!-- unrecorded: why, in a few words [until=path/of/the/record.json] -->
    > **Not from a record.** Measured at commit ...; ... a rerun writes the record.
    ...the old text...
    <!-- /unrecorded -->

The checker requires that visible notice as the section's first line, lists every such section in its output, and
fails once the ``until`` record exists: the rendered block replaces the section then, and ``--write`` removes it
(markers included). A section without ``until`` (history, investigation notes) stays until someone edits it.
"""
from __future__ import annotations

import argparse
import difflib
import glob
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import doc_templates  # noqa: E402

DOCS = ("README.md", "bench/README.md", "docs/results.md", "docs/reliability.md")
MARKER = re.compile(r"<!-- (?P<kind>render|unrecorded): ?(?P<arg>.*?) -->|<!-- /(?P<close>render|unrecorded) -->")
NOTICE = "> **Not from a record.**"
log = logging.getLogger("render_docs")


@dataclass
class Section:
    """A marked region of a document: ``kind`` render or unrecorded; ``body`` spans [start, end) of the text."""

    doc: str
    kind: str
    arg: str
    line: int
    start: int
    end: int
    body: str


def sections(doc: str, text: str) -> list[Section]:
    """The marked regions of ``text``, in order; markers must pair up and never nest."""
    out, open_ = [], None
    for m in MARKER.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        if m.group("kind"):
            if open_ is not None:
                raise ValueError(f"{doc}:{line}: a {m.group('kind')} marker inside the {open_[0].group('kind')} "
                                 f"section opened at line {open_[1]}")
            open_ = (m, line)
        else:
            if open_ is None or open_[0].group("kind") != m.group("close"):
                raise ValueError(f"{doc}:{line}: <!-- /{m.group('close')} --> without its opening marker")
            start, (om, oline) = open_[0].end(), open_
            out.append(Section(doc, om.group("kind"), om.group("arg").strip(), oline, start, m.start(),
                               text[start:m.start()]))
            open_ = None
    if open_ is not None:
        raise ValueError(f"{doc}:{open_[1]}: the {open_[0].group('kind')} section is never closed")
    return out


def rendered_body(root: Path, sec: Section) -> str:
    """What the block must hold: the template's text, on its own lines unless the block was written inline."""
    template = doc_templates.TEMPLATES.get(sec.arg)
    if template is None:
        raise KeyError(f"{sec.doc}:{sec.line}: no template {sec.arg!r} (scripts/doc_templates.py)")
    text = template(doc_templates.Ctx(root, sec.doc)).strip("\n")
    return f"\n{text}\n" if sec.body.startswith("\n") else text


def _until_paths(arg: str) -> list[str]:
    m = re.search(r"\buntil=(\S+)", arg)
    return m.group(1).split(",") if m else []


def superseded(root: Path, sec: Section) -> list[str]:
    """The records named by an unrecorded section's ``until=`` that exist now."""
    return [str(Path(f).relative_to(root)) for pattern in _until_paths(sec.arg)
            for f in sorted(glob.glob(str(root / pattern)))]


def check_unrecorded(root: Path, sec: Section) -> list[str]:
    problems = []
    first = sec.body.lstrip("\n").split("\n", 1)[0]
    if not first.startswith(NOTICE):
        problems.append(f"{sec.doc}:{sec.line}: unrecorded section without its visible notice: its first line must "
                        f"start with {NOTICE!r}")
    found = superseded(root, sec)
    if found:
        problems.append(f"{sec.doc}:{sec.line}: unrecorded section ({sec.arg}): its record exists now ({found[0]}): "
                        "the rendered block replaces it (python scripts/render_docs.py --write removes it)")
    return problems


def _without_section(before: str, after: str) -> tuple[str, str]:
    """Drop an unrecorded section's markers with it: the opening marker ends ``before``, the closing one starts
    ``after``; one blank line is kept between what remains."""
    head = before[:before.rindex("<!-- unrecorded:")].rstrip("\n")
    tail = after[len("<!-- /unrecorded -->"):].lstrip("\n")
    return head + "\n\n", tail


def process(root: Path, docs: tuple[str, ...], write: bool) -> tuple[list[str], list[str]]:
    """(problems, notes) over ``docs``; with ``write`` the blocks are rewritten first (then only structural
    problems remain)."""
    problems, notes = [], []
    for doc in docs:
        path = root / doc
        text = path.read_text(encoding="utf-8")
        try:
            secs = sections(doc, text)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        new, pos = [], 0
        for sec in secs:
            new.append(text[pos:sec.start])
            pos = sec.end
            if sec.kind == "unrecorded":
                if write and superseded(root, sec):
                    new[-1], rest = _without_section(new[-1], text[sec.end:])
                    pos = len(text) - len(rest)
                    notes.append(f"{doc}:{sec.line}: removed the unrecorded section ({sec.arg}): its record exists")
                    continue
                new.append(sec.body)
                problems += check_unrecorded(root, sec)
                notes.append(f"{doc}:{sec.line}: exempt, unrecorded ({sec.arg})")
                continue
            try:
                body = rendered_body(root, sec)
            except (KeyError, ValueError, TypeError) as exc:
                problems.append(f"{doc}:{sec.line}: block {sec.arg!r}: {exc}")
                new.append(sec.body)
                continue
            new.append(body)
            if body != sec.body and not write:
                diff = "\n".join(difflib.unified_diff(sec.body.strip("\n").splitlines(),
                                                      body.strip("\n").splitlines(), "document", "records",
                                                      lineterm="", n=0))
                problems.append(f"{doc}:{sec.line}: block {sec.arg!r} differs from its records "
                                f"(python scripts/render_docs.py --write):\n{diff}")
        new.append(text[pos:])
        if write and "".join(new) != text:
            path.write_text("".join(new), encoding="utf-8")
            log.info("rendered %s", doc)
    return problems, notes


def stale_records(root: Path) -> list[str]:
    """Records measured before their bench last changed (a warning: the document names each record's commit)."""
    out = []
    for path in sorted((root / "bench" / "results").glob("*.json")):
        rec = doc_templates.read(path) or {}
        script = f"bench/{rec.get('bench')}.py"
        if not (root / script).exists() or rec.get("commit", "unknown") == "unknown":
            continue
        try:
            n = subprocess.run(["git", "-C", str(root), "rev-list", "--count", f"{rec['commit']}..HEAD", "--", script],
                               capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            continue
        if n not in ("", "0"):
            out.append(f"{path.relative_to(root)}: measured at {rec['commit'][:7]}; {script} changed in {n} commit(s) "
                       "since: rerun it")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when a document and its records disagree")
    mode.add_argument("--write", action="store_true", help="rewrite the rendered blocks from the records")
    p.add_argument("docs", nargs="*", help=f"documents (default: {' '.join(DOCS)})")
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problems, notes = process(args.root, tuple(args.docs) or DOCS, args.write)
    for note in notes:
        log.info("%s", note)
    for warning in stale_records(args.root):
        log.warning("stale? %s", warning)
    for problem in problems:
        log.error("%s", problem)
    if problems:
        log.error("check-docs: %d problem(s)", len(problems))
        return 1
    log.info("check-docs: every rendered block agrees with its records" if args.check else "rendered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
