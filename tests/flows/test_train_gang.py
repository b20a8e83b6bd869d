"""train_teacher and distill as gangs of ranks through the factory (infra/engine/gang.py).

Fast: the launch shape is never part of a key (the plan of a recipe is the same whatever its ``launch:``), and a
shape that cannot keep a global batch is refused naming the field. Slow (real processes, gloo on CPU): a 2-rank
train_teacher (SFT + GRPO) and distill committed by the factory with the owner's MLflow run holding the ranks'
metrics; rank 1 SIGKILLed mid-step through ``rlt run train_teacher``: one line naming the rank and host, nothing
committed, and the rerun resumes from the last checkpoint without redoing finished steps (counted).
The same gang on the 2-node Ray cluster is in tests/flows/test_ray_executor.py (it shares that module's stack).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml
from pydantic import ValidationError

from flows.recipe import Recipe
from infra.engine.context import RunContext
from tests.flows.test_factory import tiny_recipe
from tests.rlt_core.test_training_distributed import _rank_pid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GANG = {"launcher": "local", "ranks": 2, "threads_per_rank": 1, "collective_timeout_s": 60}


def gang_recipe(model_dir: str, launch: dict | None = GANG, **over) -> dict:
    """The tiny recipe with both training stages on ``launch`` (global batches divisible by 2 ranks)."""
    recipe = tiny_recipe(model_dir, **over)
    if launch is not None:
        recipe["train_teacher"]["launch"] = dict(launch)
        recipe["distill"]["launch"] = dict(launch)
    return Recipe.model_validate(recipe).model_dump(mode="json")


def _plan_keys(recipe: dict) -> dict:
    from flows.pipeline import plan

    return {p.node.id: p.keys for p in plan(Recipe.model_validate(recipe))}


def test_launch_shape_changes_no_key(tiny_model_dir):
    base = _plan_keys(gang_recipe(tiny_model_dir, launch=None))
    for launch in (GANG, {"launcher": "ray", "ranks": 2, "resources": {"CPU": 1}},
                   {"launcher": "local", "ranks": 1, "strategy": "fsdp", "timeout_s": 60}):
        assert _plan_keys(gang_recipe(tiny_model_dir, launch=launch)) == base, launch


def test_a_launch_shape_that_breaks_the_global_batch_is_refused_naming_the_field(tiny_model_dir):
    recipe = tiny_recipe(tiny_model_dir)
    recipe["distill"]["launch"] = {"launcher": "local", "ranks": 3}   # global batch 2 over 3 ranks
    with pytest.raises(ValidationError) as err:
        Recipe.model_validate(recipe)
    assert "distill.train.batch_size" in str(err.value)
    recipe = tiny_recipe(tiny_model_dir)
    recipe["train_teacher"]["launch"] = {"launcher": "local", "ranks": 3}
    with pytest.raises(ValidationError) as err:
        Recipe.model_validate(recipe)
    assert "train_teacher." in str(err.value) and "batch" in str(err.value)


def test_a_gang_the_ray_nodes_cannot_hold_is_refused_in_one_line():
    from infra.engine.gang import LaunchConfig, check_room
    from rlt_core.training.gang import GangFailed

    nodes = [{"Alive": True, "Resources": {"CPU": 1.0, "node_a": 1.0}},
             {"Alive": False, "Resources": {"CPU": 1.0, "node_b": 1.0}},   # lost
             {"Alive": True, "Resources": {"CPU": 0.0}}]                   # the head
    launch = LaunchConfig(launcher="ray", ranks=2, resources={"CPU": 1})
    with pytest.raises(GangFailed) as err:
        check_room(launch, nodes)
    assert "\n" not in str(err.value) and "hold 1 of the 2 ranks" in str(err.value)
    nodes[1]["Alive"] = True
    check_room(launch, nodes)   # one rank per node fits
    with pytest.raises(GangFailed, match="hold 0 of the 2 ranks"):
        check_room(LaunchConfig(launcher="ray", ranks=2, resources={"num_gpus": 1}), nodes)


def _artifact(ctx: RunContext, key: str) -> dict:
    rec = ctx.catalog.artifact(key)
    assert rec is not None, key
    return json.loads(rec["stats_json"])


@pytest.mark.slow
def test_two_rank_teacher_and_student_through_the_factory(tmp_path, tiny_model_dir):
    from flows.factory import factory_flow
    from infra.tracking import Tracker

    root = str(tmp_path / "data")
    recipe = gang_recipe(tiny_model_dir)
    out = factory_flow(recipe=recipe, root=root, until="distill", tracking=True)
    ctx = RunContext(root)
    teacher = _artifact(ctx, out["teacher_checkpoint"]["key"])
    student = _artifact(ctx, out["student_checkpoint"]["key"])
    sft, grpo = recipe["train_teacher"]["sft"]["max_steps"], recipe["train_teacher"]["grpo"]["max_steps"]
    assert (teacher["steps"], teacher["steps_run"], teacher["ranks"], teacher["torch_threads"]) == \
        (sft + grpo, sft + grpo, 2, 1)
    assert (student["steps"], student["ranks"], student["torch_threads"]) == \
        (recipe["distill"]["train"]["max_steps"], 2, 1)
    # one commit per key; the checkpoints hash to their recorded digests (verified again on load)
    from infra.engine.models import checkpoint_snapshot

    for name in ("teacher_checkpoint", "student_checkpoint"):
        n = ctx.catalog.sql(f"SELECT count(*) AS n FROM artifacts_committed WHERE key = '{out[name]['key']}'")
        assert n.to_pylist()[0]["n"] == 1
        assert checkpoint_snapshot(ctx, out[name]["key"]).digest == ctx.catalog.artifact(out[name]["key"])["digest"]
    # the ranks wrote no tracker runs of their own: rank 0's metrics were replayed into the owner's nested run
    tr = Tracker(root)
    runs = tr.client.search_runs([tr.client.get_experiment_by_name("rlt-factory").experiment_id])
    by_stage = {r.data.tags.get("rlt.stage"): r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len([r for r in runs if r.data.tags.get("rlt.stage") == "train_teacher"]) == 1
    history = tr.client.get_metric_history(by_stage["train_teacher"].info.run_id, "sft/loss")
    assert sorted(m.step for m in history) == list(range(1, sft + 1))
    grpo_loss = tr.client.get_metric_history(by_stage["train_teacher"].info.run_id, "grpo/loss")
    assert sorted(m.step for m in grpo_loss) == list(range(1, grpo + 1))
    assert tr.client.get_metric_history(by_stage["distill"].info.run_id, "distill/loss")
    # the generate stage served the gang-trained teacher (its digest is the committed checkpoint's)
    rows = ctx.catalog.sql("SELECT DISTINCT teacher_digest FROM data_explanations").to_pylist()
    assert [r["teacher_digest"] for r in rows] == [ctx.catalog.artifact(out["teacher_checkpoint"]["key"])["digest"]]


def _rlt(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_a_rank_killed_mid_step_fails_the_stage_in_one_line_and_the_rerun_resumes(tmp_path, tiny_model_dir):
    total = 6
    recipe = gang_recipe(tiny_model_dir)
    recipe["train_teacher"]["phases"] = ["sft"]
    recipe["train_teacher"]["sft"].update(max_steps=total)
    recipe["train_teacher"]["sft"]["runtime"]["save_steps"] = 1   # a checkpoint after every step
    path = tmp_path / "gang.yaml"
    path.write_text(yaml.safe_dump(recipe))
    root = str(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RLT_CATALOG", "MLFLOW_", "PREFECT_API"))}
    env.update(RLT_DATA_ROOT=root, PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1")
    res = _rlt(["run", "ingest", "--recipe", str(path)], env)
    assert res.returncode == 0, res.stderr[-3000:]
    work = os.path.join(root, "_work", "train_teacher")
    killed: dict = {}

    def kill_rank_1_after_checkpoint_2():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            for key in os.listdir(work) if os.path.isdir(work) else []:
                state = os.path.join(work, key, "sft", "checkpoints", "checkpoint-2", "trainer_state.json")
                pid = _rank_pid(os.path.join(work, key, "job.json"), 1) if os.path.exists(state) else None
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed.update(at=time.monotonic(), key=key)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank_1_after_checkpoint_2, daemon=True)
    killer.start()
    res = _rlt(["run", "train_teacher", "--recipe", str(path)], env)
    ended = time.monotonic()
    killer.join(5)
    assert "key" in killed, f"rank 1 was not found to kill\n{res.stderr[-3000:]}"
    assert res.returncode != 0
    answer = [ln for ln in res.stderr.splitlines() if ln.startswith("rlt: ")]
    # the CLI's answer: one line naming the rank and its host (Prefect's own log lines above it say the same)
    assert len(answer) == 1, res.stderr[-3000:]
    last = answer[0]
    assert last.startswith(f"rlt: training gang failed: rank 1 on host {socket.gethostname()}"), res.stderr[-3000:]
    assert "SIGKILL" in last
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert ended - killed["at"] < 60 + 30   # the collective timeout bounds it; measured a few seconds
    ctx = RunContext(root, tracking=False)
    assert not ctx.catalog.sql("SELECT key FROM artifacts_committed WHERE name = 'teacher_checkpoint'").to_pylist()
    # the rerun resumes from the last complete checkpoint: it computes only the steps after it
    done = sorted(int(c.rsplit("-", 1)[1]) for c in
                  os.listdir(os.path.join(work, killed["key"], "sft", "checkpoints")) if c.startswith("checkpoint-")
                  and os.path.exists(os.path.join(work, killed["key"], "sft", "checkpoints", c, "trainer_state.json")))
    res = _rlt(["run", "train_teacher", "--recipe", str(path)], env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = ctx.catalog.sql("SELECT key, stats_json FROM artifacts_committed WHERE name = 'teacher_checkpoint'")
    (row,) = rows.to_pylist()
    stats = json.loads(row["stats_json"])
    assert row["key"] == killed["key"]
    assert done and 2 <= done[-1] < total
    assert (stats["steps"], stats["steps_run"]) == (total, total - done[-1]), (stats, done)
