"""The factory on a real local 2-node Ray cluster (`rlt stack up --ray-nodes 2`: S3 on SeaweedFS, PostgreSQL
catalog, MLflow and Prefect servers, a Ray head and two worker nodes with token authentication).

- the tiny factory with shards (generate, score) and whole stages (train_teacher, evaluate) on the cluster gives
  the same artifact keys and the same rows as the local executor, and its shards ran on both nodes;
- a node SIGKILLed while it runs a shard: Ray retries the shard on the other node, which skips the ids the dead
  attempt wrote whole; nothing is lost or duplicated and the rows equal a local run's;
- a driver without the cluster token is refused with a clear error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch

from infra.engine.context import RunContext
from tests.flows.test_factory import tiny_recipe
from tests.infra.devstack.services_fixtures import drop_postgres_cluster

pytestmark = [pytest.mark.slow, pytest.mark.services]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def ray_stack(tmp_path_factory):
    from infra.devstack import stack

    root = tmp_path_factory.mktemp("ray-stack")
    t0 = time.time()
    env = stack.up(root, stack.StackConfig(ray_nodes=2))
    print(f"stack with 2 Ray nodes up in {time.time() - t0:.1f}s")
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    mp.setenv("RLT_WORK_DIR", str(root / "work"))   # training state of this stack's keys, not ~/.cache's
    # Prefect read its settings when this process first used them (an earlier test's ephemeral server): point this
    # process's flows at the stack's server, as a CLI started with `rlt stack env` would be
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"],
                                         PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]}):
            yield root, env
    finally:
        from infra.engine.executor import disconnect

        disconnect()   # before the cluster goes: Ray ends a driver whose GCS stays unreachable (~60 s)
        mp.undo()
        stack.down(root)
        drop_postgres_cluster(root, stack.load_state(root)["postgres"]["cluster_dir"])


def _run(recipe: dict, root: str, catalog_url: str | None = None, **kw) -> dict:
    from flows.factory import factory_flow

    return factory_flow(recipe=recipe, root=root, tracking=False, catalog_url=catalog_url, **kw)


def _rows(ctx: RunContext, name: str, key: str, order: str, drop=("latency_s",)) -> list[dict]:
    out = []
    for batch in ctx.catalog.scan(name, key, order_by=order):
        out.extend(batch.to_pylist() if hasattr(batch, "to_pylist") else [batch])
    return [{k: v for k, v in r.items() if k not in drop} for r in out]


def _keys(out: dict) -> dict[str, str]:
    """Artifact keys by output (the report is keyed by its run: each run writes its own)."""
    return {k: v["key"] for k, v in out.items() if isinstance(v, dict) and "key" in v and k != "report"}


def _local(recipe: dict, tmp_path, monkeypatch) -> tuple[dict, RunContext]:
    """The same recipe with the local executor, on a local folder with its own catalog."""
    with monkeypatch.context() as m:
        m.delenv("RLT_CATALOG_URL", raising=False)
        root = str(tmp_path / "local")
        out = _run({**recipe, "executor": {"kind": "local"}}, root)
        ctx = RunContext(root, tracking=False)
        ctx.catalog.location   # opened here, without the stack's RLT_CATALOG_URL: the folder's own catalog
        return out, ctx


def _ray_recipe(recipe: dict, stages: list[str]) -> dict:
    return {**recipe, "executor": {"kind": "ray", "stages": stages}}


def test_tiny_factory_on_two_nodes_equals_local(ray_stack, tiny_model_dir, tmp_path, monkeypatch):
    root, env = ray_stack
    recipe = tiny_recipe(tiny_model_dir, generate={"shard_size": 1}, score={"shard_size": 2})
    ray_root = env["RLT_DATA_ROOT"]   # one store per PostgreSQL catalog
    # a trained checkpoint's bits depend on torch's intra-op thread count (float sums in another order): a Ray task
    # with num_cpus 1 runs torch on one thread (Ray sets OMP_NUM_THREADS to the task's CPUs), so what trains here
    # (distill in the Ray run, everything in the local one) trains on one thread too; both record it
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = _run(_ray_recipe(recipe, ["train_teacher", "generate", "score", "evaluate"]), ray_root)
        local_out, lctx = _local(recipe, tmp_path, monkeypatch)
    finally:
        torch.set_num_threads(before)
    ctx = RunContext(ray_root, tracking=False)
    for name in ("teacher_checkpoint", "student_checkpoint"):
        for c, o in ((ctx, out), (lctx, local_out)):
            assert json.loads(c.catalog.artifact(o[name]["key"])["stats_json"])["torch_threads"] == 1, name
    assert _keys(out) == _keys(local_out)
    keys = _keys(out)
    for name, order, art in (("explanations", "explanation_id", "explanations"),
                             ("scored_explanations", "explanation_id", "scored_explanations"),
                             ("eval_results", "benchmark, item_id, sample_index", "eval_base"),
                             ("eval_results", "benchmark, item_id, sample_index", "eval_distilled")):
        ray_rows, local_rows = _rows(ctx, name, keys[art], order), _rows(lctx, name, keys[art], order)
        assert ray_rows and ray_rows == local_rows, name
    shards = ctx.catalog.sql("SELECT stage, shard_id, node, status FROM shards_latest").to_pylist()
    assert {s["status"] for s in shards} == {"done"}
    for stage in ("generate", "score"):
        assert {s["node"] for s in shards if s["stage"] == stage} == {"node_a", "node_b"}, shards
    assert {s["node"] for s in lctx.catalog.sql("SELECT node FROM shards_latest").to_pylist()} <= {"", None}


def _shard_on(root, node: str, stage: str) -> int | None:
    """The pid of a Ray worker of ``node`` running a ``stage`` shard right now (Ray's process title)."""
    from infra.devstack import ray_cluster

    for pid in ray_cluster.node_pids(root, ray_cluster.node_service(node)):
        try:
            if f"ray::{stage}-shard" in " ".join(psutil.Process(pid).cmdline()):
                return pid
        except psutil.Error:
            continue
    return None


def test_node_killed_mid_shard_is_retried_on_the_other_node(ray_stack, tiny_model_dir, tmp_path, monkeypatch):
    from infra.devstack import ray_cluster

    root, env = ray_stack
    recipe = tiny_recipe(tiny_model_dir, ingest={"source": {"uri": "builtin:countdown", "n": 12, "seed": 3}},
                         generate={"shard_size": 2, "batch_size": 2, "sampling": {"max_new_tokens": 160}},
                         train_teacher={"phases": []})
    ray_root = env["RLT_DATA_ROOT"]
    killed: dict = {}
    # node_b is killed mid-shard by construction, not by timing: every worker process parks at its first written
    # file (infra/faults.py RLT_FAULT_PAUSE, one pause path per node); node_a's path is open from the start, so only
    # node_b's first generate shard stops there, with a part written and the rest not
    pause = tmp_path / "pause"
    (tmp_path / "pause-node_a.go").touch()
    runtime_env = {"env_vars": {"RLT_FAULT_PAUSE": f"store.write@1:{pause}-$RLT_RAY_NODE"}}

    def killer():
        deadline = time.time() + 600
        while time.time() < deadline and not (tmp_path / "pause-node_b.reached").exists():
            time.sleep(0.1)
        if (tmp_path / "pause-node_b.reached").exists():
            killed["in_generate"] = _shard_on(root, "node_b", "generate") is not None
            killed["pids"] = ray_cluster.kill_node(root, ray_cluster.node_service("node_b"))
            killed["at"] = time.time()

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    ray_recipe = _ray_recipe(recipe, ["generate", "score"])
    ray_recipe["executor"]["runtime_env"] = runtime_env
    out = _run(ray_recipe, ray_root, until="score")
    t.join(5)
    assert killed.get("pids"), "node_b never ran a generate shard"
    assert killed["in_generate"], "node_b was parked outside a generate shard"
    ctx = RunContext(ray_root, tracking=False)
    key = out["explanations"]["key"]
    history = ctx.catalog.sql("SELECT shard_id, status, node, ts FROM shards WHERE artifact_key = ? ORDER BY ts",
                              [key]).to_pylist()
    assert {h["status"] for h in history} == {"done"}   # Ray retried the lost shard: no failure recorded
    assert len({h["shard_id"] for h in history}) == len(history) == 6   # each shard committed once
    rows = _rows(ctx, "explanations", key, "explanation_id")
    assert len(rows) == 12 * 2 == len({r["explanation_id"] for r in rows})
    local_out, lctx = _local(_ray_recipe(recipe, []), tmp_path, monkeypatch)
    # the local run stops after evaluate; compare the two stages both ran
    assert rows == _rows(lctx, "explanations", key, "explanation_id")
    skey = out["scored_explanations"]["key"]
    assert skey == local_out["scored_explanations"]["key"]
    assert _rows(ctx, "scored_explanations", skey, "explanation_id") == \
        _rows(lctx, "scored_explanations", skey, "explanation_id")
    # node_b's shards were all recorded before it died; the one it was running was finished by node_a
    assert all(h["ts"].timestamp() < killed["at"] for h in history if h["node"] == "node_b"), history
    assert any(h["node"] == "node_a" and h["ts"].timestamp() > killed["at"] for h in history), history


def test_driver_without_the_token_is_refused_clearly(ray_stack):
    _, env = ray_stack
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from infra.engine.executor import ExecutorError, _connect\n"
            "try:\n    _connect(%r)\nexcept ExecutorError as e:\n    print('REFUSED:', e)\n") % (ROOT,
                                                                                                  env["RLT_RAY_ADDRESS"])
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    t0 = time.time()
    res = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=180)
    assert "REFUSED:" in res.stdout, res.stdout + res.stderr[-2000:]
    assert "authentication token" in res.stdout and "RAY_AUTH_TOKEN" in res.stdout
    assert time.time() - t0 < 120


