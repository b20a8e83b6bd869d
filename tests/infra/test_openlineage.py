"""OpenLineage run events of stage runs (infra/openlineage.py, infra/engine/lineage_events.py) and MLflow dataset inputs.

A real local HTTP receiver records the events of a tiny chain (ingest, a hand-made reward ledger, filter; a failing
ingest); the events validate against the OpenLineage JSON schemas (copies of the upstream spec in
tests/fixtures/openlineage_spec: the client package ships none); their input -> output graph equals the catalog's
lineage of the same run; no secret reaches a payload. The file transport, the "off" default and the MLflow
Datasets column are checked too.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra.engine.context import RunContext
from infra.engine.runner import run_stage
from tasks import filter as filter_
from tasks import ingest

SPEC = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "openlineage_spec"
CORE = "https://openlineage.io/spec/2-0-2/OpenLineage.json"
S3_SECRET = "fake-s3-secret-Zq81xT0pLm"
OL_KEY = "fake-ol-api-key-Qw3e9Rt7Yu"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No OpenLineage configuration from the machine; the client's env aliases are removed afterwards."""
    before = {k: v for k, v in os.environ.items() if k.startswith("OPENLINEAGE") or k == "RLT_OPENLINEAGE_FILE"}
    for k in before:
        monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)   # no ./openlineage.yml
    from infra import openlineage

    openlineage.reset()
    yield
    for k in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        if k not in before:
            del os.environ[k]


class Receiver:
    """A Marquez-style endpoint on 127.0.0.1: records every POSTed body and its headers."""

    def __init__(self):
        self.bodies: list[bytes] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):   # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.bodies.append(body)
                outer.headers.append({"path": self.path, **dict(self.headers)})
                self.send_response(201)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        return [json.loads(b) for b in self.bodies]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _validator():
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    resources = [Resource.from_contents(json.loads(p.read_text())) for p in SPEC.rglob("*.json")]
    registry = Registry().with_resources((r.contents["$id"], r) for r in resources)

    def validate(event: dict) -> int:
        """The event against RunEvent, and each facet whose schema we hold against its own; facets checked."""
        Draft202012Validator({"$ref": f"{CORE}#/$defs/RunEvent"}, registry=registry).validate(event)
        n = 0
        for facet in _facets(event):
            base = facet["_schemaURL"].split("#")[0]
            if base in registry:
                Draft202012Validator({"$ref": facet["_schemaURL"]}, registry=registry).validate(facet)
                n += 1
        return n
    return validate


def _facets(event: dict):
    yield from event["run"].get("facets", {}).values()
    yield from event["job"].get("facets", {}).values()
    for d in event.get("inputs", []) + event.get("outputs", []):
        for group in ("facets", "inputFacets", "outputFacets"):
            yield from d.get(group, {}).values()


def _ledger(ctx, problems_ref):
    """A hand-made explanations + reward ledger over the ingested problems (as generate and score would commit)."""
    from data_contracts import explanations, scored_explanations
    from tests.tasks.helpers import commit_rows

    probs = ctx.catalog.sql(f"SELECT problem_id, question, solution FROM data_problems "
                            f"WHERE artifact_key = '{problems_ref.key}' ORDER BY problem_id").to_pylist()[:2]
    expl, scored = [], []
    for p_i, p in enumerate(probs):
        for k in range(2):
            eid = f"e_{p_i}{k:015d}"
            expl.append(dict(explanations.EXAMPLE, explanation_id=eid, problem_id=p["problem_id"], sample_index=k,
                             question=p["question"], solution=p["solution"],
                             completion=f"because {k}\n\n<|end_of_explanation|>"))
            scored.append(dict(scored_explanations.EXAMPLE, explanation_id=eid, problem_id=p["problem_id"],
                               sample_index=k, reward=-1.0 - k, format_penalty=0.0, kl_mean=0.1, kl_max=1.0,
                               answer_logprob_mean=-1.0, answer_logprob_min=-2.0))
    return (commit_rows(ctx, "explanations", explanations.CONTRACT, expl),
            commit_rows(ctx, "scored_explanations", scored_explanations.CONTRACT, scored))


