"""Hostile inputs (tests/fixtures/bad_inputs/MANIFEST.yaml) against the real ingest stage and the real `rlt` CLI.

Per kind: a bad row lands in the committed quarantine artifact with its reason, field and source row, and the
committed problems artifact holds exactly the good rows; a source that is unusable as a whole fails the stage with
one `rlt: ...` line naming the file (exit 2), no traceback, and no artifact of the stage committed.

Cost (the file must stay within ~3 minutes on 2 busy cores): every kind runs the ingest stage in-process (runner,
contracts, catalog commit: ~0.3 s idle). The CLI prints any SourceError as `rlt: {message}`, so per kind the stage
check is the contract; `flows.cli.main` runs in-process (a Prefect flow each, 2-8 s) only for CLI_KINDS, one per
place a refusal can arise, and one real `rlt` process checks the console of a separate interpreter.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from infra.engine.context import RunContext
from infra.engine.runner import run_stage
from rlt_core import sources
from rlt_core.sources import SourceError, shown
from tasks import ingest

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "fixtures" / "bad_inputs"
KINDS = yaml.safe_load((CORPUS / "MANIFEST.yaml").read_text(encoding="utf-8"))["kinds"]
ROW_KINDS = [k for k in KINDS if k["expect"] in ("quarantine", "read")]
REFUSED_KINDS = [k for k in KINDS if k["expect"] == "refused"]
# refused kinds also run through `rlt run ingest` in-process, one per place a refusal arises (the warm-up run of the
# cli_root fixture is an empty file, the reader's sniffing): the stage body after quarantining every row, inside
# pyarrow while iterating, the file system before opening (a FIFO would block), a RecursionError in Prefect's
# task thread, a message that must be escaped to stay one line, and the recipe (config) refusing first.
CLI_KINDS = {"every_record_wrong_type", "parquet_corrupt_pages", "fifo_as_source", "deep_nesting_json_file",
             "newline_in_file_name", "non_utf8_file_name"}
# text no stored problem may hold: lone surrogates, control characters but \t \n \r, a BOM, a format tag
_UNSAFE = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff]|" +
                     "|".join(re.escape(t) for t in sources.reserved_tags()), re.IGNORECASE)


# ---------------------------------------------------------------- inputs made at test time

def _good_line(i: int = 0) -> bytes:
    return json.dumps({"question": f"What is {i} + 1?", "solution": f"{i + 1}"}).encode() + b"\n"


def _ten_mb_field(d: Path) -> Path:
    p = d / "ten_mb_field.jsonl"
    p.write_bytes(_good_line() + json.dumps({"question": "What is big?", "solution": "x" * 10_000_000}).encode()
                  + b"\n")
    return p


def _deep_line(d: Path) -> Path:
    p = d / "deep_100k.jsonl"
    p.write_bytes(_good_line() + b'{"question": "Q?", "solution": "S", "meta": ' + b"[" * 100_000 + b"]" * 100_000
                  + b"}\n")
    return p


def _deep_file(d: Path) -> Path:
    p = d / "deep_100k.json"
    p.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    return p


def _long_line(d: Path) -> Path:
    p = d / "long_line.jsonl"
    with open(p, "wb") as f:
        f.write(_good_line())
        chunk = b"x" * (1 << 20)
        for _ in range(sources._MAX_LINE_BYTES >> 20):
            f.write(chunk)
        f.write(b"x")   # one byte over the limit, and no newline at all
    return p


def _symlink_loop(d: Path) -> Path:
    os.symlink("loop_b.jsonl", d / "loop_a.jsonl")
    os.symlink("loop_a.jsonl", d / "loop_b.jsonl")
    return d / "loop_a.jsonl"


def _broken_symlink(d: Path) -> Path:
    os.symlink("nothing_here.jsonl", d / "dangling.jsonl")
    return d / "dangling.jsonl"


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "fifo.jsonl")
    return d / "fifo.jsonl"


def _device(d: Path) -> Path:
    os.symlink("/dev/zero", d / "zero.jsonl")
    return d / "zero.jsonl"


def _newline_name(d: Path) -> Path:
    p = d / "bad\nname\x1b[31m.jsonl"
    p.write_bytes(b"")
    return p


def _non_utf8_name(d: Path) -> Path:
    raw = os.path.join(os.fsencode(d), b"caf\xe9.jsonl")
    with open(raw, "wb") as f:
        f.write(_good_line())
    return Path(os.fsdecode(raw))


GENERATORS = {"ten_mb_field": _ten_mb_field, "deep_nesting_100k": _deep_line, "deep_nesting_json_file": _deep_file,
              "long_line_without_newline": _long_line, "symlink_loop": _symlink_loop, "broken_symlink": _broken_symlink,
              "fifo_as_source": _fifo, "device_as_source": _device, "newline_in_file_name": _newline_name,
              "non_utf8_file_name": _non_utf8_name}


def source_of(kind: dict, tmp: Path) -> Path:
    return CORPUS / kind["file"] if "file" in kind else GENERATORS[kind["kind"]](tmp)


def _ids(kinds):
    return [k["kind"] for k in kinds]


def _record(report, kind: str, outcome: str, detail: str, t0: float) -> None:
    report.record(fault=f"bad_input:{kind}", trials=1, outcome=outcome, detail=detail.replace(f"{ROOT}/", ""),
                  seconds=time.monotonic() - t0)


# ---------------------------------------------------------------- shared stores

@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return RunContext(str(tmp_path_factory.mktemp("bad-inputs-store")), tracking=False)


def _point_console_at(stream) -> None:
    """In-process CLI runs across tests: the console log handlers made in an earlier test hold that test's (closed)
    capture stream; point them at the current one, as a fresh process would have them."""
    for logger in [logging.getLogger(), *(lg for lg in logging.root.manager.loggerDict.values()
                                          if isinstance(lg, logging.Logger))]:
        for h in logger.handlers:
            if type(h) is logging.StreamHandler or type(h).__name__ == "PrefectConsoleHandler":
                h.stream = stream
                if hasattr(h, "console"):   # Prefect's rich console handler
                    h.console.file = stream


@pytest.fixture(scope="module")
def cli_root(tmp_path_factory):
    """A data root for in-process `rlt` runs, warmed up by one refused run (Prefect's first start configures
    logging, replacing the root handlers). The environment the CLI sets (PREFECT_HOME...) is restored after."""
    from flows.cli import main

    saved = dict(os.environ)
    d = tmp_path_factory.mktemp("bad-inputs-cli")
    (d / "warm-up.jsonl").write_bytes(b"")
    (d / "warm-up.yaml").write_text(yaml.safe_dump({"name": "warm-up", "ingest": {"source": {"uri": str(
        d / "warm-up.jsonl")}}}))
    root = str(d / "data")
    assert main(["--data-root", root, "run", "ingest", "--recipe", str(d / "warm-up.yaml")]) == 2
    yield root
    _point_console_at(sys.stderr)
    os.environ.clear()
    os.environ.update(saved)


class _Records(logging.Handler):
    """Every log record of a run, formatted with its traceback if it still carries one."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


