"""The builtin model (a real forward pass) and MLflow tracking on a real sqlite store; degraded tracking (a dead
tracking URI, a real MLflow server SIGKILLed mid-run) and its relog."""
from __future__ import annotations

import logging
import os
import socket
import time

import pytest
import torch

from infra.models import ModelUnavailable, folder_digest, resolve_model
from infra.tracking import Tracker


def test_builtin_model_provisions_once_reloads_fast_and_generates(smol_model_path, monkeypatch):
    from infra import models

    def rebuild(*args):
        raise AssertionError("second resolution must reuse the saved snapshot")

    monkeypatch.setattr(models, "_build_builtin", rebuild)   # asserted directly, not through a wall time
    snap = resolve_model("builtin:smollm2-135m-instruct")
    assert snap.path == smol_model_path
    assert snap.digest == folder_digest(snap.path) and len(snap.digest) == 16
    from rlt_core.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer(snap.path)
    model = load_causal_lm(snap.path)
    assert not getattr(model.config, "quantization_config", None)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


def test_unknown_model_reference_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(ModelUnavailable, match="neither"):
        resolve_model("no-such-model")
    with pytest.raises(ValueError, match="unknown builtin"):
        resolve_model("builtin:gpt-5")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        resolve_model(str(tmp_path))


def test_tracking_parent_and_nested_runs_with_redacted_params(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tr = Tracker(str(tmp_path))
    assert tr.uri == f"sqlite:///{tmp_path}/mlflow.db"
    parent = tr.start_run("factory:test")
    child = tr.start_run("score", parent_run_id=parent, tags={"rlt.artifact_key": "abc"})
    tr.log_params(child, {"reward": {"kl_coef": [3, 0.03]}, "aws_secret_access_key": "hunter2",
                          "endpoint": "https://user:pw@example.invalid/x"})
    tr.log_metrics(child, {"reward_mean": -1.5}, step=3)
    tr.end_run(child)
    tr.end_run(parent)
    run = tr.client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["rlt.artifact_key"] == "abc"
    assert run.data.params["reward.kl_coef"] == "[3, 0.03]"
    assert run.data.params["aws_secret_access_key"] == "***"
    assert "pw" not in run.data.params["endpoint"]
    assert run.data.metrics["reward_mean"] == -1.5
    assert tr.client.get_run(parent).info.status == "FINISHED"


def test_experiment_created_by_another_run_meanwhile_is_reused(tmp_path):
    """Two nights starting together against one MLflow server: both see no experiment, one creates it first;
    the other's create is refused by the store (RESOURCE_ALREADY_EXISTS) and must use the existing one."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker(str(tmp_path), uri=uri, experiment="race")
    run_id = first.start_run("first")
    client = MlflowClient(tracking_uri=uri)
    existing = client.get_experiment_by_name("race").experiment_id
    # the second run lost the race: its lookup said "none", its create is refused by the real store
    second = Tracker(str(tmp_path), uri=uri, experiment="race")
    assert second._create_experiment(client, None) == existing
    assert second.start_run("second") and run_id
    assert {r.info.experiment_id for r in client.search_runs([existing])} == {existing}
    assert len(client.search_runs([existing])) == 2


# ------------------------------------------------------------------------------------- degraded tracking
@pytest.fixture
def fresh_outage():
    """Degraded mode is process-wide per tracking URI: each test starts and ends without it."""
    from infra.tracking import reset_outage

    reset_outage()
    yield
    reset_outage()


def _unavailable_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "infra.tracking" and r.levelname == "WARNING"
            and "is unavailable" in r.getMessage()]


def _journal_text(path: str) -> str:
    import glob

    return "".join(open(p).read() for p in sorted(glob.glob(f"{path}/*.jsonl")))


def test_dead_tracking_server_costs_seconds_once_then_nothing_and_journals_without_secrets(
        tmp_path, monkeypatch, caplog, capsys, fresh_outage):
    """A tracking URI where nothing listens (connection refused): the first call pays the bounded retries once
    (MLflow's default is ~4 minutes of backoff), warns once, and every call is journaled; no secret lands in the
    journal or the warning."""
    import mlflow  # noqa: F401  (imported here so the timing below is the HTTP client's, not the import's)

    from infra.catalog.store import Store
    from infra.devstack.services import free_port
    from infra.tracking import HTTP_BOUNDS, LOCAL_PREFIX, pending_run_ids, summarize

    for name in HTTP_BOUNDS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-xyz")
    caplog.set_level(logging.INFO)
    port = free_port()
    uri = f"http://rlt:pa55word@127.0.0.1:{port}"
    # connection attempts to the tracking port, counted (not timed: a busy machine stretches any wall time)
    attempts, connect = [], socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda sock, address: (
        attempts.append(address) if address[1:2] == (port,) else None, connect(sock, address))[1])
    tr = Tracker(str(tmp_path), uri=uri, run_id="run-dead")
    t0 = time.time()
    parent = tr.start_run("flow:test", tags={"rlt.run_id": "run-dead"})
    first = time.time() - t0
    assert parent.startswith(LOCAL_PREFIX)
    retries = int(HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    assert 1 <= len(attempts) <= 1 + retries, f"{len(attempts)} connection attempts (retries not bounded?)"
    assert first < 60.0, f"a refused connection cost {first:.1f}s (MLflow's own default backs off ~4 minutes)"
    n_first, t1 = len(attempts), time.time()
    child = tr.start_run("ingest", parent_run_id=parent, tags={"src": "s3://ak:sk@host/bucket"})
    tr.log_params(child, {"config": {"n": 3}, "db_password": "hunter2", "note": "key s3cr3t-value-xyz"})
    for step in range(20):
        tr.log_metrics(child, {"loss": 1.0 / (step + 1)}, step=step)
    tr.set_tags(child, {"rlt.output_uri": "/data/x"})
    tr.end_run(child)
    tr.end_run(parent, "FAILED")
    rest = time.time() - t1
    assert len(attempts) == n_first, "degraded calls must not touch the network"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    warnings = _unavailable_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "127.0.0.1" in warnings[0] and "pa55word" not in warnings[0] and "start_run failed" in warnings[0]
    assert tr.tracking_state() == "incomplete"
    assert tr.pending() == {"runs": 2, "params": 3, "metrics": 20, "tags": 1, "ends": 2}

    store = Store(str(tmp_path))
    assert pending_run_ids(store) == ["run-dead"]
    s = summarize(store, "run-dead")
    assert (s["runs_to_create"], s["runs_to_complete"], s["params"], s["metrics"], s["ends"]) == (2, 0, 3, 20, 2)
    assert {r["name"]: r["end"] for r in s["runs"]} == {"flow:test": "FAILED", "ingest": "FINISHED"}
    text = _journal_text(tr.journal_path())
    for secret in ("pa55word", "hunter2", "s3cr3t-value-xyz", "ak:sk"):
        assert secret not in text, secret
    print(f"dead server: first call {first:.2f}s ({n_first} connection attempts), 25 degraded calls "
          f"{rest * 1000:.0f}ms")

    # the CLI says what is missing, and refuses to clear anything while MLflow is still down
    from flows.cli import main

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))   # main() would set it for good otherwise
    capsys.readouterr()
    assert main(["--data-root", str(tmp_path), "tracking", "status"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "run-dead" in out and "ingest (to create): 3 params, 20 metric values, 1 tags" in out
    assert "flow:test (to create)" in out and "end FAILED" in out and "pa55word" not in out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["--data-root", str(tmp_path), "tracking", "relog"]) == 1
    err = capsys.readouterr().err
    assert "still unreachable" in err and "pa55word" not in err
    assert pending_run_ids(store) == ["run-dead"]


@pytest.mark.services
def test_journal_on_an_s3_data_root_and_relog(seaweed_s3, tmp_path, monkeypatch, caplog, fresh_outage):
    """The journal lives in the data root, on S3 too (whole segment objects: S3 has no append)."""
    from mlflow.tracking import MlflowClient

    from infra.catalog.store import Store
    from infra.devstack.services import free_port
    from infra.tracking import pending_run_ids, relog, summarize

    for k, v in seaweed_s3["env"].items():
        monkeypatch.setenv(k, v)
    root = f"s3://{seaweed_s3['bucket']}/journal-{tmp_path.name}"
    tr = Tracker(root, uri=f"http://127.0.0.1:{free_port()}", run_id="run-s3")
    parent = tr.start_run("flow:s3")
    tr.log_params(parent, {"recipe": {"name": "s3"}})
    for step in range(3):
        tr.log_metrics(parent, {"m": step * 0.5}, step=step)
    tr.end_run(parent)
    store = Store(root)
    assert tr.journal_path().startswith("s3://")
    assert pending_run_ids(store) == ["run-s3"]
    assert summarize(store, "run-s3")["metrics"] == 3
    target = f"sqlite:///{tmp_path}/relog.db"
    out = relog(store, "run-s3", uri=target)
    assert out["replayed"] == {"runs": 1, "params": 1, "metrics": 3, "ends": 1}
    assert pending_run_ids(store) == []
    client = MlflowClient(target)
    run = client.get_run(out["mapping"][parent])
    assert run.info.status == "FINISHED" and run.data.params["recipe.name"] == "s3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "m")] == [0, 1, 2]


@pytest.mark.services
def test_mlflow_killed_mid_run_then_relog_is_complete_and_idempotent(mlflow_server, tmp_path, caplog, fresh_outage):
    """A real MLflow server SIGKILLed between a run's start and its stages: nothing raises, the calls are
    journaled; once it is back, relog replays them with original names, parent link, steps, timestamps and
    statuses; a relog interrupted half-way (a journal file missing) and rerun creates no run twice and no
    metric twice."""
    import glob
    import shutil

    from mlflow.tracking import MlflowClient

    from infra.catalog.store import Store
    from infra.tracking import LOCAL_PREFIX, TrackingError, read_journal, relog, summarize

    caplog.set_level(logging.INFO)
    srv = mlflow_server
    root = str(tmp_path / "data")
    tr = Tracker(root, uri=srv.uri, experiment="outage-test", run_id="run-mid")
    parent = tr.start_run("rlt-ingest:tiny", tags={"rlt.run_id": "run-mid"})
    tr.log_params(parent, {"recipe": {"n": 3}})
    assert not parent.startswith(LOCAL_PREFIX)
    srv.kill()
    t0 = time.time()
    child = tr.start_run("ingest", parent_run_id=parent, tags={"rlt.stage": "ingest"})
    tr.log_params(child, {"config": {"n": 3}, "aws_secret_access_key": "hunter2"})
    tr.log_metrics(child, {"loss": 0.5}, step=1)
    tr.log_metrics(child, {"loss": 0.25, "rows": 3}, step=2)
    tr.set_tags(child, {"rlt.output.problems": "abc"})
    tr.log_text(child, "a sample", "samples/s-step00001.txt")
    tr.end_run(child)
    art = tmp_path / "index.html"
    art.write_text("<html>report</html>")
    tr.log_artifact(child, str(art), "report")   # after the end: a relog stopping here has sent everything else
    tr.set_tags(parent, {"rlt.artifact.problems": "abc"})
    tr.end_run(parent)
    degraded_s = time.time() - t0
    assert child.startswith(LOCAL_PREFIX)
    assert len(_unavailable_warnings(caplog)) == 1
    assert degraded_s < 10.0, f"{degraded_s:.1f}s spent on a dead server"
    store = Store(root)
    s = summarize(store, "run-mid")
    assert (s["runs_to_create"], s["runs_to_complete"], s["params"], s["metrics"], s["tags"], s["artifacts"],
            s["ends"]) == (1, 1, 2, 3, 2, 2, 2)
    assert "hunter2" not in _journal_text(tr.journal_path())
    ops = read_journal(store, "run-mid").ops
    start_ts = next(o["ts"] for o in ops if o["op"] == "start")
    metric_ts = {r[3]: r[2] for o in ops if o["op"] == "metrics" for r in o["metrics"] if r[0] == "loss"}

    srv.start()
    client = MlflowClient(srv.uri)
    assert client.get_run(parent).info.status == "RUNNING"   # its end is in the journal
    # a relog that stops half-way: the artifact's copy is missing from the journal
    kept = glob.glob(f"{tr.journal_path()}/files/*")[0]
    shutil.move(kept, tmp_path / "aside")
    with pytest.raises(TrackingError, match="stopped after"):
        relog(store, "run-mid", uri=srv.uri)
    shutil.move(tmp_path / "aside", kept)
    out = relog(store, "run-mid", uri=srv.uri)
    assert out["replayed"].get("runs", 0) == 0, "the child was created by the first attempt and must not be again"
    with pytest.raises(TrackingError, match="no pending tracking"):
        relog(store, "run-mid", uri=srv.uri)

    exp = client.get_experiment_by_name("outage-test").experiment_id
    runs = client.search_runs([exp])
    assert sorted(r.info.run_name for r in runs) == ["ingest", "rlt-ingest:tiny"]
    c = client.get_run(out["mapping"][child])
    assert c.data.tags["mlflow.parentRunId"] == parent and c.data.tags["rlt.output.problems"] == "abc"
    assert c.data.params == {"config.n": "3", "aws_secret_access_key": "***"}
    assert c.info.status == "FINISHED" and c.info.start_time == start_ts
    hist = client.get_metric_history(c.info.run_id, "loss")
    assert sorted((m.step, m.value, m.timestamp) for m in hist) == [(1, 0.5, metric_ts[1]), (2, 0.25, metric_ts[2])]
    assert c.data.metrics["rows"] == 3
    assert [a.path for a in client.list_artifacts(c.info.run_id, "report")] == ["report/index.html"]
    assert [a.path for a in client.list_artifacts(c.info.run_id, "samples")] == ["samples/s-step00001.txt"]
    p = client.get_run(parent)
    assert p.info.status == "FINISHED" and p.data.tags["rlt.artifact.problems"] == "abc"
    assert p.data.params == {"recipe.n": "3"}