def _chain(ctx):
    probs = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": "builtin:countdown", "n": 6}, heldout_fraction=0.2))
    expl, scored = _ledger(ctx, probs["problems"])
    out = run_stage(filter_.STAGE, ctx, filter_.FilterConfig(rules={"require_end_tag": False}), scored, expl, probs["problems"])
    return probs, out


def _edges(events: list[dict]) -> set[tuple[str, str]]:
    return {(i["name"].split("/")[-1], o["name"].split("/")[-1]) for e in events if e["eventType"] == "COMPLETE"
            for i in e["inputs"] for o in e["outputs"]}


def test_http_events_validate_match_catalog_lineage_and_hold_no_secret(tmp_path, monkeypatch, receiver):
    monkeypatch.setenv("OPENLINEAGE_URL", receiver.url)
    monkeypatch.setenv("OPENLINEAGE_API_KEY", OL_KEY)
    monkeypatch.setenv("OPENLINEAGE_NAMESPACE", "nightly-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    ctx = RunContext(str(tmp_path / "root"), tracking=False, flow_name="rlt-factory", recipe_name="tiny")
    probs, out = _chain(ctx)
    bad = tmp_path / "nosolution.jsonl"
    bad.write_text(json.dumps({"question": "Q1?"}) + "\n")
    with pytest.raises(Exception, match="no usable rows"):   # a failing stage run: START then FAIL
        run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": str(bad)}))

    events = receiver.events()
    assert {h["path"] for h in receiver.headers} == {"/api/v1/lineage"}
    assert all(h.get("Authorization") == f"Bearer {OL_KEY}" for h in receiver.headers)   # the key: header only
    raw = b"".join(receiver.bodies)
    assert OL_KEY.encode() not in raw and S3_SECRET.encode() not in raw

    by_job: dict[str, list[str]] = {}
    for e in events:
        by_job.setdefault(e["job"]["name"], []).append((e["eventType"], e["run"]["runId"]))
    assert [t for t, _ in by_job["tiny.filter"]] == ["START", "COMPLETE"]
    assert [t for t, _ in by_job["tiny.ingest"]] == ["START", "COMPLETE", "START", "FAIL"]
    assert len({r for _, r in by_job["tiny.filter"]}) == 1                  # one run id per stage run
    assert by_job["tiny.ingest"][0][1] != by_job["tiny.ingest"][2][1]      # another key, another run
    fail = [e for e in events if e["eventType"] == "FAIL"][0]
    assert "no usable rows" in fail["run"]["facets"]["errorMessage"]["message"]

    validate = _validator()
    checked = sum(validate(e) for e in events)
    assert checked >= 6 * len(events) // 2   # the standard facets were checked against their own schemas

    for e in events:
        assert e["job"]["namespace"] == "nightly-test"
        parent = e["run"]["facets"]["parent"]
        assert (parent["job"]["namespace"], parent["job"]["name"]) == ("nightly-test", "rlt-factory")
        assert e["run"]["facets"]["rlt"]["rlt_run_id"] == ctx.run_id
    assert len({e["run"]["facets"]["parent"]["run"]["runId"] for e in events}) == 1

    complete = {e["job"]["name"]: e for e in events if e["eventType"] == "COMPLETE"}
    outs = {o["name"].split("/")[0]: o for o in complete["tiny.filter"]["outputs"]}
    dist = outs["distill_set"]
    assert dist["namespace"] == "file://" + ctx.store.root
    assert dist["name"] == f"distill_set/{out['distill_set'].key}"
    assert dist["outputFacets"]["outputStatistics"]["rowCount"] == out["distill_set"].num_rows
    assert [f["name"] for f in dist["facets"]["schema"]["fields"]][:2] == ["example_id", "problem_id"]
    assert 0 < outs["filter_decisions"]["facets"]["rlt_dataQuality"]["yield"] <= 1
    ing = {o["name"].split("/")[0]: o for o in complete["tiny.ingest"]["outputs"]}
    q = ing["problems"]["facets"]["rlt_dataQuality"]
    assert q["rows_in"] == 6 and q["quarantined"] == 0 and q["quarantine_rate"] == 0.0

    # the graph the events describe is the catalog's lineage of this run (what `rlt lineage` walks)
    from flows.lineage import artifact_chain

    catalog_edges = {(r["parent_key"], r["child_key"]) for r in ctx.catalog.sql(
        f"SELECT parent_key, child_key FROM lineage WHERE run_id = '{ctx.run_id}'").to_pylist()}
    assert _edges(events) == catalog_edges and catalog_edges
    chain = {a["key"] for a in artifact_chain(ctx.catalog, out["distill_set"].key)}
    assert chain == {out["distill_set"].key} | {p for p, c in _edges(events) if c == out["distill_set"].key}


def test_file_transport(tmp_path, monkeypatch):
    path = tmp_path / "lineage" / "events.jsonl"
    monkeypatch.setenv("RLT_OPENLINEAGE_FILE", str(path))
    ctx = RunContext(str(tmp_path / "root"), tracking=False)
    probs = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": "builtin:countdown", "n": 4}, heldout_fraction=0.0))
    again = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": "builtin:countdown", "n": 4}, heldout_fraction=0.0))
    assert again["problems"] == probs["problems"]   # cached: no events
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert events[1]["job"] == {**events[1]["job"], "name": "rlt.ingest", "namespace": "rlt-factory"}
    assert {o["name"] for o in events[1]["outputs"]} == {f"problems/{probs['problems'].key}",
                                                         f"quarantine/{probs['quarantine'].key}"}
    _validator()(events[1])


def test_off_without_configuration_builds_no_client(tmp_path, monkeypatch):
    import openlineage.client

    def refuse(*a, **k):
        raise AssertionError("an OpenLineage client was constructed")

    monkeypatch.setattr(openlineage.client.OpenLineageClient, "__init__", refuse)
    ctx = RunContext(str(tmp_path / "root"), tracking=False)
    run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": "builtin:countdown", "n": 4}, heldout_fraction=0.0))
    assert not ctx.lineage.enabled and ctx.lineage._sinks is None
    # and the runner does not even import the client
    code = "import sys, infra.engine.runner, flows.cli; print('openlineage' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert res.stdout.strip() == "False", res.stderr[-2000:]


def test_unreachable_endpoint_never_fails_a_stage(tmp_path, monkeypatch, caplog):
    import socket

    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENLINEAGE_URL", f"http://127.0.0.1:{port}")
    ctx = RunContext(str(tmp_path / "root"), tracking=False)
    with caplog.at_level("WARNING", logger="infra.openlineage"):
        out = run_stage(ingest.STAGE, ctx, ingest.IngestConfig(source={"uri": "builtin:countdown", "n": 4}, heldout_fraction=0.0))
    assert ctx.catalog.artifact(out["problems"].key) is not None
    warnings = [r for r in caplog.records if "OpenLineage: sending to" in r.getMessage()]
    assert len(warnings) == 1   # one warning; the COMPLETE event was not tried again


def test_mlflow_datasets_column(tmp_path):
    from infra.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = RunContext(str(tmp_path / "root"), tracking=True, tracking_uri=uri)
    probs, out = _chain(ctx)
    client = Tracker(ctx.store.root, uri=uri).client
    runs = {r.data.tags.get("rlt.stage"): r for r in client.search_runs(
        [client.get_experiment_by_name("rlt-factory").experiment_id])}
    got = {(d.dataset.name, d.dataset.digest, d.dataset.source_type, json.loads(d.dataset.source)["uri"],
            {t.key: t.value for t in d.tags}["mlflow.data.context"])
           for d in client.get_run(runs["filter"].info.run_id).inputs.dataset_inputs}
    want = {(r.name, r.key, "local", r.uri, "input") for r in (probs["problems"],)}
    want |= {(r.name, r.key, "local", r.uri, "output") for r in out.values()}
    assert want <= got
    assert {c for *_, c in got} == {"input", "output"} and len(got) == 5   # 3 inputs, 2 outputs
    ingest_ds = client.get_run(runs["ingest"].info.run_id).inputs.dataset_inputs
    assert {d.dataset.digest for d in ingest_ds} == {probs["problems"].key, probs["quarantine"].key}


def test_mlflow_datasets_are_journaled_while_mlflow_is_down_and_relogged(tmp_path):
    from mlflow.tracking import MlflowClient

    from infra.catalog.store import Store
    from infra.devstack.services import free_port
    from infra.tracking import Tracker, relog, reset_outage, summarize

    root = str(tmp_path / "root")
    dead = f"http://127.0.0.1:{free_port()}"
    tr = Tracker(root, uri=dead, run_id="run-ds")
    try:
        run = tr.start_run("ingest")
        tr.log_datasets(run, [{"name": "problems", "digest": "k" * 20, "source": f"{root}/03_primary/problems/k",
                               "context": "output"}])
        tr.end_run(run)
    finally:
        reset_outage(dead)
    store = Store(root)
    assert summarize(store, "run-ds")["datasets"] == 1 and tr.pending()["datasets"] == 1
    out = relog(store, "run-ds", uri=f"sqlite:///{tmp_path}/relog.db")
    assert out["replayed"]["datasets"] == 1
    got = MlflowClient(f"sqlite:///{tmp_path}/relog.db").get_run(out["mapping"][run]).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest, [t.value for t in d.tags]) for d in got] == \
        [("problems", "k" * 20, ["output"])]