def test_training_gang_on_ray_train_one_rank_per_node(ray_stack, tiny_model_dir):
    """train_teacher (SFT + GRPO) as 2 ranks of Ray Train's TorchTrainer on the 2-node cluster (gloo); the
    stage's own process, here, stays the owner and commits the checkpoint through the stack's catalog."""
    from infra.devstack import stack
    from tests.flows.test_train_gang import gang_recipe

    root, env = ray_stack
    # both nodes up (the kill test above leaves node_b dead): `up` reuses what runs and starts what does not
    assert stack.up(root, stack.StackConfig(ray_nodes=2))["RLT_RAY_ADDRESS"] == env["RLT_RAY_ADDRESS"]
    launch = {"launcher": "ray", "ranks": 2, "threads_per_rank": 1, "resources": {"CPU": 1},
              "collective_timeout_s": 120}
    recipe = gang_recipe(tiny_model_dir, launch=launch)
    recipe["train_teacher"]["sft"]["max_steps"] = 4   # another key than the other tests' teachers: it trains
    out = _run(recipe, env["RLT_DATA_ROOT"], until="train_teacher")
    ctx = RunContext(env["RLT_DATA_ROOT"], tracking=False)
    rec = ctx.catalog.artifact(out["teacher_checkpoint"]["key"])
    stats = json.loads(rec["stats_json"])
    assert (stats["steps"], stats["steps_run"], stats["ranks"], stats["torch_threads"]) == (4 + 1, 4 + 1, 2, 1)
    # one rank per node (every node offers 1 CPU, the head none, and each rank asks for 1): the ranks' placement,
    # gathered by rank 0 into the gang's result in the stage's work folder
    with open(os.path.join(os.environ["RLT_WORK_DIR"], "_work", "train_teacher", out["teacher_checkpoint"]["key"],
                           "result.json")) as f:
        result = json.load(f)
    assert sorted(p["node"] for p in result["placement"]) == ["node_a", "node_b"], result["placement"]
    assert (result["ranks"], result["backend"]) == (2, "gloo")


def test_vllm_endpoints_advertised_by_nodes_are_discovered(ray_stack):
    """`generate.endpoints: [ray]`: a node started with the resource vllm_endpoint_<port> advertises the server on
    that port of its address; discovery lists it and the pool's health check reaches it (a real HTTP server
    answering /health stands in for vLLM here; generation through a real vLLM pool is in the vllm suite)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from infra.devstack import ray_cluster, services
    from infra.engine.endpoints import EndpointPool, discover

    root, env = ray_stack

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("0.0.0.0", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    ray_cluster.start_node(root, "node_c", env["RLT_RAY_ADDRESS"], ray_cluster.cluster_token(root),
                           ray_cluster.RayClusterConfig(nodes=1), env=env, resources={f"vllm_endpoint_{port}": 1})
    try:
        ctx = RunContext(env["RLT_DATA_ROOT"], tracking=False, executor={"kind": "ray"})
        urls = discover(ctx)
        assert len(urls) == 1 and urls[0].endswith(f":{port}"), urls
        assert EndpointPool(urls).healthy() == urls
    finally:
        services.stop(root, ray_cluster.node_service("node_c"), 10.0)
        server.shutdown()