def _catalog_rows(root: str, sql: str) -> list[dict]:
    from infra.catalog.lake import Catalog
    from infra.catalog.store import Store

    return Catalog(Store(root)).rows(sql)


# ---------------------------------------------------------------- the corpus itself

def test_corpus_covers_the_issue_and_stays_small(fault_report):
    names = [k["kind"] for k in KINDS]
    assert len(names) == len(set(names)) and len(names) >= 25
    for required in ("lone_surrogate_in_question", "lone_surrogate_in_meta", "parquet_meta_timestamp", "reserved_tags",
                     "empty_file", "binary_file", "every_line_wrong_type", "nul_bytes", "utf8_bom", "crlf_line_endings",
                     "ten_mb_field", "deep_nesting_100k", "duplicate_keys", "mixed_encodings", "directory_as_source",
                     "symlink_loop", "parquet_wrong_schema", "truncated_parquet"):
        assert required in names, required
    assert CLI_KINDS <= {k["kind"] for k in REFUSED_KINDS}
    for k in KINDS:
        assert k["expect"] in ("quarantine", "read", "refused") and ("file" in k) != ("generated" in k), k
        assert "file" in k or k["kind"] in GENERATORS, k
        assert k["expect"] != "refused" or k.get("message"), k
        assert k["expect"] == "refused" or "problems" in k, k
        assert (k["expect"] == "quarantine") == bool(k.get("quarantine")), k
        for reason, _field, _row in k.get("quarantine", []):
            assert reason in sources.QUARANTINE_REASONS, (k["kind"], reason)
    listed = {k["file"] for k in KINDS if "file" in k}
    on_disk = {p.name for p in CORPUS.iterdir()} - {"MANIFEST.yaml", "make_corpus.py", ".gitattributes"}
    assert listed == on_disk, "every committed input is described in MANIFEST.yaml, and only those"
    size = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert size < 200_000, size
    fault_report.record(fault="bad_input:corpus", trials=len(KINDS), outcome=f"{len(KINDS)} kinds described",
                        detail=f"{len(listed)} committed inputs, {size} bytes; {len(GENERATORS)} made at test time")