def test_abort_event_and_secret_env_facets_are_redacted(tmp_path, monkeypatch):
    """ABORT (another run committed the key first) is a valid event; an operator-configured environment-variables
    facet never carries a secret's value."""
    from infra.openlineage import DatasetInfo, Emitter, Settings, StageInfo

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("OPENLINEAGE__FACETS__ENVIRONMENT_VARIABLES", '["AWS_SECRET_ACCESS_KEY"]')
    path = tmp_path / "ev.jsonl"
    em = Emitter(str(tmp_path / "root"), Settings(file=str(path)))
    info = StageInfo(run_id="run-x", flow="rlt-factory", job="tiny.generate", stage="generate", key="k" * 20)
    em.abort(info, [DatasetInfo(name="problems", key="p" * 20, uri=str(tmp_path / "root" / "p"), num_rows=3)],
             f"run run-y committed {'k' * 20} first (s3 key {S3_SECRET})")
    raw = path.read_text()
    assert S3_SECRET not in raw
    event = json.loads(raw)
    env = event["run"]["facets"]["environmentVariables"]["environmentVariables"]
    assert env == [{"name": "AWS_SECRET_ACCESS_KEY", "value": "***"}]
    assert event["eventType"] == "ABORT" and event["inputs"][0]["inputFacets"]["inputStatistics"]["rowCount"] == 3
    _validator()(event)


