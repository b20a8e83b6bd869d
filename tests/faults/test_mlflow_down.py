"""Fault: the MLflow server dies (SIGKILL) during a run, or is down before it starts.

Real processes only: a real ``mlflow server`` (sqlite store), the real ``rlt run ingest`` flow (Prefect, the
DuckLake catalog) in this process. The data work must complete and commit, the tracking failure must be one
warning, the run must be recorded as tracked incompletely, ``rlt tracking status`` must say what is missing, and
once the server is back ``rlt tracking relog`` must put the runs, params and metrics into MLflow, exactly once.
"""
from __future__ import annotations

import json
import logging
import time

import pytest
import yaml

from tests.flows.test_factory import tiny_recipe

pytestmark = [pytest.mark.faults, pytest.mark.services]


class _Records(logging.Handler):
    """Collects records of the loggers it is attached to (Prefect's run loggers do not reach caplog)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: str, text: str) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelname == level and text in r.getMessage()]


class _KillOnLog(logging.Handler):
    """SIGKILLs the MLflow server when the ingest stage's body logs its summary: the flow's MLflow run and the
    stage's nested run exist by then, the stage's commit, metrics and end (and the flow's) are still to come."""

    def __init__(self, server):
        super().__init__(logging.INFO)
        self.server, self.killed_at = server, None

    def emit(self, record: logging.LogRecord) -> None:
        if self.killed_at is None and record.getMessage().startswith("ingest: ") and "problems" in record.getMessage():
            self.server.kill()
            self.killed_at = time.time()


def _status(main, root, capsys) -> dict:
    capsys.readouterr()
    assert main(["--data-root", root, "tracking", "status", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_mlflow_down_during_and_before_a_run(mlflow_server, tiny_model_dir, tmp_path, monkeypatch, capsys,
                                             fault_report):
    from mlflow.tracking import MlflowClient

    import flows.factory  # noqa: F401  (imports Prefect, which configures its loggers: attach handlers after)
    from flows.cli import main
    from infra.engine.context import RunContext
    from infra.tracking import LOCAL_PREFIX, reset_outage

    t_start = time.time()
    srv, root = mlflow_server, str(tmp_path / "data")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    recipes = []
    for n in (8, 10):   # two recipes: two different ingest keys, each really computed
        path = tmp_path / f"r{n}.yaml"
        path.write_text(yaml.safe_dump(tiny_recipe(tiny_model_dir, ingest={"source": {"uri": "builtin:countdown",
                                                                                      "n": n, "seed": 1}})))
        recipes.append(str(path))
    logs, killer = _Records(), _KillOnLog(srv)
    watched = [logging.getLogger(n) for n in ("", "prefect.flow_runs", "prefect.task_runs")]
    for lg in watched:
        lg.addHandler(logs)
    logging.getLogger("prefect.task_runs").addHandler(killer)
    reset_outage()
    try:
        # trial 1: killed during the run (after its MLflow runs were created)
        t0 = time.time()
        assert main(["--data-root", root, "run", "ingest", "--recipe", recipes[0]]) == 0
        during_s = time.time() - t0
        assert killer.killed_at is not None, "the ingest stage never logged its summary: no kill happened"
        # trial 2: down before the run starts (a new process would start outside degraded mode: reset it)
        logging.getLogger("prefect.task_runs").removeHandler(killer)
        reset_outage()
        t0 = time.time()
        assert main(["--data-root", root, "run", "ingest", "--recipe", recipes[1]]) == 0
        before_s = time.time() - t0
    finally:
        for lg in watched:
            lg.removeHandler(logs)
        logging.getLogger("prefect.task_runs").removeHandler(killer)
        reset_outage()

    ctx = RunContext(root)
    runs = ctx.catalog.rows("SELECT * FROM runs_latest ORDER BY ts")
    assert [(r["status"], r["tracking"]) for r in runs] == [("done", "incomplete")] * 2
    during, before = runs[0]["run_id"], runs[1]["run_id"]
    for rid in (during, before):   # the data work committed
        assert ctx.catalog.rows("SELECT count(*) AS n FROM artifacts_committed WHERE run_id = ? AND name = "
                                "'problems'", [rid])[0]["n"] == 1
    unavailable = [m for m in logs.messages("WARNING", "is unavailable") if "MLflow tracking at" in m]
    assert len(unavailable) == 2, unavailable   # once per trial (per process), not once per call
    assert all(srv.uri in m for m in unavailable)
    end_warnings = logs.messages("WARNING", "tracked incompletely")
    assert all(any(rid in m for m in end_warnings) for rid in (during, before)), end_warnings

    status = {s["run_id"]: s for s in _status(main, root, capsys)["pending"]}
    assert set(status) == {during, before}
    d, b = status[during], status[before]
    # during: the flow's run and the stage's run exist in MLflow; their ends, the stage's metrics and tags wait
    assert (d["runs_to_create"], d["runs_to_complete"], d["ends"]) == (0, 2, 2) and d["metrics"] > 0
    # before: nothing reached MLflow; two runs to create with their params and metrics
    assert (b["runs_to_create"], b["runs_to_complete"], b["ends"]) == (2, 0, 2)
    assert b["params"] > 0 and b["metrics"] > 0
    assert {r["name"] for r in b["runs"]} == {"rlt-ingest:tiny-test", "ingest"}

    restart_s = srv.start()
    capsys.readouterr()
    t0 = time.time()
    assert main(["--data-root", root, "tracking", "relog"]) == 0
    relog_s = time.time() - t0
    assert _status(main, root, capsys) == {"pending": [], "journal_missing": []}
    client = MlflowClient(srv.uri)
    exp = client.get_experiment_by_name("rlt-factory").experiment_id

    def mlflow_runs(rid: str) -> dict:
        found = client.search_runs([exp], f"tags.`rlt.run_id` = '{rid}'")
        return {r.info.run_name: r for r in found}

    for rid in (during, before):
        got = mlflow_runs(rid)
        assert set(got) == {"rlt-ingest:tiny-test", "ingest"}, (rid, set(got))
        parent, stage = got["rlt-ingest:tiny-test"], got["ingest"]
        assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert parent.info.status == stage.info.status == "FINISHED"
        assert stage.data.metrics["rows"] > 0 and "stage_seconds" in stage.data.metrics
        assert any(k.startswith("config.") for k in stage.data.params) and "recipe.name" in parent.data.params
        assert parent.data.tags["rlt.artifact.problems"] == stage.data.tags["rlt.output.problems"]
    rows = {r["run_id"]: r for r in ctx.catalog.rows("SELECT * FROM runs_latest")}
    assert {rows[r]["tracking"] for r in (during, before)} == {"relogged"}
    assert rows[before]["mlflow_run_id"] == mlflow_runs(before)["rlt-ingest:tiny-test"].info.run_id
    assert not rows[before]["mlflow_run_id"].startswith(LOCAL_PREFIX)

    # relog again: nothing pending, nothing duplicated
    assert main(["--data-root", root, "tracking", "relog"]) == 0
    assert len(client.search_runs([exp])) == 4
    total = time.time() - t_start
    fault_report.record(
        fault="MLflow server down during a run", trials=2, outcome="data committed, tracking relogged once",
        detail=(f"SIGKILL mid-stage: run exit 0 in {during_s:.1f}s; down before start: exit 0 in {before_s:.1f}s; "
                f"one warning per process; `rlt tracking status` listed {d['metrics']}+{b['metrics']} metric values, "
                f"{d['ends'] + b['ends']} run ends; after restart ({restart_s:.1f}s) relog {relog_s:.1f}s, "
                "rerun: no duplicates"),
        seconds=total)
    assert total < 180, f"fault test took {total:.0f}s"
