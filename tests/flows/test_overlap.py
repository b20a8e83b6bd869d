"""Overlapping runs (real `rlt factory` processes on one data root): every key is computed once, no duplicate
ids anywhere, every committed artifact's bytes match its digest, and a SIGKILLed lock holder blocks nobody."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from flows.pipeline import plan
from flows.recipe import Recipe
from infra.catalog.artifacts import verify
from infra.catalog.lake import Catalog
from infra.catalog.locks import FileLocks
from infra.catalog.store import Store
from tests.flows.test_factory import tiny_recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ID_COLS = {"problems": "problem_id", "explanations": "explanation_id", "scored_explanations": "explanation_id",
           "distill_set": "example_id", "filter_decisions": "problem_id, explanation_id",
           "eval_results": "benchmark, item_id, sample_index"}


def _start(root: str, recipe_path: str, env: dict | None = None, stdout=subprocess.PIPE, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT, "RLT_LOG_LEVEL": "INFO", **(env or {})}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "--data-root", root, "factory", "--recipe",
                             recipe_path], cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT,
                            text=True, **kw)


def _write(tmp_path, name: str, recipe: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def _run_overlapping(root: str, paths: list[str], stagger_s: float = 0.5, timeout: int = 1500) -> list[str]:
    """Start one `rlt factory` per recipe path, staggered; wait for all; return their outputs. Each writes to a file,
    not a pipe: a run that dies hard (a signal: no atexit) leaves its temporary Prefect server running with the
    run's stdout open, and reading a pipe to EOF would then wait for that server, not for the run."""
    procs, logs = [], []
    for i, p in enumerate(paths):
        logs.append(open(os.path.join(os.path.dirname(root), f"run-{i}.log"), "w+"))
        procs.append(_start(root, p, stdout=logs[-1]))
        time.sleep(stagger_s)
    outs = []
    for p, log in zip(procs, logs):
        p.wait(timeout=timeout)
        log.seek(0)
        outs.append(log.read())
        log.close()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"run {i} exited {p.returncode}: {out[-4000:]}"
    return outs


def assert_each_key_once(root: str) -> dict:
    """The invariants overlapping runs must keep; returns stage_runs status counts for further checks."""
    store = Store(root)
    cat = Catalog(store)
    dup = cat.rows("SELECT key, count(*) AS c FROM artifacts GROUP BY key HAVING c > 1")
    assert not dup, f"artifact records committed twice: {dup}"
    bodies = cat.rows("SELECT stage, label, artifact_key, count(*) AS c FROM stage_runs WHERE status = 'done' "
                      "GROUP BY ALL HAVING c > 1")
    assert not bodies, f"a key's body ran more than once: {bodies}"
    shards = cat.rows("SELECT artifact_key, shard_id, count(*) AS c FROM shards WHERE status = 'done' "
                      "GROUP BY ALL HAVING c > 1")
    assert not shards, f"a shard was computed more than once: {shards}"
    tables = cat.refresh_data_views()
    for table, ids in ID_COLS.items():
        if table in tables:
            d = cat.rows(f"SELECT artifact_key, count(*) - count(DISTINCT ({ids})) AS extra FROM data_{table} "
                         "GROUP BY 1 HAVING extra > 0")
            assert not d, f"duplicate ids in data_{table}: {d}"
    recs = cat.rows("SELECT * FROM artifacts_committed")
    problems = [p for r in recs for p in verify(store, r)]
    assert not problems, problems
    assert all(r["digest"] for r in recs if r["name"] != "report"), [r["name"] for r in recs if not r["digest"]]
    return {r["status"]: r["n"] for r in cat.rows("SELECT status, count(*) AS n FROM stage_runs GROUP BY 1")}


