"""The factory against real services from `rlt stack up`: SeaweedFS S3, a PostgreSQL catalog, an MLflow server,
a Prefect server.

Runs the CLI in subprocesses with exactly the environment `rlt stack up` prints, so nothing in this process
(Prefect settings, s3fs caches) leaks into the runs. Two runs of the same recipe overlap: every key is computed
once, across processes, through the PostgreSQL catalog and its advisory locks.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from tests.flows.test_factory import tiny_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rlt(args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _overlapping(commands: list[list[str]], env: dict, timeout: int = 1500) -> list[str]:
    procs = []
    for args in commands:
        procs.append(subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        time.sleep(0.5)
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


@pytest.mark.slow
@pytest.mark.services
def test_factory_on_the_real_stack_and_nightly_deployment(tmp_path, tiny_model_dir, monkeypatch):
    from infra.devstack import stack
    from tests.flows.test_overlap import assert_each_key_once
    from tests.infra.devstack.services_fixtures import drop_postgres_cluster

    local = str(tmp_path / "stack")
    env_vars = stack.up(local)
    try:
        env = {**os.environ, **env_vars, "PYTHONPATH": ROOT}
        env.pop("PREFECT_HOME", None)
        recipe = tiny_recipe(tiny_model_dir, train_teacher={"phases": []}, generate={"shard_size": 1},
                             evaluate={"include_base": False, "benchmarks": ["countdown-heldout"], "max_items": 2})
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        other = dict(recipe, name="tiny-b", filter={"rules": {"require_end_tag": False, "top_k": 2}})
        path_b = tmp_path / "recipe-b.yaml"
        path_b.write_text(yaml.safe_dump(other))
        # two recipes sharing ingest..score, started together on the stack: the shared keys are computed once
        _overlapping([["factory", "--recipe", str(path)], ["factory", "--recipe", str(path_b)]], env)
        assert env_vars["RLT_DATA_ROOT"].startswith("s3://") and env_vars["RLT_CATALOG_URL"].startswith("postgresql")
        for k, v in env_vars.items():
            monkeypatch.setenv(k, v)
        status = assert_each_key_once(env_vars["RLT_DATA_ROOT"])
        assert status.get("waited", 0) + status.get("cached", 0) >= 4, status   # ingest..score reused by one run

        # artifacts and the catalog's data live on S3, queryable with DuckDB
        q = _rlt(["catalog", "sql", "SELECT name FROM artifacts_committed ORDER BY name", "--json"], env)
        assert q.returncode == 0, q.stderr[-2000:]
        names = {r["name"] for r in json.loads(q.stdout)}
        assert {"problems", "explanations", "scored_explanations", "distill_set", "student_checkpoint",
                "eval_results", "report"} <= names
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=env_vars["AWS_ENDPOINT_URL"], key=env_vars["AWS_ACCESS_KEY_ID"],
                               secret=env_vars["AWS_SECRET_ACCESS_KEY"])
        bucket_root = env_vars["RLT_DATA_ROOT"].removeprefix("s3://")
        # sharded output: shard parts consolidated into the committing run's data files, the staging parts freed
        assert fs.glob(f"{bucket_root}/07_model_output/explanations/*/runs/*/data-*.parquet")
        assert not fs.glob(f"{bucket_root}/07_model_output/explanations/*/shards/*/part-*.parquet")
        assert fs.glob(f"{bucket_root}/06_models/student_checkpoint/*/runs/*/model.safetensors")

        # the MLflow server holds the parent run and nested stage runs
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=env_vars["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("rlt-factory")
        runs = client.search_runs([exp.experiment_id])
        assert {r.data.tags.get("rlt.stage") for r in runs} >= {"ingest", "generate", "score", "filter", "distill"}
        pg_password = env_vars["RLT_CATALOG_URL"].split(":")[2].split("@")[0]
        assert not any(secret in json.dumps(r.data.params) for r in runs
                       for secret in (env_vars["AWS_SECRET_ACCESS_KEY"], pg_password))

        # the Prefect server saw the flow run; a nightly deployment gets a cron schedule
        dep = _rlt(["deploy", "--recipe", str(path), "--cron", "0 2 * * *", "--name", "nightly-test"], env, 300)
        assert dep.returncode == 0, dep.stderr[-3000:]
        check = subprocess.run([sys.executable, "-c", (
            "from prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as c:\n"
            "    runs = c.read_flow_runs()\n"
            "    d = c.read_deployment_by_name('rlt-factory/nightly-test')\n"
            "    print(len([r for r in runs if r.state and r.state.is_completed()]), d.schedules[0].schedule.cron)\n")],
            env=env, capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stderr[-2000:]
        completed, cron = check.stdout.strip().splitlines()[-1].split(" ", 1)
        assert int(completed) >= 1 and cron == "0 2 * * *"
    finally:
        cluster = (stack.load_state(local).get("postgres") or {}).get("cluster_dir")
        stack.down(local)
        if cluster:   # a cluster outside the tmp folder (/var/lib/rlt-postgres/...) is not cleaned by pytest
            drop_postgres_cluster(local, cluster)