# ---------------------------------------------------------------- bad rows: quarantine, never an abort

def _extra_checks(name: str, problems: list[dict], quarantined: list[dict]) -> None:
    by_row = {p["source_row"]: p for p in problems}
    if name == "parquet_meta_timestamp":
        meta = json.loads(by_row[0]["meta_json"])
        assert meta["added"] == "2026-01-02 03:04:05" and meta["day"] == "2026-01-02", meta
        assert meta["price"] == "1.50" and meta["score"] == "NaN" and meta["utc"].startswith("2026-01-02 03:04:05")
    elif name == "nan_and_infinity":
        assert json.loads(by_row[0]["meta_json"]) == {"score": "NaN", "hi": "Infinity"}
        assert by_row[1]["answer"] is None, "a NaN answer is a missing answer"
    elif name == "reserved_tags":
        assert "<thinking>" in by_row[7]["question"] and "<|begin_of_text|>" in by_row[7]["question"]
        assert by_row[8]["solution"] == "16"
    elif name == "control_characters":
        assert "\\boxed" in quarantined[1]["detail"] and "\\frac" in quarantined[2]["detail"]
        assert by_row[5]["question"] == "What is\t5+5?\nThink first." and by_row[5]["solution"] == "10"
    elif name in ("utf8_bom", "utf8_bom_csv", "crlf_line_endings", "crlf_csv_multiline"):
        assert all(p["question"].startswith("What is") for p in problems), problems
        if name == "crlf_csv_multiline":
            assert by_row[0]["solution"] == "1 + 1\r\n= 2", "a quoted CRLF inside a field is data, kept as is"
    elif name == "whitespace_only_fields":
        assert by_row[3]["question"] == "What is 4+4?" and by_row[3]["solution"] == "8"
    elif name == "mixed_encodings":
        assert by_row[0]["question"] == "Caf\u00e9: what is 1+1?"
        assert "0xE9" in quarantined[0]["detail"] and "0x93" in quarantined[1]["detail"]
    elif name == "ten_mb_field":
        assert "10000000 chars > limit 50000" in quarantined[0]["detail"]
    elif name == "long_line_without_newline":
        assert f"longer than {sources._MAX_LINE_BYTES} bytes" in quarantined[0]["detail"]
    elif name == "duplicate_keys":
        assert "'question' appears more than once" in quarantined[0]["detail"]


@pytest.mark.parametrize("kind", ROW_KINDS, ids=_ids(ROW_KINDS))
def test_bad_rows_are_quarantined_with_reason_field_and_row(kind, ctx, tmp_path, fault_report):
    t0 = time.monotonic()
    path = source_of(kind, tmp_path)
    out = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": str(path)}, heldout_fraction=0.0))
    committed = ctx.catalog.artifacts([out["problems"].key, out["quarantine"].key])
    assert len(committed) == 2, "problems and quarantine are committed together"
    problems = ctx.catalog.sql("SELECT source_row, question, solution, reasoning_trace, answer, meta_json "
                               "FROM data_problems WHERE artifact_key = ? ORDER BY source_row",
                               [out["problems"].key]).to_pylist()
    quarantined = ctx.catalog.sql("SELECT reason, field, source_row, detail, raw FROM data_quarantine "
                                  "WHERE artifact_key = ? ORDER BY source_row", [out["quarantine"].key]).to_pylist()
    assert [p["source_row"] for p in problems] == kind["problems"], problems
    assert [[q["reason"], q["field"], q["source_row"]] for q in quarantined] == kind.get("quarantine", []), \
        [(q["reason"], q["field"], q["source_row"], q["detail"]) for q in quarantined]
    for q in quarantined:
        assert q["detail"] and "\n" not in q["detail"] and "Traceback" not in q["detail"], q
        assert len(q["raw"]) <= 2000
    for p in problems:   # nothing hostile reaches a stored problem
        for name in ("question", "solution", "reasoning_trace", "answer"):
            text = p[name] or ""
            assert not _UNSAFE.search(text) and text == text.strip(), (name, text)
        json.loads(p["meta_json"])
    stats = json.loads(ctx.catalog.artifact(out["problems"].key)["stats_json"])
    assert stats["problems"] == len(problems) and stats["quarantined"] == len(quarantined)
    _extra_checks(kind["kind"], problems, quarantined)
    outcome = ("quarantined: " + "; ".join(f"{r}/{f or '-'}/row {n}" for r, f, n in kind["quarantine"])
               if quarantined else f"read correctly: {len(problems)} problems, none quarantined")
    _record(fault_report, kind["kind"], outcome, kind.get("hostile", kind.get("generated")), t0)


