"""The factory against real services from `rlt stack up`: SeaweedFS S3, an MLflow server, a Prefect server.

Runs the CLI in a subprocess with exactly the environment `rlt stack up` prints, so nothing in this
process (Prefect settings, s3fs caches) leaks into the run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.flows.test_factory import tiny_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rlt(args: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.services
def test_factory_on_the_real_stack_and_nightly_deployment(tmp_path, tiny_model_dir):
    from infra import stack

    local = str(tmp_path / "stack")
    env_vars = stack.up(local)
    try:
        env = {**os.environ, **env_vars, "PYTHONPATH": ROOT}
        env.pop("PREFECT_HOME", None)
        recipe = tiny_recipe(tiny_model_dir, train_teacher={"phases": []},
                             evaluate={"include_base": False, "benchmarks": ["countdown-heldout"], "max_items": 2})
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe))
        run = _rlt(["factory", "--recipe", str(path)], env)
        assert run.returncode == 0, run.stderr[-3000:]
        assert env_vars["RLT_DATA_ROOT"].startswith("s3://")

        # artifacts and manifest live on S3, queryable with DuckDB
        q = _rlt(["manifest", "sql", "SELECT name FROM artifacts_committed ORDER BY name", "--json"], env)
        assert q.returncode == 0, q.stderr[-2000:]
        names = {r["name"] for r in json.loads(q.stdout)}
        assert {"problems", "explanations", "scored_explanations", "distill_set", "student_checkpoint",
                "eval_results", "report"} <= names
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=env_vars["AWS_ENDPOINT_URL"], key=env_vars["AWS_ACCESS_KEY_ID"],
                               secret=env_vars["AWS_SECRET_ACCESS_KEY"])
        bucket_root = env_vars["RLT_DATA_ROOT"].removeprefix("s3://")
        assert fs.glob(f"{bucket_root}/_manifest/artifacts/*.parquet")
        assert fs.glob(f"{bucket_root}/06_models/student_checkpoint/*/model.safetensors")

        # the MLflow server holds the parent run and nested stage runs
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=env_vars["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("rlt-factory")
        runs = client.search_runs([exp.experiment_id])
        assert {r.data.tags.get("rlt.stage") for r in runs} >= {"ingest", "generate", "score", "filter", "distill"}
        assert not any(env_vars["AWS_SECRET_ACCESS_KEY"] in json.dumps(r.data.params) for r in runs)

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
        stack.down(local)