@pytest.mark.slow
# 4 runs at once (2 ran here too until CI time ran short: 4 holds every pairwise contention of 2, 71 s saved)
@pytest.mark.parametrize("n_runs", [4])
def test_overlapping_runs_of_one_recipe_compute_every_key_once(tmp_path, tiny_model_dir, n_runs):
    root = str(tmp_path / "data")
    path = _write(tmp_path, "tiny", tiny_recipe(tiny_model_dir, generate={"shard_size": 1}))
    _run_overlapping(root, [path] * n_runs)
    status = assert_each_key_once(root)
    nodes = len(plan(Recipe.model_validate(yaml.safe_load(open(path)))))
    assert status.get("done", 0) == nodes, status   # each node's body ran exactly once over all runs
    assert status.get("done", 0) + status.get("waited", 0) + status.get("cached", 0) == n_runs * nodes, status


@pytest.mark.slow
def test_two_recipes_sharing_upstream_stages_share_the_work(tmp_path, tiny_model_dir):
    root = str(tmp_path / "data")
    a = tiny_recipe(tiny_model_dir, generate={"shard_size": 1})
    b = tiny_recipe(tiny_model_dir, generate={"shard_size": 1}, filter={"rules": {"require_end_tag": False,
                                                                                  "top_k": 2}})
    b["name"] = "tiny-b"
    _run_overlapping(root, [_write(tmp_path, "a", a), _write(tmp_path, "b", b)])
    assert_each_key_once(root)
    ka = {p.node.id: p.key for p in plan(Recipe.model_validate(a))}
    kb = {p.node.id: p.key for p in plan(Recipe.model_validate(b))}
    shared = [n for n in ka if ka[n] == kb[n]]
    assert {"ingest", "train_teacher", "generate", "score", "evaluate[base]"} <= set(shared)
    cat = Catalog(Store(root))
    for node in shared:
        done = cat.rows("SELECT count(*) AS n FROM stage_runs WHERE artifact_key = ? AND status = 'done'", [ka[node]])
        assert done[0]["n"] == 1, node
    assert ka["filter"] != kb["filter"]


@pytest.mark.slow
def test_sigkilled_lock_holder_blocks_nobody(tmp_path, tiny_model_dir):
    """Kill a run while it holds train_teacher's key lock: the next run takes the key at once and finishes.

    The victim is held inside training, after its first optimizer step (infra/faults.py ``RLT_FAULT_PAUSE``), and
    killed there: a poll for the lock raced the victim, which could finish the stage and let go of the lock
    between the poll and the kill on a busy machine."""
    from infra.faults import PAUSE_ENV

    root = str(tmp_path / "data")
    recipe = tiny_recipe(tiny_model_dir)
    path = _write(tmp_path, "tiny", recipe)
    key = {p.node.id: p.key for p in plan(Recipe.model_validate(recipe))}["train_teacher"]
    flag, log = tmp_path / "pause", tmp_path / "victim.log"
    with open(log, "w") as out:   # a file, not a pipe nobody reads while the victim waits
        victim = _start(root, path, env={PAUSE_ENV: f"train.step@1:{flag}"}, stdout=out, start_new_session=True)
    deadline = time.time() + 900
    while not os.path.exists(f"{flag}.reached"):
        assert victim.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "the victim never reached its first training step"
        time.sleep(0.2)
    locks = FileLocks(os.path.join(root, "_catalog", "locks"))
    holder = locks.holder(f"stage:{key}")
    assert holder is not None and int(holder["pid"]) == victim.pid
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    t0 = time.monotonic()
    assert locks.holder(f"stage:{key}") is None, "the kernel released the dead holder's lock"
    nxt = _start(root, path)
    out = nxt.communicate(timeout=1500)[0]
    assert nxt.returncode == 0, out[-4000:]
    assert "waiting" not in out.lower(), "nobody holds the key any more: the next run must not wait"
    assert_each_key_once(root)
    cat = Catalog(Store(root))
    assert cat.artifact(key) is not None
    assert time.monotonic() - t0 < 1200