@pytest.mark.slow
def test_factory_night_events_match_stage_runs_and_rlt_lineage(tmp_path, monkeypatch, receiver, capsys,
                                                               tiny_model_dir):
    """The real nightly flow on tiny models, twice (the second night changes only the evaluation: upstream cached),
    with OPENLINEAGE_URL at the local receiver. Per night: a START and a COMPLETE (one run id) per stage run that
    computed, nothing for cached ones; every event valid; one parent (the flow run); the COMPLETE graph is the
    catalog's lineage of the night and what `rlt lineage` prints; the data-quality facets are the catalog's stats."""
    from flows.cli import main
    from flows.factory import factory_flow
    from flows.lineage import artifact_chain
    from infra.engine.reuse import LINEAGE_ROLE
    from infra.openlineage import DEFAULT_NAMESPACE, flow_run_uuid, stage_run_uuid
    from tests.flows.test_factory import tiny_recipe

    monkeypatch.setenv("OPENLINEAGE_URL", receiver.url)
    root = str(tmp_path / "data")
    recipe = tiny_recipe(tiny_model_dir, train_teacher={"phases": []})
    first = factory_flow(recipe=recipe, root=root, tracking=False)
    recipe["evaluate"]["max_items"] = 2   # night two: only the two evaluations compute
    second = factory_flow(recipe=recipe, root=root, tracking=False)

    cat = RunContext(root, tracking=False).catalog
    events = receiver.events()
    assert events and {h["path"] for h in receiver.headers} == {"/api/v1/lineage"}
    validate = _validator()
    assert sum(validate(e) for e in events) >= 3 * len(events)   # standard facets checked against their schemas
    assert {e["eventType"] for e in events} == {"START", "COMPLETE"}   # nothing failed, nothing aborted
    namespace = "file://" + os.path.abspath(root)

    def ancestors(key: str, edges: set) -> set:
        out, todo = set(), [key]
        while todo:
            k = todo.pop()
            for p, c in edges:
                if c == k and p not in out:
                    out.add(p)
                    todo.append(p)
        return out

    all_edges: set = set()
    for night, expect_cached in ((first, False), (second, True)):
        run_id = night["run_id"]
        mine = [e for e in events if e["run"]["facets"]["rlt"]["rlt_run_id"] == run_id]
        stage_runs = cat.sql(f"SELECT stage, label, artifact_key, status FROM stage_runs "
                             f"WHERE run_id = '{run_id}'").to_pylist()
        done = {f"tiny-test.{r['stage']}" + (f"[{r['label']}]" if r["label"] else ""): r
                for r in stage_runs if r["status"] == "done"}
        cached = [r for r in stage_runs if r["status"] == "cached"]
        if expect_cached:
            assert set(done) == {"tiny-test.evaluate[base]", "tiny-test.evaluate[distilled]"}
            assert {r["stage"] for r in cached} == {"ingest", "train_teacher", "generate", "score", "filter",
                                                    "distill"}
        else:
            assert not cached and set(done) == {f"tiny-test.{s}" for s in ("ingest", "train_teacher", "generate",
                                                                            "score", "filter", "distill")} | \
                {"tiny-test.evaluate[base]", "tiny-test.evaluate[distilled]"}
        # one START and one COMPLETE per stage run that computed, with one run id; none for cached stages
        by_job: dict[str, list] = {}
        for e in mine:
            by_job.setdefault(e["job"]["name"], []).append(e)
        assert set(by_job) == set(done)
        for job, evs in by_job.items():
            r = done[job]
            assert [e["eventType"] for e in evs] == ["START", "COMPLETE"], job
            assert {e["run"]["runId"] for e in evs} == {stage_run_uuid(run_id, r["stage"], r["artifact_key"])}
            assert all(e["run"]["facets"]["rlt"]["artifact_key"] == r["artifact_key"] for e in evs)
        # the parent run facet names the flow run: one parent per night, derived from the rlt run id
        for e in mine:
            assert e["job"]["namespace"] == DEFAULT_NAMESPACE
            parent = e["run"]["facets"]["parent"]
            assert parent["run"]["runId"] == flow_run_uuid(run_id) == parent["root"]["run"]["runId"]
            assert (parent["job"]["namespace"], parent["job"]["name"]) == (DEFAULT_NAMESPACE, "rlt-factory")

        # datasets: the store URI, "<artifact name>/<key>"; each COMPLETE's outputs are what that stage committed
        arts = {a["key"]: a for a in cat.sql("SELECT key, name, stage, label, num_rows, stats_json, run_id "
                                             "FROM artifacts_committed").to_pylist()}
        complete = [e for e in mine if e["eventType"] == "COMPLETE"]
        for e in complete:
            for d in e["inputs"] + e["outputs"]:
                name, key = d["name"].split("/")
                assert d["namespace"] == namespace and arts[key]["name"] == name
            r = done[e["job"]["name"]]
            assert {o["name"].split("/")[1] for o in e["outputs"]} == {
                k for k, a in arts.items() if a["run_id"] == run_id and a["stage"] == r["stage"]
                and (a["label"] or "") == (r["label"] or "")}
            for o in e["outputs"]:
                assert o["outputFacets"]["outputStatistics"]["rowCount"] == arts[o["name"].split("/")[1]]["num_rows"]

        # the graph of the COMPLETE events is the catalog's lineage of the night (the report is no stage run: the
        # flow commits it without events; `reused` edges name row donors, not inputs)
        edges = _edges(complete)
        rows = cat.sql(f"SELECT parent_key, child_key, role FROM lineage WHERE run_id = '{run_id}'").to_pylist()
        catalog_edges = {(r["parent_key"], r["child_key"]) for r in rows
                         if r["role"] != LINEAGE_ROLE and r["child_key"] != night["report"]["key"]}
        assert edges == catalog_edges and edges
        all_edges |= edges

        # data-quality facets: the ingest quarantine counts and the filter yield are the artifacts' catalog stats
        outs = {o["name"].split("/")[0]: o for e in complete for o in e["outputs"]}
        if not expect_cached:   # no training phase: the problems are no parent of the teacher (nor an input)
            assert [e["inputs"] for e in complete if e["job"]["name"] == "tiny-test.train_teacher"] == [[]]

            def stats(o):
                return json.loads(arts[o["name"].split("/")[1]]["stats_json"])

            q, st = outs["problems"]["facets"]["rlt_dataQuality"], stats(outs["problems"])
            assert (q["rows_in"], q["quarantined"]) == (st["rows_in"], st["quarantined"])
            assert q["quarantine_rate"] == pytest.approx(st["quarantined"] / st["rows_in"])
            assert q.get("quarantine_by_reason", {}) == {k.split(".", 1)[1]: v for k, v in st.items()
                                                          if k.startswith("quarantine.")}
            qs = stats(outs["quarantine"])
            reasons = {k: v for k, v in qs.items() if k != "of"}
            assert outs["quarantine"]["facets"].get("rlt_dataQuality", {}).get("quarantine_by_reason", {}) == reasons
            assert sum(reasons.values()) == st["quarantined"]
            for name in ("distill_set", "filter_decisions"):
                q, st = outs[name]["facets"]["rlt_dataQuality"], stats(outs[name])
                assert q["yield"] == pytest.approx(st["yield"]) and 0 <= q["yield"] <= 1
                assert (q["candidates"], q["kept"]) == (st["candidates"], st["kept"]) and st["candidates"] > 0
                assert q.get("filter_reasons", {}) == {k.split(".", 1)[1]: v for k, v in st.items()
                                                        if k.startswith("reason.")}

    # `rlt lineage` (artifact_chain) over both nights: each artifact and its ancestors by the events' graph
    for night in (first, second):
        for out in ("distill_set", "eval_distilled", "eval_base"):
            key = night[out]["key"]
            assert {a["key"] for a in artifact_chain(cat, key)} == {key} | ancestors(key, all_edges), out
    assert ancestors(second["eval_distilled"]["key"], all_edges) >= {first["distill_set"]["key"],
                                                                     first["problems"]["key"]}

    # and the command itself, for a distill row: every key it prints is a dataset of night one's events
    ex = cat.sql(f"SELECT example_id FROM data_distill_set WHERE artifact_key = '{first['distill_set']['key']}' "
                 f"ORDER BY origin DESC, example_id LIMIT 1").to_pylist()[0]["example_id"]
    home = os.environ.get("PREFECT_HOME")
    monkeypatch.setenv("PREFECT_HOME", home or str(tmp_path / "prefect-home"))   # the CLI would set one for good
    capsys.readouterr()
    assert main(["--data-root", root, "lineage", ex, "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)
    if home is None:
        monkeypatch.delenv("PREFECT_HOME")
    printed = {s[k] for s in steps for k in ("key", "artifact_key") if s.get(k)}
    night_one = {d["name"].split("/")[1] for e in events if e["run"]["facets"]["rlt"]["rlt_run_id"] == first["run_id"]
                 for d in e["inputs"] + e["outputs"]}
    assert {first["distill_set"]["key"], first["problems"]["key"]} <= printed <= night_one
    assert [s["step"] for s in steps][-2:] == ["raw problem", "ingest artifact"]
