"""Every figure a document quotes is rendered from a committed record: the documents agree with their records, and the
checker notices a document or a record that was changed by hand (scripts/render_docs.py, bench/record.py)."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import reliability_table  # noqa: E402
import render_docs  # noqa: E402

from bench import record  # noqa: E402


def _reward_record(score_over_bare: float = 1.61) -> dict:
    """A record as bench/reward.py writes it (only the fields its template reads)."""
    return {"bench": "reward", "variant": "", "command": ".venv/bin/python bench/reward.py", "commit": "0" * 40,
            "dirty": False, "machine": {"cpus": 2, "load_start": [0.2, 0.3, 0.3], "load_end": [1.9, 0.8, 0.4]},
            "started": "2026-12-01T10:00:00Z", "finished": "2026-12-01T10:03:00Z",
            "numbers": {"n": 16, "k": 1, "threads": 2, "dtype": "float32", "tokens": 18800,
                        "mean_explanation_tokens": 175.0, "score_explanations_per_s": 0.42,
                        "score_over_bare": {"cpu": 1.5, "wall": score_over_bare},
                        "loop_speedup": {"cpu": 1.6, "wall": 1.6}, "max_abs_reward_diff_vs_loop": 4e-6},
            "ratio": {"name": "score/bare throughput (wall)", "value": score_over_bare, "target": ">= 0.8",
                      "pass": True}}


def test_the_documents_agree_with_their_records():
    problems, notes = render_docs.process(ROOT, render_docs.DOCS, write=False)
    assert problems == []
    assert any("exempt, unrecorded" in n for n in notes)   # the exemptions are listed, not skipped silently


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The documents and their records, copied: what the checker reads."""
    for doc in render_docs.DOCS:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / doc, tmp_path / doc)
    for folder in ("bench/results", "docs/results"):
        if (ROOT / folder).exists():
            shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path


def _check(root: Path) -> list[str]:
    return render_docs.process(root, render_docs.DOCS, write=False)[0]


def test_a_number_typed_into_a_rendered_block_fails_the_check(repo_copy):
    path = repo_copy / "bench/README.md"
    text = path.read_text()
    marker = "<!-- render: bench-manifest-sql-memory -->\n"
    path.write_text(text.replace(marker, marker + "Measured: peak RSS ratio 1.004.\n\n", 1))
    problems = _check(repo_copy)
    assert len(problems) == 1 and "bench-manifest-sql-memory" in problems[0] and "1.004" in problems[0]


def test_a_new_record_is_rendered_and_a_tampered_number_fails_the_check(repo_copy):
    rec = _reward_record()
    (repo_copy / "bench/results").mkdir(parents=True, exist_ok=True)
    (repo_copy / "bench/results/reward.json").write_text(json.dumps(rec))   # the full run, recorded
    assert any("bench-reward" in p for p in _check(repo_copy))              # the document does not show it yet
    problems, notes = render_docs.process(repo_copy, render_docs.DOCS, write=True)
    assert problems == [] and any("removed the unrecorded section" in n for n in notes)
    text = (repo_copy / "bench/README.md").read_text()
    block = text[text.index("<!-- render: bench-reward -->"):text.index("<!-- /render -->", text.index(
        "<!-- render: bench-reward -->"))]
    assert "[`reward.json`](results/reward.json)" in block and "`python bench/reward.py` (" not in block
    assert "| 1.61 | 1.60x | 0.42 | 4.0e-06 | 175 / 588 | 2, float32 |" in block and "quiet" in block
    assert "Measured on the tree of commit f05f037" not in text   # the old numbers went with their section
    assert _check(repo_copy) == []
    ratio = f"{rec['numbers']['score_over_bare']['wall']:.2f}"
    tampered = text.replace(block, block.replace(f"| {ratio} |", "| 9.99 |", 1))
    assert tampered != text
    (repo_copy / "bench/README.md").write_text(tampered)
    problems = _check(repo_copy)
    assert len(problems) == 1 and "bench-reward" in problems[0] and "9.99" in problems[0]


def test_a_changed_record_fails_the_check_until_rendered(repo_copy):
    path = repo_copy / "bench/results/reward-k-4.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_reward_record()))
    render_docs.process(repo_copy, ("bench/README.md",), write=True)
    assert _check(repo_copy) == []
    path.write_text(json.dumps(_reward_record(score_over_bare=1.72)))   # rerun: a new number
    problems = _check(repo_copy)
    assert len(problems) == 1 and "bench-reward" in problems[0] and "1.72" in problems[0]
    render_docs.process(repo_copy, ("bench/README.md",), write=True)
    assert _check(repo_copy) == []


