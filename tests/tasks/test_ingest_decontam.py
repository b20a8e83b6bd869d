"""ingest decontamination: copies of benchmark items land in quarantine (reason contaminated), the key follows the
settings and the benchmarks' contents, an unloadable benchmark fails ingest with one clear line."""
from __future__ import annotations

import json
import os
import re

import pytest

from flows.recipe import load_recipe
from infra.engine.context import RunContext
from infra.engine.runner import run_stage
from rlt_core.benchmarks import benchmark_questions, get_benchmark, load_benchmark_rows
from rlt_core.builtin_problems import generate
from rlt_core.sources import QUARANTINE_REASONS, SourceError
from tasks import ingest

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _heldout(name: str) -> list[tuple[str, dict]]:
    spec = get_benchmark(name)
    rows = load_benchmark_rows(spec)
    return [(item_id, row) for (item_id, _), row in zip(benchmark_questions(spec, rows), rows)]


def _source(tmp_path) -> tuple[str, dict[int, str]]:
    """5 training problems, then 4 edited copies of held-out items: source row -> the copied item's id."""
    cd, ar = _heldout("countdown-heldout"), _heldout("arithmetic-heldout")
    train = generate("countdown", 3, seed=11) + generate("arithmetic", 2, seed=11)
    rows = [{"question": p["question"], "solution": p["solution"]} for p in train]
    planted = {
        5: (cd[3], lambda q: "  " + q.upper().replace(", ", " ,  ")),                     # case, spaces, commas
        6: (cd[10], lambda q: q.replace("create an equation", "write an expression")),     # words edited
        7: (ar[4], lambda q: "Solve the following. " + q + " Show all steps."),            # embedded short item
        8: (cd[20], lambda q: q.replace("You can", "You may").replace("basic", "simple")),
    }
    for _, ((_, row), edit) in sorted(planted.items()):
        rows.append({"question": edit(row["question"]), "solution": row["solution"]})
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path), {r: item_id for r, ((item_id, _), _) in planted.items()}


def _cfg(uri: str, **decontaminate) -> ingest.IngestConfig:
    return ingest.IngestConfig(source={"uri": uri}, heldout_fraction=0.0, decontaminate=decontaminate)


def test_copies_of_benchmark_items_are_quarantined_as_contaminated(tmp_path):
    uri, planted = _source(tmp_path)
    ctx = RunContext(str(tmp_path / "store"), tracking=False)
    cfg = _cfg(uri)
    out = run_stage(ingest.STAGE, ctx, cfg)
    assert out["problems"].num_rows == 5
    q = ctx.catalog.sql("SELECT source_row, reason, field, detail FROM data_quarantine ORDER BY source_row").to_pylist()
    assert [r["source_row"] for r in q] == sorted(planted)
    assert {r["reason"] for r in q} == {"contaminated"} and {r["field"] for r in q} == {"question"}
    for r in q:
        detail = dict(kv.split("=", 1) for kv in r["detail"].split())
        assert detail["item"] == planted[r["source_row"]], r
        assert detail["benchmark"] in ("countdown-heldout", "arithmetic-heldout")
        assert detail["kind"] in ("exact", "ngram", "near_duplicate") and 0 < float(detail["overlap"]) <= 1
    stats = json.loads(ctx.catalog.artifact(out["problems"].key)["stats_json"])
    assert stats["quarantine.contaminated"] == 4 and stats["problems"] == 5 and stats["rows_in"] == 9
    assert sum(1 for _ in ingest.preview(cfg)) == 5                    # rlt plan counts see the same
    assert "contaminated" in QUARANTINE_REASONS


def test_ingest_key_follows_decontamination_settings_and_benchmark_contents(tmp_path):
    uri, _ = _source(tmp_path)

    def key(cfg):
        return ingest.STAGE.key_parts(cfg, {}).key()

    base = key(_cfg(uri))
    assert key(_cfg(uri)) == base
    assert key(_cfg(uri, n=6)) != base
    assert key(_cfg(uri, near_duplicate=0.9)) != base
    assert key(_cfg(uri, benchmarks=["countdown-heldout"])) != base
    off = key(_cfg(uri, enabled=False))
    assert off != base and key(_cfg(uri, enabled=False, n=5)) == off      # settings of a disabled check: no effect
    local = tmp_path / "math500.jsonl"
    local.write_text(open(os.path.join(FIXTURES, "math500_sample.jsonl")).read())
    with_file = key(_cfg(uri, benchmarks=["math500"], local_files={"math500": str(local)}))
    local.write_text("".join(open(os.path.join(FIXTURES, "math500_sample.jsonl")).readlines()[:2]))
    assert key(_cfg(uri, benchmarks=["math500"], local_files={"math500": str(local)})) != with_file


def test_local_copy_of_a_hub_benchmark(tmp_path):
    rows = [json.loads(line) for line in open(os.path.join(FIXTURES, "math500_sample.jsonl"))]
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps({"question": "Please solve: " + rows[1]["problem"].upper(), "solution": "x"}) + "\n"
                   + json.dumps({"question": "What is 40 + 2?", "solution": "42"}) + "\n")
    cfg = _cfg(str(src), benchmarks=["math500"], local_files={"math500": os.path.join(FIXTURES,
                                                                                       "math500_sample.jsonl")})
    kinds = [(kind, row.get("detail", "")) for kind, row in ingest.classified(cfg)]
    assert kinds[0][0] == "contaminated" and f"item={rows[1]['unique_id']}" in kinds[0][1]
    assert kinds[1][0] == "problem"


def test_unloadable_benchmark_fails_ingest_with_one_clear_line(tmp_path):
    uri, _ = _source(tmp_path)
    cfg = _cfg(uri, benchmarks=["countdown-heldout", "math500"], local_files={"math500": str(tmp_path / "nope.jsonl")})
    with pytest.raises(SourceError) as exc:
        list(ingest.preview(cfg))
    msg = str(exc.value)
    assert "\n" not in msg and "benchmark 'math500' cannot be loaded" in msg
    assert "ingest.decontaminate.local_files.math500" in msg and "ingest.decontaminate.benchmarks" in msg
    with pytest.raises(ValueError, match=re.escape("unknown benchmark(s) ['mmlu']")):
        _cfg(uri, benchmarks=["mmlu"])


def test_recipe_decontaminates_against_what_it_evaluates_and_tiny_still_ingests():
    tiny = load_recipe(os.path.join(REPO, "flows/recipes/tiny.yaml"))
    assert tiny.ingest.decontaminate.benchmarks == tiny.evaluate.benchmarks == ["arithmetic-easy-heldout"]
    own = load_recipe(os.path.join(REPO, "flows/recipes/tiny.yaml"),
                      ["ingest.decontaminate.benchmarks=[arithmetic-heldout]"])
    assert own.ingest.decontaminate.benchmarks == ["arithmetic-heldout"]
    paper = load_recipe(os.path.join(REPO, "flows/recipes/paper-7b.yaml"))
    assert paper.ingest.decontaminate.benchmarks == ["aime24", "math500", "gpqa_diamond"]
    kinds = [kind for kind, _ in ingest.classified(tiny.ingest)]
    assert kinds == ["problem"] * tiny.ingest.source.n      # builtin training problems: none held out
    from tasks.evaluate import EvaluateConfig
    assert tuple(EvaluateConfig().benchmarks) == ingest.DEFAULT_BENCHMARKS