# ---------------------------------------------------------------- unusable sources: one line, nothing committed

@pytest.mark.parametrize("kind", REFUSED_KINDS, ids=_ids(REFUSED_KINDS))
def test_unusable_source_is_refused_in_one_line(kind, ctx, tmp_path, capfd, fault_report, request):
    from pydantic import ValidationError

    from data_contracts.errors import ExpectedError
    from flows.cli import main

    t0 = time.monotonic()
    path = source_of(kind, tmp_path)
    by_recipe = kind.get("refused_by") == "recipe"
    # 1. the stage itself: a SourceError (an expected error: no traceback) naming the file, nothing committed
    if by_recipe:
        with pytest.raises(ValidationError, match=re.escape(kind["message"].split(": ", 1)[1])):
            ingest.IngestConfig(source={"uri": str(path)})
    else:
        with pytest.raises(SourceError) as info:
            run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": str(path)}))
        message = str(info.value)
        assert isinstance(info.value, ExpectedError)
        assert kind["message"] in message and shown(path) in message, message
        assert message.isprintable(), "one printable line"
        failed = ctx.catalog.rows("SELECT artifact_key, detail FROM lake.main.stage_runs WHERE run_id = ? AND "
                                  "status = 'failed' ORDER BY ts", [ctx.run_id])
        assert failed and failed[-1]["detail"].startswith("SourceError: "), "the failure is recorded"
        assert ctx.catalog.artifacts(ingest.STAGE.output_keys(failed[-1]["artifact_key"]).values()) == {}, \
            "no artifact of the stage is committed"
    if kind["kind"] not in CLI_KINDS:
        _record(fault_report, kind["kind"], "source refused: one line",
                f"{message} (stage in-process; the CLI prints it as its one rlt: line)", t0)
        return

    # 2. the real CLI entry (argument parsing, recipe, Prefect flow and task, error printing): exit 2, one line
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "bad-input", "ingest": {"source": {"uri": str(path)}}}))
    cli_root = request.getfixturevalue("cli_root")
    records = _Records()
    logging.getLogger().addHandler(records)
    _point_console_at(sys.stderr)
    capfd.readouterr()
    try:
        rc = main(["--data-root", cli_root, "run", "ingest", "--recipe", str(recipe)])
    finally:
        logging.getLogger().removeHandler(records)
    out = capfd.readouterr()
    logs = "\n".join(records.lines)
    assert rc == 2, (out.err[-2000:], logs[-2000:])
    lines = [ln for ln in out.err.splitlines() if ln.startswith("rlt: ")]
    if by_recipe:
        assert len(lines) == 1 and lines[0].startswith(f"rlt: recipe {recipe}: ") and kind["message"] in lines[0], \
            out.err[-2000:]
        message = lines[0].removeprefix("rlt: ")
    else:
        assert lines == [f"rlt: {message}"], out.err[-2000:]
        assert "SourceError" in logs, "the capture saw the failed task's log records (so the check below can fail)"
    assert "Traceback" not in out.out + out.err and "Traceback" not in logs, (out.err + logs)[-3000:]
    assert _catalog_rows(cli_root, "SELECT count(*) AS n FROM lake.main.artifacts") == [{"n": 0}]
    _record(fault_report, kind["kind"], "recipe refused: one line" if by_recipe else "source refused: one line",
            f"{message} (stage and `rlt run ingest` in-process)", t0)


def test_a_real_rlt_process_refuses_a_symlink_loop_in_one_line(tmp_path, fault_report):
    """A separate interpreter (its own logging and Prefect setup): the console shows one `rlt:` line, exit 2."""
    t0 = time.monotonic()
    path = _symlink_loop(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "bad-input", "ingest": {"source": {"uri": str(path)}}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_HOME", None)
    env.pop("PREFECT_API_URL", None)
    root = str(tmp_path / "data")
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--data-root", root, "run", "ingest", "--recipe",
                          str(recipe)], capture_output=True, text=True, env=env, timeout=600, cwd=str(ROOT))
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("rlt: ")]
    assert lines == [f"rlt: {path}: is a symbolic link that loops back on itself; expected a "
                     ".parquet/.jsonl/.json/.csv file, a Hugging Face dataset id or builtin:<kind>"], text[-3000:]
    assert _catalog_rows(root, "SELECT count(*) AS n FROM lake.main.artifacts") == [{"n": 0}]
    _record(fault_report, "symlink_loop (a real rlt process)", "source refused: one line, exit 2, no traceback",
            lines[0], t0)
