"""Fault-injection suite (marker ``faults``): real processes, real signals, real servers.

Every test records what it tried through the ``fault_report`` fixture: one JSON line per fault kind
(fault, trials, outcome, detail) appended to ``$RLT_FAULTS_REPORT`` (default
``.faults-report.jsonl`` in the repository root). ``python scripts/reliability_table.py`` turns that
file into the table in docs/reliability.md, so the table is filled from what the suite measured.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def report_path() -> Path:
    return Path(os.environ.get("RLT_FAULTS_REPORT") or ROOT / ".faults-report.jsonl")


class FaultReport:
    """Append-only record of faults tried; ``record`` is called once per fault kind after it was checked."""

    def __init__(self, test: str):
        self.test = test

    def record(self, fault: str, trials: int, outcome: str, detail: str = "", seconds: float | None = None) -> None:
        row = {"test": self.test, "fault": fault, "trials": int(trials), "outcome": outcome, "detail": detail,
               "seconds": None if seconds is None else round(seconds, 1), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        path = report_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


@pytest.fixture
def fault_report(request) -> FaultReport:
    return FaultReport(request.node.nodeid)
