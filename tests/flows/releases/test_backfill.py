"""`rlt backfill` (issue 14 part 4): nights in order through the real factory flow, committed nights skipped on a
re-run, a failed night stops the backfill (exit 2), sources checked up front, the night ranges parsed strictly."""
from __future__ import annotations

import contextlib
import json
import logging
import re

import pytest
import yaml

from flows.cli import main
from flows.releases.backfill import (
    BackfillError,
    BackfillRequest,
    NightResult,
    failure_line,
    fill,
    load_nights,
    parse_nights,
    placeholders,
    run_backfill,
    source_nights,
)
from tests.flows.test_factory import tiny_recipe

NIGHTS = ["2026-11-01", "2026-11-02", "2026-11-03"]


class _Lines(logging.Handler):
    """The backfill's own log lines (Prefect's logging set-up replaces the root handlers, caplog's among them)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def backfill_lines():
    lines, lg = _Lines(), logging.getLogger("rlt.backfill")
    level = lg.level
    lg.addHandler(lines)
    lg.setLevel(logging.INFO)
    try:
        yield lines.messages
    finally:
        lg.removeHandler(lines)
        lg.setLevel(level)


# -- parsing (fast) ----------------------------------------------------------------------------------------
def test_parse_nights_ranges_and_lists():
    assert parse_nights("2026-11-01..2026-11-03") == NIGHTS
    assert parse_nights("2026-11-05..2026-11-05") == ["2026-11-05"]
    assert parse_nights("2026-02-27..2026-03-01") == ["2026-02-27", "2026-02-28", "2026-03-01"]
    assert parse_nights(" 2026-11-03, 2026-11-01 ") == ["2026-11-01", "2026-11-03"]   # a list runs in date order
    assert len(parse_nights("2026-01-01..2026-12-31")) == 365


@pytest.mark.parametrize("spec, match", [
    ("2026-11-07..2026-11-01", "end 2026-11-01 is before the start 2026-11-07"),
    ("2026-11-01..2026-13-01", "'2026-13-01' is not a date; expected YYYY-MM-DD"),
    ("2026-11-1..2026-11-03", "'2026-11-1' is not a date"),
    ("yesterday", "'yesterday' is not a date"),
    ("2026-11-01..", "'' is not a date"),
    ("", "--nights is empty"),
    ("2026-11-01,2026-11-01", "2026-11-01 is listed twice"),
    ("2025-01-01..2026-01-02", "367 nights, more than 366"),
])
def test_parse_nights_errors(spec, match):
    with pytest.raises(BackfillError, match=re.escape(match)):
        parse_nights(spec)


def test_template_fill_only_touches_the_placeholder():
    data = {"name": "n-{night}", "ingest": {"source": {"uri": "d/{night}.jsonl", "n": 3}},
            "style": {"system": "keep {braces} and {{this}}"}, "evaluate": {"benchmarks": ["a-{night}", "b"]}}
    assert sorted(placeholders(data)) == ["evaluate.benchmarks.0", "ingest.source.uri", "name"]
    out = fill(data, "2026-11-02")
    assert out["ingest"]["source"] == {"uri": "d/2026-11-02.jsonl", "n": 3} and out["name"] == "n-2026-11-02"
    assert out["style"]["system"] == "keep {braces} and {{this}}" and out["evaluate"]["benchmarks"][0] == "a-2026-11-02"
    assert data["name"] == "n-{night}", "the template itself is not changed"


def test_source_nights_glob(tmp_path):
    for n in ("2026-11-02", "2026-11-01"):
        (tmp_path / f"{n}.jsonl").write_text("{}\n")
    (tmp_path / "sub.jsonl").mkdir()   # a directory is not a night
    assert source_nights(str(tmp_path / "2026-*.jsonl")) == [(n, str(tmp_path / f"{n}.jsonl"))
                                                             for n in ("2026-11-01", "2026-11-02")]
    with pytest.raises(BackfillError, match="matches no file"):
        source_nights(str(tmp_path / "*.parquet"))
    (tmp_path / "2026-11-01.csv").write_text("question,solution\n")
    with pytest.raises(BackfillError, match="two files would be night '2026-11-01'"):
        source_nights(str(tmp_path / "2026-11-01.*"))


def _problems(path, seed: int, n: int = 6) -> None:
    from rlt_core.builtin_problems import generate

    path.write_text("".join(json.dumps({k: r[k] for k in ("question", "solution", "answer")}) + "\n"
                            for r in generate("countdown", n, seed=seed)))


def _template(tmp_path, model_dir: str, uri: str, **over) -> str:
    r = tiny_recipe(model_dir, ingest={"source": {"uri": uri}, "heldout_fraction": 0.25})
    r["train_teacher"]["phases"] = []   # the base model teaches: a night takes ~20 s on 2 CPU cores
    r["distill"]["train"]["max_steps"] = 1
    r["evaluate"]["max_items"] = 2
    for k, v in over.items():
        r[k] = v
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump(r))
    return str(path)


def test_recipe_without_placeholder_and_missing_sources_are_refused_up_front(tmp_path, tiny_model_dir, capsys):
    src = tmp_path / "problems"
    src.mkdir()
    _problems(src / "2026-11-01.jsonl", 0)
    root = str(tmp_path / "data")
    plain = _template(tmp_path, tiny_model_dir, str(src / "2026-11-01.jsonl"))
    with pytest.raises(BackfillError, match=r"no \{night\} in any value, so every night of --nights would be"):
        load_nights(BackfillRequest(recipe=plain, root=root, nights="2026-11-01..2026-11-02"))
    # ... unless --set puts one in (overrides apply before the substitution)
    req = BackfillRequest(recipe=plain, root=root, nights="2026-11-01",
                          overrides=[f"ingest.source.uri={src}/{{night}}.jsonl"])
    assert load_nights(req)[0].recipe.ingest.source.uri == str(src / "2026-11-01.jsonl")

    path = _template(tmp_path, tiny_model_dir, str(src / "{night}.jsonl"))
    rc = main(["--data-root", root, "backfill", "--recipe", path, "--nights", "2026-11-01..2026-11-03"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith("rlt: 2 of 3 night(s) have no source file, nothing was run: "), err
    assert f"night 2026-11-02: source {src}/2026-11-02.jsonl: no such file" in err and "night 2026-11-03" in err
    import os

    assert not os.path.exists(os.path.join(root, "_catalog")), "nothing ran, nothing was written"
    # a bad recipe value names the field (validated for every night before any runs)
    assert main(["--data-root", root, "backfill", "--recipe", path, "--nights", "2026-11-01",
                 "--set", "generate.num_sampels=2"]) == 2
    assert "num_sampels" in capsys.readouterr().err
    with pytest.raises(SystemExit):   # --nights and --sources are exclusive (argparse: exit 2 with usage)
        main(["--data-root", root, "backfill", "--recipe", path, "--nights", "2026-11-01", "--sources", "x"])


def test_keep_going_and_stop_with_a_fake_night_runner(tmp_path, tiny_model_dir):
    """The loop itself (order, stop, --keep-going, the lines) with a stand-in for the factory flow."""
    src = tmp_path / "problems"
    src.mkdir()
    for i, n in enumerate(NIGHTS):
        _problems(src / f"{n}.jsonl", i)
    path = _template(tmp_path, tiny_model_dir, str(src / "{night}.jsonl"))
    seen = []

    def runner(night, req):
        seen.append(night.label)
        if night.label == "2026-11-02":
            raise BackfillError("boom on purpose")
        return {"run_id": f"run-{night.label}", "distill_set": {"key": "ab" * 20},
                "audits": {"published": True, "alias": "current"}}

    req = BackfillRequest(recipe=path, root=str(tmp_path / "data"), nights="2026-11-01..2026-11-03")
    with backfill_lines() as lines:
        res = run_backfill(req, runner=runner)
    assert seen == NIGHTS[:2] and [r.status for r in res] == ["ran", "failed", "not run"]
    assert "night 2026-11-01 (1/3): ran in" in lines[1] and "run run-2026-11-01, distill abababababab, published " \
        "current" in lines[1]
    assert lines[2] == "night 2026-11-02 (2/3): FAILED: boom on purpose"
    assert failure_line(res).startswith("backfill: night 2026-11-02 failed: boom on purpose; 1 later night(s) not "
                                        "run; fix it and re-run")
    seen.clear()
    res = run_backfill(req.model_copy(update={"keep_going": True}), runner=runner)
    assert seen == NIGHTS and [r.status for r in res] == ["ran", "failed", "ran"]

    from flows.releases.audit import AuditFailed

    def audit_fails(night, req):   # a failed audit is a failed night (the factory flow raises it after the report)
        if night.label == "2026-11-01":
            raise AuditFailed("current", [{"name": "min_yield", "passed": False, "figure": 0.5, "bound": 0.9,
                                           "detail": ""}])
        return runner(night, req)

    res = run_backfill(req, runner=audit_fails)
    assert [r.status for r in res] == ["failed", "not run", "not run"]
    assert res[0].message == "audit failed, 'current' not moved: min_yield 0.5 vs bound 0.9"
    assert failure_line([NightResult(night="x", status="ran")]) is None


# -- the real factory, night by night ---------------------------------------------------------------------
def _statuses(out: str) -> dict[str, str]:
    return dict(re.findall(r"night (\S+) \(\d/\d\): (ran|skipped|FAILED|would run|would skip)", out))


def test_backfill_runs_nights_in_order_stops_on_failure_and_resumes(tmp_path, tiny_model_dir):
    """Night 2's source is malformed: night 1 runs, night 2 fails (exit 2, named), night 3 is not run. Fixed and
    re-run: night 1 is skipped, 2 and 3 run in order. Re-run again: every night skipped, nothing recomputed."""
    from infra.catalog.lake import Catalog
    from infra.catalog.store import Store

    src = tmp_path / "problems"
    src.mkdir()
    for i, n in enumerate(NIGHTS):
        _problems(src / f"{n}.jsonl", i)
    (src / "2026-11-02.jsonl").write_text("this is not json\n")
    root = str(tmp_path / "data")
    path = _template(tmp_path, tiny_model_dir, str(src / "{night}.jsonl"))
    cmd = ["--data-root", root, "backfill", "--recipe", path, "--nights", "2026-11-01..2026-11-03"]

    def backfill(*extra):
        with backfill_lines() as lines:
            rc = main(cmd + list(extra))
        return rc, "\n".join(lines)

    rc, out = backfill()
    assert rc == 2 and _statuses(out) == {"2026-11-01": "ran", "2026-11-02": "FAILED"}, out
    assert "night 2026-11-02 (2/3): FAILED: " in out and "2026-11-02.jsonl" in out
    cat = Catalog(Store(root))
    runs = cat.rows("SELECT run_id, status, ts FROM runs_latest WHERE flow = 'rlt-factory' ORDER BY ts")
    assert [r["status"] for r in runs] == ["done", "failed"], "night 3 was not run"

    _problems(src / "2026-11-02.jsonl", 1)   # fix the source; a dry run says what would happen
    rc, out = backfill("--dry-run")
    assert rc == 0 and _statuses(out) == {"2026-11-01": "would skip", "2026-11-02": "would run",
                                          "2026-11-03": "would run"}, out
    rc, out = backfill()
    assert rc == 0 and _statuses(out) == {"2026-11-01": "skipped", "2026-11-02": "ran", "2026-11-03": "ran"}, out
    assert out.index("night 2026-11-02") < out.index("night 2026-11-03")
    runs = cat.rows("SELECT run_id, status, recipe_hash FROM runs_latest WHERE flow = 'rlt-factory' ORDER BY ts")
    assert [r["status"] for r in runs] == ["done", "failed", "done", "done"]
    sources = [r["source"] for r in cat.rows("SELECT DISTINCT source FROM data_problems ORDER BY source")]
    assert sources == [str(src / f"{n}.jsonl") for n in NIGHTS], sources
    moves = cat.rows("SELECT run_id FROM releases WHERE alias = 'current' ORDER BY ts")
    assert [m["run_id"] for m in moves] == [r["run_id"] for r in runs if r["status"] == "done"], \
        "each night published `current` in turn, in night order"

    stage_runs = cat.rows("SELECT count(*) AS n FROM stage_runs")[0]["n"]
    rc, out = backfill()
    assert rc == 0 and set(_statuses(out).values()) == {"skipped"}, out
    assert cat.rows("SELECT count(*) AS n FROM stage_runs")[0]["n"] == stage_runs, "nothing recomputed or rerun"
    assert len(cat.rows("SELECT run_id FROM runs_latest WHERE flow = 'rlt-factory'")) == 4
    cat.close()
