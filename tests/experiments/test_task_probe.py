"""experiments/task_probe.py on a tiny random model: one row per task, with its accuracy and band verdict, and a
record that docs/results.md's block renders from."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from experiments import task_probe

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_probe_reports_each_task_and_renders(tmp_path):
    results = tmp_path / "repo" / "docs" / "results"
    numbers = task_probe.main(["--tiny", "--items", "4", "--max-new-tokens", "8", "--results", str(results)])
    assert [r["task"] for r in numbers["tasks"]] == list(task_probe.TASKS)
    for row in numbers["tasks"]:
        assert row["items"] == 4 and len(row["correct"]) == 4 and 0.0 <= row["accuracy"]["mean"] <= 1.0
        assert row["in_band"] == (0.05 <= row["accuracy"]["mean"] <= 0.60)
    [path] = results.glob("task_probe*.json")   # a variant's record (the flags that differ from the defaults)
    rec = json.loads(path.read_text())
    assert rec["numbers"]["tasks"][2]["task"] == "arithmetic-terse" and "--tiny" in rec["command"]
    assert rec["numbers"]["split"] == "validation" and {r["split"] for r in rec["numbers"]["tasks"]} == {"validation"}
    path.rename(results / "task_probe.json")
    sys.path.insert(0, str(ROOT / "scripts"))
    import doc_templates

    block = doc_templates.task_probe(doc_templates.Ctx(tmp_path / "repo", "docs/results.md"))
    assert "Not yet measured" not in block and "addition-terse" in block and "task_probe.json" in block
    assert "validation items" in block


def test_unknown_task_and_bad_item_count_are_refused():
    with pytest.raises(SystemExit):
        task_probe.main(["--tiny", "--no-record", "--tasks", "sudoku"])
    with pytest.raises(SystemExit):
        task_probe.main(["--tiny", "--no-record", "--items", "500"])