def test_an_unrecorded_section_needs_its_visible_notice(repo_copy):
    path = repo_copy / "docs/results.md"
    text = path.read_text()
    assert render_docs.NOTICE in text
    path.write_text(text.replace(render_docs.NOTICE, "> Round 1.", 1))
    problems = _check(repo_copy)
    assert len(problems) == 1 and "visible notice" in problems[0]


def test_markers_must_pair_up():
    with pytest.raises(ValueError, match="never closed"):
        render_docs.sections("x.md", "a\n<!-- render: bench-reward -->\nb\n")
    with pytest.raises(ValueError, match="inside"):
        render_docs.sections("x.md", "<!-- unrecorded: a -->\n<!-- render: b -->\n<!-- /render -->\n")


def test_a_record_holds_the_command_commit_machine_and_ratio(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tiny", action="store_true")
    record.add_arguments(parser)
    args = parser.parse_args(["--k", "16", "--batch-size", "16", "--results", str(tmp_path)])
    session = record.start_from_args("demo", parser, args, smoke=False, argv=["--k", "16"])
    path = record.finish(session, {"x": 1.5}, record.Ratio("a/b", 0.9, ">= 0.8"))
    assert path == tmp_path / "demo-k-16_batch-size-16.json"
    rec = json.loads(path.read_text())
    assert rec["command"].endswith("--k 16") and (rec["commit"] == "unknown" or len(rec["commit"]) == 40)
    assert rec["numbers"] == {"x": 1.5} and rec["ratio"] == {"name": "a/b", "value": 0.9, "target": ">= 0.8",
                                                             "pass": True}
    assert {"cpus", "load_start", "load_end", "python"} <= set(rec["machine"]) and isinstance(rec["dirty"], bool)
    assert rec["started"] <= rec["finished"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == "a/b: 0.900 (target >= 0.8)"   # the ratio is last
    assert not list(tmp_path.glob(".*.tmp"))


def test_smoke_runs_never_write_into_the_committed_folder():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    record.add_arguments(parser)
    smoke = record.start_from_args("demo", parser, parser.parse_args(["--tiny"]), smoke=True)
    assert smoke.path == record.smoke_dir() / "demo-tiny.json"
    assert record.start_from_args("demo", parser, parser.parse_args(["--no-record"]), smoke=False).path is None
    assert record.start_from_args("demo", parser, parser.parse_args([]), smoke=False).path == \
        record.RESULTS / "demo.json"


def test_reliability_totals_count_trials_not_the_corpus_description():
    rows = [{"fault": "SIGKILL inside generate", "trials": 10, "outcome": "ok", "at": "2026-11-29T10:00:00"},
            {"fault": "bad_input:corpus", "trials": 58, "outcome": "58 kinds described", "detail": "48 inputs",
             "at": "2026-11-29T10:01:00"},
            {"fault": "bad_input:nul_bytes", "trials": 1, "outcome": "quarantined", "at": "2026-11-29T10:02:00"}]
    text = reliability_table.table(rows)
    assert "2 fault kinds, 11 trials" in text
    assert "| bad_input:corpus |" not in text and "Not a trial: `bad_input:corpus`: 58 kinds described" in text


def test_the_plots_agree_with_their_records():
    import render_plots

    assert render_plots.plan()                          # the main run's records are committed: there are plots
    assert render_plots.check() == []


def test_a_changed_record_fails_the_plot_check_until_redrawn(repo_copy):
    import render_plots

    assert render_plots.check(str(repo_copy)) == []
    rec = repo_copy / "docs/results/evidence/grpo.json"
    data = json.loads(rec.read_text())
    data["numbers"]["history"]["1"]["rlt/reward/mean"] += 1.0
    rec.write_text(json.dumps(data))
    drawn_from_it = [p for p in render_plots.plan(str(repo_copy)) if str(rec) in p[1]]
    stale = render_plots.check(str(repo_copy))
    assert "docs/results/evidence/reward_terms.png" in stale
    assert sorted(stale) == sorted(str(Path(png).relative_to(repo_copy)) for png, _, _ in drawn_from_it)
    (repo_copy / "docs/results/evidence/students.png").unlink()
    assert "docs/results/evidence/students.png" in render_plots.check(str(repo_copy))
    for png, records, draw in drawn_from_it:
        draw(png)
        render_plots.write_stamp(png, render_plots._stamp(str(repo_copy), records))
    assert render_plots.check(str(repo_copy)) == ["docs/results/evidence/students.png"]
